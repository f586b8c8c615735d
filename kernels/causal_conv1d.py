"""Causal dilated 1-D convolution, its gradients, and the gated WaveNet pre-activation.

One forward kernel computes a dense channel-mixing causal convolution

    y[b, o, t] = bias[b, o] + sum_{i < K, c} w[o, c, i] x[b, c, t - (K-1-i) d]
                 (+ sum_c wc[o, c] cond[b, c, t])        x[., ., s] = 0 for s outside [0, T)

as a tiled GEMM: a program owns an (out-channels x time) tile and loops over taps x blocks
of in-channels, reading x straight from its strided storage at the shifted positions (the
left zero padding is a load mask, never a padded copy). Its epilogue is switched by
``EPILOGUE``:

* ``EPI_NONE``: ``y`` (+ an optional residual added to the first channels);
* ``EPI_GATE``: the weight has ``2G`` rows, the program accumulates rows ``o`` (a) and
  ``G + o`` (b) of the same tile side by side and stores ``tanh(a) sigmoid(b)`` (B, G, T);
* ``EPI_GATE_BWD``: the same recomputation, then, given ``dh``, stores the gradient of the
  pre-activation ``(da, db)`` (B, 2G, T) instead of the activation.

The input gradient is the same kernel with the weight transposed (a stride swap) and the
dilation negated: it reads ``dy`` at ``t + (K-1-i) d``. The weight gradient is a second
kernel, a GEMM over (B x T) per tap, split over (B x T) into fp32 partial sums that are added
afterwards (deterministic, no atomics).

Math: operands in the storage dtype, accumulation in fp32; fp32 operands use TF32 exactly when
``torch.backends.cudnn.allow_tf32`` lets cuDNN's convolution (the reference) use it.
"""

import torch
import triton
import triton.language as tl

from . import INTERPRET
from .gated import _sigmoid, _tanh

EPI_NONE = 0
EPI_GATE = 1
EPI_GATE_BWD = 2

MAX_KERNEL_SIZE = 8

