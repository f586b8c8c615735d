"""Causal dilated 1-D convolution and the fused gate of the WaveNet residual block.

``causal_conv1d`` is the dilated causal convolution of WaveNet (van den Oord et al., 2016,
"WaveNet: A Generative Model for Raw Audio", section 2.1): a dense channel-mixing convolution
whose output at time t sees the input only at t, t - d, ..., t - (K-1) d. It equals
``F.conv1d`` of the input padded with (K-1) d zeros on the left::

    K = 3, d = 2           t-4   t-3   t-2   t-1    t
    input  x[., c, .]       o     .     o     .     o      (o: taps, weight[:, :, 0..2])
    output y[., o, t]                                *      y[t] never sees x[t+1:]

``wavenet_gate`` is the first half of WaveNet's gated residual block (section 2.3 and 2.5):
``z = conv(x) + bias + V cond``, ``h = tanh(z_a) * sigmoid(z_b)`` where ``z_a, z_b`` are the
two channel halves of ``z`` and ``V`` a 1x1 projection of local conditioning; global
conditioning (one vector per sequence) enters as a per-sample bias. The kernel computes both
halves of the same output channels in one program and applies the gate in its epilogue, so
the 2G-channel pre-activation is never written. The block's second half, the 1x1 residual and
skip projections with the residual added, is ``causal_conv1d`` with K = 1 and ``residual=``.

Departures from the paper: none in the math; the paper shares one 1x1 output projection per
layer, we keep separate residual and skip weights (the common implementation) and compute
them in one launch. Backward recomputes the gate (never saves it): ``wavenet_gate_backward``
returns the gradient of the pre-activation, from which the ``causal_conv1d_backward`` op gives
the input and weight gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops._checks import check_like_x
from artrt.ops.gated import ACT_TANH, gated_backward_ref, gated_tanh_ref
from artrt.ops.gated import _cpu_backward as gated_cpu_backward
from artrt.ops.gated import _cpu_forward as gated_cpu_forward
from artrt.ops.gated import _cpu_tanh_gate as gated_cpu_tanh_gate
from artrt.ops.gated import _cpu_tanh_gate_backward as gated_cpu_tanh_gate_backward

MAX_KERNEL_SIZE = 8

# Backends of these ops on CUDA tensors, fastest first (provisional until measured on a GPU);
# CPU tensors take "cpu" (see artrt.backends.select).
PREFERENCE = ("triton", "cpu", "reference")


# --------------------------------------------------------------------------- reference

def effective_dilation(dilation: int, t_len: int) -> int:
    """The smallest dilation that gives the same convolution over ``t_len`` steps:
    ``min(dilation, max(t_len, 1))``.

    Every tap i < K-1 at an offset (K-1-i) d >= T reads only the zero padding, so any
    d >= T is the same convolution as d = T (only the tap at offset 0 is left), forward and
    backward. Clamping keeps the padded reference small and every tap offset the kernels
    compute within (K-1) T, however large the requested dilation.
    """
    return min(dilation, max(t_len, 1))


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      dilation: int = 1, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch causal convolution: ``F.conv1d`` with (K-1) d zeros on the left.

    Shapes as :func:`causal_conv1d`; ``residual`` (B, R, T) is added to channels [0, R).
    Empty x or weight (B, Cin, T or Cout = 0), which ``F.conv1d`` rejects or gives the wrong
    shape for: no term of the sum, the (B, Cout, T) output is the bias.
    """
    bsz, _, t_len = x.shape
    cout, _, k = weight.shape
    if x.numel() == 0 or weight.numel() == 0:
        y = x.new_zeros((bsz, cout, t_len))
        if bias is not None:
            y = y + bias[:, None]
    else:
        dilation = effective_dilation(dilation, t_len)
        y = F.conv1d(F.pad(x, ((k - 1) * dilation, 0)), weight, bias, dilation=dilation)
    if residual is not None:
        r = residual.shape[1]
        y = torch.cat([y[:, :r] + residual, y[:, r:]], 1)
    return y


