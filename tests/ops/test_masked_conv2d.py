"""artrt.ops.masked_conv2d: masked (PixelCNN) and shifted (PixelCNN++) convolutions against
F.conv2d with the masked weight / explicit shifts, forward and every gradient, every backend."""

from __future__ import annotations

import sys

import artrt.kernels.masked_conv2d as kmc
import pytest
import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops.gated import gated_tanh_ref
from artrt.ops.gated_pixelcnn import gated_tap_conv2d
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

CPU = ["cpu"] if DEVICE == "cpu" else []  # the cpu backend, on the tensors these tests make

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

    return (rnd(b, cin, h, w), rnd(cout, cin, kh, kw) / max(cin * kh * kw, 1) ** 0.5,
            rnd(cout), rnd(b, cout), rnd(b, cout, h, w))


def run(fn, x, weight, bias, cond, grad, **kw):
    """Forward and gradients (x, weight, bias, cond) for one upstream gradient (zeros for an
    input the output does not depend on: the reference has no term for x without live taps)."""
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias, cond)]
    out = fn(*leaves, **kw)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad, allow_unused=True,
                                               materialize_grads=True))


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


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
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


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
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


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
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


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
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


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
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


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
def test_kernel_empty_batch(backend):
    x, wt, bias, cond, _ = make(0, 3, 6, 5, 4, 3, 3)
    assert masked_conv2d(x, wt, bias, "A", 3, cond, backend=backend).shape == (0, 6, 5, 4)


# --------------------------------------------------------------------------- cpu backend


def _cpu_call(fn, path, monkeypatch):
    """``fn`` on the cpu backend by ``path``: ``direct`` (the public function's eager call,
    skipping the dispatcher) or ``op`` (through the torch.library op, as compile runs it)."""
    if path == "op":
        monkeypatch.setattr(backends, "direct_call", lambda *t: False)
    return lambda *a: fn(*a, backend="cpu")


CPU_CASES = [*MASKED_CASES, (2, 6, 6, 1, 1, 3, "B", 3), (1, 4, 5, 1, 1, 5, "A", 1),
             (2, 3, 3, 2, 9, 7, "B", 1), (1, 3, 3, 9, 1, 7, "A", 3)]


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("path", ["direct", "op"])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_matches_reference_fp64(case, path, monkeypatch):
    """Forward and every gradient in float64, the reference's to rounding: images smaller
    than the kernel (1 x 1: only the centre tap reaches a pixel; 2 x 9, 9 x 1), colour groups,
    both masks, by both paths into the cpu backend."""
    b, cin, cout, h, w, k, mask_type, groups = case
    x, wt, bias, cond, grad = make(b, cin, cout, h, w, k, k, dtype=torch.float64)
    want = run(masked_ref(mask_type, groups), x, wt, bias, cond, grad)
    got = run(_cpu_call(masked(mask_type, groups), path, monkeypatch), x, wt, bias, cond, grad)
    assert_all_close(got, want, atol=1e-12, rtol=1e-12)
    for kind, kernel in (("down", (2, 3)), ("down_right", (2, 2)), ("down", (3, 1))):
        fn, ref = SHIFTED[kind]
        x, wt, bias, cond, grad = make(b, cin, cout, h, w, *kernel, dtype=torch.float64)
        assert_all_close(run(_cpu_call(fn, path, monkeypatch), x, wt, bias, cond, grad),
                         run(ref, x, wt, bias, cond, grad), atol=1e-12, rtol=1e-12)


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1)])
@pytest.mark.parametrize("kind,kernel,tap", [("B", 3, (0, 0)), ("A", 5, (2, 0)),
                                             ("down", (2, 3), (1, 0)),
                                             ("down_right", (2, 2), (0, 0))])
def test_cpu_image_smaller_than_kernel(kind, kernel, tap, hw):
    """An image smaller than the kernel runs only the taps that reach it, but a NaN in a live
    weight entry that reads only the zero padding still gives NaN, as in the reference (found
    by tests/test_fuzz.py: a 1 x 1 image, down_shifted_conv2d)."""
    fn = SHIFTED[kind][0] if kind in SHIFTED else masked(kind, 1)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    x, wt, bias, cond, grad = make(2, 3, 4, *hw, kh, kw)
    assert_all_close(run(fn, x, wt, bias, cond, grad, backend="cpu"),
                     run(fn, x, wt, bias, cond, grad, backend="reference"))
    wt[1, 2, tap[0], tap[1]] = NAN
    got = run(fn, x, wt, bias, cond, grad, backend="cpu")
    want = run(fn, x, wt, bias, cond, grad, backend="reference")
    assert torch.isnan(want[0]).any()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, equal_nan=True, atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("path", ["direct", "op"])
