"""artrt causal_conv1d / wavenet_gate against their references, every backend."""

from __future__ import annotations

import sys

import artrt.kernels.causal_conv1d as kconv
import pytest
import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_backward_ref,
    causal_conv1d_ref,
    wavenet_gate,
    wavenet_gate_backward_ref,
    wavenet_gate_ref,
)
from artrt.ops.gated import gated_tanh_ref
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.common import assert_backward_uses_forward_backend, no_launch

CPU = ["cpu"] if DEVICE == "cpu" else []  # the cpu backend, on the tensors these tests make

# (B, Cin, Cout, T, K, dilation): odd lengths 1, 7, 33; channels 3, 5, 129; K 1..8; dilations
# from 1 to 64 (a receptive field longer than the sequence).
CONV_SHAPES = [
    (2, 3, 5, 7, 2, 1),
    (1, 5, 3, 1, 4, 3),
    (2, 129, 5, 33, 3, 4),
    (1, 3, 129, 33, 2, 64),
    (3, 4, 6, 33, 8, 2),
    (2, 5, 5, 7, 1, 1),
]
# (B, R, G, T, K, dilation, Cc)
GATE_SHAPES = [
    (2, 3, 5, 7, 2, 1, 3),
    (1, 5, 3, 33, 3, 16, 5),
    (2, 4, 129, 33, 2, 64, 2),
    (1, 129, 3, 1, 2, 8, 1),
]
TOL = {"atol": 2e-5, "rtol": 1e-5}


def randn(*shape, gen, dtype=torch.float32, device=DEVICE, scale=1.0):
    return (scale * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype)


