"""Backends and how an op picks one.

Every op has up to four implementations:

=============  ===========================================  ================================
backend        what it is                                   runs on
=============  ===========================================  ================================
``reference``  pure PyTorch, the specification              any device, any float dtype
``cpu``        aten's fused CPU kernels (flash attention,   CPU tensors; float32, float64,
               ``glu``), for the ops that have it           float16, bfloat16
``triton``     Triton kernels (``artrt.kernels``)           CUDA tensors; CPU tensors only
                                                            under ``TRITON_INTERPRET=1``
``cuda``       CUDA C++ kernels (``artrt._C``)              CUDA tensors, extension built
=============  ===========================================  ================================

By default an op takes the first available backend of its own preference list for a CUDA
tensor; for a CPU tensor it takes ``cpu`` when the op has that backend, else the reference
(the Triton interpreter is for testing, not speed). ``artrt.use_backend(name)``, the
``ARTRT_BACKEND`` environment variable or an op's ``backend=`` argument force one; forcing a
backend that cannot run the call (or that the op does not have) raises
:class:`BackendUnavailableError` with the reason, never a silent fallback.

An op's ``cpu`` backend may be called as plain Python, skipping the torch.library dispatcher
(whose Python custom-op path costs 13-25 us a call, more than a small aten kernel), when
:func:`direct_call` allows it: eager mode, plain CPU tensors, no tracing, no dispatch or
function modes, no functorch transform. Everything else (torch.compile, opcheck, fake
tensors, subclasses, vmap) goes through the op, which runs the same code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
AUTO = "auto"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Stack of names pushed by use_backend(). A plain module global (not a contextvar) so that
# torch.compile reads it as a guarded constant.
_forced: list[str] = []


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run the call; the message says why."""