def test_cpu_gradgradcheck(path, monkeypatch):
    x, w, b, c, _ = make(1, 3, 3, 3, 4, 3, 3, dtype=torch.float64, device="cpu")
    inputs = tuple(t.requires_grad_() for t in (x, w, b, c))
    for fn in (masked("A", 3), masked("B", 1), SHIFTED["down"][0]):
        call = _cpu_call(fn, path, monkeypatch)
        assert torch.autograd.gradgradcheck(call, inputs)


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("grad", [False, True])
def test_default_backend_on_cpu_is_cpu(monkeypatch, grad):
    """No backend forced, CPU tensors: the cpu backend's forward (and its backward for a
    masked convolution; a shifted one trains through aten's own autograd nodes)."""
    mc = sys.modules["artrt.ops.masked_conv2d"]  # artrt.ops.masked_conv2d is the function
    calls = []
    for fname in ("_cpu_forward", "_cpu_backward", "tap_conv2d_ref"):
        orig = getattr(mc, fname)
        monkeypatch.setattr(mc, fname, lambda *a, _f=orig, _n=fname, **k: (
            calls.append(_n), _f(*a, **k))[1])
    x, wt, bias, cond, g = make(2, 3, 6, 4, 5, 3, 3)
    with torch.set_grad_enabled(grad):
        leaves = [t.requires_grad_(grad) for t in (x, wt, bias, cond)]
        out = masked_conv2d(*leaves[:3], "B", 3, leaves[3])
        if grad:
            out.backward(g)
    assert calls == ["_cpu_forward", *(["_cpu_backward"] if grad else [])]


# --------------------------------------------------------------------------- inf and NaN

BACKENDS = ["reference", *CPU, *kernel_backends()]
NAN, INF = float("nan"), float("inf")
# The interpreter's numpy matmul warns about the NaN / inf these tests feed it on purpose.
NONFINITE_OK = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def sees(mask, c, i, j, height, width, pad_top, pad_left):
    """seen[o, i2, j2]: output (o, i2, j2) reads input (c, i, j) through a tap that ``mask``
    (Cout, Cin, kh, kw) keeps, the output pixel being the tap at (pad_top, pad_left)."""
    seen = torch.zeros(mask.shape[0], height, width, dtype=torch.bool)
    for r in range(mask.shape[2]):
        for s in range(mask.shape[3]):
            i2, j2 = i - r + pad_top, j - s + pad_left
            if 0 <= i2 < height and 0 <= j2 < width:
                seen[:, i2, j2] |= mask[:, c, r, s] != 0
    return seen


def reads(mask, c, i, j, height, width, pad_top, pad_left):
    """read[o, c2, r, s]: weight entry (o, c2, r, s) is kept by ``mask`` and multiplies input
    (c, i, j) for some output pixel (so its gradient sees that input)."""
    read = torch.zeros(mask.shape, dtype=torch.bool)
    for r in range(mask.shape[2]):
        for s in range(mask.shape[3]):
            if 0 <= i - r + pad_top < height and 0 <= j - s + pad_left < width:
                read[:, c, r, s] = mask[:, c, r, s] != 0
    return read


# (kind, colour groups, kernel): masks A / B with and without colour groups (k = 1 with
# groups: the centre tap alone), and the shifted convolutions (no masked entry)
NONFINITE_CASES = [("A", 1, 3), ("B", 1, 5), ("A", 3, 3), ("B", 3, 5), ("A", 3, 1),
                   ("down", 1, (2, 3)), ("down_right", 1, (2, 2))]


def conv_case(case, cout, cin):
    """(fn, (kh, kw), pad_top, pad_left, mask (Cout, Cin, kh, kw)) of a NONFINITE_CASES entry,
    the mask written out independently of artrt."""
    kind, groups, k = case
    if kind in SHIFTED:
        kh, kw = k
        pad_left = (kw - 1) // 2 if kind == "down" else kw - 1
        return SHIFTED[kind][0], k, kh - 1, pad_left, torch.ones(cout, cin, kh, kw)
    return masked(kind, groups), (k, k), k // 2, k // 2, hand_mask(cout, cin, k, kind, groups)