def causal_conv1d_backward_ref(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch (dL/dx, dL/dweight) of the causal convolution for ``grad_out`` (B, Cout, T).

    dx[b, c, s] = sum_{o, i} w[o, c, i] dy[b, o, s + (K-1-i) d], dy zero past T (the forward
    of the reversed, transposed weight on dy padded on the right, as the kernel computes it:
    a NaN weight meets those zeros as it meets x's padding in the forward);
    dw[o, c, i] = sum_{b, t} dy[b, o, t] x[b, c, t - (K-1-i) d]. Both zero when x or weight
    is empty.
    """
    if x.numel() == 0 or weight.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(weight)
    k = weight.shape[2]
    dilation = effective_dilation(dilation, x.shape[2])
    pad = (k - 1) * dilation
    dx = F.conv1d(F.pad(grad_out, (0, pad)), weight.flip(2).transpose(0, 1), dilation=dilation)
    dw = torch.nn.grad.conv1d_weight(F.pad(x, (pad, 0)), weight.shape, grad_out,
                                     dilation=dilation)
    return dx, dw


def _preact_ref(x, weight, bias, cond, cond_weight, dilation):
    """z = conv(x) + bias + cond_weight @ cond: (B, 2G, T)."""
    z = causal_conv1d_ref(x, weight, None, dilation)
    if bias is not None:
        z = z + (bias[:, None] if bias.dim() == 1 else bias[:, :, None])
    if cond is not None:
        z = z + causal_conv1d_ref(cond, cond_weight)
    return z


def wavenet_gate_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     cond: torch.Tensor | None = None, cond_weight: torch.Tensor | None = None,
                     dilation: int = 1) -> torch.Tensor:
    """Pure PyTorch ``tanh(z_a) * sigmoid(z_b)``, ``z = conv(x) + bias + cond_weight @ cond``.

    Shapes as :func:`wavenet_gate`.
    """
    return gated_tanh_ref(_preact_ref(x, weight, bias, cond, cond_weight, dilation))


def wavenet_gate_backward_ref(grad_h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None, cond: torch.Tensor | None,
                              cond_weight: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """Pure PyTorch gradient of :func:`wavenet_gate` with respect to the pre-activation z:
    (B, 2G, T), ``[da, db]`` with da = dh s (1 - tanh(a)^2), db = dh tanh(a) s (1 - s)."""
    z = _preact_ref(x, weight, bias, cond, cond_weight, dilation)
    return gated_backward_ref(grad_h, z, None, 1, ACT_TANH)


def wavenet_block_ref(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                      res_weight: torch.Tensor, res_bias: torch.Tensor | None,
                      skip_weight: torch.Tensor, skip_bias: torch.Tensor | None,
                      dilation: int, cond: torch.Tensor | None = None,
                      cond_weight: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch WaveNet gated residual block, unfused (the specification of
    :class:`artrt.nn.WaveNetBlock`).

    x: (B, R, T). conv_weight: (2G, R, K), conv_bias: (2G,). res_weight: (R, G, 1),
    skip_weight: (S, G, 1), biases (R,), (S,). cond: None, (B, Cc, T) local or (B, Cc) global,
    with cond_weight (2G, Cc, 1). Returns (x + res(h), skip(h)), (B, R, T) and (B, S, T).
    """
    z = causal_conv1d_ref(x, conv_weight, conv_bias, dilation)
    if cond is not None:
        z = z + causal_conv1d_ref(cond if cond.dim() == 3 else cond[:, :, None], cond_weight)
    h = gated_tanh_ref(z)
    return (x + causal_conv1d_ref(h, res_weight, res_bias),
            causal_conv1d_ref(h, skip_weight, skip_bias))


# --------------------------------------------------------------------------- checks

def _check_tensor(t, what: str, name: str, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if like is None:
        if not t.is_floating_point():
            raise TypeError(f"{name}: {what} must be a floating-point tensor, got dtype {t.dtype}")
        return
    check_like_x(name, what, t, like)


def _check_shape(t: torch.Tensor, what: str, name: str, shape: tuple, hint: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} must have shape {hint} = {tuple(shape)}, "
                         f"got {tuple(t.shape)}")


def _check_conv(x, weight, dilation, name: str, rows_what: str = "Cout") -> None:
    """x (B, Cin, T) floating; weight (rows, Cin, K) with K in 1..8; dilation int >= 1."""
    _check_tensor(x, "x", name)
    if x.dim() != 3:
        raise ValueError(f"{name}: x must have shape (B, Cin, T), got {tuple(x.shape)}")
    _check_tensor(weight, "weight", name, x)
    if weight.dim() != 3:
        raise ValueError(f"{name}: weight must have shape ({rows_what}, Cin, K), "
                         f"got {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} takes "
                         f"{weight.shape[1]} input channels, x of shape {tuple(x.shape)} has "
                         f"{x.shape[1]}")
    if not 1 <= weight.shape[2] <= MAX_KERNEL_SIZE:
        raise ValueError(f"{name}: the kernel width K = weight.shape[2] must be in "
                         f"1..{MAX_KERNEL_SIZE}, got {weight.shape[2]}")
    if isinstance(dilation, bool) or not isinstance(dilation, int):
        raise TypeError(f"{name}: dilation must be an int, got {type(dilation).__name__}")
    if dilation < 1:
        raise ValueError(f"{name}: dilation must be >= 1, got {dilation}")


def _check_causal_conv1d(x, weight, bias, residual, dilation) -> None:
    name = "causal_conv1d"
    _check_conv(x, weight, dilation, name)
    bsz, _, t_len = x.shape
    cout = weight.shape[0]
    if bias is not None:
        _check_tensor(bias, "bias", name, x)
        _check_shape(bias, "bias", name, (cout,), "(Cout,)")
    if residual is not None:
        _check_tensor(residual, "residual", name, x)
        if residual.dim() != 3 or residual.shape[0] != bsz or residual.shape[2] != t_len \
                or residual.shape[1] > cout:
            raise ValueError(f"{name}: residual must have shape (B, R, T) = ({bsz}, R, {t_len}) "
                             f"with R <= Cout = {cout}, got {tuple(residual.shape)}")


def _check_wavenet_gate(x, weight, bias, cond, cond_weight, dilation) -> None:
    name = "wavenet_gate"
    _check_conv(x, weight, dilation, name, "2G")
    bsz, _, t_len = x.shape
    rows = weight.shape[0]
    if rows % 2:
        raise ValueError(f"{name}: weight must have an even number of output channels (2G), "
                         f"got {rows} for weight of shape {tuple(weight.shape)}")
    if bias is not None:
        _check_tensor(bias, "bias", name, x)
        if tuple(bias.shape) not in ((rows,), (bsz, rows)):
            raise ValueError(f"{name}: bias must have shape (2G,) = ({rows},) or (B, 2G) = "
                             f"({bsz}, {rows}), got {tuple(bias.shape)}")
    if (cond is None) != (cond_weight is None):
        raise ValueError(f"{name}: cond and cond_weight go together: got cond "
                         f"{'None' if cond is None else 'a tensor'} and cond_weight "
                         f"{'None' if cond_weight is None else 'a tensor'}")
    if cond is not None:
        _check_tensor(cond, "cond", name, x)
        _check_tensor(cond_weight, "cond_weight", name, x)
        if cond.dim() != 3 or cond.shape[0] != bsz or cond.shape[2] != t_len:
            raise ValueError(f"{name}: cond must have shape (B, Cc, T) = ({bsz}, Cc, {t_len}), "
                             f"got {tuple(cond.shape)} (global conditioning goes in the bias)")
        _check_shape(cond_weight, "cond_weight", name, (rows, cond.shape[1], 1), "(2G, Cc, 1)")


def _check_grad(grad: torch.Tensor, x: torch.Tensor, shape: tuple, name: str) -> None:
    _check_tensor(grad, "grad", name, x)
    _check_shape(grad, "grad", name, shape, "the output's shape")


# --------------------------------------------------------------------------- double backward

def _register_double_backward(op, backward_ref, n_tensor_args: int):
    """Autograd of a backward op: through torch.func.vjp of its pure PyTorch formula.

    The op's first ``n_tensor_args`` arguments are tensors (some may be None); the rest are
    non-differentiable.
    """
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensor_args])
        ctx.rest = inputs[n_tensor_args:-1]  # without the trailing backend

    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        present = [i for i, t in enumerate(tensors) if t is not None]

        def fn(*primals):
            args = list(tensors)
            for i, p in zip(present, primals, strict=True):
                args[i] = p
            return backward_ref(*args, *ctx.rest)

        _, vjp = torch.func.vjp(fn, *(tensors[i] for i in present))
        cot = grads[0] if len(grads) == 1 else tuple(grads)
        got = vjp(cot)
        out = [None] * (n_tensor_args + len(ctx.rest) + 1)
        for i, g in zip(present, got, strict=True):
            out[i] = g
        return tuple(out)

    op.register_autograd(backward, setup_context=setup_context)


