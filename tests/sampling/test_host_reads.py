"""The cached samplers read no tensor on the host per step (artrt issue 13).

A host read (``.item()``, ``.tolist()``, ``bool(t)``, a value check of ``artrt.ops._checks``)
waits for the device on CUDA. ``model.sample(cache=True)`` checks what the user passes in
(uniforms, labels) once per call; its steps then run the ops through private unchecked entries
(``wavenet_step``, ``dmol_sample``, ``attention_decode``) and push the values the sampler drew
itself without the protocol's check, so the number of host reads of a sample does not grow
with its number of steps. Counted on the CPU by wrapping every Python-level host read of a
tensor, plus indexing with a 0-d or boolean tensor (a read inside aten); the count of a sample
of a model is compared with that of the same model on a larger shape (more steps). The
protocol loop (``logits()`` / ``params()`` and ``push``) reads once per step: the check of the
pushed values, which come from the user.
"""

from __future__ import annotations

import collections
import contextlib
import traceback

import pytest
import torch

from artrt.models import (
    ARRNN,
    MADE,
    ARRNNConfig,
    ARTransformer,
    ARTransformerConfig,
    MADEConfig,
    MultiscalePixelCNN,
    MultiscalePixelCNNConfig,
    PixelCNNpp,
    PixelCNNppConfig,
    WaveNet,
    WaveNetConfig,
)
from artrt.ops import attention_decode
from tests.models.common import labels
from tests.models.test_gated_pixelcnn import small as gated_pixelcnn
from tests.models.test_pixelcnn import small as pixelcnn

_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


def _caller() -> str:
    """file:line (and code) of the innermost frame outside torch, this file and
    artrt/ops/_checks.py (so a value check shows the line that called it)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename
        if "/torch/" not in name and name != __file__ and not name.endswith("_checks.py"):
            return f"{'/'.join(name.split('/')[-2:])}:{frame.lineno} {frame.line}"
    return "?"


# The convolutions' cpu backend runs on CPU tensors only, where a host read waits for no
# device: its finiteness checks (which pick its dense or rectangle path) are not counted.
# The code a GPU runs (triton, cuda) has no such reads.
_CPU_BACKEND_READS = {("masked_conv2d.py", "_live_finite"),
                      ("masked_conv2d.py", "_dense_conv"),
                      ("masked_conv2d.py", "_cpu_backward")}


def _in_cpu_backend() -> bool:
    return any((frame.filename.rsplit("/", 1)[-1], frame.name) in _CPU_BACKEND_READS
               for frame in traceback.extract_stack())


def _hidden_read(index) -> bool:
    """Indexing with a 0-d integer tensor (read as an int) or a bool mask (nonzero) reads
    the tensor on the host inside aten."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and (p.dim() == 0 or p.dtype == torch.bool)
               for p in parts)


@contextlib.contextmanager
def count_host_reads():
    """Inside: every host read of a tensor is recorded in the yielded Counter (by caller)."""
    reads: collections.Counter = collections.Counter()
    mp = pytest.MonkeyPatch()

    def counted(name, orig):
        def f(*args, **kwargs):
            if not _in_cpu_backend():
                reads[f"{name} at {_caller()}"] += 1
            return orig(*args, **kwargs)
        return f

    def indexing(name, orig):
        def f(self, index, *rest):
            if _hidden_read(index):
                reads[f"{name} at {_caller()}"] += 1
            return orig(self, index, *rest)
        return f

    try:
        for name in _METHODS:
            mp.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
        for name in ("__getitem__", "__setitem__"):
            mp.setattr(torch.Tensor, name, indexing(name, getattr(torch.Tensor, name)))
        mp.setattr(torch.Tensor, "nonzero", counted("nonzero", torch.Tensor.nonzero))
        for name in ("equal", "nonzero", "masked_select"):
            mp.setattr(torch, name, counted(name, getattr(torch, name)))
        yield reads
    finally:
        mp.undo()


