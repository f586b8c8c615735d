"""Fused gated activations: ``gated_tanh`` and ``gated_sigmoid``.

``gated_tanh`` is the gate of Gated PixelCNN and WaveNet (van den Oord et al., 2016):
``y = tanh(a) * sigmoid(b)``, where ``a`` and ``b`` are the two halves of ``x + cond`` along
the channel dimension and ``cond`` is an optional conditioning term (a class embedding, a
local-conditioning feature map). ``gated_sigmoid`` is the gate of PixelCNN++ (Salimans et al.,
2017): ``y = a * sigmoid(b)``. Both are one torch.library op, ``artrt::gated``, with the gate
chosen by an integer; its backward is the op ``artrt::gated_backward``, which recomputes the
activations from the inputs instead of saving them.

The ``cpu`` backend is aten's fused CPU kernels: the sigmoid gate is ``F.glu`` forward and
``glu_backward`` backward (one pass each); the tanh gate's backward rebuilds ``[tanh(a), b]``,
runs ``glu_backward`` on it and an in-place ``tanh_backward`` on the first half (four passes,
nothing saved but x, where autograd of the plain expression takes five). In eager mode on
plain CPU tensors it is called without the torch.library dispatcher (see
:func:`artrt.backends.direct_call`); there the sigmoid gate trains through ``F.glu``'s own
autograd node, and the tanh gate through an autograd.Function that saves ``tanh(a)`` and
``sigmoid(b)`` (as autograd of the plain expression does) and writes its backward straight
into the two halves of the gradient (``_CpuGate``), or, small, through autograd of the
reference expression (see ``_SMALL_TANH_GRAD``).

Departure from the papers: the conditioning is added to both halves in one broadcast
(``cond`` has the full ``2C`` channels), which is what the papers' ``V^T h`` terms amount to
once the projection is done.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops._checks import check_like_x

ACT_TANH = 0
ACT_SIGMOID = 1
_ACT_NAMES = {ACT_TANH: "gated_tanh", ACT_SIGMOID: "gated_sigmoid"}

# Backends of this op, fastest first on CUDA tensors (provisional until measured on a GPU);
# CPU tensors take "cpu" (see artrt.backends.select).
PREFERENCE = ("triton", "cuda", "cpu", "reference")
# Below this many output elements, the tanh gate's training path in eager mode is the plain
# expression under autograd's own (C++) nodes: the Python autograd.Function of the cpu
# backend costs ~15 us a call on our 2-core machine, more than the pass it saves (measured,
# 1 thread, forward + backward, Function vs tanh(a) * sigmoid(b): 1x128x16x16 1.1-1.5x,
# 1x128x20x20 1.0x, 1x128x24x24 0.91-0.97x, 1x128x28x28 0.85-0.88x).
_SMALL_TANH_GRAD = 1 << 15
_TANH_BACKWARD_OUT = torch.ops.aten.tanh_backward.grad_input
_SIGMOID_BACKWARD_OUT = torch.ops.aten.sigmoid_backward.grad_input
_TORCH_TO_C_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# --------------------------------------------------------------------------- reference

def gated_tanh_ref(x: torch.Tensor, cond: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """Pure PyTorch ``tanh(a) * sigmoid(b)`` with ``a, b = (x + cond).chunk(2, dim)``."""
    if cond is not None:
        x = x + cond
    a, b = x.chunk(2, dim)
    return torch.tanh(a) * torch.sigmoid(b)


def gated_sigmoid_ref(x: torch.Tensor, cond: torch.Tensor | None = None,
                      dim: int = 1) -> torch.Tensor:
    """Pure PyTorch ``a * sigmoid(b)`` with ``a, b = (x + cond).chunk(2, dim)``."""
    if cond is not None:
        x = x + cond
    a, b = x.chunk(2, dim)
    return a * torch.sigmoid(b)


def gated_backward_ref(grad_out: torch.Tensor, x: torch.Tensor, cond: torch.Tensor | None,
                       dim: int, act: int) -> torch.Tensor:
    """Pure PyTorch gradient of either gate with respect to ``x`` (equally ``x + cond``).

    tanh gate:    dy/da = sigmoid(b) (1 - tanh(a)^2),  dy/db = tanh(a) s (1 - s)
    sigmoid gate: dy/da = sigmoid(b),                  dy/db = a s (1 - s),  s = sigmoid(b)
    """
    if cond is not None:
        x = x + cond
    a, b = x.chunk(2, dim)
    s = torch.sigmoid(b)
    if act == ACT_TANH:
        t = torch.tanh(a)
        return torch.cat([grad_out * s * (1 - t * t), grad_out * t * s * (1 - s)], dim)
    return torch.cat([grad_out * s, grad_out * a * s * (1 - s)], dim)


_REFERENCE = {ACT_TANH: gated_tanh_ref, ACT_SIGMOID: gated_sigmoid_ref}


# --------------------------------------------------------------------------- checks

def _check(x: torch.Tensor, cond: torch.Tensor | None, dim: int, act: int) -> int:
    """Validate the arguments of either gate; return ``dim`` made non-negative."""
    name = _ACT_NAMES.get(act)
    if name is None:
        raise ValueError(f"artrt::gated: act must be {ACT_TANH} (tanh) or {ACT_SIGMOID} "
                         f"(sigmoid), got {act!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name}: x must have at least one dimension, got a scalar")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name}: dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name}: dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim}")
    dim %= x.dim()
    if x.shape[dim] % 2:
        raise ValueError(f"{name}: x must have an even number of channels (2C) on dim {dim}, "
                         f"got {x.shape[dim]} for x of shape {tuple(x.shape)}")
    if cond is not None:
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"{name}: cond must be a torch.Tensor or None, "
                            f"got {type(cond).__name__}")
        check_like_x(name, "cond", cond, x)
        if not _broadcasts_to(cond.shape, x.shape):
            raise ValueError(f"{name}: cond of shape {tuple(cond.shape)} does not broadcast to "
                             f"x's shape {tuple(x.shape)} (e.g. (B, 2C, 1, 1) for x (B, 2C, H, W))")
    return dim


def _broadcasts_to(small: torch.Size, big: torch.Size) -> bool:
    """Whether a tensor of shape ``small`` broadcasts to ``big`` without growing it."""
    return len(small) <= len(big) and all(
        s in (1, b) for s, b in zip(reversed(small), reversed(big), strict=False))


def _check_grad(grad_out: torch.Tensor, x: torch.Tensor, dim: int) -> None:
    shape = list(x.shape)
    shape[dim] //= 2
    if tuple(grad_out.shape) != tuple(shape):
        raise ValueError(f"gated backward: grad_out must have shape {tuple(shape)}, "
                         f"got {tuple(grad_out.shape)}")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(f"gated backward: grad_out must be {x.dtype} on {x.device}, "
                        f"got {grad_out.dtype} on {grad_out.device}")


def _out_shape(x: torch.Tensor, dim: int) -> list[int]:
    shape = list(x.shape)
    shape[dim] //= 2
    return shape


def _as_3d(t: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """View ``t`` (broadcast to ``shape``) as (O, 2C, S), copying only if no view exists."""
    o = shape[:dim].numel()
    s = shape[dim + 1:].numel()
    t = t.expand(shape)
    try:
        return t.view(o, shape[dim], s)
    except RuntimeError:  # strides that cannot be merged: one copy, then a view
        return t.contiguous().view(o, shape[dim], s)


# --------------------------------------------------------------------------- backends

def _cpu_forward(x, cond, dim, act):
    """The cpu backend's forward: (..., C, ...) contiguous."""
    if cond is not None:
        x = x + cond
    if act == ACT_SIGMOID:
        return F.glu(x, dim).contiguous()  # a * sigmoid(b), one pass
    a, b = x.chunk(2, dim)
    return torch.tanh(a).mul_(torch.sigmoid(b)).contiguous()