# --------------------------------------------------------------------------- cpu backend
#
# The formula of the reference (``F.conv1d`` of x padded on the left, every tap, so a NaN
# weight meets the padding as there) in aten ops. Called without the dispatcher in eager
# mode on plain CPU tensors (see artrt.backends.direct_call): the forward as is where no
# gradient is recorded, else through the autograd.Functions below, whose backward is aten's
# ``convolution_backward`` on the padded x they save (as autograd of the plain expression
# does), the gate's from its saved activations (artrt.ops.gated). The op's backward is the
# reference's (aten convolutions) and the gate's fused ``glu_backward``.


def _cpu_pad(x, weight, dilation):
    """(x padded on the left by (K-1) d, that pad, d): d the effective dilation."""
    d = effective_dilation(dilation, x.shape[2])
    pad = (weight.shape[2] - 1) * d
    return (F.pad(x, (pad, 0)) if pad else x), pad, d


def _cpu_conv(x, weight, bias, dilation, residual=None):
    """The cpu backend's causal_conv1d: (B, Cout, T) contiguous; bias (Cout,) or (B, Cout)."""
    bsz, _, t_len = x.shape
    cout = weight.shape[0]
    b1 = bias if bias is None or bias.dim() == 1 else None
    if x.numel() == 0 or weight.numel() == 0:
        y = x.new_zeros((bsz, cout, t_len))
        if b1 is not None:
            y = y + b1[:, None]
    else:
        xp, _, d = _cpu_pad(x, weight, dilation)
        y = F.conv1d(xp, weight, b1, dilation=d)
    if bias is not None and b1 is None:
        y = y + bias[:, :, None]
    if residual is not None:
        r = residual.shape[1]
        y = y + residual if r == cout else torch.cat([y[:, :r] + residual, y[:, r:]], 1)
    return y if y.is_contiguous() else y.contiguous()


