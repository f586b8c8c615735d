"""artrt.ops.masked_conv2d: masked (PixelCNN) and shifted (PixelCNN++) convolutions against
F.conv2d with the masked weight / explicit shifts, forward and every gradient, every backend."""

from __future__ import annotations

import artrt.kernels.masked_conv2d as kmc
import pytest
import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops.masked_conv2d import (
    down_right_shifted_conv2d,
    down_right_shifted_conv2d_ref,
    down_shifted_conv2d,
    down_shifted_conv2d_ref,
    masked_conv2d,
    masked_conv2d_ref,
    tap_conv2d_ref,
    tap_mask,
)
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.common import assert_backward_uses_forward_backend, no_launch

SHIFTED = {
    "down": (down_shifted_conv2d, down_shifted_conv2d_ref),
    "down_right": (down_right_shifted_conv2d, down_right_shifted_conv2d_ref),
}


def hand_mask(cout, cin, k, mask_type, groups):
    """The PixelCNN mask written out independently of artrt: raster order, then the colour
    rule at the centre (contiguous channel blocks R, G, B)."""
    m = torch.zeros(cout, cin, k, k)
    c = k // 2
    for r in range(k):
        for s in range(k):
            if r < c or (r == c and s < c):
                m[:, :, r, s] = 1
    for o in range(cout):
        for i in range(cin):
            go, gi = o * groups // cout, i * groups // cin
            m[o, i, c, c] = float(gi < go or (mask_type == "B" and gi == go))
    return m


