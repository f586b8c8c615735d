"""The fused gated convolution of Gated PixelCNN: convolution, bias, conditioning, the
vertical-to-horizontal link and the ``tanh * sigmoid`` gate in one kernel.

Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves and Kavukcuoglu,
"Conditional Image Generation with PixelCNN Decoders", 2016) computes each stack as

    pre = conv(x) + bias + cond [+ link(shift_down(v_pre))]      (B, 2C, H, W)
    out = tanh(pre[:, :C]) * sigmoid(pre[:, C:])                  (B, C, H, W)

The op ``artrt::gated_tap_conv2d`` does all of it in one launch of the tap-set kernel of
:mod:`artrt.kernels.masked_conv2d`: the two halves a and b of the output columns are
accumulated by the same program, so the gate is the epilogue. The link is a second input of
the same kernel: a 1x1 convolution of ``link_x`` read one row up (``shift_down``, zero on the
first row), i.e. one tap at offset (-1, 0). The op returns the pre-activation too: the
vertical stack's feeds the horizontal stack's link, and the backward needs it (it is the one
tensor saved; the backward recomputes the gate derivative from it).

``shift_down(v_pre)`` is the paper's way of keeping the horizontal stack from seeing the
current row through the vertical stack, which sees rows i-k//2..i in full width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops import gated as _gated
from artrt.ops._checks import check_like_x
from artrt.ops.gated import ACT_TANH, gated_backward_ref, gated_tanh_ref
from artrt.ops.masked_conv2d import (
    _check,
    _cpu_backward,
    _cpu_forward,
    _taps_tensor,
    _tensor,
    acc_dtype,
    pack_weight,
    tap_conv2d_backward_ref,
    tap_conv2d_ref,
    unpack_weight_grad,
)

# triton where it runs, else the cpu backend (aten convolutions over the live taps)
PREFERENCE = ("triton", "cpu", "reference")

_LINK_TAPS = ((-1, 0),)  # the link reads v_pre one row up
_LINK_TAPS_T = ((1, 0),)  # and its input gradient writes one row down


# --------------------------------------------------------------------------- reference

def gated_tap_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         cond: torch.Tensor | None, link_x: torch.Tensor | None,
                         link_weight: torch.Tensor | None, pad_top: int, pad_left: int,
                         mask_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch ``artrt::gated_tap_conv2d``: returns (out (B, C, H, W), pre (B, 2C, H, W)).

    x (B, Cin, H, W); weight (2C, Cin, kh, kw) with the output pixel at tap (pad_top,
    pad_left); bias (2C,) or None; cond (B, 2C) or None; link_x (B, Cl, H, W) or None with
    link_weight (2C, Cl, 1, 1).
    """
    pre = _pre_linear_ref(x, weight, link_x, link_weight, pad_top, pad_left, mask_type)
    if bias is not None:
        pre = pre + bias[:, None, None]
    if cond is not None:
        pre = pre + cond[:, :, None, None]
    return gated_tanh_ref(pre), pre


def _shift_down(t: torch.Tensor) -> torch.Tensor:
    """Row i of the result holds row i - 1 of t; row 0 is zero."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1]


def _pre_linear_ref(x, weight, link_x, link_weight, pad_top, pad_left, mask_type):
    """The linear part of the pre-activation: conv(x) + link(shift_down(link_x))."""
    pre = tap_conv2d_ref(x, weight, None, None, pad_top, pad_left, mask_type)
    if link_x is not None:  # a 1x1 convolution (einsum: F.conv2d mis-shapes Cl = 0)
        pre = pre + torch.einsum("bchw,oc->bohw", _shift_down(link_x), link_weight[:, :, 0, 0])
    return pre


def gated_tap_conv2d_backward_ref(grad_out, grad_pre, x, weight, pre, link_x, link_weight,
                                  pad_top, pad_left, mask_type):
    """Pure PyTorch gradients (dx, dweight, dcond, dlink_x, dlink_weight) of both outputs
    (out, pre) for the upstream gradients (grad_out, grad_pre or None), given the saved
    pre-activation ``pre``. dcond (B, 2C) is the pre-activation gradient summed over pixels
    (the bias gradient is its batch sum); the link ones are None without a link."""
    dpre = gated_backward_ref(grad_out, pre, None, 1, ACT_TANH)
    if grad_pre is not None:
        dpre = dpre + grad_pre
    dx, dw, dcond = tap_conv2d_backward_ref(dpre, x, weight, pad_top, pad_left, mask_type, 1)
    dlx = dlw = None
    if link_x is not None:
        dlw, dlx = _link_grad_weight(link_x, dpre), _link_grad_input(link_weight, dpre)
    return dx, dw, dcond, dlx, dlw


def _link_grad_weight(link_x, dpre):
    """The link's weight gradient (2C, Cl, 1, 1) for the pre-activation gradient dpre."""
    return torch.einsum("bchw,bohw->oc", _shift_down(link_x), dpre)[:, :, None, None]


