"""Masked and shifted 2-D convolutions of PixelCNN, Gated PixelCNN and PixelCNN++.

``masked_conv2d`` is the masked convolution of PixelCNN (van den Oord, Kalchbrenner and
Kavukcuoglu, "Pixel Recurrent Neural Networks", 2016): a k x k "same" convolution whose
weight is zero at and after the centre in raster order. Mask A (first layer) excludes the
centre pixel, mask B (later layers) includes it. With ``color_groups=3`` the input and output
channels are each split into three contiguous groups R, G, B, and the centre tap follows the
colour ordering (R < G < B)::

    k = 5, taps (one channel group):       centre tap, color_groups=3 (rows: output group,
                                           columns: input group; 1 = connected)
      1 1 1 1 1                                      mask A        mask B
      1 1 1 1 1                                      R G B         R G B
      1 1 c 0 0      c: mask A 0, mask B 1       R   0 0 0         1 0 0
      0 0 0 0 0                                  G   1 0 0         1 1 0
      0 0 0 0 0                                  B   1 1 0         1 1 1

``down_shifted_conv2d`` and ``down_right_shifted_conv2d`` are the shifted convolutions of
PixelCNN++ (Salimans, Karpathy, Chen and Kingma, 2017): a (kh, kw) kernel placed so that
output pixel (i, j) sees rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2 (down-shifted,
default 2 x 3), or rows i-kh+1..i and columns j-kw+1..j (down-right-shifted, default 2 x 2).

All are one torch.library op, ``artrt::tap_conv2d``: a convolution with zero padding
``pad_top`` rows above and ``pad_left`` columns left of each output pixel (the rest of the
kernel below and right of it), optionally masked in raster order around the tap at
``(pad_top, pad_left)``. Only the live taps are computed by the Triton kernel
(:mod:`artrt.kernels.masked_conv2d`), so a masked k x k convolution does about half the work
of a dense one. The weight keeps ``nn.Conv2d``'s layout (Cout, Cin, kh, kw) and may hold
anything at masked positions (NaN and inf included): they are ignored and get zero gradient.
An inf or NaN input pixel reaches exactly the outputs whose mask sees it (with colour
groups, at the centre only the groups allowed to see its channel), on every backend.

``cond`` is the class-conditional bias of conditional PixelCNN (van den Oord et al.,
"Conditional Image Generation with PixelCNN Decoders", 2016): a (B, Cout) tensor added to
every pixel of each image (``V^T h`` already projected).

Departure from the papers: colour groups are contiguous channel blocks (channel c is in group
``c // (C / groups)``), the layout of PixelCNN's reference implementation; PixelCNN++ uses
no colour groups and has none here.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops._checks import check_like_x

# Backends of this op on CUDA tensors, fastest first (provisional until measured on a GPU);
# CPU tensors take "cpu" (see artrt.backends.select).
PREFERENCE = ("triton", "cpu", "reference")
MASK_TYPES = ("A", "B", "none")


# --------------------------------------------------------------------------- tap sets

@functools.lru_cache(maxsize=256)
def _live_taps(kh: int, kw: int, pad_top: int, pad_left: int, mask_type: str,
               color_groups: int) -> tuple[tuple[int, int], ...]:
    """Kernel positions (r, c) whose weight can be non-zero, in raster order."""
    live = []
    for r in range(kh):
        for c in range(kw):
            before = (r, c) < (pad_top, pad_left)
            centre = (r, c) == (pad_top, pad_left)
            if (mask_type == "none" or before or (centre and mask_type == "B")
                    or (centre and color_groups > 1)):
                live.append((r, c))
    return tuple(live)


def tap_mask(weight_shape: tuple[int, ...], pad_top: int, pad_left: int, mask_type: str,
             color_groups: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """The 0/1 mask of a weight of shape (Cout, Cin, kh, kw); see the module docstring."""
    cout, cin, kh, kw = weight_shape
    mask = torch.zeros(weight_shape, device=device, dtype=dtype)
    for r, c in _live_taps(kh, kw, pad_top, pad_left, mask_type, color_groups):
        mask[:, :, r, c] = 1
    if mask_type != "none" and color_groups > 1:
        g_in = torch.arange(cin, device=device) // (cin // color_groups)
        g_out = torch.arange(cout, device=device) // (cout // color_groups)
        allowed = (g_in[None, :] < g_out[:, None]) if mask_type == "A" else (
            g_in[None, :] <= g_out[:, None])
        mask[:, :, pad_top, pad_left] = allowed.to(dtype)
    return mask


# --------------------------------------------------------------------------- reference

def _x_pads(kh: int, kw: int, pad_top: int, pad_left: int) -> tuple[int, int, int, int]:
    """The ``F.pad`` amounts (left, right, top, bottom) that place x under a kh x kw kernel
    whose output pixel sits at tap (pad_top, pad_left): "same" output size, stride 1."""
    return pad_left, kw - 1 - pad_left, pad_top, kh - 1 - pad_top


def _rectangles(taps: tuple[tuple[int, int], ...]) -> list[tuple[int, int, int]]:
    """``taps`` as rectangles (r0, r1, c1) of the kernel: rows [r0, r1) x columns [0, c1).

    Every tap set here keeps a prefix of each kernel row (raster order), so rows with the
    same prefix merge: a masked k x k kernel is the rows above the centre and the centre
    row's left part, an unmasked one a single rectangle.
    """
    width: dict[int, int] = {}
    for r, c in taps:
        width[r] = c + 1
    rects: list[tuple[int, int, int]] = []
    for r in sorted(width):
        if rects and rects[-1][1] == r and rects[-1][2] == width[r]:
            rects[-1] = (rects[-1][0], r + 1, width[r])
        else:
            rects.append((r, r + 1, width[r]))
    return rects


def _colour_centre(x: torch.Tensor, w_centre: torch.Tensor, mask_type: str,
                   color_groups: int) -> torch.Tensor:
    """The colour-masked centre tap: output group g mixes, at its own pixel, the input
    channels of the groups before g (mask A) or up to g (mask B), and no others.

    One grouped 1x1 ``F.conv2d``: output group g reads its own copy of x in which the
    channels it may not see are replaced by zeros (not multiplied by 0: x may hold NaN).
    x (B, Cin, H, W), w_centre (Cout, Cin). Returns (B, Cout, H, W).
    """
    copies, w, _ = _colour_centre_operands(x, w_centre, mask_type, color_groups)
    return F.conv2d(copies, w, groups=color_groups)


def _colour_centre_operands(x, w_centre, mask_type, color_groups):
    """(the copies of x (B, G Cin, H, W), the masked weight (Cout, Cin, 1, 1), the mask
    (Cout, Cin) bool) of :func:`_colour_centre`."""
    cout, cin = w_centre.shape
    allowed = tap_mask((cout, cin, 1, 1), 0, 0, mask_type, color_groups, x.device,
                       torch.bool)[:, :, 0, 0]  # (Cout, Cin)
    visible = allowed[::cout // color_groups]  # (G, Cin): what each output group sees
    copies = torch.where(visible[None, :, :, None, None], x[:, None], 0)  # (B, G, Cin, H, W)
    return (copies.flatten(1, 2), torch.where(allowed, w_centre, 0)[:, :, None, None],
            allowed)


def tap_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   cond: torch.Tensor | None, pad_top: int, pad_left: int, mask_type: str,
                   color_groups: int = 1, residual: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Pure PyTorch ``artrt::tap_conv2d``: the convolution over the live taps only.

    The live taps are rectangles of the kernel (:func:`_rectangles`), each an ``F.conv2d``
    of the zero-padded input with that part of the weight, plus the colour-masked centre
    tap (:func:`_colour_centre`). So a masked weight entry never enters the sum (an inf or
    NaN there changes nothing), and neither does an input pixel the mask hides from an
    output: a convolution with the masked entries zeroed would add 0 * NaN = NaN there.
    Empty x or weight (any of B, Cin, H, W, Cout = 0): no term, the output is the biases.

    x (B, Cin, H, W), weight (Cout, Cin, kh, kw), bias (Cout,) or None, cond (B, Cout) or
    None, residual (B, Cout, H, W) or None. Returns (B, Cout, H, W) of x's dtype: the
    convolution and bias summed in float32 (float64 for float64) and rounded once, as
    ``F.conv2d`` in x's dtype does, then cond and residual added.
    """
    bsz, cin, height, width = x.shape
    cout, _, kh, kw = weight.shape
    acc = acc_dtype(x.dtype)
    out = x.new_zeros((bsz, cout, height, width), dtype=acc)
    if x.numel() and weight.numel():
        colour = mask_type != "none" and color_groups > 1
        xp = F.pad(x.to(acc), _x_pads(kh, kw, pad_top, pad_left))
        w = weight.to(acc)
        spatial = _live_taps(kh, kw, pad_top, pad_left, "A" if colour else mask_type, 1)
        for r0, r1, c1 in _rectangles(spatial):
            out = out + F.conv2d(xp[:, :, r0:r1 + height - 1, :c1 + width - 1],
                                 w[:, :, r0:r1, :c1])
        if colour:
            out = out + _colour_centre(x.to(acc), w[:, :, pad_top, pad_left], mask_type,
                                       color_groups)
    if bias is not None:
        out = out + bias[:, None, None]
    out = out.to(x.dtype)
    if cond is not None:
        out = out + cond[:, :, None, None]
    if residual is not None:
        out = out + residual
    return out


