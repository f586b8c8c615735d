"""One WaveNet generation step of every layer, the head and the draw, in one Triton kernel.

The Triton twin of ``csrc/wavenet_step.cu`` (Fast WaveNet, Paine et al., 2016): the same
packed weights and the same float32 state row of ring buffers per sequence (layout in
``artrt.ops.wavenet_step.WaveNetStepWeights``), one program per sequence::

    v     = t == 0 ? start : tokens[t-1] * 2 / (levels-1) - 1
    x     = in_b + sum_k in_w[k] v(t - (K-1-k))                        (R)
    layer l, dilation d:
      a   = [x(t-(K-1)d), ..., x(t-d), x, cond(t)]                     (K R + Cc)
      z   = a @ conv_w[l] + conv_b[l];  h = tanh(z[:G]) sigmoid(z[G:]) (2G -> G)
      o   = h @ out_w[l] + out_b[l];    x += o[:R];  skips += o[R:]    (R + S)
    y     = relu(relu(skips) @ head_w1 + head_b1)                      (S)
    logit = y @ head_w2 + head_b2                                      (levels)
    tokens[t] = min(#{i : cdf_i <= u[t]}, levels - 1),  cdf = cumsum(softmax(logit))

Every matrix-vector product is a broadcast multiply and a sum over the input axis, in fp32,
over power-of-two blocks with masks; weights of any of fp32/fp16/bf16 are upcast as they are
loaded. The vectors (x, skips, the logits) stay in registers for the whole step. The weight
tiles stay small whatever the sizes: a layer walks its gate channels in chunks of
``BLOCK_GC``; each chunk's ``h`` is consumed at once by the output 1x1 (``o`` accumulates
over the chunks), and the head walks its hidden channels the same way (``BLOCK_HC``).

A layer's ring slot ``t mod (K-1) d`` holds ``x(t - (K-1) d)``, tap 0 of this step, and
receives ``x(t)``: a barrier separates every program's last read of the ring from that
store (threads of a program share the slot). The input ring likewise.

A position outside [0, T) does nothing (the op layer rejects a negative one; this keeps a
replayed graph harmless).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .gated import _sigmoid, _tanh

# Elements of a weight tile (rows x chunk): 4096 at 4 warps is 32 fp32 per thread and tile;
# a layer holds two conv tiles (tanh and sigmoid halves) at a time. Not yet tuned on a GPU.
_TILE = 4096
_NUM_WARPS = 4


@triton.jit
def _matvec(vec, w_ptr, rows, cols, ld, rmask, cmask):
    """sum_i vec[i] w[rows[i], cols[j]] for a (BLOCK_I,) fp32 vec and a row-major weight of
    leading dimension ld (upcast to fp32 as loaded); (BLOCK_J,) fp32."""
    w = tl.load(w_ptr + rows[:, None] * ld + cols[None, :],
                mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    return tl.sum(vec[:, None] * w, axis=0)


@triton.jit
def _wavenet_step_kernel(
    start_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, out_w_ptr, out_b_ptr,
    head_w1_ptr, head_b1_ptr, head_w2_ptr, head_b2_ptr, meta_ptr,
    state_ptr, tokens_ptr, u_ptr, step_ptr, cond_ptr, logits_ptr,
    stride_cond_b, stride_cond_c, stride_cond_t,
    length, state_size, layers, res, gate, skip, ksize, cond_channels, levels, offset, scale,
    HAS_STEP: tl.constexpr, HAS_COND: tl.constexpr, HAS_LOGITS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_GC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_HC: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    # grid (B,): program b runs sequence b at t = step[0] + offset (step: HAS_STEP);
    # scale = 2 / (levels - 1) in fp32; stride_cond_t = 0 for a (B, Cc, 1) cond
    b = tl.program_id(0).to(tl.int64)
    t = offset
    if HAS_STEP:
        t += tl.load(step_ptr)
    if (t >= 0) & (t < length):
        state = state_ptr + b * state_size
        m0 = ksize - 1
        r = tl.arange(0, BLOCK_R)
        r_mask = r < res
        s = tl.arange(0, BLOCK_S)
        s_mask = s < skip

        # input value: the previous level mapped to [-1, 1], the learned start at t = 0
        prev = tl.load(tokens_ptr + b * length + t - 1, mask=t > 0, other=0).to(tl.float32)
        v = tl.where(t > 0, prev * scale - 1.0, tl.load(start_ptr).to(tl.float32))
        # input conv: tap k sees v(t - (K-1-k)), kept in input-ring slot (t + k) mod (K-1)
        k = tl.arange(0, BLOCK_K)
        taps = tl.load(state + (t + k) % tl.maximum(m0, 1), mask=k < m0, other=0.0)
        taps = tl.where(k == m0, v, taps)  # (BLOCK_K,)
        x = tl.load(in_b_ptr + r, mask=r_mask, other=0.0).to(tl.float32) + _matvec(
            taps, in_w_ptr, k, r, res, k < ksize, r_mask)  # (BLOCK_R,)
        tl.debug_barrier()  # every thread has read the input ring
        tl.store(state + t % tl.maximum(m0, 1), v, mask=m0 > 0)

        n_in = ksize * res + cond_channels  # rows of a layer's conv_w
        if HAS_COND:
            c = tl.arange(0, BLOCK_C)
            c_mask = c < cond_channels
            cond = tl.load(cond_ptr + b * stride_cond_b + c * stride_cond_c + t * stride_cond_t,
                           mask=c_mask, other=0.0).to(tl.float32)  # (BLOCK_C,)
        skips = tl.zeros((BLOCK_S,), dtype=tl.float32)
        # pointers to layer l's weights, advanced per layer (64-bit: no index overflow)
        conv_w = conv_w_ptr
        conv_b = conv_b_ptr
        out_w = out_w_ptr
        out_b = out_b_ptr
        meta = meta_ptr
        for _ in range(layers):
            d = tl.load(meta)
            ring = state + tl.load(meta + 1)  # (slots, R)
            slots = m0 * d
            res_out = tl.zeros((BLOCK_R,), dtype=tl.float32)
            skip_out = tl.zeros((BLOCK_S,), dtype=tl.float32)
            for g0 in range(0, gate, BLOCK_GC):
                g = g0 + tl.arange(0, BLOCK_GC)
                g_mask = g < gate
                # z = a @ conv_w[l] + conv_b[l], the tanh half za and the sigmoid half zb
                za = tl.load(conv_b + g, mask=g_mask, other=0.0).to(tl.float32)
                zb = tl.load(conv_b + gate + g, mask=g_mask, other=0.0).to(tl.float32)
                for j in range(m0):  # tap j: x(t - (K-1-j) d), in slot (t - (K-1-j) d) mod slots
                    slot = (t + slots - (m0 - j) * d) % slots
                    a = tl.load(ring + slot * res + r, mask=r_mask, other=0.0)
                    za += _matvec(a, conv_w, j * res + r, g, 2 * gate, r_mask, g_mask)
                    zb += _matvec(a, conv_w, j * res + r, gate + g, 2 * gate, r_mask, g_mask)
                za += _matvec(x, conv_w, m0 * res + r, g, 2 * gate, r_mask, g_mask)
                zb += _matvec(x, conv_w, m0 * res + r, gate + g, 2 * gate, r_mask, g_mask)
                if HAS_COND:
                    za += _matvec(cond, conv_w, ksize * res + c, g, 2 * gate, c_mask, g_mask)
                    zb += _matvec(cond, conv_w, ksize * res + c, gate + g, 2 * gate, c_mask,
                                  g_mask)
                h = _tanh(za) * _sigmoid(zb)  # (BLOCK_GC,)
                # [res | skip] += h @ out_w[l] over this chunk's rows
                res_out += _matvec(h, out_w, g, r, res + skip, g_mask, r_mask)
                skip_out += _matvec(h, out_w, g, res + s, res + skip, g_mask, s_mask)
            tl.debug_barrier()  # every thread has read tap 0, the slot x(t) goes to
            # (a scalar condition folded into the bound: the interpreter rejects vector & scalar)
            tl.store(ring + (t % tl.maximum(slots, 1)) * res + r, x,
                     mask=r < tl.where(slots > 0, res, 0))
            x += res_out + tl.load(out_b + r, mask=r_mask, other=0.0).to(tl.float32)
            skips += skip_out + tl.load(out_b + res + s, mask=s_mask, other=0.0).to(tl.float32)
            conv_w += n_in * 2 * gate
            conv_b += 2 * gate
            out_w += gate * (res + skip)
            out_b += res + skip
            meta += 2

        # head: y = relu(relu(skips) @ head_w1 + head_b1) in chunks of hidden channels,
        # each consumed at once by logit = y @ head_w2 + head_b2
        skips = tl.maximum(skips, 0.0)
        vv = tl.arange(0, BLOCK_V)
        v_mask = vv < levels
        logit = tl.load(head_b2_ptr + vv, mask=v_mask, other=0.0).to(tl.float32)
        for c0 in range(0, skip, BLOCK_HC):
            hc = c0 + tl.arange(0, BLOCK_HC)
            hc_mask = hc < skip
            y = tl.load(head_b1_ptr + hc, mask=hc_mask, other=0.0).to(tl.float32)
            y = tl.maximum(y + _matvec(skips, head_w1_ptr, s, hc, skip, s_mask, hc_mask), 0.0)
            logit += _matvec(y, head_w2_ptr, hc, vv, levels, hc_mask, v_mask)
        if HAS_LOGITS:
            tl.store(logits_ptr + b * levels + vv, logit, mask=v_mask)

        # inverse CDF: p = softmax(logit), e = exp(logit - max) = 2^((logit - max) log2 e)
        logit = tl.where(v_mask, logit, float("-inf"))
        e = tl.exp2((logit - tl.max(logit, axis=0)) * 1.4426950408889634)
        e = tl.where(v_mask, e, 0.0)
        cdf = tl.cumsum(e / tl.sum(e, axis=0), axis=0)
        u = tl.load(u_ptr + b * length + t)
        below = tl.sum(((cdf <= u) & v_mask).to(tl.int32), axis=0)
        tl.store(tokens_ptr + b * length + t, tl.minimum(below, levels - 1).to(tl.int64))


# --------------------------------------------------------------------------- launcher

def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def blocks(res: int, gate: int, skip: int, kernel_size: int, cond_channels: int,
           levels: int) -> dict[str, int]:
    """The kernel's block sizes: whole vectors, and chunks of gate and head channels that
    keep every weight tile at most _TILE elements."""
    block_r, block_s, block_c, block_v = (_pow2(res), _pow2(skip), _pow2(cond_channels),
                                          _pow2(levels))
    return dict(BLOCK_K=_pow2(kernel_size), BLOCK_R=block_r,
                BLOCK_GC=min(_pow2(gate), max(1, _TILE // max(block_r, block_s, block_c))),
                BLOCK_S=block_s, BLOCK_HC=min(block_s, max(1, _TILE // max(block_s, block_v))),
                BLOCK_C=block_c, BLOCK_V=block_v)


def wavenet_step_fwd(weights: Sequence[torch.Tensor], state: torch.Tensor,
                     tokens: torch.Tensor, u: torch.Tensor, step: torch.Tensor | None,
                     offset: int, cond: torch.Tensor | None,
                     logits: torch.Tensor | None) -> None:
    """Launcher: one step at t = step[0] + offset (step None: offset) for every sequence,
    in place.

    weights: the tensors of ``artrt.ops.wavenet_step.WaveNetStepWeights`` in field order
    (start (1,), in_w (K, R), in_b (R,), conv_w (L, K R + Cc, 2G), conv_b (L, 2G), out_w
    (L, G, R + S), out_b (L, R + S), head_w1 (S, S), head_b1 (S,), head_w2 (S, levels),
    head_b2 (levels,), meta (L, 2) int32), contiguous, one float dtype of fp32/fp16/bf16.
    state: (B, state_size) fp32; tokens: (B, T) int64; u: (B, T) fp32; step: None or (1,)
    int64; cond: None or (B, Cc, T | 1) fp32, any strides; logits: None or (B, levels) fp32.
    The op layer has checked the rest (shapes, devices, values).
    """
    start, in_w, in_b, conv_w, conv_b, out_w, out_b, w1, b1, w2, b2, meta = weights
    for name, t in (("state", state), ("tokens", tokens), ("u", u), ("conv_w", conv_w),
                    ("out_w", out_w), ("head_w1", w1), ("head_w2", w2), ("meta", meta)):
        if not t.is_contiguous():
            raise ValueError(f"wavenet_step_fwd: {name} must be contiguous")
    if logits is not None and not logits.is_contiguous():
        raise ValueError("wavenet_step_fwd: logits must be contiguous")
    batch, length = tokens.shape
    if batch == 0:
        return
    kernel_size, res = in_w.shape
    layers, n_in, gate2 = conv_w.shape
    skip, levels = w2.shape
    cond_channels = n_in - kernel_size * res
    if cond is not None and cond.shape[2] == 1:
        cond_strides = (cond.stride(0), cond.stride(1), 0)  # the same column at every t
    else:
        cond_strides = cond.stride() if cond is not None else (0, 0, 0)
    _wavenet_step_kernel[(batch,)](
        start, in_w, in_b, conv_w, conv_b, out_w, out_b, w1, b1, w2, b2, meta,
        state, tokens, u, step if step is not None else tokens,
        cond if cond is not None else state, logits if logits is not None else state,
        *cond_strides,
        length, state.shape[1], layers, res, gate2 // 2, skip, kernel_size, cond_channels,
        levels, offset, 2.0 / (levels - 1),
        HAS_STEP=step is not None, HAS_COND=cond is not None, HAS_LOGITS=logits is not None,
        **blocks(res, gate2 // 2, skip, kernel_size, cond_channels, levels),
        num_warps=_NUM_WARPS,
    )