@NONFINITE_OK
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", NONFINITE_CASES[:5], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_masked_weight_entries_are_ignored(backend, case, bad):
    """NaN or inf in the masked weight entries changes nothing: output and every gradient
    finite, equal to the reference with zeros there, and those entries get zero gradient
    (the reference multiplied them by a 0/1 mask: NaN everywhere)."""
    fn, (k, _), _, _, mask = conv_case(case, 9, 6)
    x, wt, bias, cond, grad = make(2, 6, 9, 5, 7, k, k)
    dead = (mask == 0).to(DEVICE)
    assert dead.any()
    want = run(masked_ref(case[0], case[1]), x, wt.masked_fill(dead, 0), bias, cond, grad)
    got = run(fn, x, wt.masked_fill(dead, bad), bias, cond, grad, backend=backend)
    assert all(torch.isfinite(t).all() for t in got)
    assert_all_close(got, want)
    assert torch.all(got[2][dead] == 0)


@NONFINITE_OK
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("pixel", [(2, 3), (0, 6)])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_nonfinite_pixel_reaches_exactly_the_outputs_that_see_it(backend, case, pixel, bad):
    """x[b, c, i, j] NaN or inf: non-finite exactly at the outputs whose kept taps read it
    (with colour groups the centre only in the groups allowed to see channel c), and the
    weight gradient exactly at the kept entries that multiply it; masked entries keep a zero
    gradient, dx / dbias / dcond stay finite. Every backend, against the reference too.
    (F.conv2d with the masked entries zeroed gives 0 * NaN = NaN in the whole window.)"""
    fn, (kh, kw), pad_top, pad_left, mask = conv_case(case, 9, 6)
    x, wt, bias, cond, grad = make(2, 6, 9, 5, 7, kh, kw)
    b, c, (i, j) = 1, 2, pixel  # channel 2: the second colour group of three
    x[b, c, i, j] = bad
    got = run(fn, x, wt, bias, cond, grad, backend=backend)
    out, dx, dw, db, dc = got
    want_out = torch.zeros(out.shape, dtype=torch.bool)
    want_out[b] = sees(mask, c, i, j, 5, 7, pad_top, pad_left)
    assert want_out.any()
    assert torch.equal(~torch.isfinite(out).cpu(), want_out)
    assert torch.equal(~torch.isfinite(dw).cpu(), reads(mask, c, i, j, 5, 7, pad_top, pad_left))
    assert torch.all(dw[(mask == 0).to(DEVICE)] == 0)
    assert all(torch.isfinite(t).all() for t in (dx, db, dc))
    if case[0] in SHIFTED:
        want = run(SHIFTED[case[0]][1], x, wt, bias, cond, grad)
    else:
        want = run(masked_ref(case[0], case[1]), x, wt, bias, cond, grad)
    for g, w, what in zip(got, want, ("out", "dx", "dw", "db", "dc"), strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, equal_nan=True, msg=what)


@NONFINITE_OK
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("bad", [NAN, INF])
def test_nonfinite_grad_reaches_exactly_what_the_output_sees(backend, case, bad):
    """grad_out[b, o, i, j] NaN or inf: dx non-finite exactly at the inputs that output reads
    through its kept taps (with colour groups, at the centre only the channels its group may
    see: not every channel through the masked entries' zeros), dw exactly at the kept entries
    of row o that meet an input inside the image, dbias at o and dcond at (b, o); the forward
    untouched. Every backend, the reference too (each path that a dense convolution with the
    masked weight would take gets this wrong)."""
    fn, (kh, kw), pad_top, pad_left, mask = conv_case(case, 9, 6)
    x, wt, bias, cond, grad = make(2, 6, 9, 5, 7, kh, kw)
    b, o, i, j = 1, 4, 2, 3  # channel 4: the second colour group of three
    grad[b, o, i, j] = bad
    out, dx, dw, db, dc = run(fn, x, wt, bias, cond, grad, backend=backend)
    want_dx = torch.zeros(dx.shape, dtype=torch.bool)
    want_dw = torch.zeros(dw.shape, dtype=torch.bool)
    for r in range(kh):
        for s in range(kw):
            i2, j2 = i + r - pad_top, j + s - pad_left
            if 0 <= i2 < 5 and 0 <= j2 < 7:
                want_dx[b, :, i2, j2] |= mask[o, :, r, s] != 0
                want_dw[o, :, r, s] = mask[o, :, r, s] != 0
    assert want_dx.any() and want_dw.any()
    assert torch.isfinite(out).all()
    assert torch.equal(~torch.isfinite(dx).cpu(), want_dx)
    assert torch.equal(~torch.isfinite(dw).cpu(), want_dw)
    want_b = torch.zeros(db.shape, dtype=torch.bool)
    want_b[o] = True
    assert torch.equal(~torch.isfinite(db).cpu(), want_b)
    want_c = torch.zeros(dc.shape, dtype=torch.bool)
    want_c[b, o] = True
    assert torch.equal(~torch.isfinite(dc).cpu(), want_c)


