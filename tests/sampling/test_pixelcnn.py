"""artrt.sampling.PixelCNNCache: teacher forcing through the cache equals the full forward
pass at every position (binary, grey, RGB, class-conditional, odd kernels and images
smaller than the kernel, float64), cached sampling equals plain sampling exactly, weights are
read at every step, bad input leaves the cache as it was, and a step's work does not grow with
the image (one pixel's work, the same FLOPs per step on a larger image)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from artrt.models.pixelcnn import PixelCNN, PixelCNNConfig
from artrt.sampling.pixelcnn import PixelCNNCache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    labels,
    teacher_forced_logits,
)


def small(shape=(1, 5, 6), levels=2, num_classes=0, **kw) -> PixelCNN:
    torch.manual_seed(0)
    c = shape[0]
    kw = {"channels": 12 * c, "blocks": 2, "head_channels": 8 * c, **kw}
    return PixelCNN(PixelCNNConfig(shape, levels, num_classes, **kw))


def data(model, n: int = 3, seed: int = 1) -> torch.Tensor:
    cfg = model.config
    return torch.randint(0, cfg.levels, (n, *cfg.shape),
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape,levels,num_classes,kw", [
    ((1, 5, 6), 2, 0, {}),
    ((1, 4, 5), 17, 0, {"kernel_size": 3, "block_kernel_size": 5}),
    ((3, 3, 4), 4, 0, {}),
    ((3, 3, 4), 5, 3, {"block_kernel_size": 1}),
    ((1, 5, 6), 2, 10, {"blocks": 0}),
    ((3, 1, 5), 3, 0, {"kernel_size": 5}),
    ((1, 6, 1), 2, 0, {}),
])
def test_cache_matches_forward(shape, levels, num_classes, kw):
    model = small(shape, levels, num_classes, **kw)
    assert isinstance(model.new_cache(2, labels(model, 2)), PixelCNNCache)
    assert_cache_matches_forward(model, data(model), labels(model, 3))


def test_cache_matches_forward_float64():
    model = small((3, 3, 4), 4, 2).double()
    assert_cache_matches_forward(model, data(model), labels(model, 3), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 5, 6), 2, 0), ((3, 3, 4), 4, 3),
                                                      ((1, 4, 5), 17, 0)])
def test_cached_sampling_exact(shape, levels, num_classes):
    model = small(shape, levels, num_classes)
    x = assert_cached_sampling_exact(model, 4, labels(model, 4))
    assert x.shape == (4, *shape) and int(x.max()) < levels


def test_weights_read_at_every_step():
    """The cache follows the model: a weight change after ``new_cache`` takes effect."""
    model = small((1, 4, 5), 3).eval()
    x = data(model)
    cache = model.new_cache(3)
    with torch.no_grad():
        old = model(x)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        new = model(x)
        assert (new - old).abs().max() > 1e-2
        torch.testing.assert_close(teacher_forced_logits(cache, x), new, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_cache_bad_inputs(num_classes):
    model = small((3, 3, 4), 4, num_classes)
    assert_cache_bad_inputs(model, data(model, 2), labels(model, 2))


def step_costs(model, monkeypatch) -> tuple[list[float], list[list[tuple[int, ...]]]]:
    """Teacher-force a random image through a fresh cache of ``model``: the matmul /
    convolution FLOPs of each step (logits and push) and, per step, the input shape of every
    ``F.conv2d`` it runs (shared with the Gated PixelCNN tests)."""
    conv2d, shapes = F.conv2d, []

    def recording(x, *args, **kw):
        shapes[-1].append(tuple(x.shape))
        return conv2d(x, *args, **kw)

    x = data(model, 2).reshape(2, -1)
    cache = model.new_cache(2)
    monkeypatch.setattr(F, "conv2d", recording)
    flops = []
    with torch.no_grad():
        while not cache.done:
            shapes.append([])
            with FlopCounterMode(display=False) as counter:
                pos = cache.positions()
                cache.logits()
                cache.push(x[:, pos])
            flops.append(counter.get_total_flops())
    monkeypatch.undo()
    return flops, shapes


def pixel_flops(model, b: int) -> int:
    """The dense FLOPs of the whole network at one pixel for a batch of b: every
    convolution's (Cout, Cin, kh, kw) weight once."""
    return 2 * b * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("shape", [(1, 5, 6), (3, 3, 4)])
def test_step_cost_does_not_grow_with_the_image(shape, monkeypatch):
    """A step computes one pixel: less than the dense network at one pixel, the same FLOPs
    on an image 3 x taller and 2 x wider, and its only convolutions are the 1x1 head layers
    on a 1 x 1 image: no step touches the whole image."""
    c = shape[0]
    kw = {"kernel_size": 5, "block_kernel_size": 3}
    model, large = small(shape, 4, **kw), small((c, 3 * shape[1], 2 * shape[2]), 4, **kw)
    flops, shapes = step_costs(model, monkeypatch)
    flops_large, shapes_large = step_costs(large, monkeypatch)
    assert 0 < min(flops) and max(flops) < pixel_flops(model, 2)
    assert (min(flops_large), max(flops_large)) == (min(flops), max(flops))
    for step in shapes + shapes_large:
        assert len(step) == 2 and all(s[0] == 2 and s[2:] == (1, 1) for s in step), step
