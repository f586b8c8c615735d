"""artrt.models.WaveNet: the autoregressive property through the Jacobian (sequences and
images, no blind spot within the receptive field, nothing beyond it), nll equal to the per-step
log-probabilities of the sampling order, sampling, training on the mu-law membrane recording
and on digits, bad input."""

from __future__ import annotations

import pytest
import torch

from artrt.models.wavenet import WaveNet, WaveNetConfig
from tests.models.common import (
    assert_autoregressive,
    assert_bad_inputs,
    assert_digits_training_lowers_loss,
    assert_nll_and_sampling,
    assert_training_lowers_loss,
    dependencies,
    real_batch,
)

SMALL = {"res_channels": 8, "gate_channels": 8, "skip_channels": 8, "cond_channels": 4}


@pytest.mark.parametrize("shape,levels,num_classes,layers",
                         [((1, 12), 256, 0, 4), ((2, 7), 5, 3, 4), ((3, 2, 3), 4, 0, 5),
                          ((1, 3, 4), 6, 2, 4)])
def test_autoregressive(shape, levels, num_classes, layers):
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(shape, levels, num_classes, layers=layers, **SMALL))
    assert model.receptive_field >= model.length
    assert_autoregressive(model, torch.tensor([1]) if num_classes else None)


def test_receptive_field():
    """Past the receptive field an output depends on exactly the R steps before it."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig((1, 20), 4, kernel_size=2, layers=3, dilation_cycle=2,
                                  **SMALL))
    r = model.receptive_field
    assert r == 1 + 1 + (1 + 2 + 1)
    t = torch.arange(20)
    want = (t[None, :] < t[:, None]) & (t[None, :] >= t[:, None] - r)  # [o, i]
    assert torch.equal(dependencies(model), want)


def test_sequence_order():
    model = WaveNet(WaveNetConfig((2, 2, 3), 4, layers=2, **SMALL))
    steps = model.generation_steps()  # (C, H, W): raster, channels of a pixel consecutive
    assert steps[:, 0, :].tolist() == [[0, 2, 4], [1, 3, 5]]
    assert steps[1, 1, 2].item() == 11
    assert not WaveNet(WaveNetConfig((1, 8), 4, layers=2, **SMALL)).positional
    assert model.positional


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 10), 256, 0), ((3, 2, 2), 6, 4)])
def test_nll_and_sampling(shape, levels, num_classes):
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(shape, levels, num_classes, layers=4, **SMALL))
    cond = torch.tensor([3, 0, 1]) if num_classes else None
    assert_nll_and_sampling(model, cond)


def test_training_lowers_loss_audio():
    x, _ = real_batch("membrane-mulaw", 4, start=40)
    assert x.shape == (4, 1, 512)
    model = WaveNet(WaveNetConfig((1, 512), 256, layers=6, res_channels=16, gate_channels=16,
                                  skip_channels=32))
    assert_training_lowers_loss(model, x)


def test_training_lowers_loss_images():
    assert_digits_training_lowers_loss(WaveNet(WaveNetConfig(
        (1, 8, 8), 17, 10, layers=6, res_channels=16, gate_channels=16, skip_channels=32)))


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 6), 256, 0), ((1, 3, 3), 8, 4)])
def test_bad_inputs(shape, levels, num_classes):
    assert_bad_inputs(WaveNet(WaveNetConfig(shape, levels, num_classes, layers=2, **SMALL)))


def test_bad_config():
    with pytest.raises(ValueError, match="shape"):
        WaveNet(WaveNetConfig(shape=(512,)))
    with pytest.raises(ValueError, match="levels"):
        WaveNet(WaveNetConfig(levels=0))
    with pytest.raises(ValueError, match="layers"):
        WaveNet(WaveNetConfig(layers=0))
    with pytest.raises(ValueError, match="kernel_size"):
        WaveNet(WaveNetConfig(kernel_size=9))
