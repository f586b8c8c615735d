"""Shared test helpers: backends to run, layouts of inputs, the low-precision tolerance rule."""

from __future__ import annotations

import torch

from artrt import backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernel_backends(device: str = DEVICE) -> list[str]:
    """The non-reference backends that can run on ``device`` here (triton under the
    interpreter on CPU)."""
    return [b for b in ("triton", "cuda") if backends.unavailable_reason(b, device) is None]


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in a different memory layout.

    contiguous: as is; strided: every other element of a twice-as-long last dimension
    (a view with stride 2); permuted: stored with the first and last dimensions swapped.
    """
    if layout == "contiguous" or t.dim() == 0:
        return t
    if layout == "strided":
        big = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "permuted":
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    raise ValueError(layout)


def assert_close_lowp(got: torch.Tensor, lowp_ref: torch.Tensor, fp32_ref: torch.Tensor,
                      what: str, factor: float = 2.0, floor: float = 1e-5) -> None:
    """The kernel's error against an fp32 reference is at most ``factor`` times the
    reference's own error when computed in the low-precision dtype (plus a tiny floor for
    the case where that error is zero)."""
    err = (got.float() - fp32_ref.float()).abs().max().item()
    ref_err = (lowp_ref.float() - fp32_ref.float()).abs().max().item()
    assert err <= factor * ref_err + floor, (
        f"{what}: kernel error {err:.3e} > {factor} x reference error {ref_err:.3e}")
