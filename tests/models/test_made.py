"""artrt.models.MADE: the autoregressive property of every mask set through the Jacobian
(raster and random orderings), the fixed pool of mask sets and its resampling, the
probabilities of every input sum to one under each mask set and under the ensemble, the
ensemble nll is the log of the mean likelihood, sampling follows the current ordering,
order-agnostic training on real data, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from artrt.models.made import MADE, MADEConfig
from tests.models.common import (
    assert_autoregressive,
    assert_bad_inputs,
    assert_bernoulli_output,
    assert_cuda_matches_cpu,
    assert_mnist_training_lowers_loss,
    assert_nll_and_sampling,
    assert_normalised,
    real_batch,
)


def small(shape=(1, 3, 4), levels=2, num_classes=0, **kw) -> MADE:
    torch.manual_seed(0)
    kw = {"hidden": (256, 256), **kw}
    return MADE(MADEConfig(shape, levels, num_classes, **kw))


@pytest.mark.parametrize("ordering", ["raster", "random"])
@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 4), 2, 0), ((3, 2, 2), 5, 3),
                                                      ((2, 5), 17, 0)])
def test_autoregressive_every_mask_set(ordering, shape, levels, num_classes):
    """Under each mask set, variable d depends on exactly the variables before it in that
    set's ordering (wide hidden layers realise every allowed connection)."""
    model = small(shape, levels, num_classes, num_masks=3, ordering=ordering)
    cond = torch.tensor([2]) if num_classes else None
    for index in range(3):
        model.resample_masks(index=index)
        assert_autoregressive(model, cond)


def test_orderings_and_connectivity():
    d = 12
    raster = small(num_masks=3)
    assert torch.equal(raster.generation_steps().reshape(-1), torch.arange(d))
    masks0 = [m.mask.clone() for m in raster.modules() if hasattr(m, "mask")]
    raster.resample_masks(index=1)
    assert torch.equal(raster.generation_steps().reshape(-1), torch.arange(d))
    masks1 = [m.mask.clone() for m in raster.modules() if hasattr(m, "mask")]
    assert any(not torch.equal(a, b) for a, b in zip(masks0, masks1, strict=True))
    rand = small(num_masks=4, ordering="random")
    orders = []
    for index in range(4):
        rand.resample_masks(index=index)
        steps = rand.generation_steps().reshape(-1)
        assert sorted(steps.tolist()) == list(range(d))
        orders.append(steps)
    assert len({tuple(o.tolist()) for o in orders}) == 4
    # the pool is fixed by (seed, index): a new model has the same mask set 2
    again = small(num_masks=4, ordering="random")
    again.resample_masks(index=2)
    assert torch.equal(again.generation_steps().reshape(-1), orders[2])
    other_seed = small(num_masks=4, ordering="random", seed=1)
    assert not torch.equal(other_seed.generation_steps().reshape(-1), orders[0])


