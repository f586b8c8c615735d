"""artrt.sampling.made.MADECache: teacher forcing equals the forward pass under every mask set
(raster and random orderings, Bernoulli and categorical output, class-conditional), cached
sampling equals the plain loop exactly, the cache follows the mask set current at reset, the
first layer is updated one input column per step (never recomputed in full), bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from artrt.data import to_input
from artrt.models.made import MADE, MADEConfig
from artrt.sampling.made import MADECache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    cache_batch,
    labels,
)

CONFIGS = [((1, 3, 4), 2, 0, (24,)), ((3, 2, 2), 5, 3, (20, 16)), ((2, 5), 17, 0, (32, 8))]


def small(shape, levels, num_classes, hidden, **kw) -> MADE:
    torch.manual_seed(0)
    return MADE(MADEConfig(shape, levels, num_classes, hidden=hidden, **kw))


@pytest.mark.parametrize("ordering", ["raster", "random"])
@pytest.mark.parametrize("shape,levels,num_classes,hidden", CONFIGS)
def test_cache_matches_forward(shape, levels, num_classes, hidden, ordering):
    model = small(shape, levels, num_classes, hidden, num_masks=3, ordering=ordering)
    x, cond = cache_batch(model, 3)
    for index in (0, 2):
        model.resample_masks(index=index)
        cache = model.new_cache(3, cond)
        assert isinstance(cache, MADECache) and cache.mask_index == index
        assert_cache_matches_forward(model, x, cond)


@pytest.mark.parametrize("ordering", ["raster", "random"])
@pytest.mark.parametrize("shape,levels,num_classes,hidden", CONFIGS)
def test_cached_sampling_exact(shape, levels, num_classes, hidden, ordering):
    model = small(shape, levels, num_classes, hidden, num_masks=3, ordering=ordering)
    for index in (1, 2):
        model.resample_masks(index=index)
        assert_cached_sampling_exact(model, 4, labels(model, 4))


def test_cache_follows_the_mask_set_at_reset():
    """A cache built under mask set 0 and reset after ``resample_masks(index=1)`` draws in
    mask set 1's ordering and gives the plain loop's samples under it."""
    model = small((1, 3, 3), 4, 0, (24,), num_masks=2, ordering="random")
    order0 = model.generation_steps().reshape(-1).argsort()
    cache = model.new_cache(3)
    assert torch.equal(cache.positions(), order0[:1])
    model.resample_masks(index=1)
    order1 = model.generation_steps().reshape(-1).argsort()
    assert not torch.equal(order0, order1)
    u = torch.rand((3, 1, 3, 3), generator=torch.Generator().manual_seed(2))
    got = model.sample(3, cache=cache, uniforms=u)
    assert cache.mask_index == 1
    assert torch.equal(got, model.sample(3, cache=False, uniforms=u))
    cache.reset()
    seen = []
    while not cache.done:
        seen.append(cache.positions())
        cache.push(torch.zeros((3, 1), dtype=torch.int64))
    assert torch.equal(torch.cat(seen), order1)


def test_first_layer_is_incremental(monkeypatch):
    """After the reset, no linear map takes the whole (H1, D) first-layer weight: each push
    adds one column, and the logits come from K output rows only. The accumulated
    pre-activation equals the first layer of the input filled so far."""
    shape, hidden, levels = (1, 3, 5), (40, 24), 3
    model = small(shape, levels, 2, hidden, num_masks=2, ordering="random").eval()
    model.resample_masks(index=1)
    d = 15
    x, cond = cache_batch(model, 2)
    weights = []
    linear = F.linear

    def recording_linear(inp, weight, bias=None):
        weights.append(tuple(weight.shape))
        return linear(inp, weight, bias)

    with torch.no_grad():
        cache = model.new_cache(2, cond)
        monkeypatch.setattr(F, "linear", recording_linear)
        first = model.layers[0]
        v = to_input(torch.zeros_like(x), levels).reshape(2, d)
        xf = x.reshape(2, d)
        for _ in range(d):
            want = linear(v, first.weight * first.mask, first.bias)
            torch.testing.assert_close(cache.acc, want, atol=1e-5, rtol=1e-5)
            pos = cache.positions()
            cache.logits()
            cache.push(xf[:, pos])
            v[:, pos] = to_input(xf[:, pos], levels)
    assert (hidden[0], d) not in weights
    assert weights.count((hidden[1], hidden[0])) == d  # the later layer: once per step
    assert weights.count((levels, hidden[1])) == d  # the output rows of one variable


@pytest.mark.parametrize("num_classes", [0, 4])
def test_cache_bad_inputs(num_classes):
    model = small((1, 3, 3), 4, num_classes, (16,), num_masks=2)
    x, cond = cache_batch(model, 2)
    assert_cache_bad_inputs(model, x, cond)
