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

The ``cpu`` backend appends with slice copies (one ``index_copy_`` at ``cache_seqlens`` for the
one new position of a single sequence) and runs aten's CPU flash-attention kernel on each
sequence's valid prefix only (one call when every sequence has the same length, else one per
sequence); in eager mode on plain CPU tensors it is called without the torch.library
dispatcher (see :func:`artrt.backends.direct_call`), the common step (one query, equal
lengths, contiguous caches) through checks written for the least work per call.

The op is ``artrt::attention_decode`` (mutates ``k_cache`` and ``v_cache``; inference only,
no autograd). ``cache_seqlens`` is not advanced: the caller (e.g.
:class:`artrt.sampling.KVCache`) does that.
"""

from __future__ import annotations

import math

import torch

from artrt import backends
from artrt.ops._checks import capturing, value_range
from artrt.ops.attention import (
    _FLASH,
    MAX_HEAD_DIM,
    _check_scale,
    _kv_heads,
    _row_max,
    _scale,
    _unit_stride,
    causal_attention,
)

# Backends of this op, fastest first on CUDA tensors (provisional until measured on a GPU);
# CPU tensors take "cpu" (see artrt.backends.select).
PREFERENCE = ("triton", "cpu", "reference")

_INT64 = torch.int64
_INDEX_DTYPES = (torch.int32, _INT64)  # of cache_seqlens


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
    """Validate everything that is not data-dependent (shapes, dtypes, devices). Written to
    read each tensor attribute once: it runs on every decode step."""
    what = "attention_decode"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                    ("cache_seqlens", cache_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    shape, dtype, device = q.shape, q.dtype, q.device
    if len(shape) != 4:
        raise ValueError(f"{what}: q must have shape (B, H, Tq, D), got {tuple(shape)}")
    if not dtype.is_floating_point:
        raise TypeError(f"{what}: q must be a floating-point tensor, got dtype {dtype}")
    b, h, _, d = shape
    cache_shape = k_cache.shape
    if len(cache_shape) != 4 or cache_shape != v_cache.shape:
        raise ValueError(f"{what}: k_cache and v_cache must have one shape (B, Hk, Tmax, D), "
                         f"got {tuple(cache_shape)} and {tuple(v_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != dtype:
            raise TypeError(f"{what}: {name} must have q's dtype {dtype}, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{what}: {name} must be on q's device {device}, got {t.device}")
    if cache_shape[0] != b or cache_shape[3] != d:
        raise ValueError(f"{what}: k_cache must have shape (B, Hk, Tmax, D) = ({b}, Hk, Tmax, "
                         f"{d}) to match q of shape {tuple(shape)}, got {tuple(cache_shape)}")
    hk = cache_shape[1]
    if hk == 0 or h % hk:
        raise ValueError(f"{what}: q's head count {h} must be a multiple of the caches' {hk}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{what}: head dim D must be in [1, {MAX_HEAD_DIM}], got {d}")
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or cache_seqlens.shape != (b,):
        raise ValueError(f"{what}: cache_seqlens must be an int32 or int64 tensor of shape "
                         f"(B,) = ({b},), got {cache_seqlens.dtype} of shape "
                         f"{tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != device:
        raise ValueError(f"{what}: cache_seqlens must be on q's device {device}, got "
                         f"{cache_seqlens.device}")
    if (k_new is None) != (v_new is None):
        raise ValueError(f"{what}: give both k_new and v_new or neither")
    if k_new is not None:
        for name, t in (("k_new", k_new), ("v_new", v_new)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{what}: {name} must be a torch.Tensor or None, got "
                                f"{type(t).__name__}")
            new_shape = t.shape
            if len(new_shape) != 4 or new_shape[:2] != cache_shape[:2] or new_shape[3] != d:
                raise ValueError(f"{what}: {name} must have shape (B, Hk, T_new, D) = ({b}, "
                                 f"{hk}, T_new, {d}), got {tuple(new_shape)}")
            if t.dtype != dtype or t.device != device:
                raise TypeError(f"{what}: {name} must be {dtype} on {device}, got "
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
        # (a contiguous tensor has no stride 0 in a dim of size > 1: skip the walk)
        for dim, (size, stride) in enumerate(() if t.is_contiguous() else
                                             zip(t.shape, t.stride(), strict=True)):
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


def _check_lengths(cache_seqlens: torch.Tensor, t_new: int, t_max: int,
                   lengths: list[int] | None = None) -> None:
    """Data-dependent: 0 <= cache_seqlens and cache_seqlens + T_new <= Tmax (runs inside the
    op, before anything is written; one host read, skipped under CUDA graph capture).
    ``lengths``: cache_seqlens already read to the host (the cpu backend needs them)."""
    if cache_seqlens.numel() == 0 or (lengths is None and capturing()):
        return
    lo, hi = value_range(cache_seqlens) if lengths is None else (min(lengths), max(lengths))
    if lo < 0:
        raise ValueError(f"attention_decode: cache_seqlens must be >= 0, got {lo}")
    if hi + t_new > t_max:
        raise ValueError(f"attention_decode: cache overflow: cache_seqlens + T_new = {hi} + "
                         f"{t_new} > Tmax = {t_max}; nothing was written")


# --------------------------------------------------------------------------- cpu backend

def _cpu_rows(q, k_cache, v_cache, length: int, scale: float | None, strict: bool
              ) -> torch.Tensor:
    """Attention of q (B, H, Tq, D) to the first ``length`` cached positions of sequences that
    all have that length (after the append), bottom-right aligned: query t sees keys
    j <= length - Tq + t (< when strict). Reads no key at or past ``length``. ``scale`` None:
    1 / sqrt(D), the kernel's own default."""
    tq = q.shape[2]
    n_keys = length - strict  # keys the last query sees
    if n_keys <= 0:
        return q.new_zeros(q.shape)
    q = _unit_stride(q)
    k, v = _unit_stride(k_cache.narrow(2, 0, n_keys)), _unit_stride(v_cache.narrow(2, 0, n_keys))
    if k.shape[1] != q.shape[1]:
        k, v = _kv_heads(q, k, v)
    if tq == 1:  # the one query sees every key
        return _FLASH(q, k, v, scale=scale)[0].contiguous()
    first = n_keys - tq  # last key query 0 sees; query t sees keys <= first + t
    j = torch.arange(n_keys, device=q.device)
    last = first + torch.arange(tq, device=q.device)
    mask = torch.zeros(tq, n_keys, dtype=q.dtype, device=q.device)
    mask.masked_fill_(j > last[:, None], float("-inf"))
    out = _FLASH(q, k, v, attn_mask=mask, scale=scale)[0].contiguous()
    if first < -1:  # queries 0 .. -first-2 see no key at all: zeros, as documented
        out[:, :, :-first - 1] = 0
    return out


