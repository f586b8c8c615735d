"""What the recognisers of :mod:`artrt.patch` share: their result types, how a candidate is
run on a probe without touching its tensors, and the tolerance a replacement must meet.

A probe never changes the model: the candidate runs through ``torch.func.functional_call``
on clones of its parameters and buffers (idioms that mask ``weight.data`` in place write
into the clone), under ``torch.no_grad``, with random numbers from a private generator
(the global RNG is not advanced).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Match:
    """A recogniser's replacement: ``module`` computes what the candidate computes, on the
    candidate's parameter tensors; ``detail`` says what was recognised (for the report);
    ``inputs`` are the probe inputs (tuples of positional arguments) to verify it on."""

    module: nn.Module
    detail: str
    inputs: list[tuple] = field(default_factory=list)


@dataclass
class Reject:
    """A candidate left alone, and why (one line, for the report). ``final=False``: the
    verdict may change one level up (a bare ``nn.MultiheadAttention`` whose caller builds
    the mask, a convolution whose padding its parent does), so the modules around it are
    still probed; otherwise they are not (they would only repeat the verdict)."""

    reason: str
    final: bool = True


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, like: torch.Tensor | None, gen: torch.Generator,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal values drawn on the CPU from ``gen``, then put on ``like``'s device and
    dtype (or float32 on the CPU)."""
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if like is None:
        return t.to(dtype)
    return t.to(device=like.device, dtype=like.dtype)


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by its dotted name (tied tensors under each
    of their names)."""
    out = dict(module.named_parameters(remove_duplicate=False))
    out.update(module.named_buffers(remove_duplicate=False))
    return out


def run(module: nn.Module, x, replace: dict[str, torch.Tensor] | None = None,
        kwargs: dict | None = None):
    """``module(*x, **kwargs)`` on clones of its tensors, some replaced by ``replace``
    (name -> tensor), under no_grad. The module's own tensors are never written."""
    tensors = {n: t.detach().clone() for n, t in state_of(module).items()}
    tensors.update(replace or {})
    with torch.no_grad():
        return torch.func.functional_call(module, tensors, x, kwargs, tie_weights=False)


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """The largest error, relative to the largest output magnitude, that a replacement may
    have: a few units of the dtype's rounding summed over a layer; fp32 on CUDA allows for
    TF32 (cuDNN convolutions and the kernels both use it by default)."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 5e-3 if device.type == "cuda" else 1e-5
    if dtype == torch.float16:
        return 1e-2
    return 5e-2  # bfloat16 and anything coarser


def mismatch(want, got) -> str | None:
    """None when ``got`` equals ``want`` to the dtype's tolerance; else what differs. Tuples
    (an attention layer's (output, weights)) of one length compare by their first element:
    the output; what follows it is the recogniser's business."""
    if isinstance(want, tuple) and isinstance(got, tuple) and want and got:
        if len(want) != len(got):
            return f"outputs are tuples of {len(want)} and {len(got)}"
        want, got = want[0], got[0]
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return f"outputs are {type(want).__name__} and {type(got).__name__}"
    if want.shape != got.shape:
        return f"output shapes {tuple(want.shape)} and {tuple(got.shape)}"
    if want.dtype != got.dtype:
        return f"output dtypes {want.dtype} and {got.dtype}"
    if want.numel() == 0:
        return None
    if not torch.isfinite(want).all():
        return "the layer's own output is not finite on a random input"
    want64, got64 = want.double(), got.double()
    err = (got64 - want64).abs().max().item()
    scale = want64.abs().max().item()
    tol = tolerance(want.dtype, want.device)
    if not err <= tol * scale:  # also catches NaN in got
        return f"max error {err:.2e} > {tol:.0e} x {scale:.2e} (the output's scale)"
    return None


def single_input(module: nn.Module) -> bool:
    """``module.forward`` takes exactly one argument (x): anything else it might be called
    with (a mask, a condition) could change its function in ways a probe cannot see."""
    return extra_arguments(module) == []


def extra_arguments(module: nn.Module) -> list[inspect.Parameter] | None:
    """The parameters of ``module.forward`` after x, when x is its only required argument
    (the others have defaults, or are ``*args`` / ``**kwargs``); None otherwise (x is
    keyword-only, or another argument has no default)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if any(p.default is inspect.Parameter.empty and p.kind not in variadic
           for p in params[1:]):
        return None
    return params[1:]


def post_hooks(module: nn.Module) -> str | None:
    """The path of a submodule (or '' for module) with forward or backward hooks: they would
    not run on the replacement. Forward pre-hooks are part of the probed function (the
    masking idiom) and are allowed."""
    for name, m in module.named_modules():
        if m._forward_hooks or m._backward_hooks or m._backward_pre_hooks:
            return name
    return None


def forward_overridden(module: nn.Module) -> bool:
    return type(module).forward is not nn.Module.forward


def from_artrt(module: nn.Module) -> bool:
    return type(module).__module__.startswith("artrt.")


def dropout_rate(module: nn.Module) -> float:
    """The largest dropout probability inside ``module``: ``nn.Dropout*`` submodules and
    float attributes named like ``dropout`` / ``attn_pdrop`` (read by ``forward`` as the
    ``dropout_p`` of ``F.scaled_dot_product_attention`` in common code)."""
    rate = 0.0
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            rate = max(rate, float(m.p))
        if isinstance(m, nn.MultiheadAttention):
            rate = max(rate, float(m.dropout))
        for key, value in vars(m).items():
            if ("drop" in key.lower() and isinstance(value, float)
                    and not isinstance(value, bool)):
                rate = max(rate, value)
    return rate