# Tile caps of the forward kernel: (out-channels, in-channels, time). 64 x 128 output tiles
# with two fp32 accumulators in the gated modes fit 4 warps' registers; 32 in-channels per
# step keeps the x tile (32 x 128) and both weight tiles in shared memory with 3 stages.
# Not yet tuned on a GPU.
_FWD_BLOCK_O, _FWD_BLOCK_C, _FWD_BLOCK_T = 64, 32, 128
_FWD_NUM_WARPS, _FWD_NUM_STAGES = 4, 3
# Weight gradient: (out-channels, in-channels) tile, 64 time steps per reduction step, and
# about 4 programs per SM when splitting the (B x T) reduction. Not yet tuned on a GPU.
_BWD_W_BLOCK_O, _BWD_W_BLOCK_C, _BWD_W_BLOCK_T = 64, 64, 64
_BWD_W_NUM_WARPS, _BWD_W_NUM_STAGES = 4, 3
_BWD_W_PROGRAMS_PER_SM = 4
# Splits of the (B x T) reduction under the interpreter: more than one, so tests cover it.
_INTERPRET_SPLIT = 2


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc + a @ b. DOT_FP32 (interpreter, bf16 only): the interpreter's bf16 dot returns
    garbage (triton 3.9), so the operands go up to fp32 first, which is exact for bf16 (the
    launcher sets PRECISION to "ieee" on CPU tensors)."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _mix_channels(
    acc_a, acc_b, src_base, stride_src_c, stride_src_t, ts, ts_mask, n_c,
    w_ptr, stride_w_o, stride_w_c, w_tap, o, o_mask, cout, cr,
    GATED: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """acc_a += w[o, :] @ src[:, ts] over the n_c source channels, BLOCK_C at a time (src
    read as 0 where ts_mask is False, w offset by w_tap); GATED: also
    acc_b += w[cout + o, :] @ src[:, ts]."""
    for c0 in range(0, n_c, BLOCK_C):
        c = c0 + cr
        c_mask = c < n_c
        xt = tl.load(src_base + c[:, None] * stride_src_c + ts[None, :] * stride_src_t,
                     mask=c_mask[:, None] & ts_mask[None, :], other=0.0)  # (BLOCK_C, BLOCK_T)
        w_off = o[:, None] * stride_w_o + c[None, :] * stride_w_c + w_tap
        w_mask = o_mask[:, None] & c_mask[None, :]
        wa = tl.load(w_ptr + w_off, mask=w_mask, other=0.0)  # (BLOCK_O, BLOCK_C)
        acc_a = _dot(wa, xt, acc_a, PRECISION, DOT_FP32)
        if GATED:
            wb = tl.load(w_ptr + w_off + cout * stride_w_o, mask=w_mask, other=0.0)
            acc_b = _dot(wb, xt, acc_b, PRECISION, DOT_FP32)
    return acc_a, acc_b


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, cond_ptr, wc_ptr, aux_ptr, out_ptr,
    stride_x_b, stride_x_c, stride_x_t,
    stride_w_o, stride_w_c, stride_w_k,
    stride_bias_b, stride_bias_o,
    stride_cond_b, stride_cond_c, stride_cond_t,
    stride_wc_o, stride_wc_c,
    stride_aux_b, stride_aux_c, stride_aux_t,
    stride_out_b, stride_out_c,
    cin, cout, ccond, caux, t_len, dilation,
    KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_COND: tl.constexpr,
    HAS_AUX: tl.constexpr, EPILOGUE: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # Program (b * n_t + pid_t, pid_o) owns out[b, o, t] for o in [pid_o BLOCK_O, ...) and t
    # in [pid_t BLOCK_T, ...): batch and time share grid axis 0, which has no 65535 limit.
    # ``cout`` counts output channels (G in the gated modes, where the weight has 2 cout
    # rows). ``dilation`` is signed: negative for the input gradient. Tap offsets
    # (K-1-i) d are int64: an int32 product wraps for d >= 2^31 / (K-1) and would read the
    # future (the ops also clamp d to T, which changes nothing: taps >= T read padding).
    n_t = tl.cdiv(t_len, BLOCK_T)
    pid_bt = tl.program_id(0).to(tl.int64)
    b = pid_bt // n_t
    t = (pid_bt - b * n_t) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)  # (BLOCK_O,)
    o_mask = o < cout
    t_mask = t < t_len
    cr = tl.arange(0, BLOCK_C)  # (BLOCK_C,)

    acc_a = tl.zeros((BLOCK_O, BLOCK_T), dtype=tl.float32)  # rows o
    acc_b = tl.zeros((BLOCK_O, BLOCK_T), dtype=tl.float32)  # rows cout + o (gated modes)
    x_base = x_ptr + b * stride_x_b
    for i in tl.static_range(KSIZE):
        # acc += w[o, :, i] @ x[b, :, t - (K-1-i) d]
        ts = t - (KSIZE - 1 - i) * tl.cast(dilation, tl.int64)  # (BLOCK_T,) sources
        acc_a, acc_b = _mix_channels(
            acc_a, acc_b, x_base, stride_x_c, stride_x_t, ts, (ts >= 0) & (ts < t_len), cin,
            w_ptr, stride_w_o, stride_w_c, i * stride_w_k, o, o_mask, cout, cr,
            EPILOGUE != 0, PRECISION, DOT_FP32, BLOCK_C)

    if HAS_COND:
        # acc += wc[o, :] @ cond[b, :, t]   (the 1x1 projection of local conditioning)
        acc_a, acc_b = _mix_channels(
            acc_a, acc_b, cond_ptr + b * stride_cond_b, stride_cond_c, stride_cond_t, t, t_mask,
            ccond, wc_ptr, stride_wc_o, stride_wc_c, 0, o, o_mask, cout, cr,
            EPILOGUE != 0, PRECISION, DOT_FP32, BLOCK_C)

    if HAS_BIAS:
        # bias is (B, rows) or (rows,) (stride_bias_b = 0)
        bias_off = b * stride_bias_b + o * stride_bias_o  # (BLOCK_O,)
        acc_a += tl.load(bias_ptr + bias_off, mask=o_mask, other=0.0).to(tl.float32)[:, None]
        if EPILOGUE != 0:
            acc_b += tl.load(bias_ptr + bias_off + cout * stride_bias_o, mask=o_mask,
                             other=0.0).to(tl.float32)[:, None]

    out_mask = o_mask[:, None] & t_mask[None, :]
    out_off = b * stride_out_b + o[:, None] * stride_out_c + t[None, :]  # out: (B, ., T)
    aux_off = b * stride_aux_b + o[:, None] * stride_aux_c + t[None, :] * stride_aux_t
    if EPILOGUE == 0:
        y = acc_a
        if HAS_AUX:  # residual: y[:, :caux] += aux
            aux_mask = (o < caux)[:, None] & t_mask[None, :]
            y += tl.load(aux_ptr + aux_off, mask=aux_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    elif EPILOGUE == 1:
        # h = tanh(a) sigmoid(b)
        h = _tanh(acc_a) * _sigmoid(acc_b)
        tl.store(out_ptr + out_off, h.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # aux = dh (B, G, T):  da = dh s (1 - th^2),  db = dh th s (1 - s),
        # th = tanh(a), s = sigmoid(b)
        g = tl.load(aux_ptr + aux_off, mask=out_mask, other=0.0).to(tl.float32)
        s = _sigmoid(acc_b)
        th = _tanh(acc_a)
        da = g * s * (1.0 - th * th)
        db = g * th * s * (1.0 - s)
        tl.store(out_ptr + out_off, da.to(out_ptr.dtype.element_ty), mask=out_mask)
        tl.store(out_ptr + out_off + cout * stride_out_c, db.to(out_ptr.dtype.element_ty),
                 mask=out_mask)


@triton.jit
def _causal_conv1d_bwd_weight_kernel(
    dy_ptr, x_ptr, part_ptr,
    stride_dy_b, stride_dy_o, stride_dy_t,
    stride_x_b, stride_x_c, stride_x_t,
    cout, cin, t_len, dilation, n_tiles, n_t_tiles, split, steps,
    KSIZE: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # dw[o, c, i] = sum_{b, t} dy[b, o, t] x[b, c, t - (K-1-i) d]
    # Program (pid_o, pid_c, i + K s) sums the (b, time-tile) items n = s, s + split, ... of
    # the n_tiles = B n_t_tiles items and stores its partial sum to part[s, o, c, i]
    # (part: contiguous fp32 (split, cout, cin, K)).
    o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)  # (BLOCK_O,)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    pid_ks = tl.program_id(2)
    i = pid_ks % KSIZE
    s = pid_ks // KSIZE
    o_mask = o < cout
    c_mask = c < cin
    shift = (KSIZE - 1 - i).to(tl.int64) * dilation  # int64, as in the forward kernel
    tr = tl.arange(0, BLOCK_T)  # (BLOCK_T,)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for step in range(0, steps):
        n = s + step * split
        b = (n // n_t_tiles).to(tl.int64)
        t = (n % n_t_tiles).to(tl.int64) * BLOCK_T + tr  # (BLOCK_T,)
        t_mask = t < tl.where(n < n_tiles, t_len, 0)  # (BLOCK_T,); none past the last item
        dy = tl.load(dy_ptr + b * stride_dy_b + o[:, None] * stride_dy_o + t[None, :] * stride_dy_t,
                     mask=o_mask[:, None] & t_mask[None, :], other=0.0)  # (BLOCK_O, BLOCK_T)
        ts = t - shift
        xt = tl.load(x_ptr + b * stride_x_b + c[None, :] * stride_x_c + ts[:, None] * stride_x_t,
                     mask=(t_mask & (ts >= 0))[:, None] & c_mask[None, :],
                     other=0.0)  # (BLOCK_T, BLOCK_C)
        acc = _dot(dy, xt, acc, PRECISION, DOT_FP32)
    part_off = ((s * cout + o[:, None]) * cin + c[None, :]) * KSIZE + i
    tl.store(part_ptr + part_off, acc, mask=o_mask[:, None] & c_mask[None, :])


def _block(n: int, cap: int) -> int:
    """A power of two >= 16 (tl.dot's minimum) covering ``n`` up to ``cap``."""
    return max(16, min(triton.next_power_of_2(max(n, 1)), cap))


def _precision(x: torch.Tensor) -> str:
    tf32 = x.dtype == torch.float32 and x.is_cuda and torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "ieee"


def _dot_fp32(x: torch.Tensor) -> bool:
    return INTERPRET and x.dtype == torch.bfloat16


def _fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int,
         cond: torch.Tensor | None, cond_weight: torch.Tensor | None,
         aux: torch.Tensor | None, epilogue: int) -> torch.Tensor:
    """Launch the forward kernel; see the public launchers for the meaning of each mode."""
    bsz, cin, t_len = x.shape
    rows, _, ksize = weight.shape
    cout = rows if epilogue == EPI_NONE else rows // 2
    out_rows = 2 * cout if epilogue == EPI_GATE_BWD else cout
    out = torch.empty((bsz, out_rows, t_len), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    block_o = _block(cout, _FWD_BLOCK_O)
    block_c = _block(max(cin, cond.shape[1] if cond is not None else 0), _FWD_BLOCK_C)
    block_t = _block(t_len, _FWD_BLOCK_T)
    grid = (bsz * triton.cdiv(t_len, block_t), triton.cdiv(cout, block_o))
    if bias is None:
        bias_strides = (0, 0)
    elif bias.dim() == 1:
        bias_strides = (0, bias.stride(0))
    else:
        bias_strides = bias.stride()
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else x, cond if cond is not None else x,
        cond_weight if cond_weight is not None else x, aux if aux is not None else x, out,
        *x.stride(), *weight.stride(), *bias_strides,
        *(cond.stride() if cond is not None else (0, 0, 0)),
        *(cond_weight.stride()[:2] if cond_weight is not None else (0, 0)),
        *(aux.stride() if aux is not None else (0, 0, 0)),
        out.stride(0), out.stride(1),
        cin, cout, cond.shape[1] if cond is not None else 0,
        aux.shape[1] if aux is not None else 0, t_len, dilation,
        KSIZE=ksize, HAS_BIAS=bias is not None, HAS_COND=cond is not None,
        HAS_AUX=aux is not None, EPILOGUE=epilogue,
        PRECISION=_precision(x), DOT_FP32=_dot_fp32(x),
        BLOCK_O=block_o, BLOCK_C=block_c, BLOCK_T=block_t,
        num_warps=_FWD_NUM_WARPS, num_stages=_FWD_NUM_STAGES,
    )
    return out


def causal_conv1d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      dilation: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Forward launcher.

    x: (B, Cin, T), any strides. weight: (Cout, Cin, K), K <= 8, any strides. bias: None or
    (Cout,). residual: None or (B, R, T) with R <= Cout, added to output channels [0, R).
    All one float dtype. Returns a contiguous (B, Cout, T) tensor of x's dtype.
    """
    return _fwd(x, weight, bias, dilation, None, None, residual, EPI_NONE)


def causal_conv1d_bwd_input(grad_out: torch.Tensor, weight: torch.Tensor,
                            dilation: int) -> torch.Tensor:
    """dL/dx of the causal convolution: the same kernel, weight transposed, reading ahead.

    grad_out: (B, Cout, T), any strides. weight: (Cout, Cin, K). Returns contiguous (B, Cin, T).
    """
    return _fwd(grad_out, weight.transpose(0, 1), None, -dilation, None, None, None, EPI_NONE)


def causal_conv1d_bwd_weight(grad_out: torch.Tensor, x: torch.Tensor, ksize: int,
                             dilation: int) -> torch.Tensor:
    """dL/dweight: (Cout, Cin, K) in x's dtype, summed in fp32 over batch and time.

    grad_out: (B, Cout, T) and x: (B, Cin, T), any strides, one dtype.
    """
    bsz, cout, t_len = grad_out.shape
    cin = x.shape[1]
    if bsz * t_len == 0 or cout * cin == 0:
        return torch.zeros((cout, cin, ksize), device=x.device, dtype=x.dtype)
    block_o = _block(cout, _BWD_W_BLOCK_O)
    block_c = _block(cin, _BWD_W_BLOCK_C)
    block_t = _block(t_len, _BWD_W_BLOCK_T)
    n_t_tiles = triton.cdiv(t_len, block_t)
    n_tiles = bsz * n_t_tiles
    tiles = triton.cdiv(cout, block_o) * triton.cdiv(cin, block_c) * ksize
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        split = triton.cdiv(_BWD_W_PROGRAMS_PER_SM * sms, tiles)
    else:
        split = _INTERPRET_SPLIT
    split = max(1, min(split, n_tiles))
    part = torch.empty((split, cout, cin, ksize), device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(cout, block_o), triton.cdiv(cin, block_c), ksize * split)
    _causal_conv1d_bwd_weight_kernel[grid](
        grad_out, x, part, *grad_out.stride(), *x.stride(),
        cout, cin, t_len, dilation, n_tiles, n_t_tiles, split, triton.cdiv(n_tiles, split),
        KSIZE=ksize, PRECISION=_precision(x), DOT_FP32=_dot_fp32(x),
        BLOCK_O=block_o, BLOCK_C=block_c, BLOCK_T=block_t,
        num_warps=_BWD_W_NUM_WARPS, num_stages=_BWD_W_NUM_STAGES,
    )
    return part.sum(0).to(x.dtype)


def wavenet_gate_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     cond: torch.Tensor | None, cond_weight: torch.Tensor | None,
                     dilation: int, grad_h: torch.Tensor | None = None) -> torch.Tensor:
    """The gated pre-activation ``z = conv(x) + bias + cond_weight @ cond``, ``a, b = z``'s
    channel halves, in one kernel.

    x: (B, R, T). weight: (2G, R, K). bias: None, (2G,) or (B, 2G) (a per-sample bias carries
    global conditioning). cond: None or (B, Cc, T) with cond_weight (2G, Cc, 1). Any strides.
    Without ``grad_h``: returns ``tanh(a) sigmoid(b)``, contiguous (B, G, T). With grad_h
    (B, G, T): returns the gradient of the pre-activation ``(da, db)``, contiguous (B, 2G, T).
    """
    epilogue = EPI_GATE if grad_h is None else EPI_GATE_BWD
    return _fwd(x, weight, bias, dilation, cond, cond_weight, grad_h, epilogue)