def test_counter_sees_reads():
    t = torch.arange(4)
    with count_host_reads() as reads:
        t.max().item()
        bool(t.sum())
        t.tolist()
        _ = t[t > 1]
        _ = t[torch.tensor(1)]
        _ = t[1:3] + t[torch.tensor([0, 1])]  # plain and advanced indexing: no read
    assert sum(reads.values()) == 5, reads
    t.tolist()
    assert sum(reads.values()) == 5  # nothing recorded outside the context


# name -> (small shape, larger shape: more steps, model of a shape); all class-conditional
# (3 classes), so the labels' path runs too.
def _wavenet(shape):
    return WaveNet(WaveNetConfig(shape, 8, 3, layers=3, dilation_cycle=2, res_channels=4,
                                 gate_channels=4, skip_channels=6, cond_channels=3))


def _pixelcnnpp(shape):
    return PixelCNNpp(PixelCNNppConfig(shape, 16, 3, channels=4, blocks=1, stages=2,
                                       num_mix=2, dropout=0.0))


def _transformer(shape):
    return ARTransformer(ARTransformerConfig(shape, 5, 3, ordering="zigzag", dim=8, heads=2,
                                             layers=2, mlp_ratio=2))


MODELS = {
    "wavenet": ((1, 6), (1, 14), _wavenet),
    "wavenet-image": ((3, 2, 2), (3, 2, 4), _wavenet),
    "pixelcnnpp": ((3, 2, 3), (3, 4, 4), _pixelcnnpp),
    "pixelcnnpp-grey": ((1, 3, 3), (1, 4, 5), _pixelcnnpp),
    "transformer": ((1, 2, 3), (3, 3, 3), _transformer),
    "pixelcnn": ((3, 2, 2), (3, 3, 4), lambda s: pixelcnn(s, 4, 3)),
    "gated_pixelcnn": ((1, 3, 3), (1, 4, 5), lambda s: gated_pixelcnn(s, 4, 3)),
    "made": ((1, 2, 3), (2, 3, 3), lambda s: MADE(MADEConfig(s, 4, 3, hidden=(12,)))),
    "arrnn": ((1, 2, 3), (1, 4, 4), lambda s: ARRNN(ARRNNConfig(s, 4, 3, hidden=8))),
    "multiscale": ((1, 4, 4), (1, 8, 8), lambda s: MultiscalePixelCNN(MultiscalePixelCNNConfig(
        s, 4, 3, scales=1, base_channels=6, base_layers=1, channels=8, layers=1))),
}


def _model(name: str, which: int):
    torch.manual_seed(0)
    return MODELS[name][2](MODELS[name][which]).eval()


def _sample_reads(model, n: int = 2) -> tuple[int, collections.Counter]:
    """(steps, host reads) of ``model.sample(n, labels, uniforms=u, cache=cache)`` with a
    cache built before (its construction reads at will, once)."""
    u = torch.rand((n, *model._uniforms_shape()), generator=torch.Generator().manual_seed(0))
    cond = labels(model, n)
    cache = model.new_cache(n, cond)
    with count_host_reads() as reads:
        x = model.sample(n, cond, uniforms=u, cache=cache)
    assert x.shape == (n, *model.shape) and cache.done
    return cache.num_steps, reads


@pytest.mark.parametrize("name", MODELS)
def test_sample_reads_do_not_grow_with_steps(name):
    """A sample's host reads are those of its checks (uniforms, labels, the cache's reset,
    PixelCNN++'s params once): a model with more steps reads exactly as often (zero reads
    per step), and a few times in all."""
    steps_small, small = _sample_reads(_model(name, 0))
    steps_large, large = _sample_reads(_model(name, 1))
    assert steps_large > steps_small > 1
    per_step = (large - small) + (small - large)  # the reads that differ, by caller
    assert not per_step, (f"{sum(large.values()) - sum(small.values())} more host reads for "
                          f"{steps_large - steps_small} more steps: {dict(per_step)}")
    assert sum(small.values()) <= 8, dict(small)  # PixelCNN's reset reads its 1x1 masks


