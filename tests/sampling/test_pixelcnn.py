"""artrt.sampling.PixelCNNCache and GatedPixelCNNCache: teacher forcing through the cache
equals the full forward pass at every position (binary, grey, RGB (Gated: with the colour
head), class-conditional, the shallowest stack, odd kernels and images smaller or narrower
than the kernel, float64), cached sampling equals plain sampling exactly, weights are read at
every step, bad input leaves the cache as it was, and a step's work does not grow with the
image: PixelCNN's is one pixel's work; Gated's is per pixel (horizontal stack and head) plus
per row (the vertical stack's (p+1)-row windows), never the whole image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from artrt.sampling.pixelcnn import GatedPixelCNNCache, PixelCNNCache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    cache_batch,
    labels,
    teacher_forced_logits,
)
from tests.models.test_gated_pixelcnn import small as gated_pixelcnn
from tests.models.test_pixelcnn import small as pixelcnn

# name: (builder, cache class, the config field of the later layers' kernel size, the
# shallowest stack the model takes)
MODELS = {
    "pixelcnn": (pixelcnn, PixelCNNCache, "block_kernel_size", {"blocks": 0}),
    "gated_pixelcnn": (gated_pixelcnn, GatedPixelCNNCache, "layer_kernel_size", {"layers": 1}),
}


def small(name: str, shape, levels, num_classes=0, inner: int | None = None,
          shallowest: bool = False, **kw):
    """The small model of tests/models/test_<name>.py; ``inner``: the kernel size of the
    layers after the first (PixelCNN's blocks, Gated PixelCNN's later layers), ``shallowest``:
    no residual block (PixelCNN) or one layer (Gated PixelCNN)."""
    build, _, inner_field, fewest = MODELS[name]
    if inner is not None:
        kw[inner_field] = inner
    return build(shape, levels, num_classes, **(fewest if shallowest else {}), **kw)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,levels,num_classes,kw", [
    ((1, 5, 6), 2, 0, {}),
    ((1, 4, 5), 17, 0, {"kernel_size": 3, "inner": 5}),
    ((3, 3, 4), 4, 0, {}),
    ((3, 3, 4), 5, 3, {"inner": 1}),
    ((1, 5, 6), 2, 10, {"shallowest": True}),
    ((3, 1, 5), 3, 0, {"kernel_size": 5}),
    ((1, 6, 1), 2, 0, {}),
])
def test_cache_matches_forward(name, shape, levels, num_classes, kw):
    model = small(name, shape, levels, num_classes, **kw)
    assert isinstance(model.new_cache(2, labels(model, 2)), MODELS[name][1])
    assert_cache_matches_forward(model, *cache_batch(model, 3))


@pytest.mark.parametrize("name", MODELS)
def test_cache_matches_forward_float64(name):
    model = small(name, (3, 3, 4), 4, 2).double()
    assert_cache_matches_forward(model, *cache_batch(model, 3), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,levels,num_classes", [((1, 5, 6), 2, 0), ((3, 3, 4), 4, 3),
                                                      ((1, 4, 5), 17, 0)])
def test_cached_sampling_exact(name, shape, levels, num_classes):
    model = small(name, shape, levels, num_classes)
    x = assert_cached_sampling_exact(model, 4, labels(model, 4))
    assert x.shape == (4, *shape) and int(x.max()) < levels


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 3, 4)])
def test_weights_read_at_every_step(name, shape):
    """The cache follows the model: a weight change after ``new_cache`` takes effect."""
    model = small(name, shape, 3).eval()
    x, _ = cache_batch(model, 3)
    cache = model.new_cache(3)
    with torch.no_grad():
        old = model(x)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        new = model(x)
        assert (new - old).abs().max() > 1e-2
        torch.testing.assert_close(teacher_forced_logits(cache, x), new, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_classes", [0, 4])
def test_cache_bad_inputs(name, num_classes):
    model = small(name, (3, 3, 4), 4, num_classes)
    assert_cache_bad_inputs(model, *cache_batch(model, 2))


def step_costs(model, monkeypatch) -> tuple[list[float], list[list[tuple[int, ...]]]]:
    """Teacher-force a random image through a fresh cache of ``model``: the matmul /
    convolution FLOPs of each step (logits and push) and, per step, the input shape of every
    ``F.conv2d`` it runs."""
    conv2d, shapes = F.conv2d, []

    def recording(x, *args, **kw):
        shapes[-1].append(tuple(x.shape))
        return conv2d(x, *args, **kw)

    x = cache_batch(model, 2)[0].reshape(2, -1)
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
def test_pixelcnn_step_cost_does_not_grow_with_the_image(shape, monkeypatch):
    """A step computes one pixel: less than the dense network at one pixel, the same FLOPs
    on an image 3 x taller and 2 x wider, and its only convolutions are the 1x1 head layers
    on a 1 x 1 image: no step touches the whole image."""
    c = shape[0]
    kw = {"kernel_size": 5, "block_kernel_size": 3}
    model, large = pixelcnn(shape, 4, **kw), pixelcnn((c, 3 * shape[1], 2 * shape[2]), 4, **kw)
    flops, shapes = step_costs(model, monkeypatch)
    flops_large, shapes_large = step_costs(large, monkeypatch)
    assert 0 < min(flops) and max(flops) < pixel_flops(model, 2)
    assert (min(flops_large), max(flops_large)) == (min(flops), max(flops))
    for step in shapes + shapes_large:
        assert len(step) == 2 and all(s[0] == 2 and s[2:] == (1, 1) for s in step), step


def split_steps(values: list, shape: tuple[int, ...]) -> tuple[list, list]:
    """(values of the steps that end a row before the last, values of the other steps)."""
    c, height, width = shape
    ends = {((i + 1) * width) * c - 1 for i in range(height - 1)}
    return ([v for s, v in enumerate(values) if s in ends],
            [v for s, v in enumerate(values) if s not in ends])


@pytest.mark.parametrize("c", [1, 3])
def test_gated_pixelcnn_step_cost_does_not_grow_with_the_image(c, monkeypatch):
    """A pixel's step computes less than the dense network at one pixel, the same on a
    taller and a wider image, and convolves nothing but its 1 x 1 pixel (the head layers);
    the step ending a row adds the vertical stack of that row, (p+1)-row windows of the
    image's width, the same on a taller image: no step touches the whole image."""
    kw = {"kernel_size": 5, "layer_kernel_size": 3, "layers": 3}
    shape, tall, wide = (c, 4, 5), (c, 12, 5), (c, 4, 10)
    costs = {s: step_costs(gated_pixelcnn(s, 4, **kw), monkeypatch) for s in (shape, tall, wide)}
    heads = 2 + (c > 1)  # head, colour (C > 1), out: 1x1 convolutions of a 1 x 1 image
    for (_, height, width), (_, shapes) in costs.items():
        ends, pixels = split_steps(shapes, (c, height, width))
        for step in pixels:
            assert all(s[0] == 2 and s[2:] == (1, 1) for s in step), step
        for step in ends:
            rows = [s for s in step if s[2:] != (1, 1)]
            assert len(rows) == 3, step  # one per layer: rows i-p..i, padded width W + 2p
            assert all(s[2] <= 3 and s[3] in (width + 4, width + 2) for s in rows), rows
        assert sum(map(len, shapes)) == heads * c * height * width + 3 * (height - 1)
    ends, pixels = zip(*(split_steps(costs[s][0], s) for s in (shape, tall, wide)),
                       strict=True)
    model = gated_pixelcnn(shape, 4, **kw)
    assert 0 < min(pixels[0]) and max(pixels[0]) < pixel_flops(model, 2)
    assert min(pixels[0]) == min(pixels[1]) == min(pixels[2])
    assert max(pixels[0]) == max(pixels[1]) == max(pixels[2])
    assert max(ends[0]) == max(ends[1]) < max(ends[2]) < 10 * pixel_flops(model, 2)