def test_resample_masks_draws_from_the_pool():
    model = small(num_masks=5, ordering="random")
    drawn = [model.resample_masks(torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(drawn) == set(range(5)) and model.mask_index == drawn[-1]
    again = [model.resample_masks(torch.Generator().manual_seed(s)) for s in range(40)]
    assert drawn == again
    want = model.generation_steps()
    model.resample_masks(index=0)
    model.resample_masks(index=drawn[-1])
    assert torch.equal(model.generation_steps(), want)


@pytest.mark.parametrize("shape,levels,ordering", [((1, 2, 2), 2, "random"),
                                                   ((1, 3), 4, "raster")])
def test_probabilities_sum_to_one(shape, levels, ordering):
    model = small(shape, levels, hidden=(16,), num_masks=3, ordering=ordering)
    for index in range(3):
        model.resample_masks(index=index)
        assert_normalised(model)
    assert_normalised(model, num_masks=3)
    assert model.mask_index == 2


def test_ensemble_nll_is_log_mean_likelihood():
    model = small((1, 3, 4), 3, 4, num_masks=4, ordering="random")
    model.resample_masks(index=1)
    x = torch.randint(0, 3, (5, 1, 3, 4))
    cond = torch.tensor([0, 1, 2, 3, 0])
    single = []
    for index in range(3):
        model.resample_masks(index=index)
        single.append(model.nll(x, cond))
    model.resample_masks(index=1)
    want = -(torch.stack([-s for s in single]).logsumexp(0) - math.log(3))
    torch.testing.assert_close(model.nll(x, cond, num_masks=3), want)
    assert model.mask_index == 1, "the current mask set is restored"
    torch.testing.assert_close(model.nll(x, cond, num_masks=1), single[1])
    assert not torch.allclose(single[0], single[1])


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 3), 2, 10), ((3, 2, 2), 5, 0)])
def test_nll_and_sampling_follow_the_current_ordering(shape, levels, num_classes):
    model = small(shape, levels, num_classes, num_masks=3, ordering="random")
    model.resample_masks(index=2)
    assert_nll_and_sampling(model)


def test_binary_output_is_bernoulli():
    model = small(num_classes=3)
    assert model.out.out_features == 12
    assert_bernoulli_output(model)


def test_training_lowers_loss():
    assert_mnist_training_lowers_loss(MADE(MADEConfig((1, 28, 28), 2, 10, hidden=(64,))), 32)


def test_order_agnostic_training_lowers_ensemble_nll():
    """Resampling the mask set before every step (order- and connectivity-agnostic
    training) lowers the ensemble nll of held-out images."""
    train, _ = real_batch("mnist5k-binary", 256)
    test, _ = real_batch("mnist5k-binary", 64, start=256)
    torch.manual_seed(0)
    model = MADE(MADEConfig((1, 28, 28), 2, hidden=(64,), num_masks=4, ordering="random"))
    with torch.no_grad():
        before = model.nll(test, num_masks=4).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for step in range(30):
        seen.add(model.resample_masks(gen))
        batch = train[32 * (step % 8):32 * (step % 8 + 1)]
        loss = model.nll(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.nll(test, num_masks=4).mean().item()
    assert seen == set(range(4)) and after < 0.8 * before, (before, after)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    model = small((1, 3, 3), 4, num_classes, num_masks=2)
    assert_bad_inputs(model)
    x = torch.zeros(2, 1, 3, 3, dtype=torch.int64)
    cond = torch.zeros(2, dtype=torch.int64) if num_classes else None
    with pytest.raises(ValueError, match=r"num_masks must be an int in \[1, 2\]"):
        model.nll(x, cond, num_masks=3)
    with pytest.raises(ValueError, match=r"mask index must be an int in \[0, 2\)"):
        model.resample_masks(index=2)


def test_bad_config():
    with pytest.raises(ValueError, match="hidden must be a non-empty tuple"):
        MADE(MADEConfig(hidden=()))
    with pytest.raises(ValueError, match="num_masks must be an int >= 1"):
        MADE(MADEConfig(num_masks=0))
    with pytest.raises(ValueError, match="ordering must be one of"):
        MADE(MADEConfig(ordering="zigzag"))
    with pytest.raises(ValueError, match="levels"):
        MADE(MADEConfig(levels=1))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    model = small((1, 28, 28), 2, 10, hidden=(500, 500), num_masks=4, ordering="random")
    model.resample_masks(index=3)
    # 16 random binary 28 x 28 images, sparse as MNIST's (no data set: the GPU image lacks
    # the packages that ship them)
    x = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2).long()
    y = torch.arange(16) % 10
    assert_cuda_matches_cpu(model, x, y)
    ensemble = model.nll(x.cuda(), y.cuda(), num_masks=4)
    model.cpu()
    torch.testing.assert_close(ensemble.cpu(), model.nll(x, y, num_masks=4), atol=1e-3,
                               rtol=1e-4)
