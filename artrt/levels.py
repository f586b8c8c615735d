"""Integer levels and the model input, in torch alone (no numpy): the one place that fixes
the model input range.

A pixel or sample is an integer level ``0 .. levels-1``; models take ``to_input(x, levels)``,
floats in [-1, 1]. Audio is mu-law companded to 256 levels first (``mu_law_encode``), the
WaveNet paper's quantisation. :mod:`artrt.data` re-exports all of it.
"""

from __future__ import annotations

import math

import torch

MU = 255  # mu-law: 256 levels


def to_input(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels -> model input: ``2 * x / (levels - 1) - 1``.

    x: any integer tensor with values in ``[0, levels)``, any shape. Returns float32 of the
    same shape in [-1, 1] (levels=2 gives {-1, 1}; for ``membrane-mulaw`` this is the
    mu-law companded amplitude, WaveNet's input).
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return x.to(torch.float32) * (2.0 / (levels - 1)) - 1.0


def from_input(v: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of :func:`to_input`: floats in [-1, 1] -> the nearest integer level, int64,
    clamped to ``[0, levels)``; same shape."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    q = torch.round((v.to(torch.float32) + 1.0) * ((levels - 1) / 2.0))
    return q.clamp_(0, levels - 1).to(torch.int64)


def mu_law_encode(x: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """Mu-law companding and quantisation to ``mu + 1`` levels (mu=255: 256 levels).

        f(x) = sign(x) * ln(1 + mu |x|) / ln(1 + mu)          x in [-1, 1]
        q    = floor((f + 1) / 2 * mu + 1/2)                  q in {0, ..., mu}

    x: float tensor, any shape (values outside [-1, 1] are clamped). Returns int64, same
    shape. ``mu_law_encode(mu_law_decode(q)) == q`` for every level q.
    """
    x = x.to(torch.float64).clamp(-1.0, 1.0)
    f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((f + 1.0) / 2.0 * mu + 0.5).to(torch.int64)


def mu_law_decode(q: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: levels in ``{0, ..., mu}`` -> amplitudes in [-1, 1].

        f = 2 q / mu - 1,    x = sign(f) * ((1 + mu)^|f| - 1) / mu

    q: integer tensor, any shape. Returns float32, same shape.
    """
    f = q.to(torch.float64) * (2.0 / mu) - 1.0
    x = torch.sign(f) * torch.expm1(f.abs() * math.log1p(mu)) / mu
    return x.to(torch.float32)


__all__ = ["MU", "from_input", "mu_law_decode", "mu_law_encode", "to_input"]
