"""artrt.sampling.WaveNetCache: teacher forcing reproduces the forward pass, cached sampling
equals the plain loop exactly, clear errors; for a sequence WaveNet, an image WaveNet with
the positional encoding and class-conditional ones; ring buffers sized by the dilations;
the op-driven sampler equals the protocol loop; on a GPU the CUDA-graph sampler equals the
reference cached sampler."""

from __future__ import annotations

import copy

import pytest
import torch

import artrt
from artrt.models._common import DiscreteARModel, inverse_cdf
from artrt.models.wavenet import WaveNet, WaveNetConfig
from artrt.sampling.wavenet import WaveNetCache
from tests.helpers import kernel_backends
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
)

SMALL = {"res_channels": 8, "gate_channels": 8, "skip_channels": 12, "cond_channels": 4}

# name -> (shape, levels, num_classes, layers, dilation_cycle): dilations up to 8
CASES = {
    "sequence": ((1, 40), 16, 0, 5, 4),
    "image-positional": ((1, 4, 5), 16, 0, 4, 4),
    "sequence-class": ((2, 9), 16, 3, 5, 4),
    "image-positional-class": ((3, 2, 3), 8, 4, 4, 3),
}


def _model(name: str, seed: int = 0, **kw) -> WaveNet:
    shape, levels, classes, layers, cycle = CASES[name]
    torch.manual_seed(seed)
    model = WaveNet(WaveNetConfig(shape, levels, classes, layers=layers, dilation_cycle=cycle,
                                  **{**SMALL, **kw}))
    with torch.no_grad():
        model.start.fill_(-0.2)
    return model


def _data(model, n=3):
    x = torch.randint(0, model.config.levels, (n, *model.config.shape),
                      generator=torch.Generator().manual_seed(1))
    k = model.config.num_classes
    cond = torch.tensor([2, 0, 1, 3][:n]) % k if k else None
    return x, cond


@pytest.mark.parametrize("name", list(CASES))
def test_cache_matches_forward(name):
    model = _model(name)
    x, cond = _data(model)
    assert_cache_matches_forward(model, x, cond)


@pytest.mark.parametrize("name", list(CASES))
def test_cached_sampling_exact(name):
    model = _model(name)
    _, cond = _data(model)
    assert_cached_sampling_exact(model, 3, cond)


@pytest.mark.parametrize("name", ["sequence", "image-positional-class"])
def test_cache_bad_inputs(name):
    model = _model(name)
    x, cond = _data(model, 2)
    assert_cache_bad_inputs(model, x, cond)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_ring_buffers_sized_by_dilation(kernel_size):
    model = _model("sequence", kernel_size=kernel_size)
    cache = model.new_cache(3)
    rings = cache.rings()
    k1 = kernel_size - 1
    assert rings[0].shape == (3, k1)
    assert [tuple(r.shape) for r in rings[1:]] == [(3, k1 * d, 8) for d in (1, 2, 4, 8, 1)]
    assert cache.state.shape == (3, k1 * (1 + 8 * 16))
    assert cache.state.shape[1] < model.receptive_field * 8  # not the receptive field
    assert cache.num_steps == 40
    x, _ = _data(model)
    assert_cache_matches_forward(model, x)


def test_ring_holds_dilated_past():
    """After t steps, layer l's ring slot (t-1) mod d holds that layer's input at t-1: for
    the first layer this is the input convolution of the shifted sequence."""
    model = _model("sequence").eval()
    x, _ = _data(model)
    cache = model.new_cache(3)
    xs = x.reshape(3, -1)
    for t in range(6):
        cache.push(xs[:, t:t + 1])
    with torch.no_grad():
        v = torch.cat([model.start.expand(3, 1, 1), artrt.data.to_input(xs, 16)[:, None]], -1)
        h = model.input(v[:, :, :40])  # (B, R, T): layer 0's input
    ring0 = cache.rings()[1]  # dilation 1: one slot
    torch.testing.assert_close(ring0[:, 0], h[:, :, 6], atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.rings()[0][:, 0], v[:, 0, 6])  # the input ring


def test_protocol_sampling_equals_draw():
    """The protocol loop (logits, inverse_cdf, push) and the op-driven draw agree."""
    model = _model("image-positional-class").eval()
    _, cond = _data(model)
    u = torch.rand((3, *model.config.shape), generator=torch.Generator().manual_seed(9))
    x = torch.zeros((3, *model.config.shape), dtype=torch.int64)
    cache = model.new_cache(3, cond)
    with torch.no_grad():
        DiscreteARModel._draw_cached(model, cache, x, u, False, "protocol")
        cache.reset(cond)
        drawn = cache.draw(u)
    assert torch.equal(drawn, x)
    assert cache.done
    with pytest.raises(RuntimeError, match="reset"):
        cache.logits()
    cache.reset(cond)  # usable again through the protocol
    assert cache.step == 0 and cache.logits().shape == (3, 8, 1)


