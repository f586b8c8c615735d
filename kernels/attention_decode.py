"""Attention of a few new query positions against a KV cache: split-KV (flash-decoding).

Follows Flash-Decoding (Dao, Haziza, Massa, Sizov, 2023): the cached keys of each sequence
are cut into ``n_splits`` chunks, one program per (chunk, batch, kv head) computes an
online-softmax partial result over its chunk, and a second pass combines the partial results
through their log-sum-exps. A program serves every query head of its kv-head group at once
(rows = group x new positions), so each cached key and value is read from memory once per
call, whatever the group size: the op is bound by the bandwidth of reading the cache.

Alignment is bottom-right: with ``L = cache_seqlens[b] + T_new`` keys after the append, query
t of ``Tq`` sits at position ``L - Tq + t`` and sees keys ``j <= L - Tq + t`` (``<`` when
strict). The per-block math is the forward block of ``artrt.kernels.attention``.

The combine pass is a second, small kernel (one program per batch and kv head) that merges
the fp32 partials and writes the output in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from artrt.kernels.attention import (
    _fwd_block,
    _head_ptr,
    _num_warps,
    _to,
    block_d,
    check_heads_grid,
)

# Keys per inner step; 64 keeps a (64, D) key tile and a (rows, 64) score tile in registers
# for D <= 128. Not yet tuned on a GPU.
_BLOCK_N = 64
# Deeper pipelining hides memory latency in a bandwidth-bound loop; 1 for fp32, whose (128,
# 128) tiles need 225 KB of shared memory at 3 stages (compiled for sm_90). Not yet tuned.
_NUM_STAGES = 3
# Programs to aim for: two waves over the SMs of the device (132 on an H100), so every SM has
# work even at batch 1. Not yet tuned on a GPU. On CPU (interpreter) a few splits, so that
# tests exercise the combine pass.
_WAVES = 2
_CPU_PROGRAMS = 8
# Query rows (group x Tq) per launch: a (128, D) fp32 accumulator is the most a program
# holds in registers at D = 128; more rows (a long prefill) go in several launches.
_MAX_ROWS = 128


@triton.jit
def _attention_decode_fwd_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, o_part_ptr, lse_part_ptr,
    stride_q_b, stride_q_h, stride_q_t, stride_q_d,
    stride_k_b, stride_k_h, stride_k_t, stride_k_d,
    stride_v_b, stride_v_h, stride_v_t, stride_v_d,
    kv_heads, group, tq, d, t_new, chunk, n_splits, scale_log2,
    STRICT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (split, b * kv_heads + hk). Rows r = g * tq + t: query head hk * group + g,
    # new position t. Writes o_part[bhk, split] (rows, D) fp32, normalised over the chunk,
    # and lse_part[bhk, split] (rows,) fp32 in base-2 units (-inf when the chunk is empty).
    split = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // kv_heads
    hk = bhk % kv_heads
    rows = tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    g = rows // tq
    tt = rows % tq
    row_mask = rows < group * tq
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < d
    h = hk * group + g  # (BLOCK_M,)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_q_b + h[:, None].to(tl.int64) * stride_q_h
                + tt[:, None] * stride_q_t + offs_d[None, :] * stride_q_d,
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    length = tl.load(seqlens_ptr + b).to(tl.int32) + t_new  # keys after the append
    last = length - tq + tt  # (BLOCK_M,) last visible key of each row
    if STRICT:
        last = last - 1
    k_base = _head_ptr(k_ptr, b, hk, stride_k_b, stride_k_h)
    v_base = _head_ptr(v_ptr, b, hk, stride_v_b, stride_v_h)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    for n in range(start, end, BLOCK_N):
        kn = n + offs_n  # (BLOCK_N,)
        in_chunk = kn < end
        visible = (kn[None, :] <= last[:, None]) & in_chunk[None, :]
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, kn, in_chunk, offs_d,
                                   d_mask, stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                                   visible, scale_log2, True, DOT_PRECISION)

    has_key = l_i > 0.0
    o = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("-inf"))
    part = bhk.to(tl.int64) * n_splits + split
    tl.store(o_part_ptr + (part * BLOCK_M + rows[:, None]) * BLOCK_D + offs_d[None, :], o)
    tl.store(lse_part_ptr + part * BLOCK_M + rows, lse)


@triton.jit
def _attention_decode_combine_kernel(
    o_part_ptr, lse_part_ptr, out_ptr,
    stride_o_b, stride_o_h, stride_o_t, stride_o_d,
    kv_heads, group, tq, d, n_splits,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program bhk merges the n_splits partial results of its rows:
    #   m = max_s lse_s,  out = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m)
    # A row with no key in any chunk (every lse_s = -inf) gets 0. out: (B, H, Tq, D).
    bhk = tl.program_id(0)
    b = bhk // kv_heads
    hk = bhk % kv_heads
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    den = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for s in range(0, n_splits):
        part = bhk.to(tl.int64) * n_splits + s
        lse = tl.load(lse_part_ptr + part * BLOCK_M + rows)  # (BLOCK_M,)
        o = tl.load(o_part_ptr + (part * BLOCK_M + rows[:, None]) * BLOCK_D + offs_d[None, :])
        m_new = tl.maximum(m, lse)
        m_off = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_off)
        w = tl.exp2(lse - m_off)
        den = den * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * o
        m = m_new
    res = acc / tl.where(den > 0.0, den, 1.0)[:, None]
    g = rows // tq
    tt = rows % tq
    h = hk * group + g
    mask = (rows < group * tq)[:, None] & (offs_d < d)[None, :]
    tl.store(out_ptr + b.to(tl.int64) * stride_o_b + h[:, None].to(tl.int64) * stride_o_h
             + tt[:, None] * stride_o_t + offs_d[None, :] * stride_o_d,
             _to(res, out_ptr.dtype.element_ty), mask=mask)


def _splits(batch_heads: int, t_max: int, device: torch.device) -> tuple[int, int]:
    """(n_splits, chunk): chunks of a multiple of _BLOCK_N keys covering t_max."""
    if device.type == "cuda":
        target = _WAVES * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = _CPU_PROGRAMS
    n_splits = max(1, min(triton.cdiv(target, batch_heads), triton.cdiv(t_max, _BLOCK_N)))
    chunk = triton.cdiv(triton.cdiv(t_max, n_splits), _BLOCK_N) * _BLOCK_N
    return triton.cdiv(t_max, chunk), chunk


def attention_decode_fwd(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_seqlens: torch.Tensor, t_new: int, scale: float, strict: bool,
                         n_splits: int | None = None) -> torch.Tensor:
    """Launcher: attention of q against the first ``cache_seqlens[b] + t_new`` cached keys.

    q: (B, H, Tq, D); k_cache, v_cache: (B, Hk, Tmax, D) with the new keys already written;
    any strides, one dtype of fp32/fp16/bf16, D <= 128, H a multiple of Hk. cache_seqlens:
    (B,) int32 or int64 (any stride), the lengths before the append. ``n_splits`` overrides
    the split count (chunks stay multiples of 64 keys). Returns a contiguous (B, H, Tq, D) tensor of
    q's dtype. More than _MAX_ROWS rows (group x Tq) are done in several launches.
    """
    b, h, tq, d = q.shape
    group = h // k_cache.shape[1]
    out = torch.empty((b, h, tq, d), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    cache_seqlens = cache_seqlens.contiguous()  # the kernel reads entry b at offset b
    check_heads_grid(b * k_cache.shape[1])
    step = max(1, _MAX_ROWS // group)
    for a in range(0, tq, step):
        c = min(step, tq - a)
        # Queries [a, a + c) are the last c of a call with t_new shortened by tq - a - c:
        # same positions L - Tq + a + t, and no key beyond the last of them is visible.
        _decode_launch(q[:, :, a:a + c], k_cache, v_cache, cache_seqlens,
                       t_new - (tq - a - c), scale, strict, n_splits, out[:, :, a:a + c])
    return out


def _decode_launch(q, k_cache, v_cache, cache_seqlens, t_new, scale, strict, n_splits, out):
    """One split-KV launch and its combine, writing into ``out`` (a (B, H, Tq, D) view)."""
    b, h, tq, d = q.shape
    hk, t_max = k_cache.shape[1], k_cache.shape[2]
    group = h // hk
    if n_splits is None:
        n_splits, chunk = _splits(b * hk, max(t_max, 1), q.device)
    else:
        chunk = triton.cdiv(triton.cdiv(max(t_max, 1), n_splits), _BLOCK_N) * _BLOCK_N
        n_splits = triton.cdiv(max(t_max, 1), chunk)
    block_m = max(16, triton.next_power_of_2(group * tq))
    bd = block_d(d)
    o_part = torch.empty((b * hk, n_splits, block_m, bd), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b * hk, n_splits, block_m), device=q.device, dtype=torch.float32)
    stages = 1 if q.dtype == torch.float32 else _NUM_STAGES
    _attention_decode_fwd_kernel[(n_splits, b * hk)](
        q, k_cache, v_cache, cache_seqlens, o_part, lse_part,
        *q.stride(), *k_cache.stride(), *v_cache.stride(),
        hk, group, tq, d, t_new, chunk, n_splits, scale * 1.4426950408889634,
        STRICT=bool(strict), DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=block_m, BLOCK_N=_BLOCK_N, BLOCK_D=bd,
        num_warps=_num_warps(block_m, bd), num_stages=stages,
    )
    # 4 warps: the combine reads n_splits x (rows, D) fp32, a few KB; not yet tuned.
    _attention_decode_combine_kernel[(b * hk,)](
        o_part, lse_part, out, *out.stride(), hk, group, tq, d, n_splits,
        BLOCK_M=block_m, BLOCK_D=bd, num_warps=4,
    )
