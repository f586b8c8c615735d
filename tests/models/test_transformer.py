"""artrt.models.ARTransformer: the autoregressive property through the Jacobian in every
ordering (pixels and sub-pixels), nll equal to the per-step log-probabilities of the sampling
order, sampling from a generator or given uniforms, training on real data, bad input."""

from __future__ import annotations

import pytest
import torch

from artrt.models.transformer import ARTransformer, ARTransformerConfig
from tests.models.common import (
    assert_autoregressive,
    assert_bad_inputs,
    assert_digits_training_lowers_loss,
    assert_nll_and_sampling,
)

SMALL = {"dim": 32, "heads": 2, "layers": 2}


@pytest.mark.parametrize("ordering", ["raster", "zigzag", "random"])
@pytest.mark.parametrize("shape,levels,num_classes", [((1, 4, 5), 5, 0), ((3, 3, 3), 4, 3)])
def test_autoregressive(ordering, shape, levels, num_classes):
    torch.manual_seed(0)
    model = ARTransformer(ARTransformerConfig(shape, levels, num_classes, ordering=ordering,
                                              **SMALL))
    cond = torch.tensor([1]) if num_classes else None
    assert_autoregressive(model, cond)


@pytest.mark.parametrize("ordering", ["zigzag", "random"])
def test_ordering_ranks(ordering):
    model = ARTransformer(ARTransformerConfig((2, 3, 4), 4, ordering=ordering, order_seed=5,
                                              **SMALL))
    steps = model.generation_steps()  # (C, H, W)
    assert sorted(steps.reshape(-1).tolist()) == list(range(24))
    assert torch.equal(steps[1], steps[0] + 1)  # channels of a pixel follow one another
    if ordering == "zigzag":
        assert steps[0, 1].tolist() == [14, 12, 10, 8]  # second row right to left
    same = ARTransformer(ARTransformerConfig((2, 3, 4), 4, ordering=ordering, order_seed=5,
                                             **SMALL))
    assert torch.equal(same.generation_steps(), steps)


@pytest.mark.parametrize("ordering,shape,levels,num_classes",
                         [("zigzag", (1, 4, 4), 17, 10), ("random", (3, 3, 3), 6, 0)])
def test_nll_and_sampling(ordering, shape, levels, num_classes):
    torch.manual_seed(0)
    model = ARTransformer(ARTransformerConfig(shape, levels, num_classes, ordering=ordering,
                                              **SMALL))
    cond = torch.tensor([3, 7, 0]) if num_classes else None
    x = assert_nll_and_sampling(model, cond)
    assert model.nll(x, cond).shape == (3,)


def test_training_lowers_loss():
    assert_digits_training_lowers_loss(
        ARTransformer(ARTransformerConfig((1, 8, 8), 17, 10, ordering="zigzag", **SMALL)))


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    assert_bad_inputs(ARTransformer(ARTransformerConfig((1, 3, 3), 4, num_classes, **SMALL)))


def test_bad_config():
    with pytest.raises(ValueError, match="ordering"):
        ARTransformer(ARTransformerConfig(ordering="spiral"))
    with pytest.raises(ValueError, match="shape"):
        ARTransformer(ARTransformerConfig(shape=(8, 8)))
    with pytest.raises(ValueError, match="levels"):
        ARTransformer(ARTransformerConfig(levels=1))
    with pytest.raises(ValueError, match="multiple of heads"):
        ARTransformer(ARTransformerConfig(dim=30, heads=4))