def masked_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      mask_type: str = "B", color_groups: int = 1,
                      cond: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch :func:`masked_conv2d`."""
    k = weight.shape[-1]
    return tap_conv2d_ref(x, weight, bias, cond, k // 2, k // 2, mask_type, color_groups)


def down_shifted_conv2d_ref(x: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None,
                            cond: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch :func:`down_shifted_conv2d`."""
    kh, kw = weight.shape[2:]
    return tap_conv2d_ref(x, weight, bias, cond, kh - 1, (kw - 1) // 2, "none")


def down_right_shifted_conv2d_ref(x: torch.Tensor, weight: torch.Tensor,
                                  bias: torch.Tensor | None = None,
                                  cond: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch :func:`down_right_shifted_conv2d`."""
    kh, kw = weight.shape[2:]
    return tap_conv2d_ref(x, weight, bias, cond, kh - 1, kw - 1, "none")


def tap_conv2d_backward_ref(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            pad_top: int, pad_left: int, mask_type: str, color_groups: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure PyTorch gradients (dx, dweight, dcond) of ``tap_conv2d`` for ``grad_out``, term by
    term of :func:`tap_conv2d_ref`: only live taps carry gradient, and masked weight entries
    get exactly zero whatever x holds. dx and dweight are summed in float32 (float64 for
    float64) and rounded once.

    dx[b, c, i, j] = sum_t sum_o w[o, c, t] grad_out[b, o, i - dy_t, j - dx_t], grad_out zero
    outside the image: each rectangle's forward with the weight mirrored and transposed, as
    the kernels compute it (a NaN weight meets those zeros as it meets x's padding in the
    forward). dw[o, c, t] = sum_{b, i, j} grad_out[b, o, i, j] x[b, c, i + dy_t, j + dx_t].

    dcond (B, Cout) is ``grad_out`` summed over pixels, in float32 (float64 for float64):
    the bias gradient is its batch sum, rounded once to the parameters' dtype.
    """
    bsz, cin, height, width = x.shape
    cout, _, kh, kw = weight.shape
    acc = acc_dtype(x.dtype)
    pads = _x_pads(kh, kw, pad_top, pad_left)
    dx = x.new_zeros(x.shape, dtype=acc)
    dw = weight.new_zeros(weight.shape, dtype=acc)
    if x.numel() and weight.numel():
        colour = mask_type != "none" and color_groups > 1
        g = grad_out.to(acc)
        xp = F.pad(x.to(acc), pads)
        w = weight.to(acc)
        spatial = _live_taps(kh, kw, pad_top, pad_left, "A" if colour else mask_type, 1)
        for r0, r1, c1 in _rectangles(spatial):
            # rectangle rows [r0, r1) x columns [0, c1): grad_out read at (i + pad_top - r,
            # j + pad_left - c) for (r, c) in it (negative pads crop)
            mirrored = w[:, :, r0:r1, :c1].flip(2, 3).transpose(0, 1)  # (Cin, Cout, ., .)
            gp = F.pad(g, (c1 - 1 - pad_left, pad_left, r1 - 1 - pad_top, pad_top - r0))
            dx = dx + F.conv2d(gp, mirrored)
            part = xp[:, :, r0:r1 + height - 1, :c1 + width - 1]  # what the rectangle reads
            dw = dw + F.pad(torch.nn.grad.conv2d_weight(part, (cout, cin, r1 - r0, c1), g),
                            (0, kw - c1, r0, kh - r1))  # its place in the kernel
        if colour:
            dxc, dwc = _colour_centre_backward(g, x.to(acc), w[:, :, pad_top, pad_left],
                                               mask_type, color_groups)
            dx = dx + dxc
            dw = dw + F.pad(dwc[:, :, None, None], pads)
    return (dx.to(x.dtype), dw.to(weight.dtype),
            grad_out.sum((2, 3), dtype=acc_dtype(grad_out.dtype)))


def _colour_centre_backward(grad: torch.Tensor, x: torch.Tensor, w_centre: torch.Tensor,
                            mask_type: str, color_groups: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx (B, Cin, H, W), dw_centre (Cout, Cin)) of :func:`_colour_centre` for ``grad``
    (B, Cout, H, W); zero for the pairs the mask cuts, selected rather than computed: a NaN
    in ``grad`` of output group g reaches only the input channels g sees and the weight
    entries the mask keeps, as in the forward."""
    copies, w, allowed = _colour_centre_operands(x, w_centre, mask_type, color_groups)
    visible = allowed[::allowed.shape[0] // color_groups]  # (G, Cin)
    dcopies = torch.nn.grad.conv2d_input(copies.shape, w, grad, groups=color_groups)
    dw = torch.nn.grad.conv2d_weight(copies, w.shape, grad, groups=color_groups)
    dcopies = dcopies.unflatten(1, (color_groups, x.shape[1]))
    dcopies = torch.where(visible[None, :, :, None, None], dcopies, 0)
    return dcopies.sum(1), torch.where(allowed, dw[:, :, 0, 0], 0)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the bias / cond gradient sums: float32, or float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------- checks

def _tensor(t, what: str, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")


def _check(x, weight, bias, cond, pad_top, pad_left, mask_type, color_groups,
           name: str = "artrt::tap_conv2d", residual=None) -> None:
    """Validate the arguments of every tap convolution, naming what is wrong."""
    _check_input(x, weight, name)
    cout, cin, kh, kw = weight.shape
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: weight must have a non-empty kernel, got {kh} x {kw}")
    for v, what in ((pad_top, "pad_top"), (pad_left, "pad_left"), (color_groups,
                                                                   "color_groups")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name}: {what} must be an int, got {type(v).__name__}")
    if not (0 <= pad_top < kh and 0 <= pad_left < kw):
        raise ValueError(f"{name}: the output pixel's tap (pad_top, pad_left) = "
                         f"({pad_top}, {pad_left}) must lie in the {kh} x {kw} kernel")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"{name}: mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    if color_groups < 1:
        raise ValueError(f"{name}: color_groups must be >= 1, got {color_groups}")
    if color_groups > 1:
        if mask_type == "none":
            raise ValueError(f"{name}: color_groups={color_groups} needs mask_type 'A' or "
                             "'B' (an unmasked convolution has no channel ordering)")
        if cin % color_groups or cout % color_groups:
            raise ValueError(f"{name}: color_groups={color_groups} must divide the input and "
                             f"output channel counts, got Cin={cin}, Cout={cout}")
    _check_like(x, bias, "bias", (cout,), name)
    _check_like(x, cond, "cond", (x.shape[0], cout), name)
    if residual is not None:
        _check_like(x, residual, "residual", (x.shape[0], cout, *x.shape[2:]), name)


def _check_input(x, weight, name: str) -> None:
    """The checks of x against a 4-D weight (and of the weight's rank): all that a call with
    a weight already checked (a module's, checked at construction) needs."""
    _tensor(x, "x", name)
    _tensor(weight, "weight", name)
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be 4-D (B, Cin, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{name}: weight must be 4-D (Cout, Cin, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    check_like_x(name, "weight", weight, x)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} expects "
                         f"{weight.shape[1]} input channels, x of shape {tuple(x.shape)} has "
                         f"{x.shape[1]}")


def _check_like(x, t, what: str, shape: tuple[int, ...], name: str) -> None:
    """``t`` (bias, cond or residual; None passes) must be a tensor of x's dtype and device
    with ``shape``."""
    if t is None:
        return
    _tensor(t, what, name)
    check_like_x(name, what, t, x)
    if t.shape != shape:
        raise ValueError(f"{name}: {what} must have shape {shape}, got {tuple(t.shape)}")


def _check_grad(grad_out, x, weight, name="artrt::tap_conv2d_backward") -> None:
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    if tuple(grad_out.shape) != shape:
        raise ValueError(f"{name}: grad_out must have shape {shape}, got {tuple(grad_out.shape)}")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(f"{name}: grad_out must be {x.dtype} on {x.device}, "
                        f"got {grad_out.dtype} on {grad_out.device}")


# --------------------------------------------------------------------------- packing

@functools.lru_cache(maxsize=256)
def _taps_tensor(taps: tuple[tuple[int, int], ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(taps, dtype=torch.int32, device=device).reshape(len(taps), 2)


def pack_weight(weight: torch.Tensor, pad_top: int, pad_left: int, mask_type: str,
                color_groups: int, transpose: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed weight, taps) for the kernels.

    packed: (T, Cin, Cout) contiguous, or (T, Cout, Cin) with ``transpose``, holding the live
    taps of the masked weight. taps: (T, 2) int32, the (dy, dx) offset of each from the
    output pixel, mirrored to (-dy, -dx) with ``transpose`` (the input gradient).
    """
    kh, kw = weight.shape[2:]
    live = _live_taps(kh, kw, pad_top, pad_left, mask_type, color_groups)
    rows = [r for r, _ in live]
    cols = [c for _, c in live]
    w = weight[:, :, rows, cols]  # (Cout, Cin, T)
    if mask_type != "none" and color_groups > 1:  # select, not multiply: 0 * NaN is NaN
        mask = tap_mask(weight.shape, pad_top, pad_left, mask_type, color_groups,
                        weight.device, torch.bool)
        w = torch.where(mask[:, :, rows, cols], w, 0)
    sign = -1 if transpose else 1
    offsets = tuple((sign * (r - pad_top), sign * (c - pad_left)) for r, c in live)
    packed = w.permute(2, 0, 1) if transpose else w.permute(2, 1, 0)
    return packed.contiguous(), _taps_tensor(offsets, weight.device)


def unpack_weight_grad(dpacked: torch.Tensor, weight: torch.Tensor, pad_top: int,
                       pad_left: int, mask_type: str, color_groups: int) -> torch.Tensor:
    """Dense (Cout, Cin, kh, kw) gradient of weight's dtype from a packed (T, Cin, Cout) one;
    zero at every masked entry."""
    kh, kw = weight.shape[2:]
    live = _live_taps(kh, kw, pad_top, pad_left, mask_type, color_groups)
    dw = torch.zeros(weight.shape, device=weight.device, dtype=dpacked.dtype)
    dw[:, :, [r for r, _ in live], [c for _, c in live]] = dpacked.permute(2, 1, 0)
    if mask_type != "none" and color_groups > 1:  # x may hold NaN: select, not multiply
        dw = torch.where(tap_mask(weight.shape, pad_top, pad_left, mask_type, color_groups,
                                  weight.device, torch.bool), dw, 0)
    return dw.to(weight.dtype)


# --------------------------------------------------------------------------- cpu backend

@functools.lru_cache(maxsize=256)
def _cpu_rects(kh: int, kw: int, pad_top: int, pad_left: int, mask_type: str, height: int,
               width: int) -> tuple[tuple[tuple[int, int, int, int], tuple[int, int, int, int]],
                                    ...]:
    """The live rectangles of :func:`_rectangles`, each as ((r0, r1, c0, c1), the F.pad
    amounts (left, right, top, bottom) that place x under it, negative ones cropping).

    With ``height`` > 0, cut to the taps that can reach an image of ``height`` x ``width``
    (offset |dy| < H, |dx| < W: a 1 x 1 image needs the centre only); exact only when those
    weight entries are finite (the reference multiplies them by the zero padding)."""
    out = []
    for r0, r1, c1 in _rectangles(_live_taps(kh, kw, pad_top, pad_left, mask_type, 1)):
        c0 = 0
        if height > 0:
            r0, r1 = max(r0, pad_top - height + 1), min(r1, pad_top + height)
            c0, c1 = max(0, pad_left - width + 1), min(c1, pad_left + width)
        if r0 < r1 and c0 < c1:
            out.append(((r0, r1, c0, c1),
                        (pad_left - c0, c1 - 1 - pad_left, pad_top - r0, r1 - 1 - pad_top)))
    return tuple(out)


def _live_finite(weight, rects) -> bool:
    """Whether the weight entries under ``rects`` (uncut) are all finite (one host read; not
    cached: a write through ``weight.data`` would not show in a cache key)."""
    w = weight.detach()
    return all(bool(torch.isfinite(w[:, :, r0:r1, c0:c1]).all())
               for (r0, r1, c0, c1), _ in rects)


@functools.lru_cache(maxsize=256)
def _cpu_mask(shape: tuple[int, ...], pad_top: int, pad_left: int, mask_type: str,
              color_groups: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """:func:`tap_mask` on the CPU in ``dtype``, made once per shape (a mask depends on the
    weight's shape only, never on its values, so it cannot go stale)."""
    return tap_mask(shape, pad_top, pad_left, mask_type, color_groups, "cpu", dtype)


def _rect_weights(weight, acc, rects):
    """The weight of each rectangle of ``rects`` (of :func:`_cpu_rects`) in dtype ``acc``
    (views; not cached across calls: a write through ``weight.data`` does not bump the
    version a cache would key on, and a stale weight would be a silently wrong result)."""
    wa = weight if weight.dtype == acc else weight.to(acc)
    return [wa if (r0, r1, c0, c1) == (0, weight.shape[2], 0, weight.shape[3])
            else wa[:, :, r0:r1, c0:c1] for (r0, r1, c0, c1), _ in rects]


# From this many kernel taps on, a masked convolution runs over the live rectangles (the
# reference's formula), below it one dense convolution (per gradient) with the masked weight
# (measured, 1 thread, B16 64->64 28x28 mask B, forward + backward vs plain: dense k3 1.12x
# / k5 1.04x / k7 1.02x; rectangles k3 1.6x (reference), k5 0.95x, k7 0.83x).
_RECT_TAPS = 25
# ... unless the taps are few in input channels or the centre is colour-masked: there the
# dense convolution wins at any size (measured, 1 thread, forward, 7x7 mask A, 16x28x28:
# colour groups 3->96 dense 2.4 / rectangles 6.4 ms, 48->48 15.1 / 19.9 ms; no colour
# groups 1->64 0.94 / 1.47 ms, 4->64 2.03 / 2.11 ms, 16->64 mask B 7.1 / 5.8 ms).
_DENSE_CIN = 4


def _by_rectangles(weight_shape: tuple[int, ...], color_groups: int) -> bool:
    """Whether the cpu backend computes a masked convolution of this weight shape over its
    live rectangles (forward and backward) rather than densely with the masked weight."""
    _, cin, kh, kw = weight_shape
    return kh * kw >= _RECT_TAPS and color_groups == 1 and cin > _DENSE_CIN


def _dense_conv(xa, weight, ba, acc, pad_top, pad_left, mask_type, color_groups):
    """The cpu forward as one dense aten convolution with the masked weight, in dtype
    ``acc``, when that is exact; else None (the caller takes the live rectangles).

    Tried below ``_RECT_TAPS`` taps, with colour groups, or with at most ``_DENSE_CIN``
    input channels (never while compiling: it reads the host). The masked weight is the
    weight times the 0/1 mask, so a non-finite entry at a masked position becomes NaN
    instead of 0. When x and the masked weight are together smaller than the output, both
    are read for finiteness before the convolution (two host reads of sums; both finite,
    every term is finite). Otherwise the result is kept only when it is finite (one host
    read of its sum): a finite result means x, the bias and every weight entry whose tap
    reaches the image were finite, because each x pixel meets every output channel through
    the centre tap (a non-finite value times anything, 0 included, is non-finite) and each
    such weight entry meets some x pixel. When the image is smaller than the kernel some
    taps reach only the zero padding, which aten may skip rather than multiply (the
    reference multiplies: a NaN there is NaN), so their entries are read too (the masked
    weight's sum). With everything finite, the masked entries' zeros add nothing and the
    sum is the reference's. The masked weight is made per call, not cached: a write through
    ``weight.data`` does not bump the version a cache would key on."""
    cout, _, kh, kw = weight.shape
    if mask_type == "none" or torch.compiler.is_compiling() or _by_rectangles(
            weight.shape, color_groups):
        return None
    wa = weight if weight.dtype == acc else weight.to(acc)
    wa = wa * _cpu_mask(tuple(weight.shape), pad_top, pad_left, mask_type, color_groups, acc)
    # the operands checked when they are smaller than the output (a bias needs no check:
    # the reference adds it to every output pixel as the convolution does)
    checked = xa.numel() + wa.numel() < xa.shape[0] * cout * xa.shape[2] * xa.shape[3]
    if checked and not (math.isfinite(float(xa.sum())) and math.isfinite(float(wa.sum()))):
        return None
    pads = _x_pads(kh, kw, pad_top, pad_left)
    if pads[0] == pads[1] and pads[2] == pads[3]:
        out = F.conv2d(xa, wa, ba, padding=(pad_top, pad_left))
    else:
        out = F.conv2d(F.pad(xa, pads), wa, ba)
    if checked:
        return out
    # a finite x whose output sum overflows only takes the rectangles
    if not math.isfinite(float(out.sum())):
        return None
    if (xa.shape[2] < kh or xa.shape[3] < kw) and not math.isfinite(float(wa.sum())):
        return None
    return out


def _cpu_forward(x, weight, bias, cond, residual, pad_top, pad_left, mask_type, color_groups):
    """The cpu backend's forward. Below ``_RECT_TAPS`` kernel taps with x and the kept weight
    finite, one aten ``conv2d`` with the masked weight (:func:`_dense_conv`); otherwise one
    aten ``conv2d`` per live rectangle of the kernel (the rows above the centre, the centre
    row's left part), each on x padded (or cropped) by one ``F.pad`` to what it reads, plus
    the colour-masked centre (:func:`_colour_centre`). As in the reference, masked weight
    entries and the pixels an output cannot see never enter its sum (a NaN or inf in x takes
    the rectangles: a dense convolution would meet it with the masked entries' zeros).
    Differentiable by autograd (aten's own nodes). Returns (B, Cout, H, W) contiguous."""
    bsz, cin, height, width = x.shape
    cout, _, kh, kw = weight.shape
    acc = acc_dtype(x.dtype)
    low = x.dtype != acc
    xa = x.to(acc) if low else x
    colour = mask_type != "none" and color_groups > 1
    ba = None if bias is None else bias.to(acc) if low else bias
    nonempty = x.numel() and weight.numel()
    out = (_dense_conv(xa, weight, ba, acc, pad_top, pad_left, mask_type, color_groups)
           if nonempty else None)
    if out is None and nonempty:
        spatial = "A" if colour else mask_type
        rects = _cpu_rects(kh, kw, pad_top, pad_left, spatial, 0, 0)
        if (height < kh or width < kw) and not torch.compiler.is_compiling() and _live_finite(
                weight, rects):  # an image smaller than the kernel: the taps that reach it
            rects = _cpu_rects(kh, kw, pad_top, pad_left, spatial, height, width)
        for ((_, pads), wr) in zip(rects, _rect_weights(weight, acc, rects),
                                   strict=True):
            xp = F.pad(xa, pads) if any(pads) else xa
            term = F.conv2d(xp, wr, ba if out is None else None)
            out = term if out is None else out + term
        if colour:
            wa = weight.to(acc) if low else weight
            term = _colour_centre(xa, wa[:, :, pad_top, pad_left], mask_type, color_groups)
            out = term if out is None else out + term
            if bias is not None and out is term:
                out = out + ba[:, None, None]
    if out is None:
        out = xa.new_zeros((bsz, cout, height, width))
        if bias is not None:
            out = out + bias.to(acc)[:, None, None]
    if low:
        out = out.to(x.dtype)
    if cond is not None:
        out = out + cond[:, :, None, None]
    if residual is not None:
        out = out + residual
    return out if out.is_contiguous() else out.contiguous()


def _cpu_backward(grad_out, x, weight, pad_top, pad_left, mask_type, color_groups, need_x,
                  need_w):
    """The cpu backend's (dx, dweight, dcond): where the forward takes the live rectangles
    by shape (:func:`_by_rectangles`), or when ``grad_out`` holds a
    NaN or an infinity (seen in its sum dcond; a dense convolution would carry it through the
    masked entries' zeros to inputs the output cannot see), the reference's live rectangles;
    otherwise dense aten convolutions with the masked weight (masked entries selected to 0,
    not multiplied): dweight is aten's ``convolution_backward`` on x padded as the forward
    reads it, selected to 0 at the masked entries (only the live taps' sums of x enter it,
    as in the reference); dx comes from the same call when both gradients are needed and the
    kept weight is finite, else, as in the reference, from the forward convolution of the
    zero-padded upstream gradient with the mirrored weight (a NaN weight entry meets that
    padding)."""
    acc = acc_dtype(x.dtype)
    dcond = grad_out.sum((2, 3), dtype=acc)
    dx, dw = x.new_empty(0), weight.new_empty(0)
    if not (need_x or need_w):
        return dx, dw, dcond
    if not (x.numel() and weight.numel()):
        return (torch.zeros_like(x, memory_format=torch.contiguous_format) if need_x else dx,
                torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_w
                else dw, dcond)
    kh, kw = weight.shape[2:]
    if mask_type != "none" and (_by_rectangles(weight.shape, color_groups)
                                or not bool(torch.isfinite(dcond).all())):
        dx, dw, dcond = tap_conv2d_backward_ref(grad_out, x, weight, pad_top, pad_left,
                                                mask_type, color_groups)
        return (dx.contiguous() if need_x else x.new_empty(0),
                dw.contiguous() if need_w else weight.new_empty(0), dcond)
    g = grad_out if grad_out.dtype == acc else grad_out.to(acc)
    wa = weight if weight.dtype == acc else weight.to(acc)
    mask = None
    if mask_type != "none":
        mask = _cpu_mask(tuple(weight.shape), pad_top, pad_left, mask_type, color_groups)
        wa = torch.where(mask, wa, 0)
    pads = _x_pads(kh, kw, pad_top, pad_left)
    symmetric = pads[0] == pads[1] and pads[2] == pads[3]
    # Both gradients from one aten convolution_backward (as plain autograd of a convolution
    # runs it) when the padding is symmetric and the kept weight finite: aten's input
    # gradient then equals the reference's mirrored convolution (which meets the zero
    # padding only with finite entries); a non-finite entry takes the mirrored convolution
    # (one host read). Measured, 1 thread, B16 64->64 28x28 k3 mask B, forward + backward
    # vs plain: 1.13x with two calls, 1.05x with one; with asymmetric padding, where x is
    # padded again here, one call was no faster than two (8.5 against 8.3 ms, B32 32->32
    # 2x3; eager training of those takes _CpuShiftedConv, which saves the padded x).
    both = need_x and need_w and symmetric and math.isfinite(float(wa.sum()))
    if need_x and not both:
        gp = F.pad(g, (kw - 1 - pad_left, pad_left, kh - 1 - pad_top, pad_top))
        dx = F.conv2d(gp, wa.flip(2, 3).transpose(0, 1)).to(x.dtype)
    if need_w:
        xa = x if x.dtype == acc else x.to(acc)
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g, xa if symmetric else F.pad(xa, pads), wa, None, [1, 1],
            [pad_top, pad_left] if symmetric else [0, 0], [1, 1], False, [0, 0], 1,
            [both, True, False])
        if both:
            dx = gx.to(x.dtype).contiguous()
        if mask is not None:
            gw = torch.where(mask, gw, 0)
        dw = gw.to(weight.dtype).contiguous()
    return dx, dw, dcond


class _CpuTapConv(torch.autograd.Function):
    """The cpu backend called without the dispatcher (eager, plain CPU tensors): the
    rectangles forward, the dense backward (:func:`_cpu_backward`), faster than autograd of
    the rectangles and with the reference's NaN semantics (aten's own input gradient skips
    the padding that the reference's mirrored convolution reads)."""

    @staticmethod
    def forward(ctx, x, weight, bias, cond, pad_top, pad_left, mask_type, color_groups):
        ctx.save_for_backward(x, weight)
        ctx.spec = (pad_top, pad_left, mask_type, color_groups)
        return _cpu_forward(x, weight, bias, cond, None, *ctx.spec)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, need_c = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph: the differentiable reference formula
            dx, dw, dcond = tap_conv2d_backward_ref(grad_out, x, weight, *ctx.spec)
        else:
            dx, dw, dcond = _cpu_backward(grad_out, x, weight, *ctx.spec, need_x, need_w)
        return (dx if need_x else None, dw if need_w else None,
                dcond.sum(0).to(x.dtype) if need_b else None,
                dcond.to(x.dtype) if need_c else None, None, None, None, None)


class _CpuShiftedConv(torch.autograd.Function):
    """The cpu backend's training path for an unmasked convolution (the shifted ones) of
    float32/float64 tensors, as plain autograd of ``F.conv2d(F.pad(x), w, b)`` runs it: the
    padded x saved by the forward (and x, which only a create_graph backward reads), both
    gradients (and the bias's) from one aten ``convolution_backward`` on it, where
    :class:`_CpuTapConv` padded x again and ran two (measured, 1 thread, B32 32->32 28x28,
    forward + backward vs plain: 2x3 1.18x -> 1.02x, 2x2 1.24x -> 1.02x). A non-finite
    weight takes the reference's formula in the backward (its input gradient meets the zero
    padding with every entry)."""

    @staticmethod
    def forward(ctx, x, weight, bias, cond, pad_top, pad_left):
        kh, kw = weight.shape[2:]
        xp = F.pad(x, _x_pads(kh, kw, pad_top, pad_left))
        out = F.conv2d(xp, weight, bias)
        ctx.save_for_backward(x, xp, weight)  # x for create_graph (xp has no graph to x)
        ctx.pads = (pad_top, pad_left)
        return out if cond is None else out + cond[:, :, None, None]

    @staticmethod
    def backward(ctx, grad_out):
        x, xp, weight = ctx.saved_tensors
        (pad_top, pad_left), (height, width) = ctx.pads, x.shape[2:]
        need_x, need_w, need_b, need_c = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled() or not math.isfinite(float(weight.sum())):
            dx, dw, dcond = tap_conv2d_backward_ref(grad_out, x, weight, pad_top, pad_left,
                                                    "none", 1)
            db = dcond.sum(0) if need_b else None
        else:
            dxp, dw, db = torch.ops.aten.convolution_backward(
                grad_out, xp, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False,
                [0, 0], 1, [need_x, need_w, need_b])
            dx = (dxp[:, :, pad_top:pad_top + height, pad_left:pad_left + width].contiguous()
                  if need_x else None)
            dcond = grad_out.sum((2, 3)) if need_c else None
        return (dx if need_x else None, dw if need_w else None, db if need_b else None,
                dcond if need_c else None, None, None)


def _cpu_direct(x, weight, bias, cond, pad_top, pad_left, mask_type, color_groups, backend):
    """The cpu backend without the dispatcher when :func:`artrt.backends.direct_call` allows
    it and the call selects ``cpu`` (arguments already checked), else None."""
    if not backends.direct_call(x, weight, bias, cond):
        return None
    if not backends.selects_cpu("tap_conv2d", x, backend, PREFERENCE):
        return None
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias, cond)):
        if (mask_type == "none" and x.dtype in (torch.float32, torch.float64)
                and x.numel() and weight.numel()):
            return _CpuShiftedConv.apply(x, weight, bias, cond, pad_top, pad_left)
        return _CpuTapConv.apply(x, weight, bias, cond, pad_top, pad_left, mask_type,
                                 color_groups)
    return _cpu_forward(x, weight, bias, cond, None, pad_top, pad_left, mask_type,
                        color_groups)


# --------------------------------------------------------------------------- backends

def _forward(x, weight, bias, cond, residual, pad_top, pad_left, mask_type, color_groups,
             name):
    if name == "cpu":
        return _cpu_forward(x, weight, bias, cond, residual, pad_top, pad_left, mask_type,
                            color_groups)
    if name == "reference":
        return tap_conv2d_ref(x, weight, bias, cond, pad_top, pad_left, mask_type,
                              color_groups, residual).contiguous()
    from artrt.kernels.masked_conv2d import tap_conv_fwd

    if mask_type == "none" or color_groups == 1:
        packed, taps = pack_weight(weight, pad_top, pad_left, mask_type, color_groups)
        out, _ = tap_conv_fwd(x, packed, taps, bias=bias, cond=cond, residual=residual)
        return out
    # The taps before the centre, and the centre as a second input that the kernel reads
    # per colour group into the groups allowed to see it (see _colour_centre).
    packed, taps = pack_weight(weight, pad_top, pad_left, "A", 1)
    allowed = tap_mask(weight.shape, pad_top, pad_left, mask_type, color_groups,
                       weight.device, torch.bool)[:, :, pad_top, pad_left]
    centre = torch.where(allowed, weight[:, :, pad_top, pad_left], 0)  # (Cout, Cin)
    out, _ = tap_conv_fwd(x, packed, taps, bias=bias, cond=cond, residual=residual,
                          x2=x, w2_packed=centre.t().contiguous()[None],
                          taps2=_taps_tensor(((0, 0),), x.device), groups2=color_groups,
                          shift2=int(mask_type == "A"))
    return out


def _backward(grad_out, x, weight, pad_top, pad_left, mask_type, color_groups,
              need_x, need_w, name):
    if name == "cpu":
        return _cpu_backward(grad_out, x, weight, pad_top, pad_left, mask_type, color_groups,
                             need_x, need_w)
    if name == "reference":
        dx, dw, dcond = tap_conv2d_backward_ref(grad_out, x, weight, pad_top, pad_left,
                                                mask_type, color_groups)
        dx = dx.contiguous() if need_x else x.new_empty(0)
        dw = dw.contiguous() if need_w else weight.new_empty(0)
        return dx, dw, dcond.contiguous()
    from artrt.kernels.masked_conv2d import tap_conv_fwd, tap_conv_wgrad

    g = grad_out.contiguous()
    dx, dw = x.new_empty(0), weight.new_empty(0)
    if need_x and (mask_type == "none" or color_groups == 1):
        packed_t, taps_t = pack_weight(weight, pad_top, pad_left, mask_type, color_groups,
                                       transpose=True)
        dx, _ = tap_conv_fwd(g, packed_t, taps_t)
    elif need_x:
        dx = _colour_input_grad(g, weight, pad_top, pad_left, mask_type, color_groups)
    if need_w:
        _, taps = pack_weight(weight, pad_top, pad_left, mask_type, color_groups)
        dw = unpack_weight_grad(tap_conv_wgrad(x, g, taps), weight, pad_top, pad_left,
                                mask_type, color_groups)
    return dx, dw, g.sum((2, 3), dtype=acc_dtype(g.dtype))


def _colour_input_grad(g, weight, pad_top, pad_left, mask_type, color_groups):
    """dx of a colour-masked convolution on the triton backend: the taps before the centre
    transposed, and the centre as the kernel's second input, as in the forward.

    The kernel feeds input group q into output groups >= q + shift only, while the centre's
    transpose feeds grad_out's group go into dx's groups <= go - shift: with the group order
    reversed on both sides (grad_out's channels, the output columns) it is the kernel's
    rule. So a NaN in grad_out of group go reaches only the channels go sees, as in the
    forward, not every channel through the masked entries' zeros."""
    from artrt.kernels.masked_conv2d import tap_conv_fwd

    groups = color_groups

    def reverse(t, dim):  # the channel groups along dim in reverse order
        shape = t.shape
        t = t.unflatten(dim, (groups, shape[dim] // groups)).flip(dim)
        return t.flatten(dim, dim + 1)

    packed_t, taps_t = pack_weight(weight, pad_top, pad_left, "A", 1, transpose=True)
    allowed = tap_mask(weight.shape, pad_top, pad_left, mask_type, color_groups,
                       weight.device, torch.bool)[:, :, pad_top, pad_left]
    centre = torch.where(allowed, weight[:, :, pad_top, pad_left], 0)  # (Cout, Cin)
    dx_rev, _ = tap_conv_fwd(g, reverse(packed_t, 2).contiguous(), taps_t,
                             x2=reverse(g, 1).contiguous(),
                             w2_packed=reverse(reverse(centre, 0), 1).contiguous()[None],
                             taps2=_taps_tensor(((0, 0),), g.device), groups2=groups,
                             shift2=int(mask_type == "A"))
    return reverse(dx_rev, 1).contiguous()


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("artrt::tap_conv2d", mutates_args=())
def tap_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               cond: torch.Tensor | None, residual: torch.Tensor | None, pad_top: int,
               pad_left: int, mask_type: str, color_groups: int, backend: str) -> torch.Tensor:
    """The op behind masked_conv2d and the shifted convolutions: (B, Cout, H, W) contiguous,
    plus ``residual`` (B, Cout, H, W) when given (fused into the epilogue)."""
    _check(x, weight, bias, cond, pad_top, pad_left, mask_type, color_groups,
           residual=residual)
    name = backends.select("tap_conv2d", x.device, x.dtype, backend, PREFERENCE)
    return _forward(x, weight, bias, cond, residual, pad_top, pad_left, mask_type,
                    color_groups, name)


@tap_conv2d.register_fake
def _(x, weight, bias, cond, residual, pad_top, pad_left, mask_type, color_groups, backend):
    _check(x, weight, bias, cond, pad_top, pad_left, mask_type, color_groups,
           residual=residual)
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


@torch.library.custom_op("artrt::tap_conv2d_backward", mutates_args=())
def tap_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                        pad_top: int, pad_left: int, mask_type: str, color_groups: int,
                        need_x: bool, need_w: bool, backend: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dcond) of artrt::tap_conv2d; dx / dweight are empty when not needed;
    dcond (B, Cout) in float32 (float64 for float64)."""
    _check(x, weight, None, None, pad_top, pad_left, mask_type, color_groups)
    _check_grad(grad_out, x, weight)
    name = backends.select("tap_conv2d backward", x.device, x.dtype, backend, PREFERENCE)
    return _backward(grad_out, x, weight, pad_top, pad_left, mask_type, color_groups,
                     need_x, need_w, name)


@tap_conv2d_backward.register_fake
def _(grad_out, x, weight, pad_top, pad_left, mask_type, color_groups, need_x, need_w,
      backend):
    _check(x, weight, None, None, pad_top, pad_left, mask_type, color_groups)
    _check_grad(grad_out, x, weight)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0)
    dw = (torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w
          else weight.new_empty(0))
    return dx, dw, grad_out.new_empty(grad_out.shape[:2], dtype=acc_dtype(grad_out.dtype))


def _backward_setup_context(ctx, inputs, output):
    grad_out, x, weight, pad_top, pad_left, mask_type, color_groups, *_ = inputs
    ctx.save_for_backward(grad_out, x, weight)
    ctx.spec = (pad_top, pad_left, mask_type, color_groups)


def _tap_conv2d_backward_autograd(ctx, ggx, ggw, ggcond):
    """Double backward, through the reference (pure PyTorch) formula of the backward."""
    grad_out, x, weight = ctx.saved_tensors

    def backward_ref(grad_out, x, weight):
        dx, dw, dcond = tap_conv2d_backward_ref(grad_out, x, weight, *ctx.spec)
        return dx, dw, dcond

    _, vjp = torch.func.vjp(backward_ref, grad_out, x, weight)
    ggx = ggx if ggx.numel() else torch.zeros_like(x)
    ggw = ggw if ggw.numel() else torch.zeros_like(weight)
    grads = vjp((ggx, ggw, ggcond))
    return (*grads, None, None, None, None, None, None, None)


tap_conv2d_backward.register_autograd(_tap_conv2d_backward_autograd,
                                      setup_context=_backward_setup_context)


def _setup_context(ctx, inputs, output):
    x, weight, bias, cond, residual, pad_top, pad_left, mask_type, color_groups, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.spec = (pad_top, pad_left, mask_type, color_groups)
    ctx.backend = backend


def _tap_conv2d_autograd(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b, need_c, need_r = ctx.needs_input_grad[:5]
    grad_res = grad_out if need_r else None
    if not (need_x or need_w or need_b or need_c):
        return (None, None, None, None, grad_res, None, None, None, None, None)
    dx, dw, dcond = tap_conv2d_backward(grad_out, x, weight, *ctx.spec, need_x, need_w,
                                        ctx.backend)
    return (dx if need_x else None, dw if need_w else None,
            dcond.sum(0).to(x.dtype) if need_b else None,
            dcond.to(x.dtype) if need_c else None, grad_res,
            None, None, None, None, None)


tap_conv2d.register_autograd(_tap_conv2d_autograd, setup_context=_setup_context)


# --------------------------------------------------------------------------- public functions

def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  mask_type: str = "B", color_groups: int = 1,
                  cond: torch.Tensor | None = None, *,
                  backend: str | None = None) -> torch.Tensor:
    """PixelCNN masked convolution (see the module docstring for the masks).

    Args:
        x: (B, Cin, H, W) floating tensor, any strides. The kernels take float32, float16
            and bfloat16 (accumulation in float32); other float dtypes use the reference.
        weight: (Cout, Cin, k, k), k odd, x's dtype; ``nn.Conv2d``'s layout. Entries at
            masked positions are ignored (and get zero gradient).
        bias: optional (Cout,).
        mask_type: ``"A"`` (centre pixel excluded: first layer) or ``"B"`` (included).
        color_groups: 1, or the number of colour groups (3 for RGB) that Cin and Cout are
            split into; the centre tap then follows the R < G < B ordering.
        cond: optional (B, Cout) class-conditional bias, added at every pixel.
        backend: force ``"reference"``, ``"cpu"`` or ``"triton"``; ``None`` follows
            ``artrt.use_backend`` / ``ARTRT_BACKEND``, else the fastest available
            (``cpu`` for CPU tensors).

    Returns:
        (B, Cout, H, W) contiguous tensor of x's dtype ("same" padding, stride 1).

    Differentiable in x, weight, bias and cond.
    """
    name = "masked_conv2d"
    _tensor(weight, "weight", name)
    if weight.dim() == 4:
        kh, kw = weight.shape[2:]
        if kh != kw or kh % 2 == 0:
            raise ValueError(f"{name}: the kernel must be square with an odd size, got "
                             f"{kh} x {kw}")
    if mask_type not in ("A", "B"):
        raise ValueError(f"{name}: mask_type must be 'A' or 'B', got {mask_type!r}")
    k = weight.shape[-1] if weight.dim() == 4 else 1
    _check(x, weight, bias, cond, k // 2, k // 2, mask_type, color_groups, name)
    return _masked_conv2d(x, weight, bias, mask_type, color_groups, cond, backend)


def _masked_conv2d(x, weight, bias, mask_type, color_groups, cond, backend=None):
    """:func:`masked_conv2d` with its arguments checked (the weight, bias, mask_type and
    color_groups of a :class:`artrt.nn.MaskedConv2d` checked at construction, x and cond by
    :func:`check_masked_input`)."""
    k = weight.shape[-1]
    backend = backends.requested(backend)
    out = _cpu_direct(x, weight, bias, cond, k // 2, k // 2, mask_type, color_groups, backend)
    if out is not None:
        return out
    return tap_conv2d(x, weight, bias, cond, None, k // 2, k // 2, mask_type, color_groups,
                      backend)


def check_masked_input(x, weight, cond, name: str) -> None:
    """The checks of :func:`masked_conv2d` that depend on x and cond only, for a weight
    (4-D, square odd kernel), bias, mask_type and color_groups already checked."""
    _check_input(x, weight, name)
    _check_like(x, cond, "cond", (x.shape[0], weight.shape[0]), name)


def _shifted(name, x, weight, bias, cond, backend, pads):
    _tensor(weight, "weight", name)
    if weight.dim() != 4:
        raise ValueError(f"{name}: weight must be 4-D (Cout, Cin, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    pad_top, pad_left = pads(*weight.shape[2:])
    _check(x, weight, bias, cond, pad_top, pad_left, "none", 1, name)
    backend = backends.requested(backend)
    out = _cpu_direct(x, weight, bias, cond, pad_top, pad_left, "none", 1, backend)
    if out is not None:
        return out
    return tap_conv2d(x, weight, bias, cond, None, pad_top, pad_left, "none", 1,
                      backend)


def down_shifted_conv2d(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                        *, backend: str | None = None) -> torch.Tensor:
    """PixelCNN++ down-shifted convolution: output (i, j) sees rows i-kh+1..i, columns
    j-(kw-1)//2 .. j+kw-1-(kw-1)//2 of x (zero outside the image)::

        kernel 2 x 3:   x x x      row i-1
                        x o x      row i   (o: the output pixel's own position)

    x (B, Cin, H, W); weight (Cout, Cin, kh, kw) (2 x 3 in the paper); bias (Cout,);
    cond (B, Cout). Returns (B, Cout, H, W). In PixelCNN++ the output is then shifted down
    one row (``down_shift``) so that row i sees only rows above it.
    """
    return _shifted("down_shifted_conv2d", x, weight, bias, cond, backend,
                    lambda kh, kw: (kh - 1, (kw - 1) // 2))


def down_right_shifted_conv2d(x: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None = None,
                              cond: torch.Tensor | None = None, *,
                              backend: str | None = None) -> torch.Tensor:
    """PixelCNN++ down-right-shifted convolution: output (i, j) sees rows i-kh+1..i and
    columns j-kw+1..j of x (zero outside the image)::

        kernel 2 x 2:   x x        row i-1
                        x o        row i   (o: the output pixel's own position)

    Shapes as :func:`down_shifted_conv2d` (2 x 2 kernel in the paper).
    """
    return _shifted("down_right_shifted_conv2d", x, weight, bias, cond, backend,
                    lambda kh, kw: (kh - 1, kw - 1))
