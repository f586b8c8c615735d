"""Causal attention of a few new positions against a KV cache (the decode step).

``attention_decode(q, k_cache, v_cache, cache_seqlens, k_new, v_new)`` first appends
``k_new`` / ``v_new`` to the caches in place at ``cache_seqlens`` (per sequence), then
attends the ``Tq`` new queries to every cached key they may see. It does no T x T work: the
cost is reading the cache once. The Triton path is split-KV (Flash-Decoding, Dao et al.,
2023): see ``artrt.kernels.attention_decode``.

Alignment with the cache is bottom-right. With ``L = cache_seqlens[b] + T_new`` keys after
the append, query t (0 <= t < Tq) sits at position ``L - Tq + t`` and sees keys
``j <= L - Tq + t`` (``j < L - Tq + t`` when strict)::

    cache_seqlens = 5, Tq = T_new = 3 (x = visible, n = new key, . = not visible)
    key position   0 1 2 3 4 5 6 7 ...Tmax-1
    q0 (pos 5)     x x x x x n . .
    q1 (pos 6)     x x x x x n n .
    q2 (pos 7)     x x x x x n n n

So N decode steps after a prefix give the rows of the full causal attention
(:func:`artrt.ops.attention.causal_attention`) for those positions. For an arbitrary
generation order, feed tokens in generation order: in that order the mask is causal.

The op is ``artrt::attention_decode`` (mutates ``k_cache`` and ``v_cache``; inference only,
no autograd). ``cache_seqlens`` is not advanced: the caller (e.g.
:class:`artrt.sampling.KVCache`) does that.
"""

from __future__ import annotations

import torch

from artrt import backends
from artrt.ops._checks import capturing, value_range
from artrt.ops.attention import MAX_HEAD_DIM, _check_scale, _row_max, _scale

# Backends of this op on CUDA tensors, fastest first (provisional until measured on a GPU).
PREFERENCE = ("triton", "reference")


# --------------------------------------------------------------------------- reference

def _append(k_cache, v_cache, cache_seqlens, k_new, v_new) -> None:
    """Write k_new, v_new (B, Hk, Tn, D) into the caches at [seqlens[b], seqlens[b] + Tn)."""
    if k_new is None or k_new.shape[2] == 0:
        return
    b, hk, tn, d = k_new.shape
    pos = cache_seqlens.long()[:, None] + torch.arange(tn, device=k_new.device)  # (B, Tn)
    index = pos[:, None, :, None].expand(b, hk, tn, d)
    k_cache.scatter_(2, index, k_new)
    v_cache.scatter_(2, index, v_new)


