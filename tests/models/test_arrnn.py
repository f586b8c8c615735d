"""artrt.models.ARRNN: the raster ordering (channels innermost) through the Jacobian, the
stepped recurrence equal to the full forward pass, the positional encoding of (row, column,
channel), the probabilities of every input sum to one, nll equal to the per-step
log-probabilities, sampling by the inverse CDF, training on real data, bad input."""

from __future__ import annotations

import pytest
import torch

from artrt.data import to_input
from artrt.models.arrnn import ARRNN, ARRNNConfig
from tests.models.common import (
    assert_autoregressive,
    assert_bad_inputs,
    assert_bernoulli_output,
    assert_cuda_matches_cpu,
    assert_mnist_training_lowers_loss,
    assert_nll_and_sampling,
    assert_normalised,
)


def small(shape=(1, 3, 4), levels=2, num_classes=0, **kw) -> ARRNN:
    torch.manual_seed(0)
    kw = {"hidden": 16, **kw}
    return ARRNN(ARRNNConfig(shape, levels, num_classes, **kw))


@pytest.mark.parametrize("positional", [True, False])
@pytest.mark.parametrize("shape,levels,num_classes", [((1, 4, 4), 2, 0), ((3, 2, 3), 5, 3),
                                                      ((2, 5), 17, 0)])
def test_autoregressive(shape, levels, num_classes, positional):
    model = small(shape, levels, num_classes, layers=2, positional=positional)
    assert_autoregressive(model, torch.tensor([1]) if num_classes else None)


def test_generation_steps_and_positions():
    model = small((3, 2, 2))
    steps = model.generation_steps()
    assert steps.tolist() == [[[0, 3], [6, 9]], [[1, 4], [7, 10]], [[2, 5], [8, 11]]]
    # step t encodes the (channel, row, column) of the position it predicts
    assert model.coords[:4].tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 1]]
    assert [tuple(e.weight.shape) for e in model.pos] == [(3, 16), (2, 16), (2, 16)]
    x = torch.randint(0, 2, (2, 3, 2, 2))
    model.nll(x).sum().backward()
    assert all(e.weight.grad.abs().sum() > 0 for e in model.pos)
    assert small((3, 2, 2), positional=False).pos is None


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 4), 2, 0), ((3, 2, 2), 7, 4)])
def test_steps_equal_forward(shape, levels, num_classes):
    """The stepped recurrence with the state carried gives the full pass's logits."""
    model = small(shape, levels, num_classes, layers=2).eval()
    x = torch.randint(0, levels, (3, *shape))
    cond = torch.tensor([0, 3, 1]) if num_classes else None
    with torch.no_grad():
        want = model(x, cond).reshape(3, levels, -1)  # (B, L, D) in x's layout
        v = to_input(x, levels).reshape(3, -1)
        state, prev = None, torch.zeros(3)
        for t, pos in enumerate(model.order.tolist()):
            logits, state = model.step(prev, t, state, cond)
            torch.testing.assert_close(logits, want[:, :, pos], atol=1e-5, rtol=1e-5)
            prev = v[:, pos]


@pytest.mark.parametrize("shape,levels", [((1, 2, 2), 2), ((3, 1, 1), 4), ((1, 3), 3)])
def test_probabilities_sum_to_one(shape, levels):
    assert_normalised(small(shape, levels))


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 3), 2, 10), ((3, 2, 2), 5, 0),
                                                      ((1, 7), 4, 0)])
def test_nll_and_sampling(shape, levels, num_classes):
    assert_nll_and_sampling(small(shape, levels, num_classes))


def test_binary_output_is_bernoulli():
    model = small(num_classes=2)
    assert model.head.out_features == 1
    assert_bernoulli_output(model)


def test_training_lowers_loss():
    assert_mnist_training_lowers_loss(ARRNN(ARRNNConfig((1, 28, 28), 2, 10, hidden=32)))


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    assert_bad_inputs(small((1, 3, 3), 4, num_classes))


def test_bad_config():
    with pytest.raises(ValueError, match="hidden and layers must be >= 1"):
        ARRNN(ARRNNConfig(hidden=0))
    with pytest.raises(ValueError, match="shape"):
        ARRNN(ARRNNConfig(shape=(784,)))
    with pytest.raises(ValueError, match="levels"):
        ARRNN(ARRNNConfig(levels=1))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    """cuDNN's LSTM against the CPU one, and the stepped sampler on the GPU."""
    model = small((1, 28, 28), 2, 10, hidden=128, layers=2)
    # 16 random binary 28 x 28 images, sparse as MNIST's (no data set: the GPU image lacks
    # the packages that ship them)
    x = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2).long()
    y = torch.arange(16) % 10
    assert_cuda_matches_cpu(model, x, y)