def conv_inputs(b, cin, cout, t, k, d, bias=True, res=0, dtype=torch.float32, device=DEVICE,
                seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = {"gen": gen, "dtype": dtype, "device": device}
    x = randn(b, cin, t, **kw)
    w = randn(cout, cin, k, **kw, scale=max(cin * k, 1) ** -0.5)
    bias = randn(cout, **kw) if bias else None
    residual = randn(b, res, t, **kw) if res else None
    grad = randn(b, cout, t, **kw)
    return x, w, bias, residual, grad


def gate_inputs(b, r, g, t, k, d, cc, bias="vector", cond=True, dtype=torch.float32,
                device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = {"gen": gen, "dtype": dtype, "device": device}
    x = randn(b, r, t, **kw)
    w = randn(2 * g, r, k, **kw, scale=max(r * k, 1) ** -0.5)
    bias = {"vector": lambda: randn(2 * g, **kw), "per_sample": lambda: randn(b, 2 * g, **kw),
            None: lambda: None}[bias]()
    c = randn(b, cc, t, **kw) if cond else None
    wc = randn(2 * g, cc, 1, **kw, scale=max(cc, 1) ** -0.5) if cond else None
    grad = randn(b, g, t, **kw)
    return x, w, bias, c, wc, grad


def run(fn, inputs, grad, **kwargs):
    """Forward and the gradient of every tensor input (None where the input is None; zeros
    for one the output does not depend on, as with an empty dimension)."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs[:-1]]
    out = fn(*leaves, inputs[-1], **kwargs)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, grad, allow_unused=True,
                                     materialize_grads=True))
    return [out.detach()] + [next(grads) if t is not None else None for t in leaves]


def conv_call(x, w, bias, residual, d, **kw):
    return causal_conv1d(x, w, bias, d, residual=residual, **kw)


def conv_ref_call(x, w, bias, residual, d):
    return causal_conv1d_ref(x, w, bias, d, residual)


def assert_all_close(got, want, names, **tol):
    for g, w, what in zip(got, want, names, strict=True):
        if w is None:
            assert g is None, what
            continue
        assert g.shape == w.shape, what
        torch.testing.assert_close(g, w, **(tol or TOL), msg=lambda m, what=what: f"{what}: {m}")


CONV_NAMES = ("y", "dx", "dweight", "dbias", "dresidual")
GATE_NAMES = ("h", "dx", "dweight", "dbias", "dcond", "dcond_weight")


# --------------------------------------------------------------------------- reference


def naive_causal_conv1d(x, w, bias, d):
    """y[b, o, t] = bias[o] + sum_{i, c} w[o, c, i] x[b, c, t - (K-1-i) d], by the definition."""
    bsz, _, t_len = x.shape
    k = w.shape[2]
    y = torch.zeros(bsz, w.shape[0], t_len, dtype=x.dtype, device=x.device)
    for t in range(t_len):
        for i in range(k):
            s = t - (k - 1 - i) * d
            if s >= 0:
                y[:, :, t] += x[:, :, s] @ w[:, :, i].T
    return y + bias[:, None]


@pytest.mark.parametrize("shape", CONV_SHAPES[:4])
def test_reference_matches_definition(shape):
    x, w, bias, _, _ = conv_inputs(*shape, dtype=torch.float64, device="cpu")
    torch.testing.assert_close(causal_conv1d_ref(x, w, bias, shape[-1]),
                               naive_causal_conv1d(x, w, bias, shape[-1]))


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_backward_ref_matches_autograd(shape):
    d = shape[-1]
    x, w, bias, _, grad = conv_inputs(*shape, dtype=torch.float64, device="cpu")
    _, dx, dw, _, _ = run(conv_ref_call, (x, w, bias, None, d), grad)
    got = causal_conv1d_backward_ref(grad, x, w, d)
    torch.testing.assert_close(got[0], dx)
    torch.testing.assert_close(got[1], dw)


def test_gate_backward_ref_matches_autograd():
    x, w, bias, c, wc, grad = gate_inputs(2, 3, 4, 9, 3, 2, 2, dtype=torch.float64, device="cpu")
    z = causal_conv1d_ref(x, w, bias, 2) + F.conv1d(c, wc)
    z.requires_grad_()
    want, = torch.autograd.grad(gated_tanh_ref(z), z, grad)
    torch.testing.assert_close(wavenet_gate_backward_ref(grad, x, w, bias, c, wc, 2), want)


def test_gradcheck_reference():
    x, w, bias, res, _ = conv_inputs(2, 2, 3, 6, 3, 2, res=2, dtype=torch.float64, device="cpu")
    inputs = [t.requires_grad_() for t in (x, w, bias, res)]
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d(*a[:3], 2, residual=a[3], backend="reference"), inputs)
    assert torch.autograd.gradgradcheck(
        lambda *a: causal_conv1d(*a[:3], 2, residual=a[3], backend="reference"), inputs,
        fast_mode=True)


@pytest.mark.parametrize("bias", ["vector", "per_sample"])
def test_gate_gradcheck_reference(bias):
    inputs = gate_inputs(2, 2, 2, 5, 2, 3, 2, bias=bias, dtype=torch.float64, device="cpu")[:5]
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(
        lambda *a: wavenet_gate(*a, 3, backend="reference"), inputs)
    assert torch.autograd.gradgradcheck(
        lambda *a: wavenet_gate(*a, 3, backend="reference"), inputs, fast_mode=True)


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("bias,res", [(True, 0), (False, 2)])
def test_kernel_matches_reference(backend, shape, bias, res):
    d = shape[-1]
    res = min(res, shape[2])
    x, w, b, r, grad = conv_inputs(*shape, bias=bias, res=res)
    want = run(conv_ref_call, (x, w, b, r, d), grad)
    got = run(conv_call, (x, w, b, r, d), grad, backend=backend)
    assert got[0].is_contiguous()
    assert_all_close(got, want, CONV_NAMES)


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
@pytest.mark.parametrize("layout", ["strided", "permuted"])
def test_kernel_non_contiguous(backend, layout):
    """x, weight, residual and the upstream gradient all read through their strides."""
    d = 3
    x, w, b, r, grad = conv_inputs(3, 5, 6, 33, 3, d, res=4)
    nc = [with_layout(t, layout) for t in (x, w, r, grad)]
    assert not any(t.is_contiguous() for t in nc)
    want = run(conv_ref_call, (x, w, b, r, d), grad)
    got = run(conv_call, (nc[0], nc[1], b, nc[2], d), nc[3], backend=backend)
    assert_all_close(got, want, CONV_NAMES)


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
@pytest.mark.parametrize("shape", GATE_SHAPES)
@pytest.mark.parametrize("bias,cond", [("vector", True), ("per_sample", False), (None, True)])
def test_gate_kernel_matches_reference(backend, shape, bias, cond):
    d = shape[5]
    x, w, b, c, wc, grad = gate_inputs(*shape, bias=bias, cond=cond)
    want = run(wavenet_gate_ref, (x, w, b, c, wc, d), grad)
    got = run(wavenet_gate, (x, w, b, c, wc, d), grad, backend=backend)
    assert got[0].is_contiguous()
    assert_all_close(got, want, GATE_NAMES)


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
def test_gate_kernel_non_contiguous(backend):
    d = 2
    x, w, b, c, wc, grad = gate_inputs(2, 5, 6, 33, 3, d, 3)
    x_nc, c_nc, grad_nc = (with_layout(t, "strided") for t in (x, c, grad))
    w_nc, wc_nc = (with_layout(t, "permuted") for t in (w, wc))
    b_nc = torch.stack([b, b], 1)[:, 0]
    assert not any(t.is_contiguous() for t in (x_nc, c_nc, grad_nc, w_nc, wc_nc, b_nc))
    want = run(wavenet_gate_ref, (x, w, b, c, wc, d), grad)
    got = run(wavenet_gate, (x_nc, w_nc, b_nc, c_nc, wc_nc, d), grad_nc, backend=backend)
    assert_all_close(got, want, GATE_NAMES)


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision(backend, dtype):
    d = 2
    ops = [("causal_conv1d", conv_call, conv_ref_call, conv_inputs(2, 24, 20, 33, 3, d, res=8),
            CONV_NAMES),
           ("wavenet_gate", wavenet_gate, wavenet_gate_ref, gate_inputs(2, 24, 20, 33, 3, d, 8),
            GATE_NAMES)]
    for op, fn, ref, inputs, names in ops:  # inputs: the op's tensors, then the upstream grad
        fp32 = run(ref, (*inputs[:-1], d), inputs[-1])
        low = [t.to(dtype) for t in inputs]
        lowp = run(ref, (*low[:-1], d), low[-1])
        got = run(fn, (*low[:-1], d), low[-1], backend=backend)
        for g, lp, f, what in zip(got, lowp, fp32, names, strict=True):
            assert g.dtype == dtype
            assert_close_lowp(g, lp, f, f"{op} {dtype} {what}")


@pytest.mark.parametrize("backend", [*CPU, *kernel_backends()])
def test_kernel_empty_and_extremes(backend):
    x = torch.empty(0, 3, 5, device=DEVICE)
    w = torch.randn(4, 3, 2, device=DEVICE)
    assert causal_conv1d(x, w, backend=backend).shape == (0, 4, 5)
    assert causal_conv1d(torch.empty(2, 3, 0, device=DEVICE), w, backend=backend).shape \
        == (2, 4, 0)
    # Saturated pre-activations: exact gate limits, no inf/nan.
    x = torch.ones(1, 1, 3, device=DEVICE)
    w = torch.tensor([[[100.0]], [[-100.0]], [[100.0]], [[-100.0]]], device=DEVICE)
    h = wavenet_gate(x, w, backend=backend)  # tanh(100) sigmoid(100), tanh(-100) sigmoid(-100)
    torch.testing.assert_close(h, torch.tensor([[[1.0] * 3, [0.0] * 3]], device=DEVICE))


# Dilations at and past the int32 range (and past int64, which the op schema cannot hold).
HUGE_DILATIONS = [2**31 - 1, 2**31, 2**40, 2**64]


@pytest.mark.parametrize("backend", ["reference", *CPU, *kernel_backends()])
@pytest.mark.parametrize("d", HUGE_DILATIONS)
def test_huge_dilation(backend, d):
    """d >= T: every tap but the last reads only the zero padding, so y[t] = w[:, :, K-1]
    x[t] + b, forward and every gradient, conv and gate. (An int32 tap offset (K-1-i) d
    wrapped at d = 2^31 - 1 and read the future; the reference padded (K-1) d zeros.)"""
    x, w, b, r, grad = conv_inputs(2, 3, 4, 12, 3, d, res=2)

    def conv_last_tap(x, w, b, r, _):
        return F.conv1d(x, w[:, :, -1:], b) + F.pad(r, (0, 0, 0, 2))

    got = run(conv_call, (x, w, b, r, d), grad, backend=backend)
    assert_all_close(got, run(conv_last_tap, (x, w, b, r, d), grad), CONV_NAMES)
    x, w, b, c, wc, grad = gate_inputs(2, 3, 4, 12, 3, d, 2)

    def gate_last_tap(x, w, b, c, wc, _):
        return gated_tanh_ref(F.conv1d(x, w[:, :, -1:], b) + F.conv1d(c, wc))

    got = run(wavenet_gate, (x, w, b, c, wc, d), grad, backend=backend)
    assert_all_close(got, run(gate_last_tap, (x, w, b, c, wc, d), grad), GATE_NAMES)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["reference", *CPU, *kernel_backends()])
@pytest.mark.parametrize("op", ["conv", "gate"])
def test_nan_in_a_weight_entry(backend, op):
    """w[o, c, 0] NaN: NaN in every output of channel o (the tap reads x or the zero padding;
    h's channel o for the gate) and in every input gradient of channel c (dx[s] = sum_i
    w_i dy[s + (K-1-i) d] with dy zero past T, as the kernel computes it; the reference's
    transposed convolution left the last (K-1) d steps finite), nowhere else (the gate's
    NaN h spreads through its derivative to every channel of dx)."""
    o, c, d = 1, 0, 2
    if op == "conv":
        x, w, b, r, grad = conv_inputs(2, 3, 4, 9, 3, d)
        w[o, c, 0] = float("nan")
        out, dx, dw, *_ = run(conv_call, (x, w, b, r, d), grad, backend=backend)
    else:
        x, w, b, cond, wc, grad = gate_inputs(2, 3, 2, 9, 3, d, 2)
        w[o, c, 0] = float("nan")
        out, dx, dw, *_ = run(wavenet_gate, (x, w, b, cond, wc, d), grad, backend=backend)
    want_out = torch.zeros(out.shape, dtype=torch.bool)
    want_out[:, o] = True
    want_dx = torch.zeros(dx.shape, dtype=torch.bool)
    want_dx[:, c if op == "conv" else slice(None)] = True
    assert torch.equal(out.isnan().cpu(), want_out)
    assert torch.equal(dx.isnan().cpu(), want_dx)
    if op == "conv":
        assert torch.isfinite(dw).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("path", ["direct", "op"])
@pytest.mark.parametrize("where", ["x", "grad", "weight"])
def test_cpu_non_finite_matches_reference(path, where, monkeypatch):
    """An infinity and a NaN in x, in the upstream gradient or in the weight (the last tap,
    which meets the gradient's zeros past T): the cpu backend's outputs and gradients have
    the reference's NaNs, infinities and finite values, conv and gate."""
    if path == "op":
        monkeypatch.setattr(backends, "direct_call", lambda *t: False)
    d = 2
    x, w, b, r, grad = conv_inputs(2, 3, 4, 9, 3, d, res=2, dtype=torch.float64, device="cpu")
    gx, gw, gb, gc, gwc, ggrad = gate_inputs(2, 3, 2, 9, 3, d, 2, dtype=torch.float64,
                                             device="cpu")
    for t in {"x": (x, gx), "grad": (grad, ggrad), "weight": (w, gw)}[where]:
        t.view(-1)[[1, -3]] = torch.tensor([float("inf"), float("nan")], dtype=t.dtype)
    for fn, inputs, g in ((conv_call, (x, w, b, r, d), grad),
                          (wavenet_gate, (gx, gw, gb, gc, gwc, d), ggrad)):
        want = run(fn, inputs, g, backend="reference")
        got = run(fn, inputs, g, backend="cpu")
        for a, e in zip(got, want, strict=True):
            if e is not None:
                torch.testing.assert_close(a, e, equal_nan=True, atol=1e-12, rtol=1e-12)


def naive_wavenet_gate(x, w, bias, c, wc, d):
    return gated_tanh_ref(naive_causal_conv1d(x, w, bias, d)
                          + torch.einsum("oc,bct->bot", wc[:, :, 0], c))


@pytest.mark.parametrize("backend", ["reference", *CPU, *kernel_backends()])
@pytest.mark.parametrize("empty", ["B", "Cin", "Cout", "T", "Cc"])
def test_empty_dimensions(backend, empty):
    """Each of B, Cin (R), Cout (2G), T and Cc (the gate's conditioning channels) empty in
    turn: outputs of the right shape (with Cin = 0, the bias: no term of the sum) and a
    gradient of its input's shape for every input, conv and gate, against the definition."""
    size = {"B": 2, "Cin": 3, "Cout": 4, "T": 5, "Cc": 2, empty: 0}
    bsz, cin, cout, t_len, cc = size["B"], size["Cin"], size["Cout"], size["T"], size["Cc"]
    inputs = conv_inputs(bsz, cin, cout, t_len, 3, 2, res=min(cout, 2))

    def naive_conv(x, w, b, r, d):
        y = naive_causal_conv1d(x, w, b, d)
        return y if r is None else y + F.pad(r, (0, 0, 0, cout - r.shape[1]))

    want = run(naive_conv, (*inputs[:-1], 2), inputs[-1])
    got = run(conv_call, (*inputs[:-1], 2), inputs[-1], backend=backend)
    assert got[0].shape == (bsz, cout, t_len)
    assert_all_close(got, want, CONV_NAMES)
    inputs = gate_inputs(bsz, cin, cout // 2, t_len, 3, 2, cc)
    want = run(naive_wavenet_gate, (*inputs[:-1], 2), inputs[-1])
    got = run(wavenet_gate, (*inputs[:-1], 2), inputs[-1], backend=backend)
    assert got[0].shape == (bsz, cout // 2, t_len)
    assert_all_close(got, want, GATE_NAMES)


# --------------------------------------------------------------------------- causality


def allowed_sources(t_len, k, d):
    """allowed[t, s]: output t depends on input s (s = t - i d, 0 <= i < K, s >= 0)."""
    allowed = torch.zeros(t_len, t_len, dtype=torch.bool)
    for t in range(t_len):
        for i in range(k):
            if t - i * d >= 0:
                allowed[t, t - i * d] = True
    return allowed


def jacobian_support(fn, x):
    """support[t, s]: some output channel at t has a nonzero gradient wrt some x[:, :, s]."""
    x = x.detach().requires_grad_()
    y = fn(x)  # (1, C', T)
    support = torch.zeros(y.shape[2], x.shape[2], dtype=torch.bool)
    for t in range(y.shape[2]):
        g = torch.zeros_like(y)
        g[:, :, t] = 1.0
        (dx,) = torch.autograd.grad(y, x, g, retain_graph=True)
        support[t] = dx.abs().sum((0, 1)).cpu() > 0
    return support


def perturbation_support(fn, x):
    """support[t, s]: changing x[:, :, s] changes some output channel at t (forward pass)."""
    y0 = fn(x)
    support = torch.zeros(y0.shape[2], x.shape[2], dtype=torch.bool)
    for s in range(x.shape[2]):
        xp = x.clone()
        xp[:, :, s] += 1.0
        support[:, s] = (fn(xp) != y0).any(1)[0].cpu()
    return support


@pytest.mark.parametrize("backend", ["reference", *CPU, *kernel_backends()])
@pytest.mark.parametrize("k,d", [(2, 1), (3, 4), (8, 2), (1, 5), (3, 2**31 - 1)])
@pytest.mark.parametrize("op", ["conv", "gate"])
def test_causality(backend, k, d, op):
    """Output t depends on input s exactly on the dilation grid t - (K-1) d ... t: no leak
    from the future, no hole in the receptive field (forward and input gradient)."""
    t_len = 19
    if op == "conv":
        x, w, b, _, _ = conv_inputs(1, 3, 4, t_len, k, d)

        def fn(x):
            return causal_conv1d(x, w, b, d, backend=backend)
    else:
        x, w, b, c, wc, _ = gate_inputs(1, 3, 4, t_len, k, d, 2)

        def fn(x):
            return wavenet_gate(x, w, b, c, wc, d, backend=backend)
    want = allowed_sources(t_len, k, d)
    assert torch.equal(perturbation_support(fn, x), want)
    assert torch.equal(jacobian_support(fn, x), want)


# --------------------------------------------------------------------------- dispatch


def test_default_backend_on_cpu_is_cpu(monkeypatch):
    """No backend forced, CPU tensors: the cpu backend (by the direct path and the op)."""
    cc = sys.modules["artrt.ops.causal_conv1d"]  # artrt.ops.causal_conv1d is the function
    calls = []
    orig = cc._cpu_conv
    monkeypatch.setattr(cc, "_cpu_conv", lambda *a: (calls.append(1), orig(*a))[1])
    x, w, b, _, _ = conv_inputs(2, 3, 4, 7, 2, 1, device="cpu")
    with no_launch(monkeypatch, kconv, "causal_conv1d_fwd", "wavenet_gate_fwd"):
        for path in ("direct", "op"):
            if path == "op":
                monkeypatch.setattr(backends, "direct_call", lambda *t: False)
            calls.clear()
            torch.testing.assert_close(causal_conv1d(x, w, b), causal_conv1d_ref(x, w, b))
            torch.testing.assert_close(wavenet_gate(x, w, b), wavenet_gate_ref(x, w, b))
            assert len(calls) == 2, path


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("path", ["direct", "op"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 3, 2), (1, 4, 4, 1, 4, 1), (3, 2, 3, 33, 1, 1),
                                   (1, 3, 3, 5, 2, 1000)])
def test_cpu_matches_reference_fp64(shape, path, monkeypatch):
    """Forward and every gradient in float64 by both paths into the cpu backend: T = 1,
    K = 1, dilation past T, residual on part of the channels, per-sample bias in the gate."""
    if path == "op":
        monkeypatch.setattr(backends, "direct_call", lambda *t: False)
    b, cin, cout, t, k, d = shape
    x, w, bias, r, grad = conv_inputs(b, cin, cout, t, k, d, res=cout - 1, dtype=torch.float64)
    want = run(conv_call, (x, w, bias, r, d), grad, backend="reference")
    got = run(conv_call, (x, w, bias, r, d), grad, backend="cpu")
    assert_all_close(got, want, ("out", "dx", "dw", "db", "dr"), atol=1e-12, rtol=1e-12)
    x, w, bias, c, wc, grad = gate_inputs(b, cin, cout, t, k, d, 2, dtype=torch.float64)
    bias = torch.randn(b, 2 * cout, dtype=torch.float64)
    want = run(wavenet_gate, (x, w, bias, c, wc, d), grad, backend="reference")
    got = run(wavenet_gate, (x, w, bias, c, wc, d), grad, backend="cpu")
    assert_all_close(got, want, ("out", "dx", "dw", "db", "dc", "dwc"), atol=1e-12, rtol=1e-12)


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs on CPU tensors")
@pytest.mark.parametrize("path", ["direct", "op"])
def test_cpu_gradgradcheck(path, monkeypatch):
    if path == "op":
        monkeypatch.setattr(backends, "direct_call", lambda *t: False)
    x, w, b, r, _ = conv_inputs(1, 2, 3, 5, 2, 2, res=2, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b, r))
    assert torch.autograd.gradgradcheck(
        lambda *a: causal_conv1d(*a[:3], 2, residual=a[3], backend="cpu"), inputs)
    x, w, b, c, wc, _ = gate_inputs(1, 2, 2, 5, 2, 3, 2, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b, c, wc))
    assert torch.autograd.gradgradcheck(lambda *a: wavenet_gate(*a, 3, backend="cpu"), inputs)


def test_backward_uses_forward_backend(monkeypatch):
    x, w, _, _, _ = conv_inputs(2, 3, 4, 7, 2, 1)
    w.requires_grad_()
    assert_backward_uses_forward_backend(monkeypatch, kconv, "causal_conv1d_bwd_weight",
                                         lambda: causal_conv1d(x, w))


def test_forced_backend_cannot_run():
    x, w, _, _, _ = conv_inputs(1, 2, 2, 3, 2, 1, device="cpu")
    with pytest.raises(backends.BackendUnavailableError, match="no implementation"):
        causal_conv1d(x, w, backend="cuda")
    if "triton" in kernel_backends("cpu"):
        with pytest.raises(backends.BackendUnavailableError, match="float64"):
            causal_conv1d(x.double(), w.double(), backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        wavenet_gate(x, w, backend="cudnn")


# --------------------------------------------------------------------------- bad input


def test_bad_input_conv():
    x, w = torch.randn(2, 3, 7), torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match=r"takes 3 input channels.*has 5"):
        causal_conv1d(torch.randn(2, 5, 7), w)
    with pytest.raises(ValueError, match=r"x must have shape \(B, Cin, T\), got \(3, 7\)"):
        causal_conv1d(torch.randn(3, 7), w)
    with pytest.raises(ValueError, match=r"weight must have shape \(Cout, Cin, K\)"):
        causal_conv1d(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"K = weight.shape\[2\] must be in 1..8, got 9"):
        causal_conv1d(x, torch.randn(4, 3, 9))
    with pytest.raises(ValueError, match="must be in 1..8, got 0"):
        causal_conv1d(x, torch.randn(4, 3, 0))
    with pytest.raises(ValueError, match="dilation must be >= 1, got 0"):
        causal_conv1d(x, w, dilation=0)
    with pytest.raises(TypeError, match="dilation must be an int, got float"):
        causal_conv1d(x, w, dilation=2.0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        causal_conv1d(torch.ones(2, 3, 7, dtype=torch.int64), w)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        causal_conv1d(x, w.to(torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        causal_conv1d([[1.0]], w)
    with pytest.raises(ValueError, match=r"bias must have shape \(Cout,\) = \(4,\), got \(3,\)"):
        causal_conv1d(x, w, torch.randn(3))
    with pytest.raises(TypeError, match="bias must have x's dtype"):
        causal_conv1d(x, w, torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must be on x's device"):
        causal_conv1d(x, w.to("meta"))
    with pytest.raises(ValueError, match=r"residual must have shape \(B, R, T\).*R <= Cout = 4"):
        causal_conv1d(x, w, residual=torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="residual must have shape"):
        causal_conv1d(x, w, residual=torch.randn(2, 2, 6))


def test_bad_input_gate():
    x, w = torch.randn(2, 3, 7), torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match="even number of output channels"):
        wavenet_gate(x, torch.randn(5, 3, 2))
    with pytest.raises(ValueError, match=r"bias must have shape \(2G,\) = \(4,\) or \(B, 2G\)"):
        wavenet_gate(x, w, torch.randn(3, 4))
    with pytest.raises(ValueError, match="cond and cond_weight go together"):
        wavenet_gate(x, w, None, torch.randn(2, 2, 7))
    with pytest.raises(ValueError, match=r"cond must have shape \(B, Cc, T\)"):
        wavenet_gate(x, w, None, torch.randn(2, 2), torch.randn(4, 2, 1))
    with pytest.raises(ValueError, match=r"cond_weight must have shape \(2G, Cc, 1\)"):
        wavenet_gate(x, w, None, torch.randn(2, 2, 7), torch.randn(4, 3, 1))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        wavenet_gate(x.to(torch.int16), w.to(torch.int16))
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        wavenet_gate(x, w, dilation=-1)


def test_bad_grad():
    x, w, _, _, _ = conv_inputs(2, 3, 4, 7, 2, 1, device="cpu")
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.artrt.causal_conv1d_backward(torch.randn(2, 4, 6), x, w, 1, "auto")
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.artrt.wavenet_gate_backward(torch.randn(2, 4, 7), x, w, None, None, None, 1,
                                              "auto")


# --------------------------------------------------------------------------- torch.library


OPCHECK_BACKENDS = ["reference", *CPU, *kernel_backends()]


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
def test_opcheck(backend):
    d = 2
    x, w, b, r, grad = conv_inputs(2, 3, 4, 7, 3, d, res=2)
    args = [t.requires_grad_() for t in (x, w, b, r)]
    torch.library.opcheck(torch.ops.artrt.causal_conv1d.default, (*args, d, backend))
    torch.library.opcheck(torch.ops.artrt.causal_conv1d_backward.default,
                          (grad, x.detach(), w.detach(), d, backend))
    x, w, b, c, wc, grad = gate_inputs(2, 3, 2, 7, 2, d, 2)
    args = [t.requires_grad_() for t in (x, w, b, c, wc)]
    torch.library.opcheck(torch.ops.artrt.wavenet_gate.default, (*args, d, backend))
    torch.library.opcheck(torch.ops.artrt.wavenet_gate_backward.default,
                          (grad, *(t.detach() for t in args), d, backend))


@pytest.mark.parametrize("backend", [None, *CPU, *kernel_backends()])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    d = 2
    x, w, b, c, wc, _ = gate_inputs(2, 3, 4, 9, 2, d, 2)
    w2 = torch.randn(5, 4, 1, device=DEVICE)

    def block(x, w, c):
        h = wavenet_gate(x * 2.0, w, b, c, wc, d, backend=backend)
        return causal_conv1d(h, w2, None, 1, residual=x, backend=backend) + 1.0

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    grad = torch.ones(2, 5, 9, device=DEVICE)
    want = run(lambda x, w, c, _: block(x, w, c), (x, w, c, None), grad)
    got = run(lambda x, w, c, _: compiled(x, w, c), (x, w, c, None), grad)
    assert_all_close(got, want, ("out", "dx", "dweight", "dcond"))


# --------------------------------------------------------------------------- GPU, real shapes


def _gpu_check(got, ref_fn, inputs, grad, names, what):
    """Each output against a float64 reference: error at most 2x the reference's own error
    in the dtype. The callers turn TF32 off: the kernel then uses IEEE fp32 like cuDNN."""
    f64 = run(ref_fn, [t.double() if t is not None else None for t in inputs[:-1]]
              + [inputs[-1]], grad.double())
    lowp = run(ref_fn, inputs, grad)
    for g, lp, f, name in zip(got, lowp, f64, names, strict=True):
        if f is not None:
            assert_close_lowp(g, lp, f, f"{what} {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,shape", [  # WaveNet's in every dtype; odd sizes, K = 3
    (torch.float32, (16, 64, 128, 16000, 2, 512)), (torch.float16, (16, 64, 128, 16000, 2, 512)),
    (torch.bfloat16, (16, 64, 128, 16000, 2, 512)), (torch.float32, (4, 129, 65, 4097, 3, 7)),
    (torch.bfloat16, (4, 129, 65, 4097, 3, 7))])
def test_gpu_conv_real_shapes(dtype, shape, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    d = shape[-1]
    x, w, b, r, grad = conv_inputs(*shape, res=shape[1] // 2, dtype=dtype, device="cuda")
    got = run(conv_call, (x, w, b, r, d), grad, backend="triton")
    _gpu_check(got, conv_ref_call, (x, w, b, r, d), grad, CONV_NAMES, f"conv {dtype} {shape}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,bias", [  # each dtype; each bias layout in bf16
    (torch.float32, "per_sample"), (torch.float16, "vector"), (torch.bfloat16, "vector"),
    (torch.bfloat16, "per_sample")])
def test_gpu_gate_real_shapes(dtype, bias, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    d = 256
    x, w, b, c, wc, grad = gate_inputs(16, 64, 128, 16000, 2, d, 80, bias=bias, dtype=dtype,
                                       device="cuda")
    got = run(wavenet_gate, (x, w, b, c, wc, d), grad, backend="triton")
    _gpu_check(got, wavenet_gate_ref, (x, w, b, c, wc, d), grad, GATE_NAMES, f"gate {dtype}")

