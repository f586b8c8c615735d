"""artrt.models.MultiscalePixelCNN: the group structure through the Jacobian (an output depends
only on coarser scales and earlier groups, and does use them), nll equal to the per-pass
log-probabilities of the sampling order, sampling in O(log N) network passes (counted),
training on real data, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from artrt.models.multiscale import MultiscalePixelCNN, MultiscalePixelCNNConfig
from tests.models.common import (
    assert_autoregressive,
    assert_bad_inputs,
    assert_digits_training_lowers_loss,
    assert_nll_and_sampling,
    dependencies,
)

SMALL = {"base_channels": 12, "base_layers": 1, "channels": 8, "layers": 1}


def test_generation_steps():
    """4 x 4 from a 2 x 2 base: the base in raster order, then groups 1, 2, 3 of the scale."""
    model = MultiscalePixelCNN(MultiscalePixelCNNConfig((1, 4, 4), 4, scales=1, **SMALL))
    assert model.generation_steps()[0].tolist() == [[0, 4, 1, 4],
                                                     [5, 6, 5, 6],
                                                     [2, 4, 3, 4],
                                                     [5, 6, 5, 6]]
    assert model.passes == 7
    rgb = MultiscalePixelCNN(MultiscalePixelCNNConfig((3, 4, 4), 4, scales=2, **SMALL))
    steps = rgb.generation_steps()
    assert steps[:, 0, 0].tolist() == [0, 1, 2]  # base 1 x 1: R, G, B
    assert steps[:, 0, 2].tolist() == [3, 4, 5]  # scale 1, group 1, channel by channel
    assert steps[:, 1, 1].tolist() == [18, 19, 20]  # scale 2, group 3
    assert steps.unique().numel() == rgb.passes == 21


@pytest.mark.parametrize("shape,levels,num_classes,scales",
                         [((1, 8, 8), 5, 0, 2), ((3, 4, 4), 4, 3, 1), ((2, 4, 8), 3, 0, 2),
                          ((1, 3, 3), 4, 0, 0)])
def test_group_structure(shape, levels, num_classes, scales):
    """No output depends on an input of its own pass or a later one; the outputs of every
    group pass depend on the inputs of the pass just before it and on the base image (the
    conditioning is wired). scales=0 is the base PixelCNN alone."""
    torch.manual_seed(0)
    model = MultiscalePixelCNN(MultiscalePixelCNNConfig(shape, levels, num_classes,
                                                        scales=scales, **SMALL))
    cond = torch.tensor([2]) if num_classes else None
    assert_autoregressive(model, cond, complete=False)
    steps = model.generation_steps().reshape(-1)
    dep = dependencies(model, cond)
    base_passes = math.prod(model.base_size) * shape[0]
    for s in range(base_passes, model.passes):
        rows = dep[steps == s]  # (outputs of group pass s, D)
        assert rows[:, steps == s - 1].any(), f"pass {s} ignores pass {s - 1}"
        assert rows[:, steps < base_passes].any(), f"pass {s} ignores the base image"


@pytest.mark.parametrize("shape,scales,base", [((1, 8, 8), 2, 4), ((1, 16, 16), 4, 1),
                                               ((3, 4, 4), 1, 12), ((1, 32, 32), 5, 1)])
def test_sampling_passes_are_logarithmic(shape, scales, base):
    """Count the network calls of one sample() call: base sub-pixels plus 3 C per scale."""
    torch.manual_seed(0)
    model = MultiscalePixelCNN(MultiscalePixelCNNConfig(shape, 4, scales=scales, **SMALL))
    calls = {"base": 0, "scales": 0}
    hooks = [model.base.register_forward_pre_hook(
        lambda *_: calls.__setitem__("base", calls["base"] + 1))]
    hooks += [net.register_forward_pre_hook(
        lambda *_: calls.__setitem__("scales", calls["scales"] + 1))
        for net in model.upsamplers]
    model.sample(2, generator=torch.Generator().manual_seed(0))
    for hook in hooks:
        hook.remove()
    c, h, w = shape
    assert calls == {"base": base, "scales": 3 * c * scales}
    assert model.passes == base + 3 * c * scales
    if base == 1:  # a 1 x 1 base: passes = 1 + 3 log2(H)
        assert model.passes == 1 + 3 * round(math.log2(h * w) / 2) < h * w


@pytest.mark.parametrize("shape,levels,num_classes,scales",
                         [((1, 8, 8), 17, 10, 2), ((3, 4, 4), 6, 0, 1)])
def test_nll_and_sampling(shape, levels, num_classes, scales):
    torch.manual_seed(0)
    model = MultiscalePixelCNN(MultiscalePixelCNNConfig(shape, levels, num_classes,
                                                        scales=scales, **SMALL))
    cond = torch.tensor([3, 7, 0]) if num_classes else None
    assert_nll_and_sampling(model, cond)


def test_training_lowers_loss():
    assert_digits_training_lowers_loss(
        MultiscalePixelCNN(MultiscalePixelCNNConfig((1, 8, 8), 17, 10, scales=2)))


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    assert_bad_inputs(MultiscalePixelCNN(MultiscalePixelCNNConfig((1, 4, 4), 5, num_classes,
                                                                  scales=1, **SMALL)))


def test_bad_config():
    with pytest.raises(ValueError, match="multiples of 2\\*\\*scales"):
        MultiscalePixelCNN(MultiscalePixelCNNConfig((1, 6, 8), scales=2))
    with pytest.raises(ValueError, match="scales"):
        MultiscalePixelCNN(MultiscalePixelCNNConfig(scales=-1))
    with pytest.raises(ValueError, match="base_channels"):
        MultiscalePixelCNN(MultiscalePixelCNNConfig((3, 8, 8), base_channels=32))
    with pytest.raises(ValueError, match="shape"):
        MultiscalePixelCNN(MultiscalePixelCNNConfig((8, 8)))
