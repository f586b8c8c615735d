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

The ``cpu`` backend runs aten's fused CPU flash-attention kernel (forward and backward, the
log-sum-exp saved between them) with its raster-causal mask, which skips the blocks above the
diagonal: an ``order`` is run as raster order on the sequence permuted into generation order
(then permuted back), and ``strict`` as raster order of queries 1..T-1 against keys
0..T-2 (the first query sees nothing). In eager mode on plain CPU tensors it is called
without the torch.library dispatcher (see :func:`artrt.backends.direct_call`) and autograd
differentiates it through the flash kernel's own backward node, as it does
``F.scaled_dot_product_attention``; the op (torch.compile, opcheck) runs the same kernels.

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

import functools
import math

import torch

from artrt import backends
from artrt.ops._checks import capturing

# Backends of this op, fastest first on CUDA tensors (provisional until measured on a GPU);
# CPU tensors take "cpu" (see artrt.backends.select).
PREFERENCE = ("triton", "cpu", "reference")
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
    op, where it is opaque to torch.compile; skipped while a CUDA graph is captured)."""
    if capturing():  # a host read; a captured graph replays on new data anyway
        return
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


# --------------------------------------------------------------------------- cpu backend

# aten's CPU flash attention (torch >= 2.2): forward returns (out, logsumexp), and its
# backward takes them. None where this torch lacks them: the cpu backend then runs the
# reference. The forward through its torch.* binding: 3 us a call less than torch.ops.aten
# (measured, torch 2.13), which counts in a decode step.
_FLASH = getattr(torch, "_scaled_dot_product_flash_attention_for_cpu",
                 getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None))
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward",
                     None)


@functools.cache
def _flash_takes_gqa() -> bool:
    """Whether the CPU flash kernels take k and v with fewer heads than q (checked once on a
    tiny case against repeated heads); where not, the cpu backend repeats them."""
    q = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(0), device="cpu")
    kv = q[:, :1]
    try:
        got = _FLASH(q, kv, kv, 0.0, True, scale=0.5)[0]
    except RuntimeError:
        return False
    want = _FLASH(q, kv.expand(q.shape), kv.expand(q.shape), 0.0, True, scale=0.5)[0]
    return torch.allclose(got, want)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t with a unit stride in its last dim (D), which the CPU flash kernels assume (they
    read other strides as given; a strided D gives wrong results, torch 2.13)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _generation_index(order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, rank), int64 (R, T): perm[r] is the position generated r-th, rank = order."""
    rank = (order if order.dim() == 2 else order[None]).long()
    perm = torch.empty_like(rank).scatter_(
        1, rank, torch.arange(rank.shape[1], device=rank.device).expand_as(rank))
    return perm, rank


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, ...) reordered along T: out[b, :, i] = x[b, :, index[b or 0, i]], contiguous."""
    if index.shape[0] == 1:
        return x.index_select(2, index[0])
    shape = (index.shape[0], 1, index.shape[1]) + (1,) * (x.dim() - 3)
    return torch.gather(x, 2, index.view(shape).expand(x.shape))


def _kv_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """k and v as the flash kernels take them: as they are, or repeated to q's head count."""
    group = q.shape[1] // k.shape[1]
    if group == 1 or _flash_takes_gqa():
        return k, v
    return k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)


def _cpu_forward(q, k, v, order, scale, strict, contiguous=True):
    """(out, lse) of the cpu backend: out (B, H, T, D), lse (B, H, T) fp32, +inf for a row
    with no visible key (as the reference). Both contiguous, or with ``contiguous=False``
    out in q's layout and lse in the kernel's (B, T, H) (no copy).

    Made of differentiable aten ops only (the flash kernel, whose autograd node runs its
    backward kernel with the log-sum-exp it saved; index_select/gather; cat), so that eager
    autograd differentiates it in C++ without a Python backward."""
    b, h, t, d = q.shape
    # The reference where the flash kernel has no work (it divides by zero at T = 0; strict
    # at T = 1 sees nothing), so that the output is still differentiable (zero gradients).
    if q.numel() == 0 or (strict and t == 1) or _FLASH is None:
        out, lse = _attention_ref(q, k, v, scale, order, strict)
        return out.contiguous(), lse.float().contiguous()
    if order is None:
        rank = None
        qg, kg, vg = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    else:
        perm, rank = _generation_index(order)
        qg, kg, vg = _take(q, perm), _take(k, perm), _take(v, perm)
    kg, vg = _kv_heads(qg, kg, vg)
    if strict:  # generation step r sees steps < r: queries 1.. against keys ..T-2
        out = q.new_zeros(b, h, 1, d)  # step 0 sees nothing: zeros, lse +inf
        lse = torch.full((b, h, 1), math.inf, dtype=torch.float32, device=q.device)
        o, l_ = _FLASH(qg[:, :, 1:], kg[:, :, :-1], vg[:, :, :-1], 0.0, True, scale=scale)
        out, lse = torch.cat([out, o], 2), torch.cat([lse, l_.float()], 2)
    else:
        out, lse = _FLASH(qg, kg, vg, 0.0, True, scale=scale)
    if rank is not None:
        return _take(out, rank), _take(lse.float(), rank)
    if not contiguous:
        return out, lse.float()
    return out.contiguous(), lse.float().contiguous()


