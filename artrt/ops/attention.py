"""Causal self-attention in raster order or in an arbitrary generation order.

``causal_attention(q, k, v)`` is softmax attention in which each position sees only the
positions generated before it (and itself, unless ``strict``). With ``order=None`` the
generation order is raster order (position i sees j <= i); with ``order`` a tensor of ranks
it is any order: position i sees j iff ``order[j] <= order[i]``. This is the masked
self-attention of autoregressive image models whose orderings (zig-zag, subscale, random)
a causal convolution cannot express.

The Triton kernels follow FlashAttention-2 (Dao, 2023): online softmax in fp32, no T x T
matrix in memory, the forward saves only the log-sum-exp and the backward recomputes; key
blocks that no query of a block may see are skipped (see ``artrt.kernels.attention``).
Grouped-query and multi-query attention: k and v may have fewer heads than q.

Departures: ``strict`` rows that see no key (the first step of a strict order) are defined
to output zeros with zero gradient, where a plain softmax would give nan.

Non-finite inputs are not checked (that would cost a host read per call): a row that sees a
NaN or infinite q, k or v entry outputs NaN or inf, and so may a row that does not see it,
through the product of its masked probability 0 with that entry (as in FlashAttention and
SDPA, on every backend). The finite entries of the output agree between backends.

The op is ``artrt::causal_attention`` (returns the output and the log-sum-exp); its backward
is the op ``artrt::causal_attention_backward``.
"""

from __future__ import annotations

import math

import torch

from artrt import backends

# Backends of this op on CUDA tensors, fastest first (provisional until measured on a GPU).
PREFERENCE = ("triton", "reference")
HEAD_DIMS = (16, 32, 48, 64, 80, 96, 128)
MAX_HEAD_DIM = 128


# --------------------------------------------------------------------------- orderings

