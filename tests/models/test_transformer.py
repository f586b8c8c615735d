"""artrt.models.ARTransformer: the autoregressive property through the Jacobian in every
ordering (pixels and sub-pixels), nll equal to the per-step log-probabilities of the sampling
order, sampling from a generator or given uniforms, training on real data, bad input.

The ``assert_*`` helpers here are shared with the WaveNet and multiscale model tests.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from artrt import data
from artrt.models.transformer import ARTransformer, ARTransformerConfig, inverse_cdf

# --------------------------------------------------------------------------- shared checks


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one CPU thread is much faster than several on a shared, loaded
    machine (intra-op threads of small convolutions spin against each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    uniforms that seed draws; eval mode inside the loop and the training flag restored."""
    shape, levels = tuple(model.config.shape), model.config.levels
    modes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: modes.append(m.training))
             for m in model.modules()]
    model.train()
    a = model.sample(n, cond, generator=torch.Generator().manual_seed(3))
    for hook in hooks:
        hook.remove()
    assert model.training and modes and not any(modes)
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


def assert_bad_inputs(model) -> None:
    """Clear errors for wrong types, shapes, value ranges, labels and sampling arguments;
    uint8 levels (the data sets' dtype) are accepted, up to 255."""
    cfg = model.config
    shape, levels = tuple(cfg.shape), cfg.levels
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
        model.sample(2, cond, uniforms=torch.rand(3, *shape))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        model.sample(2, cond, uniforms=torch.ones(2, *shape))
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


# --------------------------------------------------------------------------- ARTransformer

SMALL = {"dim": 32, "heads": 2, "layers": 2}


@pytest.mark.parametrize("ordering", ["raster", "zigzag", "random"])
@pytest.mark.parametrize("shape,levels,num_classes", [((1, 4, 5), 5, 0), ((3, 3, 3), 4, 3)])
def test_autoregressive(ordering, shape, levels, num_classes):
    torch.manual_seed(0)
    model = ARTransformer(ARTransformerConfig(shape, levels, num_classes, ordering=ordering,
                                              **SMALL))
    cond = torch.tensor([1]) if num_classes else None
    assert_autoregressive(model, cond)


@pytest.mark.parametrize("ordering", ["zigzag", "random"])
def test_ordering_ranks(ordering):
    model = ARTransformer(ARTransformerConfig((2, 3, 4), 4, ordering=ordering, order_seed=5,
                                              **SMALL))
    steps = model.generation_steps()  # (C, H, W)
    assert sorted(steps.reshape(-1).tolist()) == list(range(24))
    assert torch.equal(steps[1], steps[0] + 1)  # channels of a pixel follow one another
    if ordering == "zigzag":
        assert steps[0, 1].tolist() == [14, 12, 10, 8]  # second row right to left
    same = ARTransformer(ARTransformerConfig((2, 3, 4), 4, ordering=ordering, order_seed=5,
                                             **SMALL))
    assert torch.equal(same.generation_steps(), steps)


@pytest.mark.parametrize("ordering,shape,levels,num_classes",
                         [("zigzag", (1, 4, 4), 17, 10), ("random", (3, 3, 3), 6, 0)])
def test_nll_and_sampling(ordering, shape, levels, num_classes):
    torch.manual_seed(0)
    model = ARTransformer(ARTransformerConfig(shape, levels, num_classes, ordering=ordering,
                                              **SMALL))
    cond = torch.tensor([3, 7, 0]) if num_classes else None
    x = assert_sampling(model, 3, cond)
    assert_nll_is_sum_of_steps(model, x, cond)
    u = torch.rand((3, *shape), generator=torch.Generator().manual_seed(3))
    assert_sample_follows_inverse_cdf(model, x, u, cond)
    assert model.nll(x, cond).shape == (3,)


def test_training_lowers_loss():
    x, y = real_batch("digits8x8", 32)
    model = ARTransformer(ARTransformerConfig((1, 8, 8), 17, 10, ordering="zigzag", **SMALL))
    assert model(x, y).shape == (32, 17, 1, 8, 8)
    assert_training_lowers_loss(model, x, y)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    assert_bad_inputs(ARTransformer(ARTransformerConfig((1, 3, 3), 4, num_classes, **SMALL)))


def test_bad_config():
    with pytest.raises(ValueError, match="ordering"):
        ARTransformer(ARTransformerConfig(ordering="spiral"))
    with pytest.raises(ValueError, match="shape"):
        ARTransformer(ARTransformerConfig(shape=(8, 8)))
    with pytest.raises(ValueError, match="levels"):
        ARTransformer(ARTransformerConfig(levels=1))
    with pytest.raises(ValueError, match="multiple of heads"):
        ARTransformer(ARTransformerConfig(dim=30, heads=4))