def _cpu_backward(grad_out, q, k, v, out, lse, order, scale, strict):
    """(dq, dk, dv) of the cpu backend (the backward op's; eager autograd differentiates
    :func:`_cpu_forward` instead), contiguous, from the forward's out and lse."""
    b, h, t, d = q.shape
    if q.numel() == 0 or _FLASH_BWD is None:
        return tuple(g.contiguous() for g in causal_attention_backward_ref(
            grad_out, q, k, v, scale, order, strict))
    perm, rank = (None, None) if order is None else _generation_index(order)
    go, qg, kg, vg, og = (_unit_stride(x) if perm is None else _take(x, perm)
                          for x in (grad_out, q, k, v, out))
    hk = k.shape[1]
    kg, vg = _kv_heads(qg, kg, vg)
    lo = int(strict)  # strict: queries 1.. against keys ..T-2, as in the forward
    grads = None
    if t > lo:  # (the flash kernels divide by zero at T = 0)
        qs, ks, vs = qg[:, :, lo:], kg[:, :, :t - lo], vg[:, :, :t - lo]
        if q.dtype == torch.float64:  # the op's lse is fp32: recompute the kernel's fp64 one
            lse_g = _FLASH(qs, ks, vs, 0.0, True, scale=scale)[1]
        else:
            lse_g = (lse if perm is None else _take(lse, perm))[:, :, lo:]
        grads = _FLASH_BWD(go[:, :, lo:], qs, ks, vs, og[:, :, lo:], lse_g, 0.0, True,
                           scale=scale)
    if strict:
        dq, dk, dv = q.new_empty(q.shape), kg.new_empty(kg.shape), vg.new_empty(vg.shape)
        dq[:, :, 0], dk[:, :, -1], dv[:, :, -1] = 0, 0, 0
        if grads is not None:
            dq[:, :, 1:], dk[:, :, :-1], dv[:, :, :-1] = grads
    else:
        dq, dk, dv = grads
    if dk.shape[1] != hk:  # heads were repeated: sum each kv group
        dk, dv = (g.view(b, hk, -1, t, d).sum(2) for g in (dk, dv))
    if rank is not None:
        return _take(dq, rank), _take(dk, rank), _take(dv, rank)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


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
    if name == "cpu":
        return _cpu_forward(q, k, v, order, scale, strict)
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
    if name == "cpu":
        return _cpu_backward(grad_out, q, k, v, out, lse, order, scale, strict)
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
        q: (B, H, T, D) queries; float32, float16 or bfloat16 for the Triton kernels (math in
            float32), also float64 for ``cpu``, any float dtype for the reference; any
            strides; B or T may be 0 (an empty result, with or without ``order``). D is at
            most 128 (16, 32, 48, 64, 80, 96, 128 are the intended sizes; others are
            zero-padded).
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
        backend: force ``"reference"``, ``"cpu"`` or ``"triton"``; ``None`` follows
            ``artrt.use_backend`` / ``ARTRT_BACKEND``, else the fastest available (``cpu``
            for CPU tensors).

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
    scale, backend = _scale(scale, q.shape[-1]), backends.requested(backend)
    if backends.direct_call(q, k, v, order) and backends.select(
            "causal_attention", q.device, q.dtype, backend, PREFERENCE) == "cpu":
        if order is not None:
            _check_order_values(order)
        # Autograd differentiates the cpu forward's aten ops (see _cpu_forward): the
        # backward is the flash kernel's own, as in F.scaled_dot_product_attention.
        return _cpu_forward(q, k, v, order, scale, strict, contiguous=False)[0].contiguous()
    out, _ = causal_attention_op(q, k, v, order, scale, strict, backend)
    return out
