"""artrt.sampling.multiscale.MultiscalePixelCNNCache: teacher forcing equals the forward pass
(grey and colour, several scales, no scale at all, class-conditional), cached sampling equals
the plain loop (one full forward pass per sub-pixel) exactly, each step runs one pass of one
network (the base PixelCNN for a base sub-pixel, one scale's group network for one (group,
channel) of a scale, all of its positions at once), bad input."""

from __future__ import annotations

import math

import pytest
import torch

from artrt.models.multiscale import MultiscalePixelCNN, MultiscalePixelCNNConfig
from artrt.sampling.multiscale import MultiscalePixelCNNCache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    cache_batch,
    labels,
)

SMALL = {"base_channels": 6, "base_layers": 1, "channels": 8, "layers": 1}
CONFIGS = [((1, 8, 8), 5, 0, 2), ((3, 4, 4), 4, 3, 1), ((2, 4, 8), 3, 0, 2), ((1, 3, 3), 4, 0, 0)]


def small(shape, levels, num_classes, scales) -> MultiscalePixelCNN:
    torch.manual_seed(0)
    return MultiscalePixelCNN(MultiscalePixelCNNConfig(shape, levels, num_classes,
                                                       scales=scales, **SMALL))


@pytest.mark.parametrize("shape,levels,num_classes,scales", CONFIGS)
def test_cache_matches_forward(shape, levels, num_classes, scales):
    model = small(shape, levels, num_classes, scales)
    assert_cache_matches_forward(model, *cache_batch(model, 3), cache_type=MultiscalePixelCNNCache)


@pytest.mark.parametrize("shape,levels,num_classes,scales", CONFIGS)
def test_cached_sampling_exact(shape, levels, num_classes, scales):
    model = small(shape, levels, num_classes, scales)
    assert_cached_sampling_exact(model, 3, labels(model, 3))


@pytest.mark.parametrize("shape,scales", [((1, 8, 8), 2), ((3, 4, 8), 1)])
def test_one_pass_of_one_network_per_step(shape, scales):
    """Base steps call the base PixelCNN once, with one position; group steps call only
    their scale's network once, for one step id and the batch, with G = the coarse grid;
    the whole forward pass never runs. The plain loop runs it once per sub-pixel."""
    model = small(shape, 4, 2, scales).eval()
    c, h, w = shape
    x, cond = cache_batch(model, 2)
    calls = []
    hooks = [model.register_forward_pre_hook(lambda m, a: calls.append(("full", 0)))]
    hooks.append(model.base.register_forward_pre_hook(lambda m, a: calls.append(("base", 0))))
    for k, net in enumerate(model.upsamplers, 1):
        hooks.append(net.register_forward_pre_hook(
            lambda m, a, k=k: calls.append((k, tuple(a[1].tolist())))))
    base_steps = c * math.prod(model.base_size)
    with torch.no_grad():
        cache = model.new_cache(2, cond)
        xf = x.reshape(2, -1)
        while not cache.done:
            s, pos = cache.step, cache.positions()
            calls.clear()
            assert cache.logits().shape == (2, 4, pos.numel())
            cache.logits()  # no recomputation
            if s < base_steps:
                assert calls == [("base", 0)] and pos.numel() == 1
            else:
                k, q = divmod(s - base_steps, 3 * c)
                k += 1  # scale 1 .. S
                assert calls == [(k, (q, q))]
                assert pos.numel() == (h >> (scales - k)) * (w >> (scales - k)) // 4
            cache.push(xf[:, pos])
    assert cache.num_steps == model.passes
    calls.clear()
    model.sample(1, cond[:1], cache=False)
    for hook in hooks:
        hook.remove()
    assert calls.count(("full", 0)) == c * h * w


@pytest.mark.parametrize("num_classes", [0, 4])
def test_cache_bad_inputs(num_classes):
    model = small((1, 4, 4), 5, num_classes, 1)
    x, cond = cache_batch(model, 2)
    assert_cache_bad_inputs(model, x, cond)