def _cpu_preact(x, weight, bias, cond, cond_weight, dilation):
    """z = conv(x) + bias + cond_weight @ cond: (B, 2G, T), as :func:`_preact_ref`."""
    z = _cpu_conv(x, weight, bias, dilation)
    if cond is not None:
        z = z + _cpu_conv(cond, cond_weight, None, 1)
    return z


def _cpu_eager(x, tensors, backend) -> bool:
    """Whether the public function runs the cpu backend without the dispatcher (arguments
    checked; see artrt.backends.direct_call)."""
    return backends.direct_call(*tensors) and backends.selects_cpu(
        "causal_conv1d", x, backend, PREFERENCE)


def _records_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _cpu_conv_backward(grad, xp, weight, pad, dilation, needs, grad_xp=None):
    """(dx, dweight, dbias) of :func:`_cpu_conv` (a (Cout,) bias) from x padded on the left
    by ``pad`` (``xp``), each None unless ``needs`` it; ``grad_xp`` (None unless a double
    backward reaches the saved xp) is added to dx.

    aten's ``convolution_backward`` on xp: the padded x, dweight and dbias as autograd of
    the plain expression computes them. Its input gradient skips the products of a weight
    entry with the zeros past T that the reference's reads (NaN where that entry is NaN or
    infinite), so a non-finite weight takes the reference's formula, as does a
    differentiable backward (create_graph).
    """
    need_x, need_w, need_b = needs
    if torch.is_grad_enabled() or (need_x and pad and not bool(torch.isfinite(weight).all())):
        dx, dw = causal_conv1d_backward_ref(grad, xp[:, :, pad:], weight, dilation)
        db = _bias_grad(grad, 1) if need_b else None
    else:
        low = grad.dtype not in (torch.float32, torch.float64)  # dbias accumulated in fp32
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad, xp, weight, None if low or not need_b else [weight.shape[0]], [1], [0],
            [dilation], False, [0], 1, [need_x, need_w, need_b and not low])
        if need_x:
            dx = dx[:, :, pad:]
        if need_b and low:
            db = _bias_grad(grad, 1)
    if need_x and grad_xp is not None:
        dx = dx + grad_xp[:, :, pad:]
    return (dx if need_x else None), (dw if need_w else None), (db if need_b else None)