@pytest.mark.parametrize("name", MODELS)
def test_protocol_reads_once_per_step(name):
    """The protocol loop (by the user's hand): each push checks its values with one host read,
    nothing else in a step reads."""
    model = _model(name, 0)
    n = 2
    x = torch.randint(0, model.config.levels, (n, *model.shape),
                      generator=torch.Generator().manual_seed(1))
    xf = x.reshape(n, -1)
    with torch.no_grad():
        cache = model.new_cache(n, labels(model, n))
        steps = 0
        with count_host_reads() as reads:
            while not cache.done:
                pos = cache.positions()
                if isinstance(model, PixelCNNpp):
                    cache.params()
                else:
                    cache.logits()
                cache.push(xf[:, pos])
                steps += 1
    assert steps == cache.num_steps > 1
    assert sum(reads.values()) == steps, dict(reads)


def test_sampler_still_checks_user_values():
    """The values a user passes in are checked once, up front, with the errors of before."""
    model = _model("wavenet", 0)
    bad = torch.full((2, *model._uniforms_shape()), 1.0)
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0.0, 1.0\)"):
        model.sample(2, labels(model, 2), uniforms=bad)
    cache = model.new_cache(2, labels(model, 2))
    with pytest.raises(ValueError, match=r"WaveNetCache.draw: u must lie in \[0.0, 1.0\), "
                                         r"got a NaN"):
        cache.draw(torch.full((2, *model.shape), float("nan")))
    with pytest.raises(ValueError, match="labels must be in"):
        model.sample(2, torch.tensor([0, 3]))
    pp = _model("pixelcnnpp", 0)
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0.0, 1.0\), got a NaN"):
        pp.sample(2, labels(pp, 2), uniforms=torch.full((2, *pp._uniforms_shape()), float("nan")))
    cache = pp.new_cache(2, labels(pp, 2))
    with pytest.raises(ValueError, match=r"values must be levels in \[0, 16\)"):
        cache.push(torch.full((2, 3), 16))


def test_pixelcnnpp_sample_rejects_non_finite_params():
    """dmol_sample refuses non-finite params (the clamp would hide a NaN in a level); the
    cached sampler checks them once, over the whole image, after the steps."""
    model = _model("pixelcnnpp", 0)
    with torch.no_grad():
        model.out.bias[0] = float("nan")
    for cache in (True, False):
        with pytest.raises(ValueError, match="must be finite, got a NaN"):
            model.sample(2, labels(model, 2), cache=cache)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_attention_decode_with_host_lengths(backend):
    """attention_decode's private ``_lengths`` (cache_seqlens as the caller keeps it on the
    host): the same output and caches as the public call, no host read, and the length
    checks still run, on the host numbers."""
    g = torch.Generator().manual_seed(0)
    b, h, t_max, d = 3, 2, 6, 4
    q, k_new, v_new = (torch.randn(b, h, 1, d, generator=g) for _ in range(3))
    caches = [torch.randn(b, h, t_max, d, generator=g) for _ in range(2)]
    seqlens = torch.tensor([2, 4, 0], dtype=torch.int32)
    want_k, want_v = (c.clone() for c in caches)
    want = attention_decode(q, want_k, want_v, seqlens, k_new, v_new, backend=backend)
    k, v = (c.clone() for c in caches)
    with count_host_reads() as reads:
        got = attention_decode(q, k, v, seqlens, k_new, v_new, backend=backend,
                               _lengths=[2, 4, 0])
    assert not reads, dict(reads)
    torch.testing.assert_close(got, want)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)
    with pytest.raises(ValueError, match=r"cache overflow: cache_seqlens \+ T_new = 6 \+ 1"):
        attention_decode(q, k, v, seqlens, k_new, v_new, backend=backend, _lengths=[2, 6, 0])
    with pytest.raises(ValueError, match="cache_seqlens must be >= 0, got -1"):
        attention_decode(q, k, v, seqlens, k_new, v_new, backend=backend, _lengths=[2, -1, 0])
    with pytest.raises(ValueError, match="_lengths must be 3 ints"):
        attention_decode(q, k, v, seqlens, k_new, v_new, backend=backend, _lengths=[2, 4])
    assert torch.equal(k, want_k) and torch.equal(v, want_v)  # nothing written on an error
