"""artrt.sampling.GatedPixelCNNCache: teacher forcing through the cache equals the full
forward pass at every position (binary, grey, RGB with the colour head, class-conditional,
one layer, images narrower than the kernel, float64), cached sampling equals plain sampling
exactly, weights are read at every step, bad input leaves the cache as it was, and the work
is per pixel (horizontal stack and head) plus per row (the vertical stack's (p+1)-row
windows), never the whole image."""

from __future__ import annotations

import pytest
import torch

from artrt.models.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from artrt.sampling.pixelcnn import GatedPixelCNNCache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    labels,
    teacher_forced_logits,
)
from tests.sampling.test_pixelcnn import data, pixel_flops, step_costs


def small(shape=(1, 5, 6), levels=2, num_classes=0, **kw) -> GatedPixelCNN:
    torch.manual_seed(0)
    kw = {"channels": 8, "layers": 3, "head_channels": 16 * shape[0], **kw}
    return GatedPixelCNN(GatedPixelCNNConfig(shape, levels, num_classes, **kw))


@pytest.mark.parametrize("shape,levels,num_classes,kw", [
    ((1, 5, 6), 2, 0, {}),
    ((1, 4, 5), 17, 0, {"kernel_size": 3, "layer_kernel_size": 5}),
    ((3, 3, 4), 4, 0, {}),
    ((3, 3, 4), 5, 3, {"layer_kernel_size": 1}),
    ((1, 5, 6), 2, 10, {"layers": 1}),
    ((3, 1, 5), 3, 0, {"kernel_size": 5}),
    ((1, 6, 1), 2, 0, {}),
])
def test_cache_matches_forward(shape, levels, num_classes, kw):
    model = small(shape, levels, num_classes, **kw)
    assert isinstance(model.new_cache(2, labels(model, 2)), GatedPixelCNNCache)
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
    model = small((3, 3, 4), 3).eval()
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


def split_steps(values: list, shape: tuple[int, ...]) -> tuple[list, list]:
    """(values of the steps that end a row before the last, values of the other steps)."""
    c, height, width = shape
    ends = {((i + 1) * width) * c - 1 for i in range(height - 1)}
    return ([v for s, v in enumerate(values) if s in ends],
            [v for s, v in enumerate(values) if s not in ends])


@pytest.mark.parametrize("c", [1, 3])
def test_step_cost_does_not_grow_with_the_image(c, monkeypatch):
    """A pixel's step computes less than the dense network at one pixel, the same on a
    taller and a wider image, and convolves nothing but its 1 x 1 pixel (the head layers);
    the step ending a row adds the vertical stack of that row, (p+1)-row windows of the
    image's width, the same on a taller image: no step touches the whole image."""
    kw = {"kernel_size": 5, "layer_kernel_size": 3, "layers": 3}
    shape, tall, wide = (c, 4, 5), (c, 12, 5), (c, 4, 10)
    costs = {s: step_costs(small(s, 4, **kw), monkeypatch) for s in (shape, tall, wide)}
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
    model = small(shape, 4, **kw)
    assert 0 < min(pixels[0]) and max(pixels[0]) < pixel_flops(model, 2)
    assert min(pixels[0]) == min(pixels[1]) == min(pixels[2])
    assert max(pixels[0]) == max(pixels[1]) == max(pixels[2])
    assert max(ends[0]) == max(ends[1]) < max(ends[2]) < 10 * pixel_flops(model, 2)