_NAMES = frozenset((*BACKENDS, AUTO))


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name not in _NAMES:
        raise ValueError(f"{what} must be one of {(*BACKENDS, AUTO)}, got {name!r}")
    return name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the backend of every artrt op called inside the block.

    ``name`` is ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or ``"auto"`` (undo an
    outer forcing). Takes precedence over ``ARTRT_BACKEND``; an op's ``backend=`` argument takes
    precedence over both. The choice is recorded with the forward pass, so the backward of
    an op called in the block uses the same backend wherever it runs.
    """
    _forced.append(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _forced.pop()


def requested(backend: str | None = None) -> str:
    """The backend an op call asks for: its ``backend=`` argument, else ``use_backend``."""
    if backend is not None:
        return _check_name(backend, "backend")
    return _forced[-1] if _forced else AUTO


# ARTRT_BACKEND is read at every op call. Whether it is set, asked of os.environ's own dict
# under the encoded name (0.03 us, against 0.6 us for os.environ.get, which encodes the key
# and decodes the value each time); os.environ.get where that dict is not there.
try:
    _ENVIRON, _ENV_KEY = os.environ._data, os.environ.encodekey("ARTRT_BACKEND")
except AttributeError:
    _ENVIRON = _ENV_KEY = None


def _env_set() -> bool:
    """Whether ARTRT_BACKEND is set to a non-empty value."""
    if _ENVIRON is not None:
        return bool(_ENVIRON.get(_ENV_KEY))
    return bool(os.environ.get("ARTRT_BACKEND"))


def nothing_forced() -> bool:
    """Whether an op call with ``backend=None`` makes the default choice: no
    :func:`use_backend` block and no ARTRT_BACKEND force one."""
    return not _forced and not _env_set()


def _env_backend() -> str:
    raw = os.environ.get("ARTRT_BACKEND")  # read at every call: it may change at run time
    if not raw:
        return AUTO
    return _check_name(raw.strip().lower() or AUTO, "the ARTRT_BACKEND environment variable")


def load_triton_kernels():
    """(artrt.kernels, None), or (None, why it cannot be imported)."""
    try:
        import artrt.kernels as kernels
    except ImportError as e:  # triton missing or broken
        return None, f"triton could not be imported ({e})"
    return kernels, None


def load_extension():
    """(artrt._C, None), or (None, why it cannot be imported)."""
    try:
        from artrt import _C
    except ImportError as e:
        return None, ("artrt._C is not built: artrt was installed without nvcc or with "
                      f"ARTRT_CUDA_BUILD=0; reinstall with ARTRT_CUDA_BUILD=1 ({e})")
    return _C, None


def unavailable_reason(name: str, device: torch.device | str,
                       dtype: torch.dtype | None = None) -> str | None:
    """Why backend ``name`` cannot run on ``device`` with ``dtype``; None when it can."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, got a {device.type} tensor"
        if dtype is not None and dtype not in CPU_DTYPES:
            return (f"the cpu backend supports float32, float64, float16 and bfloat16, got "
                    f"{dtype}; the reference backend handles other dtypes")
        return None
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return (f"the {name} kernels support float32, float16 and bfloat16, got {dtype}; "
                "the reference backend handles other dtypes")
    if name == "triton":
        kernels, why = load_triton_kernels()
        if kernels is None:
            return why
        if device.type == "cpu" and not kernels.INTERPRET:
            return ("triton runs on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                    "before artrt is imported (the interpreter is slow: for testing)")
        if device.type not in ("cpu", "cuda"):
            return f"triton runs on CUDA tensors, got a {device.type} tensor"
        return None
    if name == "cuda":
        ext, why = load_extension()
        if ext is None:
            return why
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
        count, message = ext.device_count()
        if count == 0:
            return f"artrt._C sees no CUDA device ({message})"
        return None
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def select(op: str, device: torch.device, dtype: torch.dtype, backend: str,
           preference: Sequence[str]) -> str:
    """Resolve ``backend`` (a name or ``"auto"``) for one call of ``op``.

    ``preference`` lists the op's backends, fastest first for CUDA tensors; on a CPU tensor
    the op takes ``cpu`` when it is listed and can run the dtype, else the reference (as on
    any other device). Raises BackendUnavailableError when a forced backend cannot run.
    """
    name = _check_name(backend, "backend")
    source = "requested"
    if name == AUTO:
        name, source = _env_backend(), "forced by ARTRT_BACKEND"
    if name != AUTO:
        if name not in preference and name != "reference":
            raise BackendUnavailableError(
                f"{op}: backend {name!r} ({source}) has no implementation of this op; "
                f"it has {tuple(preference)}")
        why = unavailable_reason(name, device, dtype)
        if why is not None:
            raise BackendUnavailableError(f"{op}: backend {name!r} ({source}) cannot run: {why}")
        return name
    if device.type != "cuda":
        if (device.type == "cpu" and "cpu" in preference
                and unavailable_reason("cpu", device, dtype) is None):
            return "cpu"
        return "reference"
    for name in preference:
        if unavailable_reason(name, device, dtype) is None:
            return name
    return "reference"


def selects_cpu(op: str, x: torch.Tensor, backend: str, preference: Sequence[str]) -> bool:
    """Whether :func:`select` picks ``cpu`` for a call of ``op`` on ``x``: for the common
    call (nothing forced, a CPU tensor of a dtype the cpu backend takes) its answer without
    its cost (2 us)."""
    if (backend == AUTO and "cpu" in preference and x.dtype in CPU_DTYPES and x.is_cpu
            and not _env_set()):
        return True
    return select(op, x.device, x.dtype, backend, preference) == "cpu"


def status() -> dict[str, dict[str, str | None]]:
    """For each device type ('cpu', and 'cuda' when present), each backend's reason or None."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {d: {name: unavailable_reason(name, d) for name in BACKENDS} for d in devices}


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def direct_call(*tensors: torch.Tensor | None) -> bool:
    """Whether an op call on ``tensors`` (None entries ignored) may run its ``cpu`` backend as
    plain Python instead of through its torch.library op: eager mode (not compiling, not
    tracing), no TorchDispatchMode or TorchFunctionMode active (fake tensors, make_fx, opcheck
    and ``with torch.device(...)`` use one), no functorch transform (vmap, grad), and every
    tensor a plain ``torch.Tensor`` or ``nn.Parameter`` (whose torch functions are the
    plain tensor's: a module's weights) on the CPU, not another subclass. The caller still
    validates and selects the backend as the op does."""
    try:  # private torch functions: a torch without one takes the op (always correct)
        if (torch.compiler.is_compiling() or torch._C._is_tracing()
                or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled()
                or torch._C._functorch.peek_interpreter_stack() is not None):
            return False
    except AttributeError:
        return False
    for t in tensors:
        if t is not None and not (type(t) in _PLAIN and t.is_cpu):
            return False
    return True