def attention_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_seqlens: torch.Tensor, k_new: torch.Tensor | None = None,
                         v_new: torch.Tensor | None = None, scale: float | None = None,
                         strict: bool = False) -> torch.Tensor:
    """Pure PyTorch decode step: appends in place, then masked softmax over the whole cache.

    Shapes and arguments as :func:`attention_decode`. Computed in the inputs' dtype.
    """
    _append(k_cache, v_cache, cache_seqlens, k_new, v_new)
    b, h, tq, d = q.shape
    hk, t_max = k_cache.shape[1], k_cache.shape[2]
    t_new = 0 if k_new is None else k_new.shape[2]
    k = k_cache.repeat_interleave(h // hk, 1)
    v = v_cache.repeat_interleave(h // hk, 1)
    s = (q @ k.transpose(-1, -2)) * _scale(scale, d)  # (B, H, Tq, Tmax)
    length = cache_seqlens.long() + t_new  # (B,)
    last = length[:, None] - tq + torch.arange(tq, device=q.device) - int(strict)  # (B, Tq)
    vis = torch.arange(t_max, device=q.device) <= last[..., None]  # (B, Tq, Tmax)
    s = s.masked_fill(~vis[:, None], float("-inf"))
    m = _row_max(s)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l_ = p.sum(-1, keepdim=True)
    # Positions beyond each sequence's length hold stale data (maybe inf or nan): never read.
    valid = torch.arange(t_max, device=q.device) < length[:, None]  # (B, Tmax)
    v = torch.where(valid[:, None, :, None], v, torch.zeros_like(v))
    return (p / torch.where(l_ > 0, l_, torch.ones_like(l_))) @ v


# --------------------------------------------------------------------------- checks

def _check(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict) -> None:
    """Validate everything that is not data-dependent (shapes, dtypes, devices)."""
    what = "attention_decode"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                    ("cache_seqlens", cache_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"{what}: q must have shape (B, H, Tq, D), got {tuple(q.shape)}")
    if not q.is_floating_point():
        raise TypeError(f"{what}: q must be a floating-point tensor, got dtype {q.dtype}")
    b, h, _, d = q.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"{what}: k_cache and v_cache must have one shape (B, Hk, Tmax, D), "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"{what}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{what}: {name} must be on q's device {q.device}, got {t.device}")
    if k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(f"{what}: k_cache must have shape (B, Hk, Tmax, D) = ({b}, Hk, Tmax, "
                         f"{d}) to match q of shape {tuple(q.shape)}, got {tuple(k_cache.shape)}")
    hk = k_cache.shape[1]
    if hk == 0 or h % hk:
        raise ValueError(f"{what}: q's head count {h} must be a multiple of the caches' {hk}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{what}: head dim D must be in [1, {MAX_HEAD_DIM}], got {d}")
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or tuple(cache_seqlens.shape) != (b,):
        raise ValueError(f"{what}: cache_seqlens must be an int32 or int64 tensor of shape "
                         f"(B,) = ({b},), got {cache_seqlens.dtype} of shape "
                         f"{tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"{what}: cache_seqlens must be on q's device {q.device}, got "
                         f"{cache_seqlens.device}")
    if (k_new is None) != (v_new is None):
        raise ValueError(f"{what}: give both k_new and v_new or neither")
    if k_new is not None:
        for name, t in (("k_new", k_new), ("v_new", v_new)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{what}: {name} must be a torch.Tensor or None, got "
                                f"{type(t).__name__}")
            if t.dim() != 4 or t.shape[:2] != k_cache.shape[:2] or t.shape[3] != d:
                raise ValueError(f"{what}: {name} must have shape (B, Hk, T_new, D) = ({b}, "
                                 f"{hk}, T_new, {d}), got {tuple(t.shape)}")
            if t.dtype != q.dtype or t.device != q.device:
                raise TypeError(f"{what}: {name} must be {q.dtype} on {q.device}, got "
                                f"{t.dtype} on {t.device}")
        if k_new.shape != v_new.shape:
            raise ValueError(f"{what}: k_new and v_new must have one shape, got "
                             f"{tuple(k_new.shape)} and {tuple(v_new.shape)}")
    _check_scale(scale, what)
    if not isinstance(strict, bool):
        raise TypeError(f"{what}: strict must be a bool, got {type(strict).__name__}")


def _check_writable(k_cache: torch.Tensor, v_cache: torch.Tensor, t_new: int) -> None:
    """With new keys to append (T_new > 0), the caches must take an in-place write that
    changes nothing else: no element of either may share memory with another (an expanded
    tensor: stride 0 in a dim of size > 1), the two must not be one memory (same address),
    and neither may be an inference tensor outside inference mode. Runs inside the op, before
    anything is written (not data-dependent, but needs real tensors: a fake has no address)."""
    if t_new == 0:
        return
    what = "attention_decode"
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        for dim, (size, stride) in enumerate(zip(t.shape, t.stride(), strict=True)):
            if size > 1 and stride == 0:
                raise ValueError(
                    f"{what}: {name} must be writable in place (k_new and v_new append "
                    f"T_new = {t_new} positions), got an expanded tensor whose elements share "
                    f"memory: dim "
                    f"{dim} has size {size} and stride 0 (strides {tuple(t.stride())}); pass "
                    f"a tensor with its own memory, e.g. {name}.clone()")
        if t.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(f"{what}: {name} is an inference tensor, which cannot be written "
                             "in place outside torch.inference_mode(); call the op inside "
                             f"inference mode or pass {name}.clone()")
    if k_cache.numel() and k_cache.data_ptr() == v_cache.data_ptr():
        raise ValueError(f"{what}: k_cache and v_cache must be separate memory (the values "
                         "would overwrite the keys), got two views starting at the same "
                         "address")


def _check_lengths(cache_seqlens: torch.Tensor, t_new: int, t_max: int) -> None:
    """Data-dependent: 0 <= cache_seqlens and cache_seqlens + T_new <= Tmax (runs inside the
    op, before anything is written; one host read, skipped under CUDA graph capture)."""
    if cache_seqlens.numel() == 0 or capturing():
        return
    lo, hi = value_range(cache_seqlens)
    if lo < 0:
        raise ValueError(f"attention_decode: cache_seqlens must be >= 0, got {lo}")
    if hi + t_new > t_max:
        raise ValueError(f"attention_decode: cache overflow: cache_seqlens + T_new = {hi} + "
                         f"{t_new} > Tmax = {t_max}; nothing was written")


# --------------------------------------------------------------------------- torch.library op

@torch.library.custom_op("artrt::attention_decode", mutates_args=("k_cache", "v_cache"))
def attention_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cache_seqlens: torch.Tensor, k_new: torch.Tensor | None,
                        v_new: torch.Tensor | None, scale: float, strict: bool,
                        backend: str) -> torch.Tensor:
    """The op behind :func:`attention_decode`; ``scale`` is already resolved."""
    _check(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)
    t_new = 0 if k_new is None else k_new.shape[2]
    _check_writable(k_cache, v_cache, t_new)
    _check_lengths(cache_seqlens, t_new, k_cache.shape[2])
    name = backends.select("attention_decode", q.device, q.dtype, backend, PREFERENCE)
    if name == "reference":
        return attention_decode_ref(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale,
                                    strict).contiguous()
    from artrt.kernels.attention import check_heads_grid
    from artrt.kernels.attention_decode import attention_decode_fwd

    check_heads_grid(q.shape[0] * k_cache.shape[1])  # the launcher's check, before the append
    _append(k_cache, v_cache, cache_seqlens, k_new, v_new)
    return attention_decode_fwd(q, k_cache, v_cache, cache_seqlens, t_new, scale, strict)


