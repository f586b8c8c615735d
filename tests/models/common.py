"""Checks shared by the model tests in tests/models (a plain module, not a test file): the
interface of :mod:`artrt.models` (the autoregressive property through the Jacobian, nll as
the sum of the sampling steps, sampling from a generator or given uniforms, the inverse CDF,
training on real data, bad input), the probabilities summing to one, the Bernoulli output,
the kernel backends against the reference, the GPU against the CPU."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import artrt
from artrt import data
from artrt.models._common import inverse_cdf
from tests.helpers import DEVICE

# --------------------------------------------------------------------------- the interface


def dependencies(model, cond=None, seed: int = 0) -> torch.Tensor:
    """(D, D) bool, [o, i]: whether output position o's logits depend on input position i
    (positions flattened over ``model.config.shape``), from the float64 Jacobian at a random
    input, the logits projected on random level weights."""
    g = torch.Generator().manual_seed(seed)
    shape, levels = tuple(model.config.shape), model.config.levels
    model = model.double()
    v = torch.rand((1, *shape), generator=g, dtype=torch.float64) * 2 - 1
    w = torch.randn(levels, generator=g, dtype=torch.float64).view(1, levels,
                                                                   *[1] * len(shape))

    def f(inp):
        return (model.forward_input(inp, cond) * w).sum(1).reshape(-1)  # (D,)

    jac = torch.autograd.functional.jacobian(f, v)  # (D, 1, *shape)
    model.float()
    return jac.reshape(v.numel(), v.numel()) != 0


def assert_autoregressive(model, cond=None, complete: bool = True) -> None:
    """No output depends on an input drawn at its own or a later step; with ``complete``,
    every output depends on every input drawn at an earlier step (no blind spot)."""
    steps = model.generation_steps().reshape(-1)
    allowed = steps[None, :] < steps[:, None]  # [o, i]
    dep = dependencies(model, cond)
    leaks = (dep & ~allowed).nonzero().tolist()
    assert not leaks, f"outputs depend on inputs of the same or a later step: {leaks[:5]}"
    if complete:
        missing = (allowed & ~dep).nonzero().tolist()
        assert not missing, f"blind spot: outputs miss earlier inputs: {missing[:5]}"


def assert_nll_is_sum_of_steps(model, x, cond=None) -> None:
    """nll(x) equals the sum over the sampling steps of log p(x at the step's positions),
    each computed from an input that holds x at earlier steps and noise everywhere else."""
    g = torch.Generator().manual_seed(1)
    steps = model.generation_steps()  # (*shape)
    model.eval()
    total = torch.zeros(x.shape[0])
    with torch.no_grad():
        for s in steps.unique().tolist():
            noise = torch.randint(0, model.config.levels, x.shape, generator=g)
            xs = torch.where(steps < s, x, noise)
            logp = F.log_softmax(model(xs, cond).float(), 1)
            logp = logp.gather(1, x.unsqueeze(1)).squeeze(1)  # (B, *shape)
            total += torch.where(steps == s, logp, 0.0).flatten(1).sum(1)
        nll = model.nll(x, cond)
    torch.testing.assert_close(-total, nll, atol=1e-3, rtol=1e-5)


def assert_sampling(model, n: int, cond=None) -> torch.Tensor:
    """Shape, dtype and range; the same samples for the same generator seed and for the
    uniforms that seed draws; eval mode inside both loops (plain and cached: no module runs
    in training mode; a cache may read packed weights and call no module at all) and the
    training flag restored."""
    shape, levels = tuple(model.config.shape), model.config.levels
    modes = {True: [], False: []}
    for cache in (False, True):
        seen = modes[cache]
        hooks = [m.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(m.training))
                 for m in model.modules()]
        model.train()
        a = model.sample(n, cond, cache=cache, generator=torch.Generator().manual_seed(3))
        for hook in hooks:
            hook.remove()
        assert model.training and not any(modes[cache])
    assert modes[False]  # the plain loop runs the network
    assert a.shape == (n, *shape) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() < levels
    b = model.sample(n, cond, generator=torch.Generator().manual_seed(3))
    u = torch.rand((n, *shape), generator=torch.Generator().manual_seed(3))
    c = model.sample(n, cond, uniforms=u, progress=True)
    assert torch.equal(a, b) and torch.equal(a, c)
    return a


def assert_sample_follows_inverse_cdf(model, x, u, cond=None) -> None:
    """Each sampled value is the inverse CDF at its uniform of the model's distribution given
    the sample itself (valid because no output depends on its own or later steps)."""
    with torch.no_grad():
        logits = model(x, cond)  # (n, L, *shape)
    want = inverse_cdf(logits.movedim(1, -1), u)
    assert torch.equal(want, x)


def assert_training_lowers_loss(model, x, cond=None, steps: int = 20, lr: float = 3e-3):
    """``steps`` Adam steps on one real batch lower the mean nll (nats / dim) by > 10%."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    dims = x[0].numel()
    losses = []
    for _ in range(steps):
        loss = model.nll(x, cond).mean() / dims
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def assert_bad_inputs(model, uniforms_shape: tuple[int, ...] | None = None) -> None:
    """Clear errors for wrong types, shapes, value ranges, labels and sampling arguments
    (uniforms out of [0, 1) or NaN); the nll of an empty batch is empty; uint8 levels (the
    data sets' dtype) are accepted, up to 255. uniforms_shape: a sample's uniforms, by
    default one per position (``config.shape``)."""
    cfg = model.config
    shape, levels = tuple(cfg.shape), cfg.levels
    u_shape = shape if uniforms_shape is None else tuple(uniforms_shape)
    x = torch.zeros((2, *shape), dtype=torch.int64)
    cond = torch.zeros(2, dtype=torch.int64) if cfg.num_classes else None
    top = torch.full_like(x, min(levels, 256) - 1)
    with torch.no_grad():
        torch.testing.assert_close(model.nll(top.to(torch.uint8), cond), model.nll(top, cond))
    with pytest.raises(TypeError, match="integer levels"):
        model.nll(x.float(), cond)
    with pytest.raises(TypeError, match="integer levels"):
        model(x.tolist(), cond)
    with pytest.raises(ValueError, match="shape"):
        model.nll(x[:, None], cond)
    with pytest.raises(ValueError, match="shape"):
        model.nll(x[..., :-1], cond)
    with pytest.raises(ValueError, match=r"levels in \[0"):
        model.nll(x + levels, cond)
    with pytest.raises(ValueError, match=r"levels in \[0"):
        model.nll(x - 1, cond)
    with pytest.raises(TypeError, match="forward_input"):
        model.forward_input(x, cond)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0, cond)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        model.sample(2, cond, uniforms=torch.rand(3, *u_shape))
    for bad, held in ((1.0, r"values in \[1, 1\]"), (-0.5, r"values in \[-0.5, -0.5\]"),
                      (math.nan, "a NaN")):
        with pytest.raises(ValueError, match=rf"uniforms must lie in \[0.0, 1.0\), got {held}"):
            model.sample(2, cond, uniforms=torch.full((2, *u_shape), bad))
    # an empty batch: (0,) nats, and a backward that runs
    empty = model.nll(x[:0], None if cond is None else cond[:0])
    assert empty.shape == (0,)
    empty.sum().backward()
    if cfg.num_classes:
        with pytest.raises(ValueError, match="labels must be in"):
            model.nll(x, torch.tensor([0, cfg.num_classes]))
        with pytest.raises(ValueError, match="labels must be in"):
            model.sample(2, torch.tensor([-1, 0]))
        with pytest.raises(ValueError, match="is required"):
            model.nll(x)
        with pytest.raises(TypeError, match="int64"):
            model.nll(x, torch.zeros(2))
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            model.nll(x, torch.zeros(3, dtype=torch.int64))
    else:
        with pytest.raises(ValueError, match="unconditional"):
            model.nll(x, torch.zeros(2, dtype=torch.int64))