def raster_order(t: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Ranks of raster order: ``arange(T)`` (int64, shape (T,)); same as ``order=None``."""
    return torch.arange(t, device=device)


def zigzag_order(height: int, width: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Ranks of the boustrophedon (zig-zag) scan of an H x W image, positions in raster
    layout: even rows go left to right, odd rows right to left. int64, shape (H * W,).

    ::

        H=3, W=4 ranks     generation path
         0  1  2  3        -> -> -> v
         7  6  5  4        v <- <- <-
         8  9 10 11        -> -> -> .
    """
    rank = torch.arange(height * width, device=device).view(height, width)
    rank[1::2] = rank[1::2].flip(-1)
    return rank.reshape(-1)


def subscale_order(height: int, width: int, stride: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Ranks of a subscale order (Menick & Kalchbrenner, 2019): the image is cut into the
    ``stride**2`` sub-images ``x[a::stride, b::stride]``, generated one after the other
    (a, b in raster order), each in raster order. int64, shape (H * W,); H and W must be
    multiples of ``stride``.

    ::

        H=W=4, stride=2 ranks
         0  4  1  5
         8 12  9 13
         2  6  3  7
        10 14 11 15
    """
    if height % stride or width % stride:
        raise ValueError(f"subscale_order: height {height} and width {width} must be "
                         f"multiples of stride {stride}")
    hs, ws = height // stride, width // stride
    y = torch.arange(height, device=device)[:, None]
    x = torch.arange(width, device=device)[None, :]
    sub = (y % stride) * stride + (x % stride)  # which sub-image
    rank = sub * (hs * ws) + (y // stride) * ws + (x // stride)
    return rank.reshape(-1)


def random_order(t: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Ranks of a uniformly random generation order: a random permutation (int64, (T,))."""
    return torch.randperm(t, generator=generator).to(device)


# --------------------------------------------------------------------------- reference

def _visible(t: int, order: torch.Tensor | None, strict: bool, device) -> torch.Tensor:
    """(T, T) or (B, 1, T, T) bool: entry [i, j] is whether query i may see key j."""
    if order is None:
        i = torch.arange(t, device=device)
        return i[None, :] < i[:, None] if strict else i[None, :] <= i[:, None]
    r = order if order.dim() == 2 else order[None]
    r = r[:, None, :]  # (R, 1, T)
    vis = r[..., None, :] < r[..., :, None] if strict else r[..., None, :] <= r[..., :, None]
    return vis  # (R, 1, T, T)


def causal_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         scale: float | None = None, order: torch.Tensor | None = None,
                         strict: bool = False) -> torch.Tensor:
    """Pure PyTorch masked softmax attention, materialising the (T, T) scores.

    Shapes and arguments as :func:`causal_attention`. Computed in the inputs' dtype.
    """
    return _attention_ref(q, k, v, scale, order, strict)[0]


def _row_max(s: torch.Tensor) -> torch.Tensor:
    """amax over the last dim (keepdim), -inf for an empty last dim (no key at all)."""
    if s.shape[-1] == 0:
        return s.new_full((*s.shape[:-1], 1), float("-inf"))
    return s.amax(-1, keepdim=True)


def _probs(q, k, scale, order, strict):
    """(p, lse, k repeated to H heads): the masked softmax (B, H, T, T), a row with no
    visible key all zeros, and its log-sum-exp, fp32 (B, H, T), +inf for such a row."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    s = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
    s = s.masked_fill(~_visible(q.shape[2], order, strict, q.device), float("-inf"))
    m = _row_max(s).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)  # masked entries are exactly 0
    l_ = p.sum(-1, keepdim=True)
    has_key = l_ > 0
    p = p / torch.where(has_key, l_, torch.ones_like(l_))
    lse = torch.where(has_key, m.float() + torch.log(l_.float()), torch.inf).squeeze(-1)
    return p, lse, k


def _attention_ref(q, k, v, scale, order, strict):
    """(out, lse) of the reference."""
    p, lse, _ = _probs(q, k, scale, order, strict)
    return p @ v.repeat_interleave(q.shape[1] // v.shape[1], 1), lse


def causal_attention_backward_ref(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                  v: torch.Tensor, scale: float | None,
                                  order: torch.Tensor | None, strict: bool):
    """Pure PyTorch (dq, dk, dv) of :func:`causal_attention_ref`, in the inputs' dtype.

    dv = P^T dO;  dP = dO V^T;  dS = P (dP - rowsum(dP P));  dq = scale dS K;
    dk = scale dS^T Q; dk and dv summed over the query heads of each kv group.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    b, hk, t, d = k.shape
    group = q.shape[1] // hk
    p, _, kk = _probs(q, k, scale, order, strict)
    vv = v.repeat_interleave(group, 1)
    dv = p.transpose(-1, -2) @ grad_out  # (B, H, T, D)
    dp = grad_out @ vv.transpose(-1, -2)  # (B, H, T, T)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = (ds @ kk) * scale
    dk = (ds.transpose(-1, -2) @ q) * scale
    return dq, dk.view(b, hk, group, t, d).sum(2), dv.view(b, hk, group, t, d).sum(2)


# --------------------------------------------------------------------------- checks

def _check_tensor(name: str, t, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_scale(scale, what: str) -> None:
    """scale: None or a finite float (a NaN or infinite scale would turn every score into
    NaN)."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"{what}: scale must be a float or None, got {type(scale).__name__}")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"{what}: scale must be finite, got {scale}")


def _check(q, k, v, scale, order, strict, what: str = "causal_attention") -> None:
    """Validate everything that is not data-dependent (shapes, dtypes, devices)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, what)
        if t.dim() != 4:
            raise ValueError(f"{what}: {name} must have shape (B, H, T, D), got "
                             f"{tuple(t.shape)}")
    if not q.is_floating_point():
        raise TypeError(f"{what}: q must be a floating-point tensor, got dtype {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{what}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{what}: {name} must be on q's device {q.device}, got {t.device}")
    b, h, t_, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{what}: k and v must have the same shape, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if k.shape[0] != b or k.shape[2] != t_ or k.shape[3] != d:
        raise ValueError(f"{what}: k must have shape (B, Hk, T, D) = ({b}, Hk, {t_}, {d}) to "
                         f"match q of shape {tuple(q.shape)}, got {tuple(k.shape)}")
    hk = k.shape[1]
    if hk == 0 or h % hk:
        raise ValueError(f"{what}: q's head count {h} must be a multiple of k's and v's {hk} "
                         "(grouped-query attention)")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{what}: head dim D must be in [1, {MAX_HEAD_DIM}] (the kernels are "
                         f"tuned for {HEAD_DIMS}; others are zero-padded), got {d}")
    _check_scale(scale, what)
    if not isinstance(strict, bool):
        raise TypeError(f"{what}: strict must be a bool, got {type(strict).__name__}")
    if order is not None:
        _check_tensor("order", order, what)
        if order.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{what}: order must be an int32 or int64 tensor of ranks, got "
                            f"{order.dtype}")
        if order.device != q.device:
            raise ValueError(f"{what}: order must be on q's device {q.device}, "
                             f"got {order.device}")
        if tuple(order.shape) not in ((t_,), (b, t_)):
            raise ValueError(f"{what}: order must have shape (T,) = ({t_},) or (B, T) = "
                             f"({b}, {t_}), got {tuple(order.shape)}")