def _link_grad_input(link_weight, dpre):
    """The link's input gradient (B, Cl, H, W): the transpose of the 1x1 conv, then of
    _shift_down (row i + 1's gradient lands on row i; the last row gets none)."""
    dshifted = torch.einsum("oc,bohw->bchw", link_weight[:, :, 0, 0], dpre)
    return F.pad(dshifted, (0, 0, 0, 1))[:, :, 1:]


# --------------------------------------------------------------------------- checks

def _check_gated(x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type,
                 name: str = "artrt::gated_tap_conv2d") -> None:
    _check(x, weight, bias, cond, pad_top, pad_left, mask_type, 1, name)
    if weight.shape[0] % 2:
        raise ValueError(f"{name}: weight must have an even number of output channels (2C: "
                         f"the a and b halves of the gate), got {weight.shape[0]}")
    if (link_x is None) != (link_weight is None):
        raise ValueError(f"{name}: link_x and link_weight must be given together")
    if link_x is None:
        return
    _tensor(link_x, "link_x", name)
    _tensor(link_weight, "link_weight", name)
    for t, what in ((link_x, "link_x"), (link_weight, "link_weight")):
        check_like_x(name, what, t, x)
    want_x = (x.shape[0], link_weight.shape[1] if link_weight.dim() == 4 else -1, *x.shape[2:])
    if link_weight.dim() != 4 or tuple(link_weight.shape) != (weight.shape[0], want_x[1], 1, 1):
        raise ValueError(f"{name}: link_weight must have shape (2C, Cl, 1, 1) = "
                         f"({weight.shape[0]}, Cl, 1, 1), got {tuple(link_weight.shape)}")
    if tuple(link_x.shape) != want_x:
        raise ValueError(f"{name}: link_x must have shape {want_x}, got {tuple(link_x.shape)}")


def _check_grads(grad_out, grad_pre, pre, x, weight,
                 name: str = "artrt::gated_tap_conv2d_backward") -> None:
    bsz, _, height, width = x.shape
    c2 = weight.shape[0]
    for t, what, shape in ((pre, "pre", (bsz, c2, height, width)),
                           (grad_out, "grad_out", (bsz, c2 // 2, height, width)),
                           (grad_pre, "grad_pre", (bsz, c2, height, width))):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: {what} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name}: {what} must be {x.dtype} on {x.device}, "
                            f"got {t.dtype} on {t.device}")


# --------------------------------------------------------------------------- backends

def _pack_link(link_weight: torch.Tensor, transpose: bool = False):
    w = link_weight[:, :, 0, 0]  # (2C, Cl)
    packed = (w if transpose else w.t()).contiguous()[None]  # (1, Cl, 2C) or (1, 2C, Cl)
    return packed, _taps_tensor(_LINK_TAPS_T if transpose else _LINK_TAPS, w.device)


def _cpu_link(link_x, link_weight):
    """link(shift_down(link_x)) (B, 2C, H, W) by aten: a 1x1 convolution (an einsum when a
    dimension is empty, which F.conv2d mis-shapes or refuses)."""
    if link_x.numel() == 0 or link_weight.numel() == 0:
        return torch.einsum("bchw,oc->bohw", link_x, link_weight[:, :, 0, 0])
    return F.conv2d(_shift_down(link_x), link_weight)