def _cpu_backward(grad_out, x, cond, dim, act):
    """The cpu backend's gradient with respect to x + cond: x's shape, contiguous.

    glu_backward(g, [u, b]) = [g s, g u s (1 - s)], s = sigmoid(b): with u = a it is the
    sigmoid gate's gradient; with u = tanh(a) the tanh gate's, once the first half is
    multiplied by 1 - tanh(a)^2 (tanh_backward, in place).
    """
    if act == ACT_SIGMOID:
        return torch.ops.aten.glu_backward(grad_out, x if cond is None else x + cond,
                                           dim).contiguous()
    c = x.shape[dim] // 2
    if cond is None:  # z = [tanh(a), b] in a new tensor
        z = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        torch.tanh(x.narrow(dim, 0, c), out=z.narrow(dim, 0, c))
        z.narrow(dim, c, c).copy_(x.narrow(dim, c, c))
    else:  # x + cond is ours to overwrite
        z = x + cond
        z.narrow(dim, 0, c).tanh_()
    grad = torch.ops.aten.glu_backward(grad_out, z, dim)
    grad_a = grad.narrow(dim, 0, c)
    torch.ops.aten.tanh_backward.grad_input(grad_a, z.narrow(dim, 0, c), grad_input=grad_a)
    return grad.contiguous()