def _check_order_values(order: torch.Tensor, what: str = "causal_attention") -> None:
    """Each row of ``order`` must be a permutation of 0..T-1 (data-dependent: runs inside the
    op, where it is opaque to torch.compile)."""
    t = order.shape[-1]
    rows = order if order.dim() == 2 else order[None]  # (R, T); not reshape: T may be 0
    expected = torch.arange(t, device=order.device, dtype=order.dtype).expand_as(rows)
    if not torch.equal(rows.sort(-1).values, expected):
        got = order.tolist() if order.numel() <= 32 else "a tensor with repeated or missing ranks"
        raise ValueError(f"{what}: order must hold, in each row, a permutation of the ranks "
                         f"0..{t - 1} (every rank exactly once), got {got}")


def _scale(scale: float | None, d: int) -> float:
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def _kernel_rank(order: torch.Tensor | None) -> torch.Tensor | None:
    """order as the kernels take it: None, or contiguous int32 (R, T)."""
    if order is None:
        return None
    rows = order if order.dim() == 2 else order[None]  # (R, T); not reshape: T may be 0
    return rows.to(torch.int32).contiguous()


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("artrt::causal_attention", mutates_args=())
def causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        order: torch.Tensor | None, scale: float, strict: bool,
                        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (B, H, T, D) contiguous of q's dtype, lse (B, H, T) fp32."""
    _check(q, k, v, scale, order, strict)
    if order is not None:
        _check_order_values(order)
    name = backends.select("causal_attention", q.device, q.dtype, backend, PREFERENCE)
    if name == "reference":
        out, lse = _attention_ref(q, k, v, scale, order, strict)
        return out.contiguous(), lse.float().contiguous()
    from artrt.kernels.attention import causal_attention_fwd

    return causal_attention_fwd(q, k, v, _kernel_rank(order), scale, strict)


@causal_attention_op.register_fake
def _(q, k, v, order, scale, strict, backend):
    _check(q, k, v, scale, order, strict)
    return (q.new_empty(q.shape),
            q.new_empty(q.shape[:3], dtype=torch.float32))


