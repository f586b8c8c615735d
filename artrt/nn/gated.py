"""Gated activation modules over :mod:`artrt.ops.gated`."""

from __future__ import annotations

import torch
from torch import nn

from artrt.ops.gated import gated_sigmoid, gated_tanh


class _Gate(nn.Module):
    _op = staticmethod(gated_tanh)

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self._op(x, cond, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GatedTanh(_Gate):
    """``tanh(a) * sigmoid(b)`` of the two channel halves of ``x + cond``.

    ``forward(x, cond=None)``: x (..., 2C, ...) with 2C channels on ``dim``; cond broadcastable
    to x (e.g. (B, 2C, 1, 1)). Returns (..., C, ...).
    """

    _op = staticmethod(gated_tanh)


class GatedSigmoid(_Gate):
    """``a * sigmoid(b)`` of the two channel halves of ``x + cond`` (the PixelCNN++ gate).

    Shapes as :class:`GatedTanh`.
    """

    _op = staticmethod(gated_sigmoid)