@NONFINITE_OK
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_nan_in_a_live_weight_entry(backend, case):
    """A NaN in a kept weight entry (o, c, r, s): NaN in every output of channel o (the tap
    reads x or the zero padding) and in every input gradient of channel c (the gradient is
    gathered through the mirrored taps from grad_out, zero outside the image, as the kernels
    do; the reference scattered it and left the border finite), nowhere else; dw, dbias,
    dcond finite."""
    fn, (kh, kw), _, _, mask = conv_case(case, 9, 6)
    x, wt, bias, cond, grad = make(2, 6, 9, 5, 7, kh, kw)
    o, c = 8, 3  # colour groups 2 and 1 of three: connected at the centre by both masks
    r, s = (mask[o, c] != 0).nonzero()[0].tolist()
    wt[o, c, r, s] = NAN
    out, dx, dw, db, dc = run(fn, x, wt, bias, cond, grad, backend=backend)
    want_out = torch.zeros(out.shape, dtype=torch.bool)
    want_out[:, o] = True
    want_dx = torch.zeros(dx.shape, dtype=torch.bool)
    want_dx[:, c] = True
    assert torch.equal(out.isnan().cpu(), want_out)
    assert torch.equal(dx.isnan().cpu(), want_dx)
    assert all(torch.isfinite(t).all() for t in (dw, db, dc))


# --------------------------------------------------------------------------- empty sizes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("empty", ["B", "Cin", "Cout", "H", "W"])
@pytest.mark.parametrize("case", [("A", 3, 3), ("B", 1, 5), ("down", 1, (2, 3))],
                         ids=lambda c: "-".join(map(str, c)))
def test_empty_dimensions(backend, empty, case):
    """Each of B, Cin, Cout, H, W empty in turn: output (B, Cout, H, W), with no term of the
    convolution (Cin = 0: the biases at every pixel), and a gradient of its input's shape
    for x, weight, bias and cond. (The reference raised F.conv2d's errors, or gave
    (B, 0, H, W) for Cin = 0.)"""
    size = {"B": 2, "Cin": 3, "Cout": 6, "H": 4, "W": 5, empty: 0}
    fn, (kh, kw), *_ = conv_case(case, size["Cout"], size["Cin"])
    x, wt, bias, cond, grad = make(size["B"], size["Cin"], size["Cout"], size["H"], size["W"],
                                   kh, kw)

    def biases_only(x, wt, bias, cond):
        return (bias[:, None, None] + cond[:, :, None, None]).expand(grad.shape)

    got = run(fn, x, wt, bias, cond, grad, backend=backend)
    assert got[0].shape == grad.shape
    assert_all_close(got, run(biases_only, x, wt, bias, cond, grad))


# --------------------------------------------------------------------------- gated_tap_conv2d


