"""Fused gated activations: ``tanh(a) * sigmoid(b)`` and ``a * sigmoid(b)``.

The input is viewed as ``(O, 2C, S)``: ``O`` is the product of the sizes before the gated
dimension, ``2C`` the gated dimension, ``S`` the product of the sizes after it. ``a`` is
channels ``[0, C)``, ``b`` channels ``[C, 2C)``. An optional conditioning tensor is added to
both halves before the gate; it is read through its own strides, so a broadcast (stride 0)
class embedding costs no memory traffic beyond one row.

One forward and one backward kernel serve both gates through the ``ACT`` switch. The
backward recomputes the activations from ``x`` (and ``cond``) instead of saving them. Math is
in fp32 whatever the storage dtype.
"""

import torch
import triton
import triton.language as tl

ACT_TANH = 0
ACT_SIGMOID = 1

# Elements of the output per program. 2048 keeps 16 elements per thread at 4 warps, enough
# loads in flight for a bandwidth-bound kernel. Not yet tuned on a GPU.
_TILE = 2048
_NUM_WARPS = 4

@triton.jit
def _sigmoid(z):
    # sigmoid(z) = 1 / (1 + 2^(-z log2(e))),  log2(e) = 1.4426950408889634
    return 1.0 / (1.0 + tl.exp2(z * -1.4426950408889634))


@triton.jit
def _tanh(z):
    # tanh(z) = sign(z) (1 - e) / (1 + e),  e = exp(-2|z|) in (0, 1]: never overflows.
    e = tl.exp2(tl.abs(z) * -2.8853900817779268)  # -2 log2(e)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _tile(rows, s, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    """Rows (BLOCK_R,) and positions (BLOCK_S,) of this program's tile. The grid is 1-d
    (axis 0 allows 2^31 - 1 programs, axis 1 only 65535) and walks positions fastest."""
    n_s = tl.cdiv(s, BLOCK_S)
    pid = tl.program_id(0).to(tl.int64)
    pid_r = pid // n_s
    pid_s = pid - pid_r * n_s
    return pid_r * BLOCK_R + tl.arange(0, BLOCK_R), pid_s * BLOCK_S + tl.arange(0, BLOCK_S)


@triton.jit
def _gated_load(
    x_ptr, cond_ptr,
    stride_x_o, stride_x_c, stride_x_s,
    stride_cond_o, stride_cond_c, stride_cond_s,
    o, ch, j, mask, c,
    HAS_COND: tl.constexpr,
):
    """Load a = x[o, ch, j] and b = x[o, C + ch, j] (plus cond) as fp32 tiles."""
    x_off = o[:, None] * stride_x_o + ch[:, None] * stride_x_c + j[None, :] * stride_x_s
    a = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + x_off + c * stride_x_c, mask=mask, other=0.0).to(tl.float32)
    if HAS_COND:
        c_off = (o[:, None] * stride_cond_o + ch[:, None] * stride_cond_c
                 + j[None, :] * stride_cond_s)
        a += tl.load(cond_ptr + c_off, mask=mask, other=0.0).to(tl.float32)
        b += tl.load(cond_ptr + c_off + c * stride_cond_c, mask=mask, other=0.0).to(tl.float32)
    return a, b


@triton.jit
def _gated_fwd_kernel(
    x_ptr, cond_ptr, out_ptr,
    stride_x_o, stride_x_c, stride_x_s,
    stride_cond_o, stride_cond_c, stride_cond_s,
    rows, c, s,
    HAS_COND: tl.constexpr, ACT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Program (pid_r, pid_s) owns output rows r = o * C + ch in [pid_r * BLOCK_R, ...) and
    # positions j in [pid_s * BLOCK_S, ...); out is contiguous (O, C, S).
    r, j = _tile(rows, s, BLOCK_R, BLOCK_S)
    mask = (r < rows)[:, None] & (j < s)[None, :]
    o = r // c
    ch = r - o * c
    a, b = _gated_load(x_ptr, cond_ptr, stride_x_o, stride_x_c, stride_x_s,
                       stride_cond_o, stride_cond_c, stride_cond_s,
                       o, ch, j, mask, c, HAS_COND)
    if ACT == 0:
        y = _tanh(a) * _sigmoid(b)  # tanh(a) * sigmoid(b)
    else:
        y = a * _sigmoid(b)  # a * sigmoid(b)
    out_off = r[:, None] * s + j[None, :]
    tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(
    x_ptr, cond_ptr, grad_out_ptr, grad_x_ptr,
    stride_x_o, stride_x_c, stride_x_s,
    stride_cond_o, stride_cond_c, stride_cond_s,
    rows, c, s,
    HAS_COND: tl.constexpr, ACT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # grad_out is contiguous (O, C, S); grad_x is contiguous (O, 2C, S).
    r, j = _tile(rows, s, BLOCK_R, BLOCK_S)
    mask = (r < rows)[:, None] & (j < s)[None, :]
    o = r // c
    ch = r - o * c
    a, b = _gated_load(x_ptr, cond_ptr, stride_x_o, stride_x_c, stride_x_s,
                       stride_cond_o, stride_cond_c, stride_cond_s,
                       o, ch, j, mask, c, HAS_COND)
    g = tl.load(grad_out_ptr + r[:, None] * s + j[None, :], mask=mask, other=0.0).to(tl.float32)
    sb = _sigmoid(b)
    if ACT == 0:
        # y = t sb, t = tanh(a):  dy/da = sb (1 - t^2),  dy/db = t sb (1 - sb)
        t = _tanh(a)
        da = g * sb * (1.0 - t * t)
        db = g * t * sb * (1.0 - sb)
    else:
        # y = a sb:  dy/da = sb,  dy/db = a sb (1 - sb)
        da = g * sb
        db = g * a * sb * (1.0 - sb)
    ga_off = (o * 2 * c + ch)[:, None] * s + j[None, :]
    tl.store(grad_x_ptr + ga_off, da.to(grad_x_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_x_ptr + ga_off + c * s, db.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _blocks(s: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_S): a tile of _TILE elements, as wide along S as S allows."""
    block_s = min(triton.next_power_of_2(s), _TILE)
    return _TILE // block_s, block_s