def _cpu_tanh_gate(z, dim):
    """``(tanh(a) * sigmoid(b), tanh(a), sigmoid(b))`` for ``a, b = z.chunk(2, dim)``."""
    a, b = z.chunk(2, dim)
    t, s = torch.tanh(a), torch.sigmoid(b)
    return t * s, t, s


def _cpu_tanh_gate_backward(grad_out, grad_t, grad_s, t, s, dim):
    """Gradient of the tanh gate with respect to z (x + cond) from its saved activations
    ``t = tanh(a)``, ``s = sigmoid(b)``: ``[(g s + g_t)(1 - t^2), (g t + g_s) s (1 - s)]``,
    where ``g_t``, ``g_s`` (None unless a double backward differentiates through t and s)
    are the gradients reaching t and s themselves.

    Under grad mode (create_graph) a differentiable cat of aten's ``tanh_backward`` and
    ``sigmoid_backward``; otherwise the same two written straight into the halves of one
    tensor, two passes each over half of it (autograd of the plain expression adds a cat).
    """
    if grad_out is None:
        grad_out = torch.zeros_like(t)
    if torch.is_grad_enabled():
        ua, ub = grad_out * s, grad_out * t
        ua = ua if grad_t is None else ua + grad_t
        ub = ub if grad_s is None else ub + grad_s
        return torch.cat([torch.ops.aten.tanh_backward(ua, t),
                          torch.ops.aten.sigmoid_backward(ub, s)], dim)
    c = t.shape[dim]
    shape = list(t.shape)
    shape[dim] *= 2
    grad = torch.empty(shape, dtype=t.dtype, device=t.device)
    grad_a, grad_b = grad.narrow(dim, 0, c), grad.narrow(dim, c, c)
    torch.mul(grad_out, s, out=grad_a)
    if grad_t is not None:
        grad_a.add_(grad_t)
    _TANH_BACKWARD_OUT(grad_a, t, grad_input=grad_a)
    torch.mul(grad_out, t, out=grad_b)
    if grad_s is not None:
        grad_b.add_(grad_s)
    _SIGMOID_BACKWARD_OUT(grad_b, s, grad_input=grad_b)
    return grad


class _CpuGate(torch.autograd.Function):
    """The tanh gate's cpu backend called without the dispatcher (eager, plain CPU tensors;
    the sigmoid gate's F.glu has its own autograd). Saves tanh(a) and sigmoid(b), as autograd
    of the plain expression does, and returns them as extra outputs so that a double
    backward reaches x through them (see :func:`_cpu_tanh_gate_backward`)."""

    @staticmethod
    def forward(ctx, x, cond, dim):
        y, t, s = _cpu_tanh_gate(x if cond is None else x + cond, dim)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(t, s)
        ctx.dim = dim
        ctx.cond_shape = None if cond is None else cond.shape
        return y, t, s

    @staticmethod
    def backward(ctx, grad_out, grad_t, grad_s):
        t, s = ctx.saved_tensors
        grad = _cpu_tanh_gate_backward(grad_out, grad_t, grad_s, t, s, ctx.dim)
        needs_x, needs_cond = ctx.needs_input_grad[:2]
        return ((grad if needs_x else None),
                (grad.sum_to_size(ctx.cond_shape) if needs_cond else None), None)


