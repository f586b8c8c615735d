"""Checks shared by the ops: a tensor argument against x (:func:`check_like_x`), and the
values inside tensors.

Shape, dtype and device checks cost nothing; a check of the *values* (a NaN, a label out of
range) reads the tensor back to the host, which waits for the device. Such checks run inside
the torch.library op (never in a traced graph), read each tensor once (its min and max in one
transfer), and are skipped while a CUDA graph is being captured: a host read would break the
capture, and a captured graph replays on new data anyway.

The cached samplers of :mod:`artrt.sampling` skip them at every step too: ``model.sample``
checks what the user passes in (uniforms, labels) once per call, the caches check the values
of ``push`` (one read), and the steps call private unchecked entries of ``wavenet_step``,
``dmol_sample`` and ``attention_decode`` (lengths known on the host), so a step reads nothing
back. The public ops keep every check.
"""

from __future__ import annotations

import math

import torch


def check_like_x(name: str, what: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """TypeError unless ``t`` (argument ``what`` of op ``name``) has x's dtype, ValueError
    unless it is on x's device."""
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: {what} must have x's dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: {what} must be on x's device {x.device}, got {t.device}")


def capturing() -> bool:
    """True while the current CUDA stream is capturing a CUDA graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def value_range(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``t`` as Python numbers, in one host read; NaN when ``t`` holds a NaN
    (torch's min and max propagate it). An empty tensor gives (inf, -inf)."""
    if t.numel() == 0:
        return math.inf, -math.inf
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    lo, hi = torch.stack([t.min(), t.max()]).tolist()
    return lo, hi


def check_range(name: str, what: str, t: torch.Tensor, lo: float, hi: float, *,
                hi_open: bool = True) -> None:
    """ValueError naming ``what`` unless every value of ``t`` lies in [lo, hi) (``hi_open``)
    or [lo, hi]; NaN is out of every range. Skipped while a CUDA graph is captured."""
    if capturing():
        return
    got_lo, got_hi = value_range(t)
    if t.numel() == 0:
        return
    bad_hi = got_hi >= hi if hi_open else got_hi > hi
    if math.isnan(got_lo) or math.isnan(got_hi) or got_lo < lo or bad_hi:
        interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        held = ("a NaN" if math.isnan(got_lo) or math.isnan(got_hi)
                else f"values in [{got_lo:.6g}, {got_hi:.6g}]")
        raise ValueError(f"{name}: {what} must lie in {interval}, got {held}")


def check_finite(name: str, what: str, t: torch.Tensor) -> None:
    """ValueError naming ``what`` when ``t`` holds a NaN or an infinity. Skipped while a CUDA
    graph is captured."""
    if capturing() or t.numel() == 0:
        return
    got_lo, got_hi = value_range(t)
    if not (math.isfinite(got_lo) and math.isfinite(got_hi)):
        held = "a NaN" if math.isnan(got_lo) or math.isnan(got_hi) else "an infinity"
        raise ValueError(f"{name}: {what} must be finite, got {held}")