def _forward(x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type, name):
    if name == "cpu":
        pre = _cpu_forward(x, weight, bias, cond, None, pad_top, pad_left, mask_type, 1)
        if link_x is not None:
            pre = pre + _cpu_link(link_x, link_weight)
        return _gated._cpu_forward(pre, None, 1, ACT_TANH), pre.contiguous()
    if name == "reference":
        out, pre = gated_tap_conv2d_ref(x, weight, bias, cond, link_x, link_weight, pad_top,
                                        pad_left, mask_type)
        return out.contiguous(), pre.contiguous()
    from artrt.kernels.masked_conv2d import tap_conv_fwd

    packed, taps = pack_weight(weight, pad_top, pad_left, mask_type, 1)
    link = {}
    if link_x is not None:
        w2, taps2 = _pack_link(link_weight)
        link = {"x2": link_x, "w2_packed": w2, "taps2": taps2}
    return tap_conv_fwd(x, packed, taps, bias=bias, cond=cond, gate=True, store_pre=True,
                        **link)


def _backward(grad_out, grad_pre, x, weight, pre, link_x, link_weight, pad_top, pad_left,
              mask_type, needs, name):
    need_x, need_w, need_lx, need_lw = needs

    def empty():  # a fresh one each time: outputs of a custom op may not alias each other
        return x.new_empty(0)

    if name == "reference":
        dx, dw, dcond, dlx, dlw = gated_tap_conv2d_backward_ref(
            grad_out, grad_pre, x, weight, pre, link_x, link_weight, pad_top, pad_left,
            mask_type)
        return (dx.contiguous() if need_x else empty(), dw.contiguous() if need_w else empty(),
                dcond, dlx.contiguous() if need_lx else empty(),
                dlw.contiguous() if need_lw else empty())
    if name == "cpu":
        dpre = _gated._cpu_backward(grad_out, pre, None, 1, ACT_TANH)
        if grad_pre is not None:
            dpre = dpre + grad_pre
        dx, dw, dcond = _cpu_backward(dpre, x, weight, pad_top, pad_left, mask_type, 1,
                                      need_x, need_w)
        dlw = _link_grad_weight(link_x, dpre).contiguous() if need_lw else empty()
        dlx = _link_grad_input(link_weight, dpre).contiguous() if need_lx else empty()
        return dx, dw, dcond, dlx, dlw
    from artrt.kernels.gated import gated_bwd
    from artrt.kernels.masked_conv2d import tap_conv_fwd, tap_conv_wgrad

    bsz, c2, height, width = pre.shape
    g3 = grad_out.contiguous().view(bsz, c2 // 2, height * width)  # not -1: may be empty
    dpre = gated_bwd(g3, pre.view(bsz, c2, height * width), None, ACT_TANH).view(pre.shape)
    if grad_pre is not None:
        dpre = (dpre + grad_pre).contiguous()
    dx, dw, dlx, dlw = empty(), empty(), empty(), empty()
    if need_x:
        packed_t, taps_t = pack_weight(weight, pad_top, pad_left, mask_type, 1, transpose=True)
        dx, _ = tap_conv_fwd(dpre, packed_t, taps_t)
    if need_w:
        _, taps = pack_weight(weight, pad_top, pad_left, mask_type, 1)
        dw = unpack_weight_grad(tap_conv_wgrad(x, dpre, taps), weight, pad_top, pad_left,
                                mask_type, 1)
    if need_lx:
        w2t, taps2t = _pack_link(link_weight, transpose=True)
        dlx, _ = tap_conv_fwd(dpre, w2t, taps2t)
    if need_lw:
        dlw_packed = tap_conv_wgrad(link_x, dpre, _taps_tensor(_LINK_TAPS, x.device))
        dlw = dlw_packed[0].t()[:, :, None, None].to(link_weight.dtype).contiguous()
    return dx, dw, dpre.sum((2, 3), dtype=acc_dtype(dpre.dtype)), dlx, dlw


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("artrt::gated_tap_conv2d", mutates_args=())
def gated_tap_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     cond: torch.Tensor | None, link_x: torch.Tensor | None,
                     link_weight: torch.Tensor | None, pad_top: int, pad_left: int,
                     mask_type: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, C, H, W), pre (B, 2C, H, W)), both contiguous; see the module docstring."""
    _check_gated(x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type)
    name = backends.select("gated_tap_conv2d", x.device, x.dtype, backend, PREFERENCE)
    return _forward(x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type,
                    name)


@gated_tap_conv2d.register_fake
def _(x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type, backend):
    _check_gated(x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type)
    bsz, _, height, width = x.shape
    c2 = weight.shape[0]
    return x.new_empty((bsz, c2 // 2, height, width)), x.new_empty((bsz, c2, height, width))


@torch.library.custom_op("artrt::gated_tap_conv2d_backward", mutates_args=())
def gated_tap_conv2d_backward(
        grad_out: torch.Tensor, grad_pre: torch.Tensor | None, x: torch.Tensor,
        weight: torch.Tensor, pre: torch.Tensor, link_x: torch.Tensor | None,
        link_weight: torch.Tensor | None, pad_top: int, pad_left: int, mask_type: str,
        need_x: bool, need_w: bool, need_link_x: bool, need_link_w: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dcond (B, 2C), dlink_x, dlink_weight) of artrt::gated_tap_conv2d; the
    ones not needed are empty; dcond in float32 (float64 for float64)."""
    _check_gated(x, weight, None, None, link_x, link_weight, pad_top, pad_left, mask_type)
    _check_grads(grad_out, grad_pre, pre, x, weight)
    name = backends.select("gated_tap_conv2d backward", x.device, x.dtype, backend,
                           PREFERENCE)
    return _backward(grad_out, grad_pre, x, weight, pre, link_x, link_weight, pad_top,
                     pad_left, mask_type, (need_x, need_w, need_link_x, need_link_w), name)