def _cpu_one_query(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                   start: int, t_new: int) -> torch.Tensor:
    """The cpu backend for one query per sequence (Tq = 1) when every sequence holds
    ``start`` positions (checked) before the append of ``t_new``: append, then one flash
    call on the valid prefix. The decode step: written for the least work per call (views
    taken with the caches' own strides, as narrow takes them but at a lower cost)."""
    b, h, _, d = q.shape
    hk = k_cache.shape[1]
    k_stride, v_stride = k_cache.stride(), v_cache.stride()
    k_offset, v_offset = k_cache.storage_offset(), v_cache.storage_offset()
    if t_new == 1 and b == 1 and cache_seqlens.dtype is _INT64:
        # one new position of one sequence: cache_seqlens itself is the index (no view)
        k_cache.index_copy_(2, cache_seqlens, k_new)
        v_cache.index_copy_(2, cache_seqlens, v_new)
    elif t_new:
        shape = (b, hk, t_new, d)
        k_cache.as_strided(shape, k_stride, k_offset + start * k_stride[2]).copy_(k_new)
        v_cache.as_strided(shape, v_stride, v_offset + start * v_stride[2]).copy_(v_new)
    n_keys = start + t_new - strict  # the query sees every key
    if n_keys <= 0:
        return q.new_zeros(q.shape)
    if k_stride[3] == 1 and v_stride[3] == 1:
        k = k_cache.as_strided((b, hk, n_keys, d), k_stride, k_offset)
        v = v_cache.as_strided((b, hk, n_keys, d), v_stride, v_offset)
    else:  # the flash kernel needs a unit stride in D
        k = _unit_stride(k_cache.narrow(2, 0, n_keys))
        v = _unit_stride(v_cache.narrow(2, 0, n_keys))
    if hk != h:
        k, v = _kv_heads(q, k, v)
    if q.stride(3) != 1:
        q = q.contiguous()
    return _FLASH(q, k, v, scale=scale)[0].contiguous()