def gated_inputs(b, cin, c, h, w, kh, kw, cl, seed=0):
    """x, weight (2C, Cin, kh, kw), bias (2C,), cond (B, 2C), link_x (B, Cl, H, W),
    link_weight (2C, Cl, 1, 1), and upstream gradients for out (B, C, H, W) and pre."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(shape, generator=gen)).to(DEVICE)

    return (rnd(b, cin, h, w), rnd(2 * c, cin, kh, kw, scale=max(cin * kh * kw, 1) ** -0.5),
            rnd(2 * c), rnd(b, 2 * c), rnd(b, cl, h, w), rnd(2 * c, cl, 1, 1),
            (rnd(b, c, h, w), rnd(b, 2 * c, h, w)))


def run_gated(fn, inputs):
    """(out, pre) and the gradients of x, weight, bias, cond, link_x, link_weight."""
    *tensors, grads = inputs
    leaves = [t.detach().requires_grad_() for t in tensors]
    out, pre = fn(*leaves)
    got = torch.autograd.grad((out, pre), leaves, grads, allow_unused=True,
                              materialize_grads=True)
    return (out.detach(), pre.detach(), *got)


GATED_NAMES = ("out", "pre", "dx", "dweight", "dbias", "dcond", "dlink_x", "dlink_weight")


def gated(pad_top, pad_left, mask_type, backend):
    def fn(*t):
        return gated_tap_conv2d(*t, pad_top, pad_left, mask_type, backend)
    return fn


def raster_dead(kh, kw, pad_top, pad_left, mask_type):
    """(kh, kw) True at the taps mask A / B removes: at and after (pad_top, pad_left) / after;
    none for "none"."""
    dead = torch.zeros(kh, kw, dtype=torch.bool)
    if mask_type == "none":
        return dead
    for r in range(kh):
        for s in range(kw):
            after = (r, s) > (pad_top, pad_left)
            dead[r, s] = after or (mask_type == "A" and (r, s) == (pad_top, pad_left))
    return dead


# (kh, kw, pad_top, pad_left, mask_type): the horizontal stack (one row, mask A and B), the
# vertical stack (rows above and the current one, unmasked), a masked square kernel
GATED_CASES = [(1, 3, 0, 2, "A"), (1, 2, 0, 1, "B"), (2, 3, 1, 1, "none"), (3, 5, 1, 2, "A")]


@NONFINITE_OK
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [NAN, INF])
def test_gated_masked_weight_entries_are_ignored(backend, bad):
    """gated_tap_conv2d: NaN / inf in the masked weight entries changes nothing (the
    reference gave NaN everywhere)."""
    kh, kw, pad_top, pad_left, mask_type = GATED_CASES[3]
    inputs = gated_inputs(2, 3, 4, 5, 6, kh, kw, 2)
    dead = raster_dead(kh, kw, pad_top, pad_left, mask_type).to(DEVICE)
    clean = (inputs[0], inputs[1].masked_fill(dead, 0), *inputs[2:])
    dirty = (inputs[0], inputs[1].masked_fill(dead, bad), *inputs[2:])
    want = run_gated(gated(pad_top, pad_left, mask_type, "reference"), clean)
    got = run_gated(gated(pad_top, pad_left, mask_type, backend), dirty)
    assert all(torch.isfinite(t).all() for t in got)
    for g, w, what in zip(got, want, GATED_NAMES, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, msg=what)
    assert torch.all(got[3][:, :, dead] == 0)


@NONFINITE_OK
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GATED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gated_nan_pixel_reaches_exactly_the_outputs_that_see_it(backend, case):
    """gated_tap_conv2d: a NaN in x reaches exactly the pixels whose kept taps read it, in
    every channel of out and pre; a NaN in link_x at (i, j) exactly pixel (i + 1, j). Every
    output and gradient has the reference's NaNs and values."""
    kh, kw, pad_top, pad_left, mask_type = case
    inputs = list(gated_inputs(2, 3, 4, 5, 6, kh, kw, 2))
    inputs[0][1, 2, 3, 4] = NAN
    inputs[4][0, 1, 2, 5] = NAN
    got = run_gated(gated(pad_top, pad_left, mask_type, backend), inputs)
    mask = (~raster_dead(kh, kw, pad_top, pad_left, mask_type)).expand(8, 3, kh, kw)
    want_pre = torch.zeros(2, 8, 5, 6, dtype=torch.bool)
    want_pre[1] = sees(mask, 2, 3, 4, 5, 6, pad_top, pad_left)
    want_pre[0, :, 3, 5] = True
    assert torch.equal(got[1].isnan().cpu(), want_pre)
    assert torch.equal(got[0].isnan().cpu(), want_pre[:, :4] | want_pre[:, 4:])
    want = run_gated(gated(pad_top, pad_left, mask_type, "reference"), inputs)
    for g, w, what in zip(got, want, GATED_NAMES, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, equal_nan=True, msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("empty", ["B", "Cin", "C", "H", "W", "Cl"])
def test_gated_empty_dimensions(backend, empty):
    """gated_tap_conv2d with each of B, Cin, C, H, W and the link's Cl empty in turn: outputs
    of the right shape, and every gradient of its input's shape, against the definition."""
    kh, kw, pad_top, pad_left, mask_type = GATED_CASES[3]
    size = {"B": 2, "Cin": 3, "C": 4, "H": 5, "W": 6, "Cl": 2, empty: 0}
    inputs = gated_inputs(size["B"], size["Cin"], size["C"], size["H"], size["W"], kh, kw,
                          size["Cl"])
    dead = raster_dead(kh, kw, pad_top, pad_left, mask_type).to(DEVICE)

    def definition(x, w, bias, cond, link_x, link_w):
        pre = bias[:, None, None] + cond[:, :, None, None] + torch.einsum(
            "bchw,oc->bohw", F.pad(link_x, (0, 0, 1, 0))[:, :, :-1], link_w[:, :, 0, 0])
        if x.numel() and w.numel():
            pads = (pad_left, kw - 1 - pad_left, pad_top, kh - 1 - pad_top)
            pre = pre + F.conv2d(F.pad(x, pads), w.masked_fill(dead, 0))
        return gated_tanh_ref(pre), pre

    got = run_gated(gated(pad_top, pad_left, mask_type, backend), inputs)
    assert got[0].shape == (size["B"], size["C"], size["H"], size["W"])
    want = run_gated(definition, inputs)
    for g, w, what in zip(got, want, GATED_NAMES, strict=True):
        assert g.shape == w.shape, what
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, msg=what)


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


