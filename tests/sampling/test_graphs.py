"""CUDA graphs of the cached samplers (``model.sample(cache=True, cuda_graph=True)``,
:mod:`artrt.sampling.graphs`).

On the CPU: every model's step code is capturable (run with capture reported active, every
host read and every tensor built from host data raising, it gives the eager samples), the
state hand-over of a replay (the fresh reset copied into the captured tensors) gives the
same samples, the graphs are dropped when the cache changes, and ``cuda_graph`` is ignored
on the CPU. On a GPU (``gpu`` tests): graphed samples equal the eager cached ones, on the
capturing call and on replays with new uniforms and labels.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from artrt.models import MADE, MADEConfig, PixelCNNpp, WaveNet
from artrt.models._common import _KeptCaches
from artrt.sampling.graphs import StepGraphs, cache_state, run_steps
from tests.models.common import labels
from tests.sampling.test_host_reads import MODELS, _in_cpu_backend, _model
from tests.test_capture import HostSync, capture_reported


@contextlib.contextmanager
def capturable(monkeypatch):
    """Capture reported active; host reads raise, and so does building a tensor from host
    data or reading one back (on CUDA a copy that synchronises, not allowed in a capture)."""

    def sync(*args, **kwargs):
        raise HostSync("a host <-> device copy while a CUDA graph is captured")

    reads = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    plain = {name: getattr(torch.Tensor, name) for name in reads}
    with capture_reported(monkeypatch):
        with monkeypatch.context() as m:
            for name in reads:  # the convolutions' cpu backend reads (CPU tensors only)
                refuse = getattr(torch.Tensor, name)
                m.setattr(torch.Tensor, name, lambda *a, _p=plain[name], _r=refuse, **k: (
                    _p(*a, **k) if _in_cpu_backend() else _r(*a, **k)))
            for name in ("tensor", "as_tensor", "from_numpy"):
                m.setattr(torch, name, sync)
            for name in ("cpu", "numpy"):
                m.setattr(torch.Tensor, name, sync)
            yield


def _inputs(model, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *model._uniforms_shape()), generator=g), labels(model, n)


def _run_steps(model, cache, u: torch.Tensor) -> torch.Tensor:
    """The steps of ``model.sample(cache=True)`` on a reset cache, without sample's checks."""
    x = torch.zeros((u.shape[0], *model.shape), dtype=torch.int64)
    if isinstance(model, WaveNet):
        x.copy_(cache._draw(u, cuda_graph=False))
        return x
    run_steps(cache, lambda xs, us: model._cached_step(cache, xs, us), x, u, False, "t", False)
    return x


def test_harness_raises(monkeypatch):
    with capturable(monkeypatch):
        with pytest.raises(HostSync):
            torch.tensor([1, 2])
        with pytest.raises(HostSync):
            torch.ones(2).cpu()


@pytest.mark.parametrize("name", MODELS)
def test_steps_are_capturable(name, monkeypatch):
    """Every step of every model's cached sampler runs with capture reported active and no
    host read nor host-built tensor, and gives the samples of ``sample(cache=True)``."""
    model = _model(name, 0)
    u, cond = _inputs(model)
    want = model.sample(2, cond, uniforms=u)
    with torch.no_grad():
        cache = model.new_cache(2, cond)  # reset: outside the capture, reads at will
        with capturable(monkeypatch):
            got = _run_steps(model, cache, u)
    assert torch.equal(got, want)
    assert cache.done


@pytest.mark.parametrize("name", [n for n in MODELS if not n.startswith("wavenet")])
def test_replay_state_hand_over(name):
    """What a replay does before replaying: the fresh reset's tensors copied into the ones
    captured, which the cache then holds; the steps from there give the samples of a fresh
    cache (run eagerly here: the graphs read and write exactly these tensors)."""
    model = _model(name, 0)
    u1, cond = _inputs(model, seed=1)
    u2, _ = _inputs(model, seed=2)
    cond2 = None if cond is None else cond.flip(0)
    with torch.no_grad():
        cache = model.new_cache(2, cond)
        graphs = StepGraphs(cache)
        graphs.snapshot()
        graphs.graphs = ["captured"]  # as if captured: load() only checks that there are some
        captured = list(graphs.state)
        _run_steps(model, cache, u1)  # the state moves on (in place and rebound)
        cache.reset(cond2)
        assert any(a is not b for a, b in zip(cache_state(cache)[0], captured, strict=True))
        assert graphs.load()
        now = cache_state(cache)[0]
        assert len(now) == len(captured) and all(a is b for a, b in zip(now, captured,
                                                                        strict=True))
        got = _run_steps(model, cache, u2)
    want = model.sample(2, cond2, uniforms=u2, cache=True)
    assert torch.equal(got, want)