class _CpuCausalConv(torch.autograd.Function):
    """causal_conv1d's cpu backend under autograd, without the dispatcher (non-empty x and
    weight). Saves the padded x (returned as an extra output, so that a double backward
    reaches x through it) and the weight; backward :func:`_cpu_conv_backward` (measured, 1
    thread, forward + backward, B32 32->32 T784 K2 d1: 1.00x ``F.conv1d(F.pad(x))``, where
    the op, which pads x again and runs the reference's two convolutions, took 1.23x)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, dilation):
        xp, pad, d = _cpu_pad(x, weight, dilation)
        y = F.conv1d(xp, weight, bias, dilation=d)
        if residual is not None:
            y[:, :residual.shape[1]] += residual
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xp, weight)
        ctx.pad, ctx.dilation = pad, d
        ctx.res_channels = 0 if residual is None else residual.shape[1]
        return y, xp

    @staticmethod
    def backward(ctx, grad, grad_xp):
        xp, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if grad is None:
            grad = xp.new_zeros((xp.shape[0], weight.shape[0], xp.shape[2] - ctx.pad))
        dx, dw, db = _cpu_conv_backward(grad, xp, weight, ctx.pad, ctx.dilation, needs[:3],
                                        grad_xp)
        return dx, dw, db, (grad[:, :ctx.res_channels] if needs[3] else None), None


class _CpuWavenetGate(torch.autograd.Function):
    """wavenet_gate's cpu backend under autograd, without the dispatcher (non-empty x and
    weight): saves the padded x and the gate's tanh(z_a), sigmoid(z_b) (as autograd of the
    plain expression does; z itself is not kept), all three returned as extra outputs so
    that a double backward reaches x and z through them (measured, 1 thread, forward +
    backward, B32 32->64 T784 K2 d1: 0.90x conv1d + tanh * sigmoid, where the causal_conv1d
    op and the gate's Function took 1.10x)."""

    @staticmethod
    def forward(ctx, x, weight, bias, cond, cond_weight, dilation):
        xp, pad, d = _cpu_pad(x, weight, dilation)
        vector_bias = bias is not None and bias.dim() == 1
        z = F.conv1d(xp, weight, bias if vector_bias else None, dilation=d)
        if bias is not None and not vector_bias:
            z += bias[:, :, None]
        if cond is not None:
            z += F.conv1d(cond, cond_weight)
        h, t, s = gated_cpu_tanh_gate(z, 1)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xp, weight, cond, cond_weight, t, s)
        ctx.pad, ctx.dilation = pad, d
        ctx.bias_dim = 0 if bias is None else bias.dim()
        return h, t, s, xp

    @staticmethod
    def backward(ctx, grad_h, grad_t, grad_s, grad_xp):
        xp, weight, cond, cond_weight, t, s = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dz = gated_cpu_tanh_gate_backward(grad_h, grad_t, grad_s, t, s, 1)
        dx, dw, db = _cpu_conv_backward(dz, xp, weight, ctx.pad, ctx.dilation,
                                        (needs[0], needs[1], needs[2] and ctx.bias_dim == 1),
                                        grad_xp)
        if needs[2] and ctx.bias_dim == 2:
            db = _bias_grad(dz, 2)
        dc = dwc = None
        if needs[3] or needs[4]:
            dc, dwc, _ = _cpu_conv_backward(dz, cond, cond_weight, 0, 1,
                                            (needs[3], needs[4], False))
        return dx, dw, db, dc, dwc, None


