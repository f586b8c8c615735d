"""artrt.models.GatedPixelCNN: the raster / RGB ordering through the Jacobian with no blind
spot, the probabilities of every image sum to one, nll equal to the per-step
log-probabilities, sampling by the inverse CDF, class conditioning through every layer, the
kernel backend against the reference, training on real data, bad input."""

from __future__ import annotations

import pytest
import torch

import artrt
from artrt.models.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
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
)


def small(shape=(1, 4, 4), levels=2, num_classes=0, **kw) -> GatedPixelCNN:
    torch.manual_seed(0)
    kw = {"channels": 8, "layers": 3, "head_channels": 16 * shape[0], **kw}
    return GatedPixelCNN(GatedPixelCNNConfig(shape, levels, num_classes, **kw))


@pytest.mark.parametrize("shape,levels,num_classes,kernel_size,layers", [
    ((1, 5, 5), 2, 0, 3, 5), ((3, 3, 3), 3, 0, 7, 3), ((3, 2, 3), 2, 10, 3, 3),
    ((1, 4, 3), 17, 0, 5, 3)])
def test_autoregressive_without_blind_spot(shape, levels, num_classes, kernel_size, layers):
    """Sub-pixel (c, i, j) depends on exactly the sub-pixels before it (raster, then
    R < G < B): no leak and, unlike PixelCNN's masked 3x3 stack, no blind spot (five 3x3
    layers on a 5 x 5 image reach the whole past)."""
    model = small(shape, levels, num_classes, kernel_size=kernel_size, layers=layers)
    with artrt.use_backend("reference"):
        assert_autoregressive(model, torch.tensor([7]) if num_classes else None)


@pytest.mark.parametrize("shape,levels", [((1, 2, 2), 2), ((1, 2, 2), 3), ((3, 1, 2), 2),
                                          ((3, 1, 1), 4)])
def test_probabilities_sum_to_one(shape, levels):
    assert_normalised(small(shape, levels))


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 3), 2, 10), ((3, 2, 3), 5, 0)])
def test_nll_and_sampling(shape, levels, num_classes):
    assert_nll_and_sampling(small(shape, levels, num_classes))


def test_output_layout():
    binary = small((1, 3, 4))
    assert_bernoulli_output(binary)
    assert binary.out.out_channels == 1 and binary.colour is None
    rgb = small((3, 3, 4), 5)
    assert rgb(torch.randint(0, 5, (2, 3, 3, 4))).shape == (2, 5, 3, 3, 4)
    assert rgb.colour is not None and rgb.out.out_channels == 15


def test_class_conditional_every_layer():
    """The one-hot label is every layer's conditioning bias: the likelihood stays normalised
    for each label, the label changes it, and each layer's projection of it gets gradient
    only in the columns of the labels present."""
    model = small((1, 2, 2), num_classes=3)
    assert all(layer.cond_dim == 3 for layer in model.layers)
    for label in range(3):
        assert_normalised(model, label)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    a, b = model.nll(x, torch.tensor([0, 0])), model.nll(x, torch.tensor([0, 2]))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs() > 1e-3
    weights = [layer.cond_proj.weight for layer in model.layers]
    grads = torch.autograd.grad(b.sum(), weights)
    for g in grads:
        assert g[:, 0].abs().sum() > 0 and g[:, 2].abs().sum() > 0 and torch.all(g[:, 1] == 0)


@pytest.mark.parametrize("backend", kernel_backends())
def test_kernel_backend_matches_reference(backend):
    assert_backend_matches_reference(small((3, 4, 3), 3, 2), backend)


def test_training_lowers_loss():
    assert_mnist_training_lowers_loss(GatedPixelCNN(GatedPixelCNNConfig(
        (1, 28, 28), 2, 10, channels=8, layers=2, head_channels=16)))


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    assert_bad_inputs(small((1, 3, 3), 4, num_classes))


def test_bad_config():
    with pytest.raises(ValueError, match="layers must be >= 1"):
        GatedPixelCNN(GatedPixelCNNConfig(layers=0))
    with pytest.raises(ValueError, match="head_channels must be a positive multiple of C = 3"):
        GatedPixelCNN(GatedPixelCNNConfig((3, 8, 8), head_channels=16))
    with pytest.raises(ValueError, match="kernel_size must be an odd"):
        GatedPixelCNN(GatedPixelCNNConfig(kernel_size=4))
    with pytest.raises(ValueError, match="shape"):
        GatedPixelCNN(GatedPixelCNNConfig(shape=(1, 8)))


@pytest.mark.gpu
@pytest.mark.parametrize("levels", [2, 256])
def test_gpu_matches_cpu(levels):
    assert_image_cuda_matches_cpu(GatedPixelCNN, GatedPixelCNNConfig, levels, head_channels=120)