def make(b, cin, cout, h, w, kh, kw, dtype=torch.float32, device=DEVICE, seed=0):
    """x, weight (non-zero everywhere, masked positions included), bias, cond, upstream grad."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    return (rnd(b, cin, h, w), rnd(cout, cin, kh, kw) / (cin * kh * kw) ** 0.5, rnd(cout),
            rnd(b, cout), rnd(b, cout, h, w))


def run(fn, x, weight, bias, cond, grad, **kw):
    """Forward and gradients (x, weight, bias, cond) for one upstream gradient."""
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias, cond)]
    out = fn(*leaves, **kw)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad))


def masked(mask_type, groups):
    def fn(x, w, b, c, **kw):
        return masked_conv2d(x, w, b, mask_type, groups, c, **kw)
    return fn


def masked_ref(mask_type, groups):
    def fn(x, w, b, c):
        return masked_conv2d_ref(x, w, b, mask_type, groups, c)
    return fn


def assert_all_close(got, want, atol=2e-5, rtol=1e-4, names=("out", "dx", "dw", "db", "dc")):
    for g, w, what in zip(got, want, names, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, what
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=what)


# --------------------------------------------------------------------------- reference


def test_mask_pictures():
    """The k = 3 masks and the colour table of the module docstring, by hand."""
    a = tap_mask((3, 3, 3, 3), 1, 1, "A", 3)
    b = tap_mask((3, 3, 3, 3), 1, 1, "B", 3)
    spatial = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]])
    for m in (a, b):
        for o in range(3):
            for i in range(3):
                off_centre = m[o, i].clone()
                off_centre[1, 1] = 0
                assert torch.equal(off_centre, spatial)
    assert torch.equal(a[:, :, 1, 1], torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(b[:, :, 1, 1], torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert tap_mask((2, 2, 3, 3), 1, 1, "A", 1)[:, :, 1, 1].sum() == 0
    assert tap_mask((2, 2, 3, 3), 1, 1, "B", 1)[:, :, 1, 1].sum() == 4


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("groups", [1, 3])
def test_reference_is_conv_with_masked_weight(k, mask_type, groups):
    x, w, b, c, _ = make(2, 6, 9, 5, 7, k, k)
    want = F.conv2d(x, w * hand_mask(9, 6, k, mask_type, groups), b, padding=k // 2)
    want = want + c[:, :, None, None]
    torch.testing.assert_close(masked_conv2d_ref(x, w, b, mask_type, groups, c), want)
    torch.testing.assert_close(tap_mask(w.shape, k // 2, k // 2, mask_type, groups),
                               hand_mask(9, 6, k, mask_type, groups))


def test_reference_shifted_is_explicit_shift():
    x, w23, b, c, _ = make(2, 4, 5, 6, 7, 2, 3)
    want = F.conv2d(F.pad(x, (1, 1, 1, 0)), w23, b) + c[:, :, None, None]
    torch.testing.assert_close(down_shifted_conv2d_ref(x, w23, b, c), want)
    w22 = w23[..., :2]
    torch.testing.assert_close(down_right_shifted_conv2d_ref(x, w22, b),
                               F.conv2d(F.pad(x, (1, 0, 1, 0)), w22, b))


@pytest.mark.parametrize("case", ["maskA3", "maskB1", "down", "down_right"])
def test_gradcheck_reference(case):
    x, w, b, c, _ = make(2, 3, 3, 4, 5, 3, 3, dtype=torch.float64, device="cpu")
    if case == "maskA3":
        fn = masked("A", 3)
    elif case == "maskB1":
        fn = masked("B", 1)
    else:
        w = w[:, :, :2, : 3 if case == "down" else 2]
        fn = SHIFTED[case][0]
    inputs = tuple(t.requires_grad_() for t in (x, w, b, c))
    assert torch.autograd.gradcheck(lambda *t: fn(*t, backend="reference"), inputs)


def test_gradgradcheck_reference():
    x, w, b, c, _ = make(1, 3, 3, 3, 4, 3, 3, dtype=torch.float64, device="cpu")
    fn = masked("A", 3)
    inputs = tuple(t.requires_grad_() for t in (x, w, b, c))
    assert torch.autograd.gradgradcheck(lambda *t: fn(*t, backend="reference"), inputs)


# --------------------------------------------------------------------------- kernels

# (B, Cin, Cout, H, W, k, mask_type, color_groups): odd sizes, H or W = 1, 33, channels 3 /
# 5 / 129, every mask type and colour grouping.
MASKED_CASES = [
    (2, 3, 6, 7, 5, 3, "A", 3),
    (2, 6, 9, 7, 7, 3, "B", 3),
    (1, 5, 4, 1, 7, 5, "B", 1),
    (2, 5, 7, 7, 1, 3, "A", 1),
    (1, 3, 129, 3, 11, 7, "B", 3),
    (1, 129, 3, 5, 3, 3, "A", 3),
    (1, 5, 6, 33, 33, 3, "B", 1),
    (2, 4, 3, 3, 3, 1, "A", 1),  # k = 1 mask A: no live tap, bias and cond only
]


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("case", MASKED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_masked_matches_reference(backend, case):
    b, cin, cout, h, w, k, mask_type, groups = case
    x, wt, bias, cond, grad = make(b, cin, cout, h, w, k, k)
    want = run(masked_ref(mask_type, groups), x, wt, bias, cond, grad)
    got = run(masked(mask_type, groups), x, wt, bias, cond, grad, backend=backend)
    assert got[0].is_contiguous()
    assert_all_close(got, want)
    dead = tap_mask(wt.shape, k // 2, k // 2, mask_type, groups, DEVICE) == 0
    assert torch.all(got[2][dead] == 0), "masked weight entries must get zero gradient"


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("kind", SHIFTED)
@pytest.mark.parametrize("kernel,shape", [((2, 3), (2, 5, 6, 7, 9)), ((2, 2), (1, 3, 129, 1, 5)),
                                          ((3, 5), (2, 4, 5, 5, 4)), ((1, 1), (1, 3, 4, 2, 3))])
def test_kernel_shifted_matches_reference(backend, kind, kernel, shape):
    fn, ref = SHIFTED[kind]
    b, cin, cout, h, w = shape
    x, wt, bias, cond, grad = make(b, cin, cout, h, w, *kernel)
    want = run(ref, x, wt, bias, cond, grad)
    got = run(fn, x, wt, bias, cond, grad, backend=backend)
    assert_all_close(got, want)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("layout", ["strided", "permuted"])
def test_kernel_non_contiguous(backend, layout):
    x, wt, bias, cond, grad = make(3, 6, 6, 5, 7, 3, 3)
    fn, ref = masked("A", 3), masked_ref("A", 3)
    want = run(ref, x, wt, bias, cond, grad)
    nc = [with_layout(t, layout) for t in (x, wt, bias, cond, grad)]
    assert not any(t.is_contiguous() for t in nc if t.dim() > 1)
    got = run(fn, *nc, backend=backend)
    assert_all_close(got, want)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    got = run(fn, channels_last, wt, bias, cond, grad, backend=backend)
    assert_all_close(got, want)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision(backend, dtype):
    x, wt, bias, cond, grad = make(2, 6, 9, 7, 5, 5, 5, dtype=dtype)
    fn, ref = masked("B", 3), masked_ref("B", 3)
    fp32 = run(ref, *(t.float() for t in (x, wt, bias, cond, grad)))
    lowp = run(ref, x, wt, bias, cond, grad)
    got = run(fn, x, wt, bias, cond, grad, backend=backend)
    for g, lp, f, what in zip(got, lowp, fp32, ("out", "dx", "dw", "db", "dc"), strict=True):
        assert g.dtype == dtype
        assert_close_lowp(g, lp, f, f"{dtype} {what}")


@pytest.mark.parametrize("backend", kernel_backends())
def test_kernel_partial_grads_and_residual(backend):
    """Only the weight needs a gradient (first layer: the image does not); the residual
    input of the op is fused into the epilogue and gets the upstream gradient."""
    x, wt, bias, _, grad = make(2, 3, 6, 5, 4, 3, 3)
    res = torch.randn(2, 6, 5, 4, device=DEVICE)
    w = wt.detach().requires_grad_()
    r = res.detach().requires_grad_()
    out = torch.ops.artrt.tap_conv2d(x, w, bias, None, r, 1, 1, "A", 3, backend)
    dw, dr = torch.autograd.grad(out, (w, r), grad)
    w2 = wt.detach().requires_grad_()
    want = tap_conv2d_ref(x, w2, bias, None, 1, 1, "A", 3, res)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(dw, torch.autograd.grad(want, w2, grad)[0])
    torch.testing.assert_close(dr, grad)


@pytest.mark.parametrize("backend", kernel_backends())
def test_kernel_empty_batch(backend):
    x, wt, bias, cond, _ = make(0, 3, 6, 5, 4, 3, 3)
    assert masked_conv2d(x, wt, bias, "A", 3, cond, backend=backend).shape == (0, 6, 5, 4)


# --------------------------------------------------------------------------- dispatch


def test_default_backend_on_cpu_is_reference(monkeypatch):
    x, wt, *_ = make(1, 3, 3, 4, 4, 3, 3, device="cpu")
    with no_launch(monkeypatch, kmc, "tap_conv_fwd"):
        torch.testing.assert_close(masked_conv2d(x, wt), masked_conv2d_ref(x, wt))


def test_backward_uses_forward_backend(monkeypatch):
    x, wt, *_ = make(1, 3, 3, 4, 4, 3, 3)
    wt.requires_grad_()
    assert_backward_uses_forward_backend(monkeypatch, kmc, "tap_conv_wgrad",
                                         lambda: masked_conv2d(x, wt))


def test_forced_backend_cannot_run():
    x, wt, *_ = make(1, 3, 3, 4, 4, 3, 3, dtype=torch.float64)
    with pytest.raises(backends.BackendUnavailableError, match="float64"):
        masked_conv2d(x, wt, backend="triton")
    with pytest.raises(backends.BackendUnavailableError, match="no implementation"):
        masked_conv2d(x, wt, backend="cuda")


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    x, wt, bias, cond, _ = make(2, 6, 6, 5, 5, 3, 3, device="cpu")
    with pytest.raises(ValueError, match="square with an odd size, got 4 x 4"):
        masked_conv2d(x, torch.randn(6, 6, 4, 4))
    with pytest.raises(ValueError, match="square with an odd size, got 3 x 5"):
        masked_conv2d(x, torch.randn(6, 6, 3, 5))
    with pytest.raises(ValueError, match="color_groups=4 must divide.*Cin=6, Cout=6"):
        masked_conv2d(x, wt, color_groups=4)
    with pytest.raises(ValueError, match="color_groups=3 must divide.*Cout=4"):
        masked_conv2d(x, torch.randn(4, 6, 3, 3), color_groups=3)
    with pytest.raises(ValueError, match="color_groups must be >= 1"):
        masked_conv2d(x, wt, color_groups=0)
    with pytest.raises(TypeError, match="color_groups must be an int"):
        masked_conv2d(x, wt, color_groups=3.0)
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B', got 'C'"):
        masked_conv2d(x, wt, mask_type="C")
    with pytest.raises(ValueError, match="expects 5 input channels.*has 6"):
        masked_conv2d(x, torch.randn(6, 5, 3, 3))
    with pytest.raises(ValueError, match="x must be 4-D"):
        masked_conv2d(x[0], wt)
    with pytest.raises(ValueError, match="weight must be 4-D"):
        down_shifted_conv2d(x, wt[0])
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        masked_conv2d(x.long(), wt.long())
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        masked_conv2d(x, wt.double())
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\), got \(5,\)"):
        masked_conv2d(x, wt, bias[:5])
    with pytest.raises(ValueError, match=r"cond must have shape \(2, 6\), got \(1, 6\)"):
        masked_conv2d(x, wt, cond=cond[:1])
    with pytest.raises(TypeError, match="cond must have x's dtype"):
        masked_conv2d(x, wt, cond=cond.double())
    with pytest.raises(ValueError, match="weight must be on x's device"):
        masked_conv2d(x, wt.to("meta"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        masked_conv2d(x.tolist(), wt)
    with pytest.raises(ValueError, match="needs mask_type 'A' or 'B'"):
        torch.ops.artrt.tap_conv2d(x, wt, None, None, None, 1, 1, "none", 3, "auto")
    with pytest.raises(ValueError, match="must lie in the 3 x 3 kernel"):
        torch.ops.artrt.tap_conv2d(x, wt, None, None, None, 3, 1, "B", 1, "auto")
    with pytest.raises(ValueError, match="grad_out must have shape"):
        torch.ops.artrt.tap_conv2d_backward(x, x, torch.randn(5, 6, 3, 3), 1, 1, "B", 1,
                                            True, True, "auto")


# --------------------------------------------------------------------------- torch.library


OPCHECK_BACKENDS = ["reference", *kernel_backends()]


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
def test_opcheck(backend):
    x, wt, bias, cond, grad = make(2, 3, 6, 4, 5, 3, 3)
    args = (x.requires_grad_(), wt.requires_grad_(), bias.requires_grad_(),
            cond.requires_grad_(), None, 1, 1, "A", 3, backend)
    torch.library.opcheck(torch.ops.artrt.tap_conv2d.default, args)
    torch.library.opcheck(torch.ops.artrt.tap_conv2d_backward.default,
                          (grad, x.detach(), wt.detach(), 0, 1, "none", 1, True, False,
                           backend))


@pytest.mark.parametrize("backend", [None, *kernel_backends()])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x, wt, bias, cond, _ = make(2, 3, 3, 5, 4, 3, 3)
    w23 = torch.randn(3, 3, 2, 3, device=DEVICE)

    def block(x, wt, cond):
        h = masked_conv2d(x * 2.0, wt, bias, "A", 3, cond, backend=backend)
        return down_shifted_conv2d(torch.relu(h), w23, backend=backend).square().sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    leaves = [t.detach().requires_grad_() for t in (x, wt, cond)]
    want = torch.autograd.grad(block(*leaves), leaves)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- GPU, real shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [128, 256])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("mask_type,groups", [("A", 3), ("B", 1)])
def test_gpu_real_shapes(dtype, channels, k, mask_type, groups):
    """B=16, 32x32 (the benchmark's shapes at a quarter of the batch): the kernel's error
    against a float64 reference is at most twice cuDNN's in the same dtype (TF32 in fp32,
    torch's default for convolutions)."""
    x, wt, bias, cond, grad = make(16, channels - channels % 3, channels - channels % 3,
                                   32, 32, k, k, dtype=dtype, device="cuda")
    fp64 = run(masked_ref(mask_type, groups), *(t.double() for t in (x, wt, bias, cond, grad)))
    lowp = run(masked_ref(mask_type, groups), x, wt, bias, cond, grad)
    got = run(masked(mask_type, groups), x, wt, bias, cond, grad, backend="triton")
    for g, lp, f, what in zip(got, lowp, fp64, ("out", "dx", "dw", "db", "dc"), strict=True):
        assert_close_lowp(g, lp, f, f"{dtype} C={channels} k={k} {what}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,kernel", [("down", (2, 3)), ("down_right", (2, 2))])
def test_gpu_shifted_real_shapes(dtype, kind, kernel):
    fn, ref = SHIFTED[kind]
    x, wt, bias, cond, grad = make(16, 160, 160, 32, 32, *kernel, dtype=dtype, device="cuda")
    fp64 = run(ref, *(t.double() for t in (x, wt, bias, cond, grad)))
    lowp = run(ref, x, wt, bias, cond, grad)
    got = run(fn, x, wt, bias, cond, grad, backend="triton")
    for g, lp, f, what in zip(got, lowp, fp64, ("out", "dx", "dw", "db", "dc"), strict=True):
        assert_close_lowp(g, lp, f, f"{kind} {dtype} {what}")