def real_batch(name: str, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` training examples of a bundled data set: (x int64, labels or None)."""
    train = data.load(name, "train")
    x = train.x[start:start + n].long()
    y = None if train.y is None else train.y[start:start + n]
    return x, y


def assert_mnist_training_lowers_loss(model, n: int = 16) -> None:
    """:func:`assert_training_lowers_loss` in 10 steps at lr 1e-2 on the first ``n`` binarized
    MNIST-5k training images and their labels (``model``: shape (1, 28, 28), 2 levels, 10
    classes)."""
    x, y = real_batch("mnist5k-binary", n)
    assert_training_lowers_loss(model, x, y, steps=10, lr=1e-2)


def assert_digits_training_lowers_loss(model) -> None:
    """On the first 32 digits8x8 training images and their labels (``model``: shape
    (1, 8, 8), 17 levels, 10 classes): the logits are (32, 17, 1, 8, 8), and
    :func:`assert_training_lowers_loss`."""
    x, y = real_batch("digits8x8", 32)
    assert model(x, y).shape == (32, 17, 1, 8, 8)
    assert_training_lowers_loss(model, x, y)


# --------------------------------------------------------------------------- more checks


def all_images(shape: tuple[int, ...], levels: int) -> torch.Tensor:
    """Every integer tensor of ``shape`` with values < levels: (levels ** D, *shape) int64."""
    rows = list(itertools.product(range(levels), repeat=math.prod(shape)))
    return torch.tensor(rows, dtype=torch.int64).view(-1, *shape)


def assert_normalised(model, cond_label: int | None = None, **nll_kw) -> None:
    """exp(-nll) summed over every possible input is 1."""
    cfg = model.config
    x = all_images(tuple(cfg.shape), cfg.levels)
    cond = None if cond_label is None else torch.full((len(x),), cond_label)
    with torch.no_grad():
        logp = -model.nll(x, cond, **nll_kw)
    torch.testing.assert_close(logp.logsumexp(0), torch.zeros(()))


def labels(model, n: int) -> torch.Tensor | None:
    """n class labels for a conditional model (None for an unconditional one)."""
    k = model.config.num_classes
    return torch.tensor([3, 7, 0, 5] * n)[:n] % k if k else None


def cache_batch(model, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n random inputs of ``model`` from a generator seeded with ``seed``, (n, *shape) int64,
    and their :func:`labels`."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.levels, (n, *cfg.shape), generator=g), labels(model, n)


def assert_nll_and_sampling(model, cond=None) -> torch.Tensor:
    """The interface checks above on 3 samples: sampling from a generator or uniforms, nll
    the sum of the steps' log-probabilities, each sample the inverse CDF of its uniform.
    cond: 3 labels, by default :func:`labels`. Returns the samples."""
    cond = labels(model, 3) if cond is None else cond
    x = assert_sampling(model, 3, cond)
    assert_nll_is_sum_of_steps(model, x, cond)
    u = torch.rand((3, *model.config.shape), generator=torch.Generator().manual_seed(3))
    assert_sample_follows_inverse_cdf(model, x, u, cond)
    return x


def assert_bernoulli_output(model) -> None:
    """levels = 2: forward returns the Bernoulli logit l of each variable as (0, l), and
    nll is the Bernoulli negative log-likelihood."""
    shape = tuple(model.config.shape)
    x = torch.randint(0, 2, (2, *shape), generator=torch.Generator().manual_seed(0))
    cond = labels(model, 2)
    logits = model(x, cond)
    assert logits.shape == (2, 2, *shape) and torch.all(logits[:, 0] == 0)
    want = F.binary_cross_entropy_with_logits(logits[:, 1], x.float(), reduction="none")
    torch.testing.assert_close(model.nll(x, cond), want.flatten(1).sum(1))


def assert_backend_matches_reference(model, backend: str) -> None:
    """nll and every parameter gradient under ``backend`` equal the reference's."""
    model.to(DEVICE)
    x = torch.randint(0, model.config.levels, (2, *model.config.shape), device=DEVICE)
    cond = None if labels(model, 2) is None else labels(model, 2).to(DEVICE)

    def run():
        model.zero_grad()
        nll = model.nll(x, cond)
        nll.sum().backward()
        return [nll.detach()] + [p.grad.clone() for p in model.parameters()]

    with artrt.use_backend("reference"):
        want = run()
    with artrt.use_backend(backend):
        got = run()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def assert_cuda_matches_cpu(model, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """On a GPU: nll with the default (kernel) backends equals the CPU reference's, and two
    samples drawn on the GPU are the inverse CDF of their uniforms."""
    want = model.nll(x, cond)
    model.cuda()
    cond = None if cond is None else cond.cuda()
    got = model.nll(x.cuda(), cond)
    torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-4)
    u = torch.rand((2, *model.config.shape), device="cuda")
    c2 = None if cond is None else cond[:2]
    assert_sample_follows_inverse_cdf(model, model.sample(2, c2, uniforms=u), u, c2)


def assert_image_cuda_matches_cpu(model_cls, config_cls, levels: int, **config) -> None:
    """:func:`assert_cuda_matches_cpu` for ``model_cls(config_cls(shape, levels, 10,
    **config))`` on 8 random images with labels 0..7: MNIST's shape (1, 28, 28) for
    levels = 2, CIFAR's (3, 32, 32) otherwise."""
    torch.manual_seed(0)
    shape = (1, 28, 28) if levels == 2 else (3, 32, 32)
    model = model_cls(config_cls(shape, levels, 10, **config))
    x = torch.randint(0, levels, (8, *shape))
    assert_cuda_matches_cpu(model, x, torch.arange(8))


# --------------------------------------------------------------------------- sampling caches


def teacher_forced_logits(cache, x: torch.Tensor) -> torch.Tensor:
    """Push x (B, *shape) step by step through ``cache`` (freshly reset): the logits it gives
    at every position, (B, L, *shape) float32."""
    b, levels = x.shape[0], cache.levels
    xf = x.reshape(b, -1).to(cache.device)
    out = torch.full((b, levels, xf.shape[1]), float("nan"), device=cache.device)
    while not cache.done:
        pos = cache.positions()
        out[:, :, pos] = cache.logits().float()
        cache.push(xf[:, pos])
    return out.view(b, levels, *x.shape[1:])


def assert_cache_matches_forward(model, x: torch.Tensor, cond=None, atol: float = 1e-4,
                                 rtol: float = 1e-4, cache_type: type | None = None) -> None:
    """Teacher forcing x through a fresh cache (of ``cache_type`` where given) gives
    ``model(x, cond)`` at every position; a reset cache gives the same again."""
    model.eval()
    with torch.no_grad():
        want = model(x, cond).float()
        cache = model.new_cache(x.shape[0], cond)
        assert cache_type is None or isinstance(cache, cache_type)
        assert cache.batch_size == x.shape[0] and cache.step == 0 and not cache.done
        got = teacher_forced_logits(cache, x)
        assert cache.done and cache.step == cache.num_steps
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        cache.reset(cond)
        torch.testing.assert_close(teacher_forced_logits(cache, x), got)


def assert_cached_sampling_exact(model, n: int, cond=None) -> torch.Tensor:
    """With the same uniforms the cached and the plain sampler give identical samples; a
    cache object passed in (and reused) gives them again. Returns the samples."""
    shape = tuple(model.config.shape)
    u = torch.rand((n, *shape), generator=torch.Generator().manual_seed(5))
    plain = model.sample(n, cond, cache=False, uniforms=u)
    cached = model.sample(n, cond, uniforms=u)
    assert torch.equal(cached, plain)
    cache = model.new_cache(n, cond)
    for _ in range(2):
        assert torch.equal(model.sample(n, cond, cache=cache, uniforms=u, progress=True), plain)
    return plain


def assert_cache_bad_inputs(model, x: torch.Tensor, cond=None) -> None:
    """Clear errors for a cache of another batch size, device or model, a bad ``cache``
    argument, cond of the wrong shape and bad pushed values; after each the cache is as it
    was (teacher forcing from where it stood still reproduces the forward pass)."""
    import copy

    b = x.shape[0]
    model.eval()
    with torch.no_grad():
        want = model(x, cond).float().reshape(b, model.config.levels, -1)
    cache = model.new_cache(b, cond)
    with pytest.raises(ValueError, match="batch_size"):
        model.sample(b + 1, None if cond is None else torch.cat([cond, cond[:1]]), cache=cache)
    with pytest.raises(ValueError, match="another model"):
        copy.deepcopy(model).sample(b, cond, cache=cache)
    with pytest.raises(TypeError, match="cache must be"):
        model.sample(b, cond, cache="yes")
    other = copy.deepcopy(model)
    other_cache = other.new_cache(b, cond)
    other.to("meta")
    with pytest.raises(ValueError, match="the model on meta"):
        other.sample(b, cond, cache=other_cache)
    with pytest.raises(ValueError, match="batch_size must be"):
        model.new_cache(0, cond)
    xf = x.reshape(b, -1)
    half = cache.num_steps // 2
    with torch.no_grad():
        for _ in range(half):
            cache.push(xf[:, cache.positions()])
        g = cache.positions().numel()
        if model.config.num_classes:
            with pytest.raises(ValueError, match="shape"):
                cache.reset(torch.cat([cond, cond]))
            with pytest.raises(ValueError, match="labels must be in"):
                cache.reset(torch.full_like(cond, model.config.num_classes))
        else:
            with pytest.raises(ValueError, match="unconditional"):
                cache.reset(torch.zeros(b, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"values must have shape"):
            cache.push(torch.zeros((b + 1, g), dtype=torch.int64))
        with pytest.raises(ValueError, match=r"values must have shape"):
            cache.push(torch.zeros((b, g + 1), dtype=torch.int64))
        with pytest.raises(TypeError, match="integer"):
            cache.push(torch.zeros((b, g)))
        with pytest.raises(ValueError, match=r"levels in \[0"):
            cache.push(torch.full((b, g), model.config.levels))
        with pytest.raises(ValueError, match="cache on"):
            cache.push(torch.zeros((b, g), dtype=torch.int64, device="meta"))
        assert cache.step == half
        while not cache.done:
            pos = cache.positions()
            torch.testing.assert_close(cache.logits().float(), want[:, :, pos], atol=1e-4,
                                       rtol=1e-4)
            cache.push(xf[:, pos])
        with pytest.raises(RuntimeError, match="reset"):
            cache.logits()