def test_reset_with_new_labels_and_new_weights():
    model = _model("sequence-class").eval()
    x, cond = _data(model)
    cache = model.new_cache(3, cond)
    other = torch.tensor([1, 1, 0])
    with torch.no_grad():
        model.blocks[1].conv.weight.mul_(1.5)  # packed again at reset
        cache.reset(other)
        want = model(x, other).reshape(3, 16, -1)
    xs = x.reshape(3, -1)[:, model.generation_steps().reshape(-1).argsort()]
    got = []
    while not cache.done:
        got.append(cache.logits())
        cache.push(xs[:, cache.step:cache.step + 1])
    got = torch.cat(got, -1)[:, :, model.generation_steps().reshape(-1)]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_draw_and_cache_arguments():
    model = _model("sequence")
    cache = model.new_cache(2, cuda_graph=False)
    assert isinstance(cache, WaveNetCache) and not cache.cuda_graph
    with pytest.raises(ValueError, match="u must be a float32 tensor of shape"):
        cache.draw(torch.rand(2, 1, 39))
    with pytest.raises(ValueError, match="u must be a float32 tensor of shape"):
        cache.draw(torch.rand(2, 1, 40).double())
    with pytest.raises(ValueError, match="cache on cpu"):
        cache.draw(torch.rand(2, 1, 40, device="meta"))
    with pytest.raises(ValueError, match="graph_steps"):
        WaveNetCache(model, 2, graph_steps=0)
    u = torch.rand(2, 1, 40)
    assert torch.equal(cache.draw(u), inverse_cdf_samples(model, u))


def inverse_cdf_samples(model, u):
    """The plain loop's samples for uniforms u."""
    return model.sample(u.shape[0], cache=False, uniforms=u)


def test_sampling_follows_reference_backend():
    model = _model("image-positional")
    u = torch.rand((2, *model.config.shape), generator=torch.Generator().manual_seed(4))
    with artrt.use_backend("reference"):
        a = model.sample(2, uniforms=u)
    assert torch.equal(a, model.sample(2, uniforms=u))
    with torch.no_grad():
        logits = model(a)
    assert torch.equal(inverse_cdf(logits.movedim(1, -1), u), a)


@pytest.mark.parametrize("name", ["sequence", "image-positional-class"])
def test_sampling_under_forced_triton(name):
    """Every op of cached sampling has a Triton backend: under ``use_backend("triton")`` the
    sampler runs (on CPU under the interpreter) and its samples follow the model's logits."""
    if "triton" not in kernel_backends("cpu"):
        pytest.skip("the Triton interpreter is off (TRITON_INTERPRET unset)")
    model = _model(name)
    _, cond = _data(model, 2)
    u = torch.rand((2, *model.config.shape), generator=torch.Generator().manual_seed(4))
    with artrt.use_backend("triton"):
        got = model.sample(2, cond, uniforms=u)
    with artrt.use_backend("reference"):
        want = model.sample(2, cond, uniforms=u)
    _assert_equal_or_near_tie(got, want, model, cond, u, eps=1e-5)


# --------------------------------------------------------------------------- GPU


def _assert_equal_or_near_tie(a, b, model, cond, u, eps=1e-3):
    """a and b (B, *shape), sampled from the same uniforms u, are equal, or each sequence
    first differs at a near tie: a position where u lies within eps of every CDF boundary
    between the two levels (two correct samplers that round differently may split there;
    everything after it then differs, as the contexts differ). The CDF is that of the
    float64 CPU model given a, whose prefix before that position b shares."""
    order = model.generation_steps().reshape(-1).argsort()
    sa, sb = a.reshape(a.shape[0], -1)[:, order], b.reshape(b.shape[0], -1)[:, order]
    rows = (sa != sb).any(1).nonzero().flatten().tolist()
    if not rows:
        return
    ref = copy.deepcopy(model).cpu().double()
    with torch.no_grad():
        logits = ref(a.cpu(), None if cond is None else cond.cpu())
    cdf = logits.reshape(a.shape[0], model.config.levels, -1)[:, :, order].softmax(1)
    cdf = cdf.cumsum(1)
    us = u.reshape(u.shape[0], -1)[:, order].cpu().double()
    for i in rows:
        p = int((sa[i] != sb[i]).nonzero()[0])
        lo, hi = sorted((int(sa[i, p]), int(sb[i, p])))
        gap = (cdf[i, lo:hi, p] - us[i, p]).abs().max().item()
        assert gap <= eps, (f"sequence {i} first differs at step {p} ({lo} vs {hi}), "
                            f"not a near tie: |cdf - u| up to {gap:.3g}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sequence", "image-positional-class"])
def test_cuda_graph_sampling_matches_reference(name, monkeypatch):
    """CUDA graphs (several replays, a partial last one) give the samples of the step-by-step
    kernel launches exactly (the same kernel on the same inputs); the reference cached
    sampler and the plain loop (fp32, other summation orders) give them too, up to a split
    at a near tie of the CDF."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the plain loop's convs
    model = _model(name, res_channels=32, gate_channels=32, skip_channels=128,
                   cond_channels=16).cuda()
    _, cond = _data(model)
    cond = None if cond is None else cond.cuda()
    u = torch.rand((3, *model.config.shape), device="cuda",
                   generator=torch.Generator("cuda").manual_seed(2))
    graphed = model.new_cache(3, cond)
    graphed.graph_steps = 7  # the length is not a multiple: the last replay runs past it
    assert graphed._graph_ready()
    a = model.sample(3, cond, cache=graphed, uniforms=u)
    b = model.sample(3, cond, cache=graphed, uniforms=u)  # replayed graph, reused buffers
    plain_launches = model.sample(3, cond, cache=model.new_cache(3, cond, cuda_graph=False),
                                  uniforms=u)
    with artrt.use_backend("reference"):
        ref = model.sample(3, cond, uniforms=u)
    assert torch.equal(a, b) and torch.equal(a, plain_launches)
    _assert_equal_or_near_tie(a, ref, model, cond, u)
    _assert_equal_or_near_tie(a, model.sample(3, cond, uniforms=u, cache=False), model, cond,
                              u)


@pytest.mark.gpu
def test_cuda_cache_protocol_matches_forward(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 forward to compare
    model = _model("image-positional-class").cuda()
    x, cond = _data(model)
    assert_cache_matches_forward(model, x.cuda(), cond.cuda())