def _forward(x, cond, dim, act, name):
    if name == "reference":
        return _REFERENCE[act](x, cond, dim).contiguous()
    if name == "cpu":
        return _cpu_forward(x, cond, dim, act)
    x3 = _as_3d(x, x.shape, dim)
    cond3 = None if cond is None else _as_3d(cond, x.shape, dim)
    if name == "triton":
        from artrt.kernels.gated import gated_fwd

        out3 = gated_fwd(x3, cond3, act)
    else:
        out3 = x3.new_empty((x3.shape[0], x3.shape[1] // 2, x3.shape[2]))
        _cuda_call("gated_fwd", x3, cond3, (out3,), act)
    return out3.view(_out_shape(x, dim))


def _backward(grad_out, x, cond, dim, act, name):
    if name == "reference":
        return gated_backward_ref(grad_out, x, cond, dim, act).contiguous()
    if name == "cpu":
        return _cpu_backward(grad_out, x, cond, dim, act)
    x3 = _as_3d(x, x.shape, dim)
    cond3 = None if cond is None else _as_3d(cond, x.shape, dim)
    g3 = grad_out.contiguous().view(x3.shape[0], x3.shape[1] // 2, x3.shape[2])
    if name == "triton":
        from artrt.kernels.gated import gated_bwd

        grad_x3 = gated_bwd(g3, x3, cond3, act)
    else:
        grad_x3 = torch.empty(x3.shape, dtype=x.dtype, device=x.device)
        _cuda_call("gated_bwd", x3, cond3, (g3, grad_x3), act)
    return grad_x3.view(x.shape)


def _cuda_call(fn: str, x3, cond3, tensors, act):
    from artrt import _C

    o, c2, s = x3.shape
    cond_ptr, cond_strides = (0, (0, 0, 0)) if cond3 is None else (cond3.data_ptr(), cond3.stride())
    getattr(_C, fn)(x3.data_ptr(), cond_ptr, *(t.data_ptr() for t in tensors), o, c2 // 2, s,
                    *x3.stride(), *cond_strides, _TORCH_TO_C_DTYPE[x3.dtype], act,
                    x3.device.index, torch.cuda.current_stream(x3.device).cuda_stream)


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("artrt::gated", mutates_args=())
def gated(x: torch.Tensor, cond: torch.Tensor | None, dim: int, act: int,
          backend: str) -> torch.Tensor:
    """The op behind gated_tanh (act=0) and gated_sigmoid (act=1); see those for shapes."""
    dim = _check(x, cond, dim, act)
    name = backends.select(_ACT_NAMES[act], x.device, x.dtype, backend, PREFERENCE)
    return _forward(x, cond, dim, act, name)


@gated.register_fake
def _(x, cond, dim, act, backend):
    dim = _check(x, cond, dim, act)
    return x.new_empty(_out_shape(x, dim))


@torch.library.custom_op("artrt::gated_backward", mutates_args=())
def gated_backward(grad_out: torch.Tensor, x: torch.Tensor, cond: torch.Tensor | None,
                   dim: int, act: int, backend: str) -> torch.Tensor:
    """Gradient of artrt::gated with respect to x: same shape as x, contiguous."""
    dim = _check(x, cond, dim, act)
    _check_grad(grad_out, x, dim)
    name = backends.select(_ACT_NAMES[act] + " backward", x.device, x.dtype, backend, PREFERENCE)
    return _backward(grad_out, x, cond, dim, act, name)


@gated_backward.register_fake
def _(grad_out, x, cond, dim, act, backend):
    dim = _check(x, cond, dim, act)
    _check_grad(grad_out, x, dim)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_setup_context(ctx, inputs, output):
    grad_out, x, cond, dim, act, _ = inputs
    ctx.save_for_backward(grad_out, x, cond)
    ctx.dim, ctx.act = dim, act


def _gated_backward_autograd(ctx, grad_grad_x):
    """Double backward, through the reference (pure PyTorch) formula of the backward."""
    grad_out, x, cond = ctx.saved_tensors
    primals = (grad_out, x) if cond is None else (grad_out, x, cond)

    def backward_ref(grad_out, x, cond=None):
        return gated_backward_ref(grad_out, x, cond, ctx.dim, ctx.act)

    _, vjp = torch.func.vjp(backward_ref, *primals)
    grads = vjp(grad_grad_x)
    return grads[0], grads[1], (grads[2] if cond is not None else None), None, None, None


gated_backward.register_autograd(_gated_backward_autograd,
                                 setup_context=_backward_setup_context)


def _setup_context(ctx, inputs, output):
    x, cond, dim, act, backend = inputs
    ctx.save_for_backward(x, cond)
    ctx.dim, ctx.act, ctx.backend = dim, act, backend


def _gated_autograd(ctx, grad_out):
    x, cond = ctx.saved_tensors
    needs_x, needs_cond = ctx.needs_input_grad[:2]
    if not (needs_x or needs_cond):
        return None, None, None, None, None
    grad = gated_backward(grad_out, x, cond, ctx.dim, ctx.act, ctx.backend)
    grad_cond = grad.sum_to_size(cond.shape) if needs_cond else None
    return (grad if needs_x else None), grad_cond, None, None, None


gated.register_autograd(_gated_autograd, setup_context=_setup_context)


# --------------------------------------------------------------------------- public functions

def gated_tanh(x: torch.Tensor, cond: torch.Tensor | None = None, dim: int = 1, *,
               backend: str | None = None) -> torch.Tensor:
    """Fused ``tanh(a) * sigmoid(b)`` with ``a, b = (x + cond).chunk(2, dim)``.

    Args:
        x: (..., 2C, ...) floating tensor with 2C channels on ``dim``; any strides. The
            Triton and CUDA kernels take float32, float16 and bfloat16 (math in float32),
            ``cpu`` also float64; other float dtypes use the reference.
        cond: optional conditioning, broadcastable to ``x`` and of its dtype and device, e.g.
            a class embedding of shape (B, 2C, 1, 1) for x of shape (B, 2C, H, W).
        dim: the channel dimension (negative counts from the end).
        backend: force ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``; ``None``
            follows ``artrt.use_backend`` / ``ARTRT_BACKEND``, else the fastest available
            (``cpu`` for CPU tensors).

    Returns:
        (..., C, ...) contiguous tensor of x's dtype.

    Differentiable in ``x`` and ``cond``.
    """
    return _call(x, cond, dim, ACT_TANH, backend)


def gated_sigmoid(x: torch.Tensor, cond: torch.Tensor | None = None, dim: int = 1, *,
                  backend: str | None = None) -> torch.Tensor:
    """Fused ``a * sigmoid(b)`` with ``a, b = (x + cond).chunk(2, dim)`` (PixelCNN++ gate).

    Shapes, dtypes and arguments as :func:`gated_tanh`.
    """
    return _call(x, cond, dim, ACT_SIGMOID, backend)


def _call(x, cond, dim, act, backend):
    """Check, then the cpu backend directly where :func:`artrt.backends.direct_call` allows,
    else the op."""
    dim_ = _check(x, cond, dim, act)
    backend = backends.requested(backend)
    if backends.direct_call(x, cond) and backends.selects_cpu(_ACT_NAMES[act], x, backend,
                                                             PREFERENCE):
        # The sigmoid gate's forward is F.glu, whose autograd node runs glu_backward (the
        # cpu backward) in C++.
        if act == ACT_TANH and torch.is_grad_enabled() and (
                x.requires_grad or (cond is not None and cond.requires_grad)):
            if x.numel() // 2 < _SMALL_TANH_GRAD:
                return gated_tanh_ref(x, cond, dim_).contiguous()
            y = _CpuGate.apply(x, cond, dim_)[0]
            return y if y.is_contiguous() else y.contiguous()
        return _cpu_forward(x, cond, dim_, act)
    return gated(x, cond, dim, act, backend)
