"""Tap-set convolutions: implicit-GEMM Triton kernels for masked and shifted 2-D convolutions.

Every convolution of PixelCNN, Gated PixelCNN and PixelCNN++ is "a convolution whose
receptive field is a subset of a rectangle, placed at some offset from the output pixel".
These kernels take that subset as a *tap table*: T rows of (dy, dx), the offset of each live
tap from the output pixel, and a weight packed as (T, Cin, N) with only the live taps
(dead weight entries are zeroed by the packer in ``artrt.ops.masked_conv2d``, so a weight
that holds non-zeros there changes nothing). One forward kernel does

    out[b, n, i, j] = epilogue( sum_t sum_c  x[b, c, i + dy_t, j + dx_t] * w[t, c, n] )

with zero padding outside the image, as an implicit GEMM: an output tile is (pixels x
columns), the K loop runs over live taps x input-channel blocks, so a k x k mask does only
the live half of the dense work. Epilogue switches (constexpr): bias, per-batch
conditioning bias ``cond[b, n]``, gated ``tanh(a) * sigmoid(b)`` over the two column halves
(both computed by the same program so the gate fuses), writing the pre-activation too, and a
residual add.
An optional second input with its own taps and weight is summed into the same accumulators:
Gated PixelCNN's vertical-to-horizontal 1x1 link, one tap at (-1, 0) on the vertical
stack's pre-activation; or, without the gate, a colour-masked centre tap (PixelCNN with
colour groups), read once per colour group g of its channels into the output columns of
the groups it may feed only. A single dot with the masked weight entries zeroed would add
0 * x there, which is NaN for an inf or NaN input the mask hides.

The input gradient is the same kernel over the mirrored taps (-dy, -dx) with the weight
transposed to (T, N, Cin); the weight gradient is one GEMM over the B*H*W pixels per live
tap (``_tap_conv_wgrad_kernel``, split along the pixels into fp32 partial sums that the
launcher adds, so the result does not depend on scheduling).

Interpreter only (``UPCAST``): bf16 dot operands go through fp32 and results are rounded to
nearest before the store, working around two bf16 faults of the triton 3.9 interpreter.
"""

import torch
import triton
import triton.language as tl

from . import INTERPRET
from .gated import _sigmoid, _tanh

# Forward tiles (pixels BM, output columns BN, input channels BK per dot), warps, pipeline
# stages. On a GPU the autotuner picks among these candidates per (Cin, N, taps, gate);
# they are the usual implicit-GEMM shapes for H100 (the gated ones hold two fp32
# accumulators). None is measured yet: not yet tuned on a GPU. Under the interpreter one
# small config (speed there is irrelevant; every candidate would run).
_FWD_CONFIGS = [  # (BM, BN, BK, warps, stages)
    (64, 64, 32, 4, 3),
    (128, 64, 32, 4, 3),
    (64, 128, 32, 4, 3),
    (128, 128, 32, 8, 3),
    (128, 64, 64, 8, 3),
    (128, 128, 64, 8, 2),
]
_INTERPRET_CONFIG = (64, 64, 32, 4, 2)
_NUM_WARPS = 4  # weight-gradient kernel. Not yet tuned on a GPU.
_NUM_STAGES = 3  # weight-gradient kernel pipeline depth. Not yet tuned on a GPU.
# Weight gradient: (Cin rows, N columns) per program, pixels per K step, and the number of
# programs to aim for when splitting the pixel reduction (about 4 waves of 132 SMs on an
# H100). Not yet tuned on a GPU.
_WG_BLOCK_C = 64
_WG_BLOCK_N = 64
_WG_BLOCK_P = 32
_WG_TARGET_PROGRAMS = 528