@attention_decode_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict, backend):
    _check(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)
    return q.new_empty(q.shape)


# --------------------------------------------------------------------------- public function

def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, k_new: torch.Tensor | None = None,
                     v_new: torch.Tensor | None = None, scale: float | None = None, *,
                     strict: bool = False, backend: str | None = None) -> torch.Tensor:
    """Append to a KV cache in place and attend a few new queries to it (bottom-right causal).

    Args:
        q: (B, H, Tq, D) new queries (Tq = 1 for one step, a few for speculative or chunked
            decoding); float32/float16/bfloat16 for the kernels, any float for the
            reference; any strides; D <= 128.
        k_cache, v_cache: (B, Hk, Tmax, D), q's dtype and device, H a multiple of Hk.
            Written in place at positions ``[cache_seqlens[b], cache_seqlens[b] + T_new)``,
            so, when there are new keys, two separate tensors with memory of their own
            (not expanded, not one tensor passed twice).
        cache_seqlens: (B,) int32/int64, valid cached positions per sequence before this
            call. Not modified.
        k_new, v_new: None, or (B, Hk, T_new, D) keys/values of the new positions.
        scale: multiplier of the scores, default 1 / sqrt(D).
        strict: a query does not see its own position (``j < pos``), as in
            ``causal_attention(..., strict=True)``.
        backend: ``"reference"``, ``"triton"`` or None (see :mod:`artrt.backends`).

    Returns:
        (B, H, Tq, D) contiguous tensor of q's dtype. Query t sits at position
        ``cache_seqlens[b] + T_new - Tq + t`` (see the module docstring's picture); a query
        with no visible key outputs zeros.

    Raises ValueError (TypeError for a wrong type or dtype) naming the argument, with the
    caches unchanged, on mismatched shapes, dtypes or devices, on caches that cannot be
    written in place, on ``cache_seqlens < 0`` and on overflow
    (``cache_seqlens + T_new > Tmax``): every check runs before anything is written.
    """
    _check(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)
    return attention_decode_op(q, k_cache, v_cache, cache_seqlens, k_new, v_new,
                               _scale(scale, q.shape[-1]), strict, backends.requested(backend))