def _cpu_decode(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                lengths: list[int]) -> torch.Tensor:
    """The cpu backend: ``lengths`` is cache_seqlens on the host, already checked; ``scale``
    a float, or None for 1 / sqrt(D)."""
    t_new = 0 if k_new is None else k_new.shape[2]
    tq = q.shape[2]
    if not lengths or tq == 0 or _FLASH is None:  # B = 0 or Tq = 0
        return attention_decode_ref(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale,
                                    strict).contiguous()
    start = lengths[0]
    uniform = lengths.count(start) == len(lengths)
    if uniform and tq == 1:
        return _cpu_one_query(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                              start, t_new)
    if t_new and uniform:
        k_cache.narrow(2, start, t_new).copy_(k_new)
        v_cache.narrow(2, start, t_new).copy_(v_new)
    elif t_new:
        for i, n in enumerate(lengths):
            k_cache[i].narrow(1, n, t_new).copy_(k_new[i])
            v_cache[i].narrow(1, n, t_new).copy_(v_new[i])
    if uniform:
        return _cpu_rows(q, k_cache, v_cache, start + t_new, scale, strict)
    return torch.cat([_cpu_rows(q[i:i + 1], k_cache[i:i + 1], v_cache[i:i + 1], n + t_new,
                                scale, strict) for i, n in enumerate(lengths)])


# --------------------------------------------------------------------------- torch.library op

@torch.library.custom_op("artrt::attention_decode", mutates_args=("k_cache", "v_cache"))
def attention_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cache_seqlens: torch.Tensor, k_new: torch.Tensor | None,
                        v_new: torch.Tensor | None, scale: float, strict: bool,
                        backend: str) -> torch.Tensor:
    """The op behind :func:`attention_decode`; ``scale`` is already resolved."""
    _check(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)
    name = backends.select("attention_decode", q.device, q.dtype, backend, PREFERENCE)
    if name == "cpu":
        return _cpu_decode_checked(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale,
                                   strict)
    t_new = 0 if k_new is None else k_new.shape[2]
    _check_writable(k_cache, v_cache, t_new)
    _check_lengths(cache_seqlens, t_new, k_cache.shape[2])
    return _device_decode(name, q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)