@triton.jit
def _round_bf16(y):
    """y (fp32) rounded to the nearest bf16 value, ties to even, still as fp32. Only for the
    interpreter, whose fp32 -> bf16 cast truncates (triton 3.9); the GPU cast rounds."""
    bits = y.to(tl.uint32, bitcast=True)
    bits = bits + 32767 + ((bits >> 16) & 1)  # 32767 = 0x7FFF: half a bf16 ulp, minus one
    return ((bits >> 16) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _accumulate(
    acc_a, acc_b, x_ptr, w_ptr, taps_ptr,
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    cin, height, width, n_taps, n_out, nw,
    b, i, j, m_mask, n, n_mask, c_lo, c_hi, n_lo,
    GATE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr,
    FROM_N_LO: tl.constexpr,
):
    """acc_a[p, n] += sum_t sum_{c_lo <= c < c_hi} x[b_p, c, i_p + dy_t, j_p + dx_t] * w[t, c, n]
    (and acc_b with columns n + n_out when GATE). FROM_N_LO: only columns n >= n_lo change,
    the others get nothing added (not even 0 * x, NaN for an inf or NaN x)."""
    ks = tl.arange(0, BLOCK_K)
    for t in range(n_taps):
        dy = tl.load(taps_ptr + 2 * t)
        dx = tl.load(taps_ptr + 2 * t + 1)
        ii = i + dy
        jj = j + dx
        valid = m_mask & (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
        x_row = x_ptr + b * stride_x_b + ii * stride_x_h + jj * stride_x_w  # (BM,)
        w_tap = w_ptr + t * cin * nw
        for k0 in range(c_lo, c_hi, BLOCK_K):
            k = k0 + ks  # (BK,)
            k_mask = k < c_hi
            # a[p, c] = x[b_p, c, i_p + dy, j_p + dx]          (BM, BK)
            a = tl.load(x_row[:, None] + k[None, :] * stride_x_c,
                        mask=valid[:, None] & k_mask[None, :], other=0.0)
            w_off = k[:, None] * nw + n[None, :]  # (BK, BN)
            w_mask = k_mask[:, None] & n_mask[None, :]
            wa = tl.load(w_tap + w_off, mask=w_mask, other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                wa = wa.to(tl.float32)
            if FROM_N_LO:
                acc_a = tl.where((n >= n_lo)[None, :],
                                 tl.dot(a, wa, acc_a, input_precision=PRECISION), acc_a)
            else:
                acc_a = tl.dot(a, wa, acc_a, input_precision=PRECISION)
            if GATE:
                wb = tl.load(w_tap + w_off + n_out, mask=w_mask, other=0.0)
                if UPCAST:
                    wb = wb.to(tl.float32)
                acc_b = tl.dot(a, wb, acc_b, input_precision=PRECISION)
    return acc_a, acc_b


def _fwd_configs() -> list:
    chosen = [_INTERPRET_CONFIG] if INTERPRET else _FWD_CONFIGS
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w,
                          num_stages=st) for bm, bn, bk, w, st in chosen]


def _prune_fwd_configs(configs: list, nargs: dict, **kwargs) -> list:
    """The candidates that do not spill registers: with two fp32 accumulators (GATE) or fp32
    operands, at most 32 accumulator elements per thread (BLOCK_M x BLOCK_N <= 1024 x warps).
    Compiled for sm_90a (``python -m bench.static``), the tiles with 64 per thread spill
    312-560 bytes in the bf16 gated modes and 32-1192 in fp32; the two at 32 do not in bf16
    (fp32 gated spills 120-288 bytes even there: the least). All candidates are kept
    otherwise (bf16 / fp16 ungated: none spills)."""
    if not kwargs.get("GATE") and nargs["x_ptr"].dtype != torch.float32:
        return configs
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 1024 * c.num_warps]
    return kept or configs


@triton.autotune(configs=_fwd_configs(),
                 key=["cin", "cin2", "n_taps", "n_out", "groups2", "GATE"],
                 prune_configs_by={"early_config_prune": _prune_fwd_configs})
