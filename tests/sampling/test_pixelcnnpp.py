"""artrt.sampling.PixelCNNppCache: teacher forcing through the cache gives the model's dmol
parameters at every pixel (grey, RGB, class-conditional, odd sizes through the stride-2
layers, one to three stages), cached sampling equals plain sampling exactly for the same
uniforms, dropout is off in the cache, bad input leaves the cache as it was, and a step
computes only a local box per layer (each position about once per sample)."""

from __future__ import annotations

import copy

import pytest
import torch

from artrt.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from artrt.sampling.pixelcnnpp import PixelCNNppCache
from tests.models.common import cache_batch, labels


def small(shape=(1, 5, 6), levels=256, num_classes=0, **kw) -> PixelCNNpp:
    torch.manual_seed(0)
    kw = {"channels": 4, "blocks": 1, "stages": 2, "num_mix": 2, "dropout": 0.0, **kw}
    return PixelCNNpp(PixelCNNppConfig(shape, levels, num_classes, **kw))


def teacher_forced_params(cache: PixelCNNppCache, x: torch.Tensor) -> torch.Tensor:
    """Push x (B, C, H, W) pixel by pixel: the params the cache gives, (B, P, H, W)."""
    w = x.shape[3]
    out = None
    while not cache.done:
        i, j = divmod(cache.step, w)
        p = cache.params()
        if out is None:
            out = torch.full((x.shape[0], p.shape[1], *x.shape[2:]), float("nan"))
        out[:, :, i, j] = p
        cache.push(x[:, :, i, j])
    return out


@pytest.mark.parametrize("shape,levels,num_classes,stages,blocks", [
    ((1, 5, 6), 256, 0, 2, 1), ((3, 4, 4), 7, 3, 2, 2), ((1, 7, 5), 2, 0, 3, 1),
    ((3, 3, 3), 256, 0, 1, 1), ((1, 1, 4), 256, 2, 3, 1)])
def test_cache_matches_forward(shape, levels, num_classes, stages, blocks):
    model = small(shape, levels, num_classes, stages=stages, blocks=blocks).eval()
    x, cond = cache_batch(model, 3)
    with torch.no_grad():
        want = model(x, cond)
        cache = model.new_cache(3, cond)
        assert cache.batch_size == 3 and cache.step == 0
        assert cache.num_steps == shape[1] * shape[2]
        assert cache.positions().tolist() == [c * shape[1] * shape[2] for c in range(shape[0])]
        got = teacher_forced_params(cache, x)
        assert cache.done
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        cache.reset(cond)
        torch.testing.assert_close(teacher_forced_params(cache, x), got)


def test_cache_has_dropout_off_and_restores_training():
    model = small((1, 4, 5), dropout=0.5)
    x, _ = cache_batch(model, 3)
    model.eval()
    with torch.no_grad():
        want = model(x)
    model.train()
    with torch.no_grad():
        got = teacher_forced_params(model.new_cache(3), x)
    assert model.training
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 5, 4), 256, 0), ((3, 3, 4), 5, 4)])
def test_cached_sampling_equals_plain(shape, levels, num_classes):
    model = small(shape, levels, num_classes, stages=3, dropout=0.5)
    n, cond = 4, labels(model, 4)
    u = torch.rand((n, 1 + shape[0], *shape[1:]), generator=torch.Generator().manual_seed(5))
    plain = model.sample(n, cond, cache=False, uniforms=u)
    assert torch.equal(model.sample(n, cond, uniforms=u), plain)
    cache = model.new_cache(n, cond)
    for _ in range(2):
        assert torch.equal(model.sample(n, cond, cache=cache, uniforms=u), plain)
    assert len(plain.unique()) > 2


def test_steps_compute_local_boxes():
    """Per layer, the boxes of all steps cover each position < 2 times in all and at most
    two rows at a time: a step's work is local, the whole sample about one forward pass."""
    model = small((1, 16, 16), channels=4, blocks=2, stages=3)
    cache = model.new_cache(1)
    for layer in cache._layers:
        boxes = [b for b in cache._boxes[layer.name] if b is not None]
        area = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in boxes)
        size = cache._values[layer.name].shape[2:].numel()
        assert area < 2 * size, layer.name
        assert max(r1 - r0 for r0, r1, _, _ in boxes) <= 2, layer.name


def test_bad_inputs_leave_the_cache_as_it_was():
    model = small((3, 3, 4), 5, num_classes=4).eval()
    x, cond = cache_batch(model, 3)
    with torch.no_grad():
        want = model(x, cond)
    cache = model.new_cache(3, cond)
    with pytest.raises(ValueError, match="batch_size=3, the call asks for n=4"):
        model.sample(4, torch.cat([cond, cond[:1]]), cache=cache)
    with pytest.raises(ValueError, match="another model"):
        copy.deepcopy(model).sample(3, cond, cache=cache)
    with pytest.raises(ValueError, match="batch_size must be"):
        model.new_cache(0, cond)
    with pytest.raises(ValueError, match=r"cond must have shape \(3,\), got \(2,\)"):
        model.new_cache(3, cond[:2])
    with torch.no_grad():
        for _ in range(5):
            i, j = divmod(cache.step, 4)
            cache.push(x[:, :, i, j])
        with pytest.raises(ValueError, match=r"cond must have shape \(3,\)"):
            model.sample(3, cond[:2], cache=cache)
        with pytest.raises(ValueError, match="shape"):
            cache.reset(torch.cat([cond, cond]))
        with pytest.raises(ValueError, match="labels must be in"):
            cache.reset(torch.full_like(cond, 4))
        with pytest.raises(TypeError, match="use params"):
            cache.logits()
        with pytest.raises(ValueError, match=r"values must have shape \(3, 3\)"):
            cache.push(torch.zeros((3, 1), dtype=torch.int64))
        with pytest.raises(TypeError, match="integer"):
            cache.push(torch.zeros((3, 3)))
        with pytest.raises(ValueError, match=r"levels in \[0, 5\)"):
            cache.push(torch.full((3, 3), 5))
        assert cache.step == 5
        while not cache.done:
            i, j = divmod(cache.step, 4)
            torch.testing.assert_close(cache.params(), want[:, :, i, j], atol=1e-4, rtol=1e-4)
            cache.push(x[:, :, i, j])
        with pytest.raises(RuntimeError, match="reset"):
            cache.params()