@gated_tap_conv2d_backward.register_fake
def _(grad_out, grad_pre, x, weight, pre, link_x, link_weight, pad_top, pad_left, mask_type,
      need_x, need_w, need_link_x, need_link_w, backend):
    _check_gated(x, weight, None, None, link_x, link_weight, pad_top, pad_left, mask_type)
    _check_grads(grad_out, grad_pre, pre, x, weight)

    def like(t, need):
        return (torch.empty_like(t, memory_format=torch.contiguous_format) if need
                else x.new_empty(0))

    return (like(x, need_x), like(weight, need_w),
            pre.new_empty(pre.shape[:2], dtype=acc_dtype(pre.dtype)),
            like(link_x, need_link_x), like(link_weight, need_link_w))


def _setup_context(ctx, inputs, output):
    x, weight, bias, cond, link_x, link_weight, pad_top, pad_left, mask_type, backend = inputs
    ctx.save_for_backward(x, weight, output[1], link_x, link_weight)
    ctx.spec = (pad_top, pad_left, mask_type)
    ctx.backend = backend


def _gated_tap_conv2d_autograd(ctx, grad_out, grad_pre):
    x, weight, pre, link_x, link_weight = ctx.saved_tensors
    need_x, need_w, need_b, need_c, need_lx, need_lw = ctx.needs_input_grad[:6]
    if not any((need_x, need_w, need_b, need_c, need_lx, need_lw)):
        return (None,) * 10
    dx, dw, dcond, dlx, dlw = gated_tap_conv2d_backward(
        grad_out, grad_pre, x, weight, pre, link_x, link_weight, *ctx.spec, need_x, need_w,
        need_lx, need_lw, ctx.backend)
    return (dx if need_x else None, dw if need_w else None,
            dcond.sum(0).to(x.dtype) if need_b else None, dcond.to(x.dtype) if need_c else None,
            dlx if need_lx else None, dlw if need_lw else None,
            None, None, None, None)


gated_tap_conv2d.register_autograd(_gated_tap_conv2d_autograd, setup_context=_setup_context)