@triton.jit
def _tap_conv_fwd_kernel(
    x_ptr, w_ptr, taps_ptr, x2_ptr, w2_ptr, taps2_ptr,
    bias_ptr, cond_ptr, res_ptr, out_ptr, pre_ptr,
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    stride_x2_b, stride_x2_c, stride_x2_h, stride_x2_w,
    stride_cond_b, stride_cond_n,
    stride_res_b, stride_res_n, stride_res_h, stride_res_w,
    batch, cin, cin2, height, width, n_taps, n_taps2, n_out, nw, groups2, shift2,
    HAS_X2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_COND: tl.constexpr,
    HAS_RES: tl.constexpr, GATE: tl.constexpr, STORE_PRE: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # x: (B, Cin, H, W) any strides.  w: (T, Cin, nw) contiguous, nw = 2 * n_out when GATE
    # else n_out.  taps: (T, 2) int32 contiguous.  x2, w2, taps2 (HAS_X2): a second input
    # (B, Cin2, H, W) with its own taps (T2, 2) and weight (T2, Cin2, nw), summed in; without
    # GATE its channels and the output columns come in groups2 equal blocks, block g feeding
    # column blocks >= g + shift2 only (a colour-masked tap).
    # out: (B, n_out, H, W) contiguous.  pre (STORE_PRE): (B, nw, H, W) contiguous.
    # bias: (nw,).  cond: (B, nw) any strides.  res: (B, n_out, H, W) any strides.
    hw = height * width
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,) pixel ids
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) output columns
    m_mask = m < batch * hw
    n_mask = n < n_out
    b = m // hw
    r = m - b * hw
    i = r // width
    j = r - i * width

    acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_a, acc_b = _accumulate(acc_a, acc_b, x_ptr, w_ptr, taps_ptr,
                               stride_x_b, stride_x_c, stride_x_h, stride_x_w,
                               cin, height, width, n_taps, n_out, nw,
                               b, i, j, m_mask, n, n_mask, 0, cin, 0,
                               GATE, PRECISION, UPCAST, BLOCK_K, False)
    if HAS_X2:
        if GATE:  # Gated PixelCNN's link
            acc_a, acc_b = _accumulate(acc_a, acc_b, x2_ptr, w2_ptr, taps2_ptr,
                                       stride_x2_b, stride_x2_c, stride_x2_h, stride_x2_w,
                                       cin2, height, width, n_taps2, n_out, nw,
                                       b, i, j, m_mask, n, n_mask, 0, cin2, 0,
                                       GATE, PRECISION, UPCAST, BLOCK_K, False)
        else:
            # acc[:, n] += x2[group g] @ w2[group g, n] for the column blocks n >= g + shift2
            # only, group by group (the select is not in the gated kernels: it would hold a
            # third accumulator's registers there).
            c_group = cin2 // groups2
            n_group = n_out // groups2
            for g in range(0, groups2 - shift2):
                acc_a, acc_b = _accumulate(acc_a, acc_b, x2_ptr, w2_ptr, taps2_ptr,
                                           stride_x2_b, stride_x2_c, stride_x2_h, stride_x2_w,
                                           cin2, height, width, n_taps2, n_out, nw,
                                           b, i, j, m_mask, n, n_mask, g * c_group,
                                           (g + 1) * c_group, (g + shift2) * n_group,
                                           False, PRECISION, UPCAST, BLOCK_K, True)

    if HAS_BIAS:
        acc_a += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if GATE:
            acc_b += tl.load(bias_ptr + n_out + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    mn_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_COND:
        c_off = b[:, None] * stride_cond_b + n[None, :] * stride_cond_n
        acc_a += tl.load(cond_ptr + c_off, mask=mn_mask, other=0.0).to(tl.float32)
        if GATE:
            acc_b += tl.load(cond_ptr + c_off + n_out * stride_cond_n, mask=mn_mask,
                             other=0.0).to(tl.float32)
    if GATE:
        if UPCAST:
            acc_a = _round_bf16(acc_a)
            acc_b = _round_bf16(acc_b)
        if STORE_PRE:
            pre_off = (b * nw * hw + r)[:, None] + n[None, :] * hw  # (BM, BN)
            tl.store(pre_ptr + pre_off, acc_a.to(pre_ptr.dtype.element_ty), mask=mn_mask)
            tl.store(pre_ptr + pre_off + n_out * hw, acc_b.to(pre_ptr.dtype.element_ty),
                     mask=mn_mask)
        y = _tanh(acc_a) * _sigmoid(acc_b)  # y = tanh(a) * sigmoid(b)
    else:
        y = acc_a
    if HAS_RES:
        res_off = (b[:, None] * stride_res_b + n[None, :] * stride_res_n
                   + (i * stride_res_h + j * stride_res_w)[:, None])
        y += tl.load(res_ptr + res_off, mask=mn_mask, other=0.0).to(tl.float32)
    if UPCAST:
        y = _round_bf16(y)
    out_off = (b * n_out * hw + r)[:, None] + n[None, :] * hw  # (BM, BN), NCHW contiguous
    tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=mn_mask)


