"""artrt.models.PixelCNNpp: the raster ordering through the Jacobian of the dmol parameters
(no pixel's parameters depend on the pixel itself or later ones; on small images they depend
on every earlier one), the probabilities of every image sum to one, nll equal to the sum of
the per-pixel log-probabilities, sampling by dmol_sample at given uniforms, class
conditioning, dropout only in training, the kernel backend against the reference, training on
real data, bad input and bad configs."""

from __future__ import annotations

import pytest
import torch

import artrt
from artrt.data import from_input, to_input
from artrt.models import MODELS
from artrt.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from tests.helpers import kernel_backends
from tests.models.common import (
    all_images,
    assert_backend_matches_reference,
    assert_bad_inputs,
    assert_training_lowers_loss,
    real_batch,
)


def small(shape=(1, 4, 4), levels=256, num_classes=0, **kw) -> PixelCNNpp:
    torch.manual_seed(0)
    kw = {"channels": 4, "blocks": 1, "stages": 2, "num_mix": 2, "dropout": 0.0, **kw}
    return PixelCNNpp(PixelCNNppConfig(shape, levels, num_classes, **kw))


def pixel_dependencies(model, cond=None, seed: int = 0) -> torch.Tensor:
    """(H W, H W) bool, [o, i]: whether pixel o's parameters depend on any channel of pixel i,
    from the float64 Jacobian at a random input, the parameters projected on random weights."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = model.shape
    model = model.double()
    v = torch.rand((1, c, h, w), generator=g, dtype=torch.float64) * 2 - 1
    p = model.out.out_channels
    wt = torch.randn(p, generator=g, dtype=torch.float64).view(1, p, 1, 1)

    def f(inp):
        return (model.forward_input(inp, cond) * wt).sum(1).reshape(-1)  # (H W,)

    with artrt.use_backend("reference"):
        jac = torch.autograd.functional.jacobian(f, v)  # (H W, 1, C, H, W)
    model.float()
    return jac.reshape(h * w, c, h * w).ne(0).any(1)


def assert_raster_autoregressive(model, cond=None, complete: bool = True) -> None:
    hw = model.shape[1] * model.shape[2]
    allowed = torch.arange(hw)[None, :] < torch.arange(hw)[:, None]
    dep = pixel_dependencies(model, cond)
    leaks = (dep & ~allowed).nonzero().tolist()
    assert not leaks, f"pixels depend on themselves or later pixels: {leaks[:5]}"
    if complete:
        missing = (allowed & ~dep).nonzero().tolist()
        assert not missing, f"blind spot: pixels miss earlier pixels: {missing[:5]}"


def test_registered_and_generation_steps():
    assert MODELS["pixelcnnpp"] == (PixelCNNpp, PixelCNNppConfig)
    steps = small((3, 2, 3)).generation_steps()
    assert steps.dtype == torch.int64 and steps.shape == (3, 2, 3)
    assert all(s.tolist() == [[0, 1, 2], [3, 4, 5]] for s in steps)


@pytest.mark.parametrize("shape,num_classes,stages", [((1, 4, 4), 0, 2), ((3, 3, 5), 4, 2),
                                                      ((1, 5, 4), 0, 3), ((3, 1, 3), 0, 1)])
def test_autoregressive(shape, num_classes, stages):
    """Pixel (i, j)'s parameters depend on every pixel before it and on nothing else
    (odd sizes go through the stride-2 layers and the crop of the transposed ones)."""
    model = small(shape, num_classes=num_classes, stages=stages)
    assert_raster_autoregressive(model, torch.tensor([3]) if num_classes else None)


def test_no_leak_on_a_larger_image():
    """8 x 8, 3 stages: nothing leaks (one block per stage leaves far corners unseen)."""
    assert_raster_autoregressive(small((1, 8, 8), stages=3), complete=False)


def test_output_layout():
    rgb, gray = small((3, 2, 3), num_mix=3), small((1, 2, 3), num_mix=3)
    x = torch.zeros(2, 3, 2, 3, dtype=torch.int64)
    assert rgb(x).shape == (2, 30, 2, 3) and gray(x[:, :1]).shape == (2, 9, 2, 3)
    want = artrt.dmol_nll(rgb(x), to_input(x, 256), 3)
    torch.testing.assert_close(rgb.nll(x), want)


@pytest.mark.parametrize("shape,levels", [((1, 2, 2), 2), ((1, 2, 2), 3), ((3, 1, 1), 4),
                                          ((3, 1, 2), 2)])
def test_probabilities_sum_to_one(shape, levels):
    model = small(shape, levels)
    x = all_images(shape, levels)
    with torch.no_grad():
        logp = -model.nll(x)
    torch.testing.assert_close(logp.logsumexp(0), torch.zeros(()))


@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 3), 256, 0), ((3, 2, 3), 5, 3)])
def test_nll_is_sum_of_pixels(shape, levels, num_classes):
    """nll(x) = sum over pixels p of the dmol nll of p from a pass on an input that holds x
    before p and noise at p and after."""
    model = small(shape, levels, num_classes).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, levels, (3, *shape), generator=g)
    cond = torch.tensor([0, 2, 1]) if num_classes else None
    steps = model.generation_steps()
    _, h, w = shape
    total = torch.zeros(3)
    with torch.no_grad():
        for p in range(h * w):
            i, j = divmod(p, w)
            xs = torch.where(steps < p, x, torch.randint(0, levels, x.shape, generator=g))
            params = model(xs, cond)[:, :, i:i + 1, j:j + 1]
            v = to_input(x[:, :, i:i + 1, j:j + 1], levels)
            total += artrt.dmol_nll(params, v, model.config.num_mix, levels=levels)
        torch.testing.assert_close(model.nll(x, cond), total, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("shape,levels,num_classes", [((1, 3, 3), 256, 0), ((3, 2, 3), 7, 4)])
def test_sampling(shape, levels, num_classes, cache):
    """Shape, dtype, range; the same samples from the same seed and from the uniforms that
    seed draws; eval mode inside the loop and the training flag restored; every pixel is
    dmol_sample of the parameters the sample itself gives, at its uniforms."""
    model = small(shape, levels, num_classes, dropout=0.5)
    n = 3
    cond = torch.tensor([1, 3, 0]) if num_classes else None
    modes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: modes.append(m.training))
             for m in model.modules()]
    model.train()
    a = model.sample(n, cond, cache=cache, generator=torch.Generator().manual_seed(3))
    for hook in hooks:
        hook.remove()
    assert model.training and modes and not any(modes)
    assert a.shape == (n, *shape) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() < levels
    u = torch.rand((n, 1 + shape[0], *shape[1:]), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, model.sample(n, cond, cache=cache,
                                       generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, model.sample(n, cond, cache=cache, uniforms=u, progress=True))
    model.eval()
    with torch.no_grad():
        v = artrt.dmol_sample(model(a, cond), model.config.num_mix, uniforms=u, levels=levels)
    assert torch.equal(from_input(v, levels), a)


def test_class_conditional():
    model = small((1, 2, 2), 3, num_classes=3)
    x = all_images((1, 2, 2), 3)
    for label in range(3):
        with torch.no_grad():
            logp = -model.nll(x, torch.full((len(x),), label))
        torch.testing.assert_close(logp.logsumexp(0), torch.zeros(()))
    x = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    a, b = model(x, torch.tensor([0, 0])), model(x, torch.tensor([0, 2]))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-3, "the label changes the parameters"


def test_dropout_only_in_training():
    model = small((1, 4, 4), dropout=0.5)
    x = torch.randint(0, 256, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("backend", kernel_backends())
def test_kernel_backend_matches_reference(backend):
    assert_backend_matches_reference(small((3, 3, 2), 4, 2), backend)


def test_training_lowers_loss():
    x, y = real_batch("digits8x8", 16)
    torch.manual_seed(0)
    model = PixelCNNpp(PixelCNNppConfig((1, 8, 8), 17, 10, channels=8, blocks=1, stages=2,
                                        num_mix=3, dropout=0.0))
    assert_training_lowers_loss(model, x, y, steps=15, lr=1e-2)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_bad_inputs(num_classes):
    """The shared checks (uniforms: the component's, then one per channel), and messages
    that name the shapes and values."""
    shape = (3, 2, 3)
    model = small(shape, 5, num_classes)
    assert_bad_inputs(model, uniforms_shape=(4, 2, 3))
    x = torch.zeros((2, *shape), dtype=torch.int64)
    cond = torch.zeros(2, dtype=torch.int64) if num_classes else None
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 2, 3\), got "
                                         r"\(2, 1, 2, 3\)"):
        model.nll(x[:, :1], cond)
    with pytest.raises(ValueError, match=r"levels in \[0, 5\), got values in \[5, 5\]"):
        model.nll(x + 5, cond)
    with pytest.raises(ValueError, match=r"uniforms must have shape \(2, 4, 2, 3\), got "
                                         r"\(2, 3, 2, 3\)"):
        model.sample(2, cond, uniforms=torch.rand(2, *shape))
    with pytest.raises(TypeError, match="cache must be"):
        model.sample(2, cond, cache="yes")


def test_bad_config():
    with pytest.raises(ValueError, match="C = 1 .* or 3 .* got C = 2"):
        PixelCNNpp(PixelCNNppConfig((2, 4, 4)))
    for field in ("channels", "blocks", "stages", "num_mix"):
        with pytest.raises(ValueError, match=f"{field} must be an int >= 1, got 0"):
            PixelCNNpp(PixelCNNppConfig(**{field: 0}))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        PixelCNNpp(PixelCNNppConfig(dropout=1.0))
    with pytest.raises(ValueError, match="levels"):
        PixelCNNpp(PixelCNNppConfig(levels=1))
    with pytest.raises(ValueError, match="shape"):
        PixelCNNpp(PixelCNNppConfig(shape=(28, 28)))


@pytest.mark.gpu
def test_gpu_matches_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convs, as the CPU
    model = small((3, 8, 8), 256, 10, channels=16, stages=3)
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    cond = torch.arange(4)
    want = model.nll(x, cond)
    model.cuda()
    torch.testing.assert_close(model.nll(x.cuda(), cond.cuda()).cpu(), want, atol=1e-2,
                               rtol=1e-4)
    u = torch.rand((2, 4, 8, 8), generator=torch.Generator().manual_seed(1)).cuda()
    a = model.sample(2, cond[:2].cuda(), uniforms=u)
    b = model.sample(2, cond[:2].cuda(), uniforms=u, cache=False)
    # The cache convolves windows, the plain loop whole images: other cuDNN algorithms, so a
    # value whose logistic sample lies within rounding of a bin edge (1 in 256 levels) may
    # land one level apart (and nudge the pixels after it); allow a few such values, far
    # fewer than a wrong sampler gives.
    assert (a != b).double().mean() <= 0.02