@torch.library.custom_op("artrt::causal_attention_backward", mutates_args=())
def causal_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                              order: torch.Tensor | None, scale: float, strict: bool,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of artrt::causal_attention, contiguous, shapes of q, k, v."""
    _check(q, k, v, scale, order, strict, "causal_attention backward")
    _check_grad(grad_out, out, lse, q)
    name = backends.select("causal_attention backward", q.device, q.dtype, backend, PREFERENCE)
    if name == "reference":
        return tuple(g.contiguous() for g in causal_attention_backward_ref(
            grad_out, q, k, v, scale, order, strict))
    from artrt.kernels.attention import causal_attention_bwd

    return causal_attention_bwd(grad_out, q, k, v, out, lse, _kernel_rank(order), scale, strict)


def _check_grad(grad_out, out, lse, q) -> None:
    for name, t in (("grad_out", grad_out), ("out", out)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"causal_attention backward: {name} must be {q.dtype} of shape "
                             f"{tuple(q.shape)} on {q.device}, got {t.dtype} of shape "
                             f"{tuple(t.shape)} on {t.device}")
    if lse.shape != q.shape[:3] or lse.dtype != torch.float32:
        raise ValueError(f"causal_attention backward: lse must be float32 of shape "
                         f"{tuple(q.shape[:3])}, got {lse.dtype} of shape {tuple(lse.shape)}")


@causal_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, order, scale, strict, backend):
    _check(q, k, v, scale, order, strict, "causal_attention backward")
    _check_grad(grad_out, out, lse, q)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, order, scale, strict, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, order)
    ctx.scale, ctx.strict, ctx.backend = scale, strict, backend
    ctx.mark_non_differentiable(lse)


def _causal_attention_autograd(ctx, grad_out, grad_lse):
    q, k, v, out, lse, order = ctx.saved_tensors
    if not any(ctx.needs_input_grad[:3]):
        return None, None, None, None, None, None, None
    dq, dk, dv = causal_attention_backward(grad_out, q, k, v, out, lse, order, ctx.scale,
                                           ctx.strict, ctx.backend)
    need = ctx.needs_input_grad
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
            None, None, None, None)


causal_attention_op.register_autograd(_causal_attention_autograd,
                                      setup_context=_setup_context)


# --------------------------------------------------------------------------- public function

def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float | None = None, order: torch.Tensor | None = None, *,
                     strict: bool = False, backend: str | None = None) -> torch.Tensor:
    """Causal (autoregressive) softmax attention, in raster or any generation order.

    Args:
        q: (B, H, T, D) queries; float32, float16 or bfloat16 for the kernels (math in
            float32), any float dtype for the reference; any strides; B or T may be 0 (an
            empty result, with or without ``order``). D is at most 128
            (16, 32, 48, 64, 80, 96, 128 are the intended sizes; others are zero-padded).
        k, v: (B, Hk, T, D), q's dtype and device; H must be a multiple of Hk (grouped-query
            attention; Hk = 1 is multi-query). Query head h uses kv head h // (H / Hk).
        scale: multiplier of the scores, default 1 / sqrt(D).
        order: None for raster order, or a (T,) or (B, T) int32/int64 tensor of ranks (each
            row a permutation of 0..T-1): position i may attend to j iff
            ``order[j] <= order[i]`` (``<`` when ``strict``). Helpers: :func:`raster_order`,
            :func:`zigzag_order`, :func:`subscale_order`, :func:`random_order`.
        strict: exclude the position itself (``j < i``, or ``order[j] < order[i]``), for
            models whose first step attends to nothing. A row with no visible key outputs
            zeros (and passes no gradient).
        backend: force ``"reference"`` or ``"triton"``; ``None`` follows
            ``artrt.use_backend`` / ``ARTRT_BACKEND``, else the fastest available.

    Returns:
        (B, H, T, D) contiguous tensor of q's dtype. Differentiable in q, k and v.

    Which keys a query sees, T = 4 (x = visible)::

        raster          raster, strict     order = [2, 0, 3, 1]
          k 0 1 2 3       k 0 1 2 3          k 0 1 2 3
        q0  x . . .     q0  . . . .        q0  x x . x
        q1  x x . .     q1  x . . .        q1  . x . .
        q2  x x x .     q2  x x . .        q2  x x x x
        q3  x x x x     q3  x x x .        q3  . x . x
    """
    _check(q, k, v, scale, order, strict)
    out, _ = causal_attention_op(q, k, v, order, _scale(scale, q.shape[-1]), strict,
                                 backends.requested(backend))
    return out
