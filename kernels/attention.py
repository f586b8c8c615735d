"""Causal flash attention (forward and backward) in raster or an arbitrary generation order.

Follows FlashAttention-2 (Dao, 2023): each program owns a block of queries and streams the
key/value blocks it may see through an online softmax in fp32, so no T x T matrix is ever
stored. The forward saves only the log-sum-exp of each row; the backward recomputes the
probabilities from it, with one kernel for dK/dV (a program per key block, looping over the
query blocks that see it and over the query heads of its group, so grouped-query attention
needs no atomics) and one for dQ (a program per query block).

Masks. Raster order (``ORDERED=0``): key j is visible to query i iff ``j <= i`` (``j < i``
when ``STRICT``); key blocks entirely above the diagonal are never visited and blocks
entirely below it run without a mask. Arbitrary order (``ORDERED=1``): key j is visible to
query i iff ``rank[j] <= rank[i]`` (``<`` when ``STRICT``). For each query block the launcher
computes, once per call and with torch ops, the list of key blocks holding at least one
visible key (and for the dK/dV kernel, the list of query blocks that see each key block);
the kernels loop over those lists only, so a zig-zag or subscale order visits about as many
blocks as raster order does.

Rows with no visible key (row 0 in strict mode) get a zero output, a log-sum-exp of +inf and
zero gradients: ``exp2(s - inf) = 0`` makes them drop out of every sum without a branch.

Departures from the paper: head dims that are not a power of two are zero-padded inside the
kernel (masked loads) rather than specialised; the delta term ``rowsum(dO * O)`` of the
backward is computed with one torch op rather than a preprocessing kernel.

Interpreter only (``_INTERPRET``, a compile-time constant: the GPU code is unchanged): bf16
dot operands go through fp32 and casts to bf16 round to nearest by hand, working around two
bf16 faults of the triton 3.9 interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import INTERPRET
from .masked_conv2d import _round_bf16

# Tiles per pass and input dtype. Any sizes >= 16 are correct (the tests run others too).
# 16-bit inputs (tensor cores): forward 128 queries x 64 keys, the shape of Triton's
# fused-attention tutorial; backward 64 x 64, as dK/dV and dQ hold more live tiles. Compiled
# for sm_90 without a GPU, bf16 at D = 128 uses 215 registers (forward, no spill) and 255
# (dK/dV, 156 bytes spilled). fp32 inputs: "ieee" products run on the FMA units with every
# operand in registers, so the tiles are halved (at 128 x 64 the fp32 kernels spilled tens of
# KB). Not yet tuned on a GPU (none was lent): the first benchmark run should sweep BLOCK_M
# in {64, 128}, BLOCK_N in {32, 64, 128}, num_warps in {4, 8}, num_stages in {2, 3, 4}.
CONFIG_16BIT = {"fwd_m": 128, "fwd_n": 64, "bwd_m": 64, "bwd_n": 64, "stages": 2}
CONFIG_FP32 = {"fwd_m": 64, "fwd_n": 32, "bwd_m": 32, "bwd_n": 32, "stages": 1}



# The triton 3.9 interpreter computes a bf16 tl.dot wrongly (results ~1e9) and truncates an
# fp32 -> bf16 cast, so under it (only: this is a compile-time constant, False on a GPU)
# ``_dot`` takes bf16 operands through fp32, which is exact and is what the GPU's bf16
# tensor-core dot computes (fp32 products and sums), and ``_to`` rounds to nearest by hand.
_INTERPRET = tl.constexpr(INTERPRET)


def _config(dtype: torch.dtype) -> dict:
    return CONFIG_FP32 if dtype == torch.float32 else CONFIG_16BIT


def _num_warps(block_rows: int, block_d: int) -> int:
    # 8 warps once a program's fp32 accumulator reaches 128 x 64 (or 64 x 128) elements,
    # else 4; not yet tuned on a GPU.
    return 8 if block_rows * block_d >= 8192 else 4


@triton.jit
def _head_ptr(ptr, b, h, stride_b, stride_h):
    """Pointer to head h of batch element b (int64 offsets: B H T D may pass 2^31)."""
    return ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _load_rows(base, rows, offs_d, stride_t, stride_d, mask):
    """The (rows, BLOCK_D) tile of a (T, D) head at ``base``, 0 where ``mask`` is False."""
    return tl.load(base + rows[:, None] * stride_t + offs_d[None, :] * stride_d,
                   mask=mask, other=0.0)


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr):
    """a @ b, fp32. Under the interpreter bf16 operands go through fp32 (see _INTERPRET)."""
    if _INTERPRET:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _to(x, dtype: tl.constexpr):
    """fp32 x cast to ``dtype``, rounding to nearest. Under the interpreter, whose cast to
    bf16 truncates, x is rounded to a bf16 value by hand first (see _INTERPRET)."""
    if _INTERPRET:
        if dtype == tl.bfloat16:
            x = _round_bf16(x)
    return x.to(dtype)


@triton.jit
def _sees(key, query, STRICT: tl.constexpr):
    """Whether a query sees a key, from their positions or ranks: key <= query (< when
    STRICT)."""
    if STRICT:
        visible = key < query
    else:
        visible = key <= query
    return visible


@triton.jit
def _query_block(heads, group, d, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Program (pid_m, b * heads + h) of the forward and dQ kernels owns queries
    [pid_m * BLOCK_M, ...) of head h, which reads kv head hk. Last query block first: in
    raster order it has the most key blocks, and starting the longest programs first shortens
    the tail of the launch. Returns pid_m, bh, b, h, hk, offs_m, offs_n, offs_d, d_mask."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    hk = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    return pid_m, bh, b, h, hk, offs_m, offs_n, offs_d, offs_d < d


@triton.jit
def _block_list(rank_ptr, blocks_ptr, count_ptr, stride_rank_b, stride_blocks_b,
                stride_blocks_row, stride_count_b, b, row_block, own, own_mask,
                PAD_RANK: tl.constexpr):
    """Arbitrary order: the ranks of batch element b, the ranks of this program's own
    positions ``own`` (PAD_RANK where padded), and its list of blocks to visit and their
    count. Returns rank_base, rank_own, list_base, n_blocks."""
    rank_base = rank_ptr + b * stride_rank_b
    rank_own = tl.load(rank_base + own, mask=own_mask, other=PAD_RANK)
    list_base = blocks_ptr + b * stride_blocks_b + row_block * stride_blocks_row
    n_blocks = tl.load(count_ptr + b * stride_count_b + row_block)
    return rank_base, rank_own, list_base, n_blocks


@triton.jit
def _listed_keys(list_base, i, rank_base, rank_q, offs_n, t, STRICT: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """Key block i of a query block's list: its keys kn (BLOCK_N,) and which of them each
    query sees (BLOCK_M, BLOCK_N). Padded keys get a rank above every real one (2^31 - 1):
    never visible."""
    kn = tl.load(list_base + i) * BLOCK_N + offs_n  # (BLOCK_N,)
    rank_k = tl.load(rank_base + kn, mask=kn < t, other=2147483647)
    return kn, _sees(rank_k[None, :], rank_q[:, None], STRICT)


@triton.jit
def _fwd_block(
    acc, m_i, l_i, q, k_base, v_base, kn, kn_mask, offs_d, d_mask,
    stride_k_t, stride_k_d, stride_v_t, stride_v_d,
    visible, scale_log2, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One key block of the online softmax (scores in base-2 units), keys kn where kn_mask.

    s = q k^T * scale * log2(e);  m' = max(m, rowmax s);  p = 2^(s - m')
    l' = l 2^(m - m') + rowsum p;  acc' = acc 2^(m - m') + p v
    A row that has seen no visible key keeps m = -inf; its offset is taken as 0 so that
    2^(-inf - 0) = 0 instead of nan.
    """
    kv_mask = kn_mask[:, None] & d_mask[None, :]
    k_ptrs = k_base + kn[:, None] * stride_k_t + offs_d[None, :] * stride_k_d
    v_ptrs = v_base + kn[:, None] * stride_v_t + offs_d[None, :] * stride_v_d
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    s = _dot(q, tl.trans(k), DOT_PRECISION) * scale_log2  # (BLOCK_M, BLOCK_N)
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
    m_off = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_off)
    p = tl.exp2(s - m_off[:, None])  # (BLOCK_M, BLOCK_N)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    acc = acc * alpha[:, None] + _dot(_to(p, v.dtype), v, DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _causal_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, rank_ptr, blocks_ptr, count_ptr, out_ptr, lse_ptr,
    stride_q_b, stride_q_h, stride_q_t, stride_q_d,
    stride_k_b, stride_k_h, stride_k_t, stride_k_d,
    stride_v_b, stride_v_h, stride_v_t, stride_v_d,
    stride_rank_b, stride_blocks_b, stride_blocks_m, stride_count_b,
    heads, t, d, group, scale_log2,
    ORDERED: tl.constexpr, STRICT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (pid_m, b * heads + h) owns queries [pid_m * BLOCK_M, ...) of head h.
    # out is contiguous (B, H, T, D); lse is contiguous (B, H, T) fp32 in natural-log units.
    pid_m, bh, b, h, hk, offs_m, offs_n, offs_d, d_mask = _query_block(
        heads, group, d, BLOCK_M, BLOCK_N, BLOCK_D)
    q_base = _head_ptr(q_ptr, b, h, stride_q_b, stride_q_h)
    k_base = _head_ptr(k_ptr, b, hk, stride_k_b, stride_k_h)
    v_base = _head_ptr(v_ptr, b, hk, stride_v_b, stride_v_h)
    q = _load_rows(q_base, offs_m, offs_d, stride_q_t, stride_q_d,
                   (offs_m < t)[:, None] & d_mask[None, :])  # (BLOCK_M, BLOCK_D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if ORDERED:
        rank_base, rank_q, list_base, n_blocks = _block_list(
            rank_ptr, blocks_ptr, count_ptr, stride_rank_b, stride_blocks_b, stride_blocks_m,
            stride_count_b, b, pid_m, offs_m, offs_m < t, -1)
        for i in range(0, n_blocks):
            kn, visible = _listed_keys(list_base, i, rank_base, rank_q, offs_n, t, STRICT,
                                       BLOCK_N)
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, kn, kn < t, offs_d,
                                       d_mask, stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                                       visible, scale_log2, True, DOT_PRECISION)
    else:
        # Key blocks ending at or before the block's first query: every key visible.
        n_full = (pid_m * BLOCK_M) // BLOCK_N
        for n in range(0, n_full):
            kn = n * BLOCK_N + offs_n
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, kn, kn < t, offs_d,
                                       d_mask, stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                                       d_mask, scale_log2, False, DOT_PRECISION)
        # Blocks crossing the diagonal; blocks wholly above it are not visited.
        hi = tl.minimum((pid_m + 1) * BLOCK_M, t)
        for n in range(n_full, tl.cdiv(hi, BLOCK_N)):
            kn = n * BLOCK_N + offs_n
            visible = _sees(kn[None, :], offs_m[:, None], STRICT)
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, kn, kn < t, offs_d,
                                       d_mask, stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                                       visible, scale_log2, True, DOT_PRECISION)

    # out = acc / l (0 for a row with no key); lse = (m + log2 l) ln 2, +inf for such a row.
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453,
                   float("inf"))  # 0.69... = ln 2
    row_mask = offs_m < t
    o_off = bh.to(tl.int64) * t * d + offs_m[:, None] * d + offs_d[None, :]
    tl.store(out_ptr + o_off, _to(out, out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptr + bh.to(tl.int64) * t + offs_m, lse, mask=row_mask)


@triton.jit
def _causal_attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, rank_ptr, blocks_ptr, count_ptr,
    dk_ptr, dv_ptr,
    stride_q_b, stride_q_h, stride_q_t, stride_q_d,
    stride_k_b, stride_k_h, stride_k_t, stride_k_d,
    stride_v_b, stride_v_h, stride_v_t, stride_v_d,
    stride_do_b, stride_do_h, stride_do_t, stride_do_d,
    stride_rank_b, stride_blocks_b, stride_blocks_n, stride_count_b,
    heads, kv_heads, t, d, group, scale, scale_log2,
    ORDERED: tl.constexpr, STRICT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (pid_n, b * kv_heads + hk) owns keys [pid_n * BLOCK_N, ...) of kv head hk and
    # sums over the `group` query heads that share it. dk, dv: contiguous (B, Hk, T, D).
    #   p = 2^(q k^T scale log2 e - lse log2 e),  dv = p^T do,  dp = do v^T,
    #   ds = p (dp - delta),  dk = scale ds^T q
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // kv_heads
    hk = bhk % kv_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_m0 = tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_mask = offs_d < d
    kv_mask = (offs_n < t)[:, None] & d_mask[None, :]
    k = _load_rows(_head_ptr(k_ptr, b, hk, stride_k_b, stride_k_h), offs_n, offs_d,
                   stride_k_t, stride_k_d, kv_mask)  # (BLOCK_N, BLOCK_D)
    v = _load_rows(_head_ptr(v_ptr, b, hk, stride_v_b, stride_v_h), offs_n, offs_d,
                   stride_v_t, stride_v_d, kv_mask)  # (BLOCK_N, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for g in range(0, group):
        h = hk * group + g
        q_base = _head_ptr(q_ptr, b, h, stride_q_b, stride_q_h)
        do_base = _head_ptr(do_ptr, b, h, stride_do_b, stride_do_h)
        lse_row = lse_ptr + (b * heads + h).to(tl.int64) * t
        delta_row = delta_ptr + (b * heads + h).to(tl.int64) * t
        if ORDERED:
            rank_base, rank_k, list_base, n_blocks = _block_list(
                rank_ptr, blocks_ptr, count_ptr, stride_rank_b, stride_blocks_b,
                stride_blocks_n, stride_count_b, b, pid_n, offs_n, offs_n < t, 2147483647)
            for i in range(0, n_blocks):
                offs_m = tl.load(list_base + i) * BLOCK_M + offs_m0
                rank_q = tl.load(rank_base + offs_m, mask=offs_m < t, other=-1)
                dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, lse_row, delta_row,
                                     offs_m, offs_d, d_mask, t,
                                     stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                                     _sees(rank_k[:, None], rank_q[None, :], STRICT),
                                     scale_log2, True, DOT_PRECISION)
        else:
            # Query blocks before m_lo end before the first key: skipped. Blocks from m_mid
            # on start at or after the last key (+1 when strict): every pair visible, no
            # mask. Blocks in between cross the diagonal: masked.
            m_lo = (pid_n * BLOCK_N) // BLOCK_M
            last_key = pid_n * BLOCK_N + BLOCK_N - 1
            if STRICT:
                last_key += 1
            m_hi = tl.cdiv(t, BLOCK_M)
            m_mid = tl.minimum(tl.cdiv(last_key, BLOCK_M), m_hi)
            for mb in range(m_lo, m_mid):
                offs_m = mb * BLOCK_M + offs_m0
                dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, lse_row, delta_row,
                                     offs_m, offs_d, d_mask, t,
                                     stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                                     _sees(offs_n[:, None], offs_m[None, :], STRICT),
                                     scale_log2, True, DOT_PRECISION)
            for mb in range(m_mid, m_hi):
                offs_m = mb * BLOCK_M + offs_m0
                dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, lse_row, delta_row,
                                     offs_m, offs_d, d_mask, t,
                                     stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                                     kv_mask, scale_log2, False, DOT_PRECISION)

    o_off = bhk.to(tl.int64) * t * d + offs_n[:, None] * d + offs_d[None, :]
    tl.store(dk_ptr + o_off, _to(dk * scale, dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + o_off, _to(dv, dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dkdv_block(
    dk, dv, k, v, q_base, do_base, lse_row_ptr, delta_row_ptr, offs_m, offs_d, d_mask, t,
    stride_q_t, stride_q_d, stride_do_t, stride_do_d,
    visible, scale_log2, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add one query block's contribution to dk (unscaled) and dv, in the transposed layout
    (keys along rows). Padded query rows load lse = +inf, so their p is 0."""
    row_mask = offs_m < t
    qd_mask = row_mask[:, None] & d_mask[None, :]
    q = _load_rows(q_base, offs_m, offs_d, stride_q_t, stride_q_d, qd_mask)  # (BLOCK_M, BLOCK_D)
    do = _load_rows(do_base, offs_m, offs_d, stride_do_t, stride_do_d,
                    qd_mask)  # (BLOCK_M, BLOCK_D)
    lse2 = tl.load(lse_row_ptr + offs_m, mask=row_mask, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_row_ptr + offs_m, mask=row_mask, other=0.0)  # (BLOCK_M,)
    s_t = _dot(k, tl.trans(q), DOT_PRECISION) * scale_log2  # (BLOCK_N, BLOCK_M)
    p_t = tl.exp2(s_t - lse2[None, :])  # 1.44... = log2(e) above
    if MASKED:
        p_t = tl.where(visible, p_t, 0.0)
    dv += _dot(_to(p_t, do.dtype), do, DOT_PRECISION)
    dp_t = _dot(v, tl.trans(do), DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(_to(ds_t, q.dtype), q, DOT_PRECISION)
    return dk, dv


@triton.jit
def _causal_attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, rank_ptr, blocks_ptr, count_ptr, dq_ptr,
    stride_q_b, stride_q_h, stride_q_t, stride_q_d,
    stride_k_b, stride_k_h, stride_k_t, stride_k_d,
    stride_v_b, stride_v_h, stride_v_t, stride_v_d,
    stride_do_b, stride_do_h, stride_do_t, stride_do_d,
    stride_rank_b, stride_blocks_b, stride_blocks_m, stride_count_b,
    heads, t, d, group, scale, scale_log2,
    ORDERED: tl.constexpr, STRICT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (pid_m, b * heads + h) owns dq rows [pid_m * BLOCK_M, ...); dq contiguous.
    #   dp = do v^T,  ds = p (dp - delta),  dq = scale ds k
    pid_m, bh, b, h, hk, offs_m, offs_n, offs_d, d_mask = _query_block(
        heads, group, d, BLOCK_M, BLOCK_N, BLOCK_D)
    row_mask = offs_m < t
    qd_mask = row_mask[:, None] & d_mask[None, :]
    q = _load_rows(_head_ptr(q_ptr, b, h, stride_q_b, stride_q_h), offs_m, offs_d,
                   stride_q_t, stride_q_d, qd_mask)  # (BLOCK_M, BLOCK_D)
    do = _load_rows(_head_ptr(do_ptr, b, h, stride_do_b, stride_do_h), offs_m, offs_d,
                    stride_do_t, stride_do_d, qd_mask)  # (BLOCK_M, BLOCK_D)
    lse2 = tl.load(lse_ptr + bh.to(tl.int64) * t + offs_m, mask=row_mask,
                   other=float("inf")) * 1.4426950408889634  # log2(e)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * t + offs_m, mask=row_mask, other=0.0)
    k_base = _head_ptr(k_ptr, b, hk, stride_k_b, stride_k_h)
    v_base = _head_ptr(v_ptr, b, hk, stride_v_b, stride_v_h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if ORDERED:
        rank_base, rank_q, list_base, n_blocks = _block_list(
            rank_ptr, blocks_ptr, count_ptr, stride_rank_b, stride_blocks_b, stride_blocks_m,
            stride_count_b, b, pid_m, offs_m, row_mask, -1)
        for i in range(0, n_blocks):
            kn, visible = _listed_keys(list_base, i, rank_base, rank_q, offs_n, t, STRICT,
                                       BLOCK_N)
            dq = _dq_block(dq, q, do, lse2, delta, k_base, v_base, kn, offs_d, d_mask, t,
                           stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                           visible, scale_log2, True, DOT_PRECISION)
    else:
        n_full = (pid_m * BLOCK_M) // BLOCK_N  # key blocks wholly before the first query
        for n in range(0, n_full):
            kn = n * BLOCK_N + offs_n
            dq = _dq_block(dq, q, do, lse2, delta, k_base, v_base, kn, offs_d, d_mask, t,
                           stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                           qd_mask, scale_log2, False, DOT_PRECISION)
        hi = tl.minimum((pid_m + 1) * BLOCK_M, t)
        for n in range(n_full, tl.cdiv(hi, BLOCK_N)):
            kn = n * BLOCK_N + offs_n
            visible = _sees(kn[None, :], offs_m[:, None], STRICT)
            dq = _dq_block(dq, q, do, lse2, delta, k_base, v_base, kn, offs_d, d_mask, t,
                           stride_k_t, stride_k_d, stride_v_t, stride_v_d,
                           visible, scale_log2, True, DOT_PRECISION)

    tl.store(dq_ptr + bh.to(tl.int64) * t * d + offs_m[:, None] * d + offs_d[None, :],
             _to(dq * scale, dq_ptr.dtype.element_ty), mask=qd_mask)


@triton.jit
def _dq_block(
    dq, q, do, lse2, delta, k_base, v_base, kn, offs_d, d_mask, t,
    stride_k_t, stride_k_d, stride_v_t, stride_v_d,
    visible, scale_log2, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add one key block's contribution to dq (unscaled)."""
    kv_mask = (kn < t)[:, None] & d_mask[None, :]
    k = _load_rows(k_base, kn, offs_d, stride_k_t, stride_k_d, kv_mask)  # (BLOCK_N, BLOCK_D)
    v = _load_rows(v_base, kn, offs_d, stride_v_t, stride_v_d, kv_mask)  # (BLOCK_N, BLOCK_D)
    s = _dot(q, tl.trans(k), DOT_PRECISION) * scale_log2  # (BLOCK_M, BLOCK_N)
    p = tl.exp2(s - lse2[:, None])
    if MASKED:
        p = tl.where(visible, p, 0.0)
    dp = _dot(do, tl.trans(v), DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    dq += _dot(_to(ds, k.dtype), k, DOT_PRECISION)
    return dq


# --------------------------------------------------------------------------- launchers

def block_d(d: int) -> int:
    """The padded head dim the kernels tile with: a power of two, at least 16 (tl.dot)."""
    return max(16, triton.next_power_of_2(d))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: full-precision products (no tf32), so fp32 matches the reference closely.
    return "ieee" if dtype == torch.float32 else "tf32"


def visible_blocks(rank: torch.Tensor, block_q: int, block_k: int,
                   strict: bool) -> torch.Tensor:
    """Which (query block, key block) pairs hold at least one visible pair, from the ranks.

    rank: (R, T) int tensor, each row a permutation of 0..T-1. Returns a bool tensor
    (R, cdiv(T, block_q), cdiv(T, block_k)): True where some key j of the key block has
    ``rank[j] <= max rank of the query block`` (``<`` when strict).
    """
    r, t = rank.shape
    nm, nn = triton.cdiv(t, block_q), triton.cdiv(t, block_k)
    pad_q = torch.full((r, nm * block_q - t), -1, dtype=rank.dtype, device=rank.device)
    pad_k = torch.full((r, nn * block_k - t), t, dtype=rank.dtype, device=rank.device)
    q_max = torch.cat([rank, pad_q], 1).view(r, nm, block_q).amax(-1)  # (R, NM)
    k_min = torch.cat([rank, pad_k], 1).view(r, nn, block_k).amin(-1)  # (R, NN)
    if strict:
        return k_min[:, None, :] < q_max[:, :, None]
    return k_min[:, None, :] <= q_max[:, :, None]


def _block_lists(vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, counts) of the True entries of each row of ``vis`` (R, A, C): indices
    (R, A, C) int32 with the True columns first in increasing order, counts (R, A) int32."""
    counts = vis.sum(-1, dtype=torch.int32)
    order = torch.argsort((~vis).to(torch.uint8), dim=-1, stable=True)
    return order.to(torch.int32).contiguous(), counts.contiguous()


def _rank_args(rank: torch.Tensor | None, vis: torch.Tensor | None, device) -> tuple:
    """Kernel arguments for the ordering: (rank, lists, counts, and their batch/row strides),
    from the (R, rows, columns) block table ``vis``; dummies for raster order."""
    if rank is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=device)
        return dummy, dummy, dummy, 0, 0, 0, 0
    lists, counts = _block_lists(vis)
    batched = rank.shape[0] > 1  # one order per batch element, else shared (stride 0)
    return (rank, lists, counts, rank.stride(0) if batched else 0,
            lists.stride(0) if batched else 0, lists.stride(1),
            counts.stride(0) if batched else 0)


def check_heads_grid(batch_heads: int) -> None:
    """Batch x heads is grid axis 1 of every attention kernel, which CUDA caps at 65535."""
    if batch_heads > 65535:
        raise ValueError(f"the triton attention kernels take at most 65535 (batch x heads) "
                         f"rows, got {batch_heads}; split the batch or use the reference "
                         "backend")


def causal_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         rank: torch.Tensor | None, scale: float,
                         strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher.

    q: (B, H, T, D); k, v: (B, Hk, T, D), H a multiple of Hk; any strides; one dtype of
    fp32/fp16/bf16; D <= 128. rank: None (raster order) or a contiguous (R, T) int32 tensor
    of ranks with R in {1, B}. Returns out, contiguous (B, H, T, D) of q's dtype, and lse,
    contiguous (B, H, T) fp32 (natural log; +inf for a row with no visible key).
    """
    b, h, t, d = q.shape
    hk = k.shape[1]
    out = torch.empty((b, h, t, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((b, h, t), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    check_heads_grid(b * h)
    bd = block_d(d)
    cfg = _config(q.dtype)
    bm, bn = cfg["fwd_m"], cfg["fwd_n"]
    vis = None if rank is None else visible_blocks(rank, bm, bn, strict)
    rank_args = _rank_args(rank, vis, q.device)
    grid = (triton.cdiv(t, bm), b * h)
    _causal_attention_fwd_kernel[grid](
        q, k, v, *rank_args[:3], out, lse,
        *q.stride(), *k.stride(), *v.stride(), *rank_args[3:],
        h, t, d, h // hk, scale * 1.4426950408889634,
        ORDERED=rank is not None, STRICT=bool(strict), DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        num_warps=_num_warps(bm, bd), num_stages=cfg["stages"],
    )
    return out, lse


def causal_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                         rank: torch.Tensor | None, scale: float,
                         strict: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: (dq, dk, dv), contiguous, of q's dtype and the shapes of q, k, v.

    grad_out, out: (B, H, T, D), any strides; lse: contiguous (B, H, T) fp32 from
    ``causal_attention_fwd``; the rest as in ``causal_attention_fwd``.
    """
    b, h, t, d = q.shape
    hk = k.shape[1]
    dq = torch.empty((b, h, t, d), device=q.device, dtype=q.dtype)
    dk = torch.empty((b, hk, t, d), device=q.device, dtype=q.dtype)
    dv = torch.empty((b, hk, t, d), device=q.device, dtype=q.dtype)
    if dq.numel() == 0:
        return dq, dk, dv
    check_heads_grid(b * h)
    # delta_i = rowsum(dO_i * O_i), fp32 (B, H, T)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    bd = block_d(d)
    cfg = _config(q.dtype)
    bm, bn = cfg["bwd_m"], cfg["bwd_n"]
    common = dict(ORDERED=rank is not None, STRICT=bool(strict),
                  DOT_PRECISION=_dot_precision(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                  num_warps=_num_warps(max(bm, bn), bd), num_stages=cfg["stages"])
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    vis = None if rank is None else visible_blocks(rank, bm, bn, strict)  # computed once
    rank_t = _rank_args(rank, None if vis is None else vis.transpose(1, 2), q.device)
    _causal_attention_bwd_dkdv_kernel[(triton.cdiv(t, bn), b * hk)](
        q, k, v, grad_out, lse, delta, *rank_t[:3], dk, dv, *strides, *rank_t[3:],
        h, hk, t, d, h // hk, scale, scale * 1.4426950408889634, **common)
    rank_q = _rank_args(rank, vis, q.device)
    _causal_attention_bwd_dq_kernel[(triton.cdiv(t, bm), b * h)](
        q, k, v, grad_out, lse, delta, *rank_q[:3], dq, *strides, *rank_q[3:],
        h, t, d, h // hk, scale, scale * 1.4426950408889634, **common)
    return dq, dk, dv