@triton.jit
def _tap_conv_wgrad_kernel(
    x_ptr, g_ptr, taps_ptr, part_ptr,
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    batch, cin, height, width, n_out, pix_per_split,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # dW[t, c, n] = sum_{b, i, j} x[b, c, i + dy_t, j + dx_t] * g[b, n, i, j]
    # x: (B, Cin, H, W) any strides.  g: (B, N, H, W) contiguous.
    # part: (S, T, Cin, N) fp32 partial sums, split s covers pixels [s * pps, (s + 1) * pps).
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_cb = tl.cdiv(cin, BLOCK_C)
    n_nb = tl.cdiv(n_out, BLOCK_N)
    t = pid // (n_cb * n_nb)
    rest = pid - t * (n_cb * n_nb)
    cb = rest // n_nb
    nb = rest - cb * n_nb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)  # (BC,)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    c_mask = c < cin
    n_mask = n < n_out
    dy = tl.load(taps_ptr + 2 * t)
    dx = tl.load(taps_ptr + 2 * t + 1)
    hw = height * width
    total = batch * hw
    p_start = split.to(tl.int64) * pix_per_split
    ps = tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for p0 in range(0, pix_per_split, BLOCK_P):
        p = p_start + p0 + ps  # (BP,) output pixel ids
        p_mask = (p < total) & (p0 + ps < pix_per_split)
        b = p // hw
        r = p - b * hw
        i = r // width
        j = r - i * width
        ii = i + dy
        jj = j + dx
        valid = p_mask & (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
        x_off = b * stride_x_b + ii * stride_x_h + jj * stride_x_w  # (BP,)
        xt = tl.load(x_ptr + c[:, None] * stride_x_c + x_off[None, :],
                     mask=c_mask[:, None] & valid[None, :], other=0.0)  # (BC, BP)
        g_off = (b * n_out * hw + r)[:, None] + n[None, :] * hw  # (BP, BN)
        gt = tl.load(g_ptr + g_off, mask=p_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            gt = gt.to(tl.float32)
        acc = tl.dot(xt, gt, acc, input_precision=PRECISION)
    n_taps = tl.num_programs(0) // (n_cb * n_nb)
    part_off = ((split * n_taps + t) * cin + c.to(tl.int64))[:, None] * n_out + n[None, :]
    tl.store(part_ptr + part_off, acc, mask=c_mask[:, None] & n_mask[None, :])


def _upcast(dtype: torch.dtype) -> bool:
    """bf16 under the interpreter (triton 3.9), whose bf16 tl.dot returns garbage and whose
    fp32 -> bf16 cast truncates: dot operands go to fp32 first (bf16 products are exact in
    fp32, so this is what the GPU's bf16 tensor-core dot computes) and results are rounded
    to nearest before the store. Never on a GPU."""
    return INTERPRET and dtype == torch.bfloat16


def _precision(dtype: torch.dtype) -> str:
    """fp32 operands use TF32 exactly when cuDNN convolutions do (torch's default: on)."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def tap_conv_fwd(x: torch.Tensor, w_packed: torch.Tensor, taps: torch.Tensor,
                 bias: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, gate: bool = False,
                 store_pre: bool = False, x2: torch.Tensor | None = None,
                 w2_packed: torch.Tensor | None = None, taps2: torch.Tensor | None = None,
                 groups2: int = 1, shift2: int = 0,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward launcher (also the input-gradient launcher, with mirrored taps).

    x: (B, Cin, H, W), any strides, fp32/fp16/bf16. w_packed: (T, Cin, NW) contiguous, x's
    dtype. taps: (T, 2) int32 contiguous (dy, dx) on x's device. x2, w2_packed, taps2: an
    optional second input (B, Cin2, H, W) convolved with its own taps and (T2, Cin2, NW)
    weight and summed in; groups2 > 1 (not with gate): x2's channels and the output columns
    are split into groups2 equal blocks, x2's block g adding to the column blocks
    >= g + shift2 only (a colour-masked centre tap; shift2 = 1 for mask A, 0 for mask B).
    bias: (NW,) any stride, or None. cond: (B, NW) any strides, or None.
    residual: (B, N, H, W) any strides, or None. gate: N = NW / 2 and
    out = tanh(a) * sigmoid(b) (+ residual), a = columns [0, N), b = columns [N, NW) of the
    convolution (+ bias + cond); otherwise N = NW. store_pre: also return that
    pre-activation (B, NW, H, W) (gate only).

    Returns (out (B, N, H, W) contiguous of x's dtype, pre or None).
    """
    bsz, cin, height, width = x.shape
    n_taps, cin_w, nw = w_packed.shape
    assert cin_w == cin and w_packed.is_contiguous() and taps.shape == (n_taps, 2)
    assert taps.dtype == torch.int32 and (not gate or nw % 2 == 0)
    n_out = nw // 2 if gate else nw
    out = torch.empty((bsz, n_out, height, width), device=x.device, dtype=x.dtype)
    pre = (torch.empty((bsz, nw, height, width), device=x.device, dtype=x.dtype)
           if gate and store_pre else None)
    if out.numel() == 0:
        return out, pre
    has_x2 = x2 is not None
    if has_x2:
        assert w2_packed.is_contiguous() and w2_packed.shape[1:] == (x2.shape[1], nw)
        assert taps2.dtype == torch.int32 and taps2.shape == (w2_packed.shape[0], 2)
        assert groups2 >= 1 and x2.shape[1] % groups2 == 0 and n_out % groups2 == 0
        assert (groups2 == 1 and shift2 == 0) or not gate
    else:
        x2, w2_packed, taps2 = x, w_packed, taps
    if bias is not None:
        bias = bias.contiguous()  # (NW,): a strided view costs one tiny copy
    dummy = out
    cond_strides = cond.stride() if cond is not None else (0, 0)
    res_strides = residual.stride() if residual is not None else (0, 0, 0, 0)
    def grid(meta):
        return (triton.cdiv(bsz * height * width, meta["BLOCK_M"]),
                triton.cdiv(n_out, meta["BLOCK_N"]))

    _tap_conv_fwd_kernel[grid](
        x, w_packed, taps, x2, w2_packed, taps2,
        bias if bias is not None else dummy, cond if cond is not None else dummy,
        residual if residual is not None else dummy, out, pre if pre is not None else dummy,
        *x.stride(), *x2.stride(), *cond_strides, *res_strides,
        bsz, cin, x2.shape[1], height, width, n_taps, taps2.shape[0], n_out, nw,
        groups2, shift2, HAS_X2=has_x2, HAS_BIAS=bias is not None, HAS_COND=cond is not None,
        HAS_RES=residual is not None, GATE=gate, STORE_PRE=pre is not None,
        PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype),
    )
    return out, pre


def tap_conv_wgrad(x: torch.Tensor, grad: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Weight-gradient launcher.

    x: (B, Cin, H, W) any strides. grad: (B, N, H, W) contiguous, x's dtype. taps: (T, 2)
    int32. Returns the packed weight gradient (T, Cin, N) in float32.
    """
    bsz, cin, height, width = x.shape
    n_out = grad.shape[1]
    n_taps = taps.shape[0]
    assert grad.is_contiguous() and grad.shape == (bsz, n_out, height, width)
    total = bsz * height * width
    if n_taps == 0 or cin == 0 or n_out == 0 or total == 0:
        return torch.zeros((n_taps, cin, n_out), device=x.device, dtype=torch.float32)
    tiles = n_taps * triton.cdiv(cin, _WG_BLOCK_C) * triton.cdiv(n_out, _WG_BLOCK_N)
    splits = max(1, min(triton.cdiv(_WG_TARGET_PROGRAMS, tiles), triton.cdiv(total, 1024)))
    pix_per_split = triton.cdiv(triton.cdiv(total, splits), _WG_BLOCK_P) * _WG_BLOCK_P
    splits = triton.cdiv(total, pix_per_split)
    part = torch.empty((splits, n_taps, cin, n_out), device=x.device, dtype=torch.float32)
    _tap_conv_wgrad_kernel[(tiles, splits)](
        x, grad, taps, part,
        *x.stride(),
        bsz, cin, height, width, n_out, pix_per_split,
        PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype),
        BLOCK_C=_WG_BLOCK_C, BLOCK_N=_WG_BLOCK_N, BLOCK_P=_WG_BLOCK_P,
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
    )
    return part.sum(0) if splits > 1 else part[0]
