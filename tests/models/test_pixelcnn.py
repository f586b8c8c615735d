"""artrt.models.PixelCNN: the raster / RGB ordering through the Jacobian (no leak; on a small
image the 7x7 mask-A layer sees the whole past; a 3x3 stack has the blind spot), the
probabilities of every image sum to one, nll equal to the per-step log-probabilities,
sampling by the inverse CDF, the Bernoulli output for binary data, class conditioning, the
kernel backend against the reference, training on real data, bad input."""

from __future__ import annotations

import pytest
import torch

import artrt
from artrt.models._common import raster_steps
from artrt.models.pixelcnn import PixelCNN, PixelCNNConfig
from tests.helpers import kernel_backends
from tests.models.common import (
    assert_autoregressive,
    assert_backend_matches_reference,
    assert_bad_inputs,
    assert_bernoulli_output,
    assert_image_cuda_matches_cpu,
    assert_mnist_training_lowers_loss,
    assert_nll_and_sampling,
    assert_normalised,
    dependencies,
)


def small(shape=(1, 4, 4), levels=2, num_classes=0, **kw) -> PixelCNN:
    torch.manual_seed(0)
    c = shape[0]
    kw = {"channels": 12 * c, "blocks": 2, "head_channels": 8 * c, **kw}
    return PixelCNN(PixelCNNConfig(shape, levels, num_classes, **kw))


def test_generation_steps_are_raster_then_rgb():
    steps = small((3, 2, 2)).generation_steps()
    assert steps.tolist() == [[[0, 3], [6, 9]], [[1, 4], [7, 10]], [[2, 5], [8, 11]]]
    assert torch.equal(raster_steps((1, 5)), torch.arange(5).view(1, 5))


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 4, 4), 2, 0), ((3, 3, 3), 3, 0),
                                                      ((3, 2, 2), 2, 4), ((1, 3, 4), 17, 0)])
def test_autoregressive(shape, levels, num_classes):
    """Sub-pixel (c, i, j) depends on every sub-pixel before it (raster, then R < G < B) and
    on nothing else: on a 4 x 4 image the 7 x 7 mask-A layer reaches the whole past."""
    model = small(shape, levels, num_classes)
    with artrt.use_backend("reference"):
        assert_autoregressive(model, torch.tensor([3]) if num_classes else None)


def test_masked_3x3_stack_has_the_blind_spot():
    """Nothing leaks on a larger image either; with a 3 x 3 first layer the stack misses
    (i-1, j+2) inside its reach: the PixelCNN blind spot, which Gated PixelCNN removes."""
    model = small((1, 7, 7), kernel_size=3)
    with artrt.use_backend("reference"):
        assert_autoregressive(model, complete=False)
        deps = dependencies(model)
    o = 3 * 7 + 3  # pixel (3, 3) sees (2, 4) but not (2, 5)
    assert deps[o, 2 * 7 + 4] and not deps[o, 2 * 7 + 5]


@pytest.mark.parametrize("shape,levels", [((1, 2, 2), 2), ((1, 2, 2), 3), ((3, 1, 2), 2),
                                          ((3, 1, 1), 4)])
def test_probabilities_sum_to_one(shape, levels):
    assert_normalised(small(shape, levels))


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 3), 2, 0), ((3, 2, 3), 5, 10)])
def test_nll_and_sampling(shape, levels, num_classes):
    assert_nll_and_sampling(small(shape, levels, num_classes))


def test_output_layout():
    """levels = 2: one Bernoulli logit per sub-pixel; else ``levels`` per colour channel."""
    binary = small((3, 3, 4), 2, 4)
    assert binary.out.out_channels == 3
    assert_bernoulli_output(binary)
    rgb = small((3, 3, 4), 256)
    assert rgb.out.out_channels == 3 * 256
    assert rgb(torch.zeros(1, 3, 3, 4).long()).shape == (1, 256, 3, 3, 4)


def test_class_conditional():
    model = small((1, 2, 2), num_classes=3)
    for label in range(3):
        assert_normalised(model, label)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    a, b = model.nll(x, torch.tensor([0, 0])), model.nll(x, torch.tensor([0, 2]))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs() > 1e-3, "the label changes the likelihood"


@pytest.mark.parametrize("backend", kernel_backends())
def test_kernel_backend_matches_reference(backend):
    assert_backend_matches_reference(small((3, 4, 3), 3, 2), backend)


def test_training_lowers_loss():
    assert_mnist_training_lowers_loss(PixelCNN(PixelCNNConfig(
        (1, 28, 28), 2, 10, channels=16, blocks=1, head_channels=16)))


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    assert_bad_inputs(small((1, 3, 3), 4, num_classes))


def test_bad_config():
    with pytest.raises(ValueError, match="channels must be a positive multiple of 2C = 6"):
        PixelCNN(PixelCNNConfig((3, 4, 4), channels=8))
    with pytest.raises(ValueError, match="head_channels must be a positive multiple of C"):
        PixelCNN(PixelCNNConfig((3, 4, 4), channels=12, head_channels=8))
    with pytest.raises(ValueError, match="kernel_size must be an odd"):
        PixelCNN(PixelCNNConfig(kernel_size=4))
    with pytest.raises(ValueError, match="blocks must be >= 0"):
        PixelCNN(PixelCNNConfig(blocks=-1))
    with pytest.raises(ValueError, match="levels"):
        PixelCNN(PixelCNNConfig(levels=1))
    with pytest.raises(ValueError, match="shape"):
        PixelCNN(PixelCNNConfig(shape=(28, 28)))


@pytest.mark.gpu
@pytest.mark.parametrize("levels", [2, 256])
def test_gpu_matches_cpu(levels):
    assert_image_cuda_matches_cpu(PixelCNN, PixelCNNConfig, levels, channels=60,
                                  head_channels=60)