# --------------------------------------------------------------------------- causal_conv1d op

@torch.library.custom_op("artrt::causal_conv1d", mutates_args=())
def _causal_conv1d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      residual: torch.Tensor | None, dilation: int,
                      backend: str) -> torch.Tensor:
    """The op behind causal_conv1d; see it for shapes."""
    _check_causal_conv1d(x, weight, bias, residual, dilation)
    name = backends.select("causal_conv1d", x.device, x.dtype, backend, PREFERENCE)
    if name == "cpu":
        return _cpu_conv(x, weight, bias, dilation, residual)
    if name == "reference":
        return causal_conv1d_ref(x, weight, bias, dilation, residual).contiguous()
    from artrt.kernels.causal_conv1d import causal_conv1d_fwd

    return causal_conv1d_fwd(x, weight, bias, effective_dilation(dilation, x.shape[2]), residual)


@_causal_conv1d_op.register_fake
def _(x, weight, bias, residual, dilation, backend):
    _check_causal_conv1d(x, weight, bias, residual, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2]))


@torch.library.custom_op("artrt::causal_conv1d_backward", mutates_args=())
def _causal_conv1d_backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               dilation: int, backend: str
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dweight) of artrt::causal_conv1d: (B, Cin, T) and (Cout, Cin, K)."""
    _check_conv(x, weight, dilation, "causal_conv1d backward")
    _check_grad(grad_out, x, (x.shape[0], weight.shape[0], x.shape[2]), "causal_conv1d backward")
    name = backends.select("causal_conv1d backward", x.device, x.dtype, backend, PREFERENCE)
    if name in ("cpu", "reference"):  # aten convolutions already; dx as documented there
        dx, dw = causal_conv1d_backward_ref(grad_out, x, weight, dilation)
        return dx.contiguous(), dw.contiguous()
    from artrt.kernels.causal_conv1d import causal_conv1d_bwd_input, causal_conv1d_bwd_weight

    dilation = effective_dilation(dilation, x.shape[2])
    return (causal_conv1d_bwd_input(grad_out, weight, dilation),
            causal_conv1d_bwd_weight(grad_out, x, weight.shape[2], dilation))


@_causal_conv1d_backward_op.register_fake
def _(grad_out, x, weight, dilation, backend):
    _check_conv(x, weight, dilation, "causal_conv1d backward")
    _check_grad(grad_out, x, (x.shape[0], weight.shape[0], x.shape[2]), "causal_conv1d backward")
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format))


_register_double_backward(_causal_conv1d_backward_op, causal_conv1d_backward_ref, 3)


def _bias_grad(grad: torch.Tensor, bias_dim: int) -> torch.Tensor:
    """Sum of ``grad`` (B, rows, T) to a (rows,) or (B, rows) bias, accumulated in at least
    fp32."""
    dims = (0, 2) if bias_dim == 1 else (2,)
    acc = torch.promote_types(grad.dtype, torch.float32)
    return grad.sum(dims, dtype=acc).to(grad.dtype)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, residual, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilation, ctx.backend = dilation, backend
    ctx.bias_dim = bias.dim() if bias is not None else 0
    ctx.res_channels = residual.shape[1] if residual is not None else 0


def _conv_autograd(ctx, grad):
    x, weight = ctx.saved_tensors
    needs_x, needs_w, needs_b, needs_r = ctx.needs_input_grad[:4]
    dx = dw = db = dr = None
    if needs_x or needs_w:
        dx, dw = _causal_conv1d_backward_op(grad, x, weight, ctx.dilation, ctx.backend)
    if needs_b:
        db = _bias_grad(grad, ctx.bias_dim)
    if needs_r:
        dr = grad[:, :ctx.res_channels]
    return (dx if needs_x else None), (dw if needs_w else None), db, dr, None, None


_causal_conv1d_op.register_autograd(_conv_autograd, setup_context=_conv_setup_context)


# --------------------------------------------------------------------------- wavenet_gate op

@torch.library.custom_op("artrt::wavenet_gate", mutates_args=())
def _wavenet_gate_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     cond: torch.Tensor | None, cond_weight: torch.Tensor | None,
                     dilation: int, backend: str) -> torch.Tensor:
    """The op behind wavenet_gate; see it for shapes."""
    _check_wavenet_gate(x, weight, bias, cond, cond_weight, dilation)
    name = backends.select("wavenet_gate", x.device, x.dtype, backend, PREFERENCE)
    if name == "cpu":
        return gated_cpu_forward(_cpu_preact(x, weight, bias, cond, cond_weight, dilation),
                                 None, 1, ACT_TANH)
    if name == "reference":
        return wavenet_gate_ref(x, weight, bias, cond, cond_weight, dilation).contiguous()
    from artrt.kernels.causal_conv1d import wavenet_gate_fwd

    return wavenet_gate_fwd(x, weight, bias, cond, cond_weight,
                            effective_dilation(dilation, x.shape[2]))


@_wavenet_gate_op.register_fake
def _(x, weight, bias, cond, cond_weight, dilation, backend):
    _check_wavenet_gate(x, weight, bias, cond, cond_weight, dilation)
    return x.new_empty((x.shape[0], weight.shape[0] // 2, x.shape[2]))


@torch.library.custom_op("artrt::wavenet_gate_backward", mutates_args=())
def _wavenet_gate_backward_op(grad_h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None, cond: torch.Tensor | None,
                              cond_weight: torch.Tensor | None, dilation: int,
                              backend: str) -> torch.Tensor:
    """Gradient of artrt::wavenet_gate with respect to its pre-activation: (B, 2G, T)."""
    _check_wavenet_gate(x, weight, bias, cond, cond_weight, dilation)
    _check_grad(grad_h, x, (x.shape[0], weight.shape[0] // 2, x.shape[2]),
                "wavenet_gate backward")
    name = backends.select("wavenet_gate backward", x.device, x.dtype, backend, PREFERENCE)
    if name == "cpu":
        return gated_cpu_backward(grad_h, _cpu_preact(x, weight, bias, cond, cond_weight,
                                                      dilation), None, 1, ACT_TANH)
    if name == "reference":
        return wavenet_gate_backward_ref(grad_h, x, weight, bias, cond, cond_weight,
                                         dilation).contiguous()
    from artrt.kernels.causal_conv1d import wavenet_gate_fwd

    return wavenet_gate_fwd(x, weight, bias, cond, cond_weight,
                            effective_dilation(dilation, x.shape[2]), grad_h=grad_h)


@_wavenet_gate_backward_op.register_fake
def _(grad_h, x, weight, bias, cond, cond_weight, dilation, backend):
    _check_wavenet_gate(x, weight, bias, cond, cond_weight, dilation)
    _check_grad(grad_h, x, (x.shape[0], weight.shape[0] // 2, x.shape[2]),
                "wavenet_gate backward")
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2]))


_register_double_backward(_wavenet_gate_backward_op, wavenet_gate_backward_ref, 6)


def _gate_setup_context(ctx, inputs, output):
    x, weight, bias, cond, cond_weight, dilation, backend = inputs
    ctx.save_for_backward(x, weight, bias, cond, cond_weight)
    ctx.dilation, ctx.backend = dilation, backend


def _gate_autograd(ctx, grad_h):
    x, weight, bias, cond, cond_weight = ctx.saved_tensors
    needs = ctx.needs_input_grad[:5]
    if not any(needs):
        return None, None, None, None, None, None, None
    dz = _wavenet_gate_backward_op(grad_h, x, weight, bias, cond, cond_weight, ctx.dilation,
                                   ctx.backend)
    dx = dw = db = dc = dwc = None
    if needs[0] or needs[1]:
        dx, dw = _causal_conv1d_backward_op(dz, x, weight, ctx.dilation, ctx.backend)
    if needs[2]:
        db = _bias_grad(dz, bias.dim())
    if needs[3] or needs[4]:
        dc, dwc = _causal_conv1d_backward_op(dz, cond, cond_weight, 1, ctx.backend)
    return (dx if needs[0] else None, dw if needs[1] else None, db,
            dc if needs[3] else None, dwc if needs[4] else None, None, None)


_wavenet_gate_op.register_autograd(_gate_autograd, setup_context=_gate_setup_context)


# --------------------------------------------------------------------------- public functions

def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  dilation: int = 1, *, residual: torch.Tensor | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """Causal dilated convolution: ``y[:, :, t]`` sees ``x`` only at ``t - i d``, i < K.

    ``y = F.conv1d(F.pad(x, ((K-1) d, 0)), weight, bias, dilation=d)`` (+ residual), without
    the padded copy.

    Args:
        x: (B, Cin, T) floating tensor, any strides. The kernels take float32, float16 and
            bfloat16 (accumulation in float32; float32 uses TF32 when
            ``torch.backends.cudnn.allow_tf32`` is set, as cuDNN does); other float dtypes
            use the reference.
        weight: (Cout, Cin, K), the layout of ``nn.Conv1d.weight``; K in 1..8.
        bias: optional (Cout,).
        dilation: int >= 1, any size (taps reaching before t = 0 read zeros; any d >= T is
            the same convolution as d = T, which is what runs).
        residual: optional (B, R, T) with R <= Cout, added to output channels [0, R) in the
            kernel's epilogue (WaveNet's residual connection with a joint residual/skip 1x1).
        backend: force ``"reference"``, ``"cpu"`` or ``"triton"``; ``None`` follows
            ``artrt.use_backend`` / ``ARTRT_BACKEND``, else the fastest available
            (``cpu`` for CPU tensors).

    Returns:
        (B, Cout, T) contiguous tensor of x's dtype. Differentiable in every tensor argument.
    """
    _check_causal_conv1d(x, weight, bias, residual, dilation)
    backend = backends.requested(backend)
    tensors = (x, weight, bias, residual)
    if _cpu_eager(x, tensors, backend):
        if not _records_grad(tensors):
            return _cpu_conv(x, weight, bias, dilation, residual)
        if x.numel() and weight.numel():
            return _CpuCausalConv.apply(x, weight, bias, residual, dilation)[0]
    return _causal_conv1d_op(x, weight, bias, residual, effective_dilation(dilation, x.shape[2]),
                             backend)


def wavenet_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 cond: torch.Tensor | None = None, cond_weight: torch.Tensor | None = None,
                 dilation: int = 1, *, backend: str | None = None) -> torch.Tensor:
    """Fused ``h = tanh(z_a) * sigmoid(z_b)``, ``z = causal_conv1d(x, weight) + bias +
    cond_weight @ cond``, ``z_a, z_b = z.chunk(2, 1)``: the pre-activation is never stored.

    Args:
        x: (B, R, T) floating tensor, any strides (dtypes as :func:`causal_conv1d`).
        weight: (2G, R, K), K in 1..8; rows [0, G) feed tanh, rows [G, 2G) the sigmoid.
        bias: optional (2G,), or (B, 2G) to carry global conditioning (the projected
            per-sequence vector plus the conv bias).
        cond: optional local conditioning (B, Cc, T), with cond_weight (2G, Cc, 1) (a 1x1
            ``nn.Conv1d`` weight without bias).
        dilation: int >= 1, any size (as :func:`causal_conv1d`).
        backend: as :func:`causal_conv1d`.

    Returns:
        (B, G, T) contiguous tensor of x's dtype. Differentiable in every tensor argument.
    """
    _check_wavenet_gate(x, weight, bias, cond, cond_weight, dilation)
    backend = backends.requested(backend)
    tensors = (x, weight, bias, cond, cond_weight)
    if _cpu_eager(x, tensors, backend):
        if not _records_grad(tensors):
            return gated_cpu_forward(_cpu_preact(x, weight, bias, cond, cond_weight, dilation),
                                     None, 1, ACT_TANH)
        if x.numel() and weight.numel() and (cond is None or cond.numel()):
            return _CpuWavenetGate.apply(x, weight, bias, cond, cond_weight, dilation)[0]
    return _wavenet_gate_op(x, weight, bias, cond, cond_weight,
                            effective_dilation(dilation, x.shape[2]), backend)