def _device_decode(name: str, q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict
                   ) -> torch.Tensor:
    """The reference or triton backend (``name``) on checked arguments: no host read."""
    t_new = 0 if k_new is None else k_new.shape[2]
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
                     strict: bool = False, backend: str | None = None,
                     _lengths: list[int] | None = None) -> torch.Tensor:
    """Append to a KV cache in place and attend a few new queries to it (bottom-right causal).

    Args:
        q: (B, H, Tq, D) new queries (Tq = 1 for one step, a few for speculative or chunked
            decoding); float32/float16/bfloat16 for the Triton kernels, also float64 for
            ``cpu``, any float for the reference; any strides; D <= 128.
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
        backend: ``"reference"``, ``"cpu"``, ``"triton"`` or None (see
            :mod:`artrt.backends`; on CPU tensors None means ``cpu``).

    Returns:
        (B, H, Tq, D) contiguous tensor of q's dtype. Query t sits at position
        ``cache_seqlens[b] + T_new - Tq + t`` (see the module docstring's picture); a query
        with no visible key outputs zeros.

    Raises ValueError (TypeError for a wrong type or dtype) naming the argument, with the
    caches unchanged, on mismatched shapes, dtypes or devices, on caches that cannot be
    written in place, on ``cache_seqlens < 0`` and on overflow
    (``cache_seqlens + T_new > Tmax``): every check runs before anything is written.

    ``_lengths`` (private, for :mod:`artrt.sampling`'s caches): ``cache_seqlens.tolist()`` as
    the caller keeps it on the host. Given, in eager mode without autograd, the length checks
    run on it and cache_seqlens is never read on the host (no device sync per decode step); it
    must match cache_seqlens (not checked: a wrong one gives wrong results).
    """
    if backend is None or backend == "cpu":
        out = _cpu_step(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                        backend, _lengths)
        if out is not None:
            return out
    _check(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)
    scale, backend = _scale(scale, q.shape[-1]), backends.requested(backend)
    if _lengths is not None and _known_lengths_apply(q, k_cache, v_cache, cache_seqlens, k_new,
                                                     v_new):
        return _decode_known_lengths(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale,
                                     strict, backend, list(_lengths))
    if (backends.direct_call(q, k_cache, v_cache, cache_seqlens, k_new, v_new)
            and not (torch.is_grad_enabled() and _any_requires_grad(q, k_cache, v_cache, k_new,
                                                                    v_new))
            and backends.select("attention_decode", q.device, q.dtype, backend,
                                PREFERENCE) == "cpu"):
        return _cpu_decode_checked(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale,
                                   strict)
    return attention_decode_op(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                               backend)


def _any_requires_grad(*tensors) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


def _known_lengths_apply(*tensors: torch.Tensor | None) -> bool:
    """Whether a call with host lengths may skip the op: eager (``backends.direct_call``'s
    conditions, on any device), plain tensors, and no autograd."""
    return (backends.direct_call()
            and all(t is None or type(t) is torch.Tensor for t in tensors)
            and not (torch.is_grad_enabled() and _any_requires_grad(*tensors)))


def _decode_known_lengths(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                          backend: str, lengths: list[int]) -> torch.Tensor:
    """:func:`attention_decode` on shape-checked arguments with ``lengths`` =
    cache_seqlens on the host: the length checks on it, then the backend; no host read."""
    b = q.shape[0]
    if len(lengths) != b or not all(isinstance(n, int) for n in lengths):
        raise ValueError(f"attention_decode: _lengths must be {b} ints (cache_seqlens on the "
                         f"host), got {lengths!r}")
    name = backends.select("attention_decode", q.device, q.dtype, backend, PREFERENCE)
    t_new = 0 if k_new is None else k_new.shape[2]
    _check_writable(k_cache, v_cache, t_new)
    _check_lengths(cache_seqlens, t_new, k_cache.shape[2], lengths)
    if name == "cpu":
        return _cpu_decode(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                           lengths)
    return _device_decode(name, q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict)


def _cpu_decode_checked(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict):
    """The cpu backend after the checks that need real tensors (as the op runs them)."""
    t_new = 0 if k_new is None else k_new.shape[2]
    _check_writable(k_cache, v_cache, t_new)
    lengths = cache_seqlens.tolist()  # the one host read: the check and the slicing use it
    _check_lengths(cache_seqlens, t_new, k_cache.shape[2], lengths)
    return _cpu_decode(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict, lengths)