def test_graphs_dropped_when_the_cache_changes():
    """load() refuses (so the graphs are captured again) with nothing captured, after a new
    mask set of MADE (a new generation order: other Python values in the steps), and after
    the parameters moved (``double()`` keeps the Parameter objects, not their memory)."""
    torch.manual_seed(0)
    model = MADE(MADEConfig((1, 2, 3), 4, 3, hidden=(12,), num_masks=2, ordering="random"))
    cond = labels(model, 2)
    with torch.no_grad():
        cache = model.new_cache(2, cond)
        graphs = StepGraphs(cache)
        graphs.snapshot()
        assert not graphs.load()
        graphs.graphs = ["captured"]
        cache.reset(cond.flip(0))
        assert graphs.load()  # new labels alone: the same graphs
        model.resample_masks(index=1 - model.mask_index)
        cache.reset(cond)
        assert not graphs.load()
        graphs.snapshot()
        cache.reset(cond)
        assert graphs.load()
        model.float()  # the same dtype: nothing moves
        cache.reset(cond)
        assert graphs.load()
        model.double()
        cache.reset(cond)
        assert not graphs.load()


@pytest.mark.parametrize("name", MODELS)
def test_cuda_graph_argument_on_cpu(name):
    """On the CPU ``cuda_graph=True`` is ignored (the same samples); with ``cache=False``
    it is a ValueError, and a non-bool a TypeError."""
    model = _model(name, 0)
    u, cond = _inputs(model)
    want = model.sample(2, cond, uniforms=u, cuda_graph=False)
    assert torch.equal(model.sample(2, cond, uniforms=u, cuda_graph=True), want)
    assert "_graphed_caches" not in vars(model)  # nothing kept on the CPU
    with pytest.raises(ValueError, match="cuda_graph=True needs the cached sampler"):
        model.sample(2, cond, uniforms=u, cache=False, cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool or None, got str"):
        model.sample(2, cond, uniforms=u, cuda_graph="yes")


def test_kept_caches_are_not_copied():
    model = _model("made", 0)
    model.__dict__["_graphed_caches"] = _KeptCaches({2: object()})
    assert vars(copy.deepcopy(model))["_graphed_caches"] == {}


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_graphed_samples_equal_eager(name):
    """On CUDA: the first graphed call (warm-up, capture, replay) and later ones (replays
    with new uniforms and labels, graphs reused) give the eager cached samples; so does a
    cache object passed in."""
    model = _model(name, 0).cuda()
    n = 2
    for seed in (0, 1, 2):
        u, cond = _inputs(model, n, seed)
        u = u.cuda()
        cond = None if cond is None else (cond.roll(seed) if seed else cond).cuda()
        want = model.sample(n, cond, uniforms=u, cuda_graph=False)
        got = model.sample(n, cond, uniforms=u, cuda_graph=True)
        assert torch.equal(got, want), seed
        kept = vars(model)["_graphed_caches"][n]
        if seed == 0:
            first = kept
            graphs = None if isinstance(model, WaveNet) else list(kept._step_graphs.graphs)
        assert kept is first  # one cache kept per batch size
        if graphs is not None:  # replayed, not captured again
            assert all(a is b for a, b in zip(kept._step_graphs.graphs, graphs, strict=True))
    cache = model.new_cache(n, cond)
    for _ in range(2):
        assert torch.equal(model.sample(n, cond, uniforms=u, cache=cache, cuda_graph=True),
                           want)
    if isinstance(model, PixelCNNpp):  # the params check reads the captured output layer
        with torch.no_grad():
            model.out.bias[0] = float("nan")
        with pytest.raises(ValueError, match="must be finite"):
            model.sample(n, cond, uniforms=u, cuda_graph=True)


@pytest.mark.gpu
def test_graphs_after_a_dtype_change():
    """The model moved to float64 after a graphed call: the kept cache is replaced and the
    samples are the eager float64 ones."""
    model = _model("pixelcnn", 0).cuda()
    u, cond = _inputs(model)
    u, cond = u.cuda(), cond.cuda()
    model.sample(2, cond, uniforms=u, cuda_graph=True)
    model.double()
    want = model.sample(2, cond, uniforms=u, cuda_graph=False)
    assert torch.equal(model.sample(2, cond, uniforms=u, cuda_graph=True), want)