OPCHECK_BACKENDS = ["reference", *CPU, *kernel_backends()]


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
def test_opcheck(backend):
    x, wt, bias, cond, grad = make(2, 3, 6, 4, 5, 3, 3)
    args = (x.requires_grad_(), wt.requires_grad_(), bias.requires_grad_(),
            cond.requires_grad_(), None, 1, 1, "A", 3, backend)
    torch.library.opcheck(torch.ops.artrt.tap_conv2d.default, args)
    torch.library.opcheck(torch.ops.artrt.tap_conv2d_backward.default,
                          (grad, x.detach(), wt.detach(), 0, 1, "none", 1, True, False,
                           backend))


@pytest.mark.parametrize("backend", [None, *CPU, *kernel_backends()])
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
@pytest.mark.parametrize("dtype,channels,k,mask_type,groups", [
    # Each case autotunes its own kernels: bf16 at every k; each mask in every dtype; both
    # channel counts in every dtype.
    (torch.bfloat16, 256, 3, "B", 1), (torch.bfloat16, 128, 5, "B", 1),
    (torch.bfloat16, 256, 7, "B", 1), (torch.bfloat16, 128, 7, "A", 3),
    (torch.float16, 256, 3, "A", 3), (torch.float16, 128, 5, "B", 1),
    (torch.float32, 128, 5, "A", 3), (torch.float32, 256, 7, "B", 1)])
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


@pytest.mark.parametrize("k, mask_type, groups", [(1, "B", 3), (3, "B", 3), (7, "A", 3),
                                                  (7, "A", 1), (5, "B", 1)])
@pytest.mark.parametrize("bad", ["x", "masked weight", "live weight"])
def test_cpu_dense_forward_wide_output_keeps_nan_semantics(k, mask_type, groups, bad):
    """Few input channels into many output channels (x and the weight smaller than the
    output: the cpu forward checks the operands, not the output, before its dense
    convolution; 7x7 with colour groups or 1 input channel is dense too): a NaN in x, at a
    masked weight entry or at a live one reaches exactly the outputs it reaches in the
    reference."""
    cin = groups
    x = torch.randn(2, cin, 6, 5)
    w = torch.randn(48, cin, k, k)
    mask = tap_mask(w.shape, k // 2, k // 2, mask_type, groups, "cpu", torch.bool)
    if bad == "x":
        x[1, cin - 1, 2, 3] = float("nan")
    else:
        where = (~mask if bad == "masked weight" else mask).nonzero()
        if not len(where):
            pytest.skip("no masked entry")
        w[tuple(where[len(where) // 2])] = float("nan")
    want = masked_conv2d_ref(x, w, None, mask_type, groups)
    got = masked_conv2d(x, w, None, mask_type, groups, backend="cpu")
    assert torch.equal(got.isnan(), want.isnan())
    assert (bad == "masked weight") != bool(want.isnan().any())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num())