def _cpu_step(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
              backend: str | None, lengths: list[int] | None) -> torch.Tensor | None:
    """The cpu backend on the common decode step, checked with the least per-call work:
    plain CPU tensors of one dtype the cpu backend takes, new keys given, contiguous caches,
    no autograd, ``backend`` "cpu" or None with nothing forcing another, eager
    (:func:`artrt.backends.direct_call`), lengths in range. Returns None, having written
    nothing, where any of that does not hold or any check of :func:`attention_decode` would
    fail: the general path then runs (and raises its errors). ``lengths``: the caller's
    ``_lengths`` or None (then one host read).

    Every condition below is one that :func:`_check`, :func:`_check_writable`,
    :func:`_check_lengths` or the backend choice also requires, or a stronger one."""
    tensor = torch.Tensor
    if not (type(q) is tensor and type(k_cache) is tensor and type(v_cache) is tensor
            and type(cache_seqlens) is tensor and type(k_new) is tensor
            and type(v_new) is tensor and (strict is False or strict is True)
            and (scale is None or type(scale) is float and math.isfinite(scale))
            and backends.direct_call() and (backend is not None or backends.nothing_forced())):
        return None
    dtype = q.dtype
    if not (dtype in backends.CPU_DTYPES and k_cache.dtype is dtype and v_cache.dtype is dtype
            and k_new.dtype is dtype and v_new.dtype is dtype
            and cache_seqlens.dtype in _INDEX_DTYPES and q.is_cpu and k_cache.is_cpu
            and v_cache.is_cpu and k_new.is_cpu and v_new.is_cpu and cache_seqlens.is_cpu):
        return None
    if torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad
                                    or v_cache.requires_grad or k_new.requires_grad
                                    or v_new.requires_grad):
        return None
    shape, cache_shape, new_shape = q.shape, k_cache.shape, k_new.shape
    if not (len(shape) == 4 and len(cache_shape) == 4 and len(new_shape) == 4
            and cache_shape == v_cache.shape and new_shape == v_new.shape):
        return None
    b, h, tq, d = shape
    _, hk, t_max, _ = cache_shape
    tn = new_shape[2]
    if not (cache_shape[0] == b and new_shape[0] == b and cache_shape[3] == d
            and new_shape[3] == d and new_shape[1] == hk and hk and not h % hk
            and 1 <= d <= MAX_HEAD_DIM and cache_seqlens.shape == (b,) and b and tq
            and k_cache.is_contiguous() and v_cache.is_contiguous()
            and (torch.is_inference_mode_enabled()
                 or not (k_cache.is_inference() or v_cache.is_inference()))
            and k_cache.data_ptr() != v_cache.data_ptr()):
        return None
    lengths = cache_seqlens.tolist() if lengths is None else list(lengths)
    start = lengths[0] if len(lengths) == b else None
    uniform = type(start) is int and lengths.count(start) == b
    if uniform:
        lo = hi = start
    elif len(lengths) == b and all(type(n) is int for n in lengths):
        lo, hi = min(lengths), max(lengths)
    else:
        return None
    if lo < 0 or hi + tn > t_max:
        return None
    return _cpu_decode(q, k_cache, v_cache, cache_seqlens, k_new, v_new, scale, strict,
                       lengths)


def prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     scaling: float | None = None) -> torch.Tensor:
    """Tq queries (B, H, Tq, D) at the last Tq of the Tk positions of key and value
    (B, Hk, Tk, D), causal over all Tk keys (query t sees keys <= Tk - Tq + t): the
    attention of a few new positions to a cache that already holds them. Without autograd,
    :func:`attention_decode` on the full cache; with it, :func:`causal_attention` over Tk
    positions (the first Tk - Tq query rows zero, their outputs dropped). Returns
    (B, H, Tq, D)."""
    b, h, tq, d = query.shape
    tk = key.shape[2]
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad
                                    or value.requires_grad):
        # attention_decode has no backward: full causal attention with the first Tk - Tq
        # query rows zero, their outputs dropped (T^2 work, for training on a prefix cache)
        q = torch.cat([query.new_zeros(b, h, tk - tq, d), query], dim=2)
        return causal_attention(q, key, value, scaling)[:, :, tk - tq:]
    lengths = torch.full((b,), tk, dtype=torch.int64, device=query.device)
    return attention_decode(query, key, value, lengths, scale=scaling)