def _launch(kernel, x3, cond3, tensors, c: int, act: int):
    o, _, s = x3.shape
    rows = o * c
    block_r, block_s = _blocks(s)
    grid = (triton.cdiv(rows, block_r) * triton.cdiv(s, block_s),)
    has_cond = cond3 is not None
    cond_ptr = cond3 if has_cond else x3
    cond_strides = cond3.stride() if has_cond else (0, 0, 0)
    kernel[grid](
        x3, cond_ptr, *tensors,
        *x3.stride(), *cond_strides,
        rows, c, s,
        HAS_COND=has_cond, ACT=act, BLOCK_R=block_r, BLOCK_S=block_s,
        num_warps=_NUM_WARPS,
    )


def gated_fwd(x3: torch.Tensor, cond3: torch.Tensor | None, act: int) -> torch.Tensor:
    """Forward launcher.

    x3: (O, 2C, S), any strides, fp32/fp16/bf16. cond3: None or (O, 2C, S) with any strides
    (0 for broadcast dimensions), same dtype. Returns a contiguous (O, C, S) tensor of x3's
    dtype.
    """
    o, c2, s = x3.shape
    out = torch.empty((o, c2 // 2, s), device=x3.device, dtype=x3.dtype)
    if out.numel():
        _launch(_gated_fwd_kernel, x3, cond3, (out,), c2 // 2, act)
    return out


def gated_bwd(grad_out3: torch.Tensor, x3: torch.Tensor, cond3: torch.Tensor | None,
              act: int) -> torch.Tensor:
    """Backward launcher: the gradient with respect to x (and so to x + cond).

    grad_out3: contiguous (O, C, S). x3, cond3: as in ``gated_fwd``. Returns a contiguous
    (O, 2C, S) tensor of x3's dtype.
    """
    grad_x = torch.empty(x3.shape, device=x3.device, dtype=x3.dtype)
    if grad_x.numel():
        _launch(_gated_bwd_kernel, x3, cond3, (grad_out3, grad_x), x3.shape[1] // 2, act)
    return grad_x
