"""ARRNN: an LSTM over the raster sequence of an image (or a (C, T) sequence), with a learned
positional encoding of each step's (row, column, channel) added to its input: the lecture
notes' RNN as an autoregressive model ("add position encoding when using it to generate
images").

Sequence and ordering: x of shape (C, H, W) is read in raster order with the channels of a
pixel consecutive, ``seq[(i * W + j) * C + c] = x[c, i, j]`` ((C, T): ``seq[t * C + c]``),
the order of :func:`artrt.models._common.raster_steps`. The input at step t is the previous
step's value, shifted, plus the encoding of position t itself (so the LSTM knows which
row, column and channel it predicts)::

    seq:     x0             x1             x2          ...
    input:   s + pos(0)     v(x0) + pos(1) v(x1) + pos(2) ...   (s: learned start vector,
    output:  p(x0)          p(x1 | x0)     p(x2 | x0, x1)         v: linear map of the
                                                                   [-1, 1] value)

    pos(t) = row_emb[i] + col_emb[j] + chan_emb[c]      (one table per axis of the shape)

A class label adds a learned vector to every step's input. Output: a Bernoulli logit per
step for binary data (returned as the two-level logits (0, l)), a ``levels``-way softmax
otherwise. ``sample`` (its cache, :class:`artrt.sampling.arrnn.ARRNNCache`) steps the LSTM
one position at a time with its state carried (no recomputation), which gives the same
logits as the full forward pass; ``sample(cache=False)`` reruns the full pass per position.

Departures: values enter through a linear map of the [-1, 1] input (not an embedding table),
so the Jacobian of the logits with respect to the input is defined; ``positional=False``
drops the encoding (the ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from artrt.models._common import (
    DiscreteARModel,
    check_config,
    level_logits,
    logit_channels,
    raster_steps,
)
from artrt.sampling.arrnn import ARRNNCache


@dataclass
class ARRNNConfig:
    """shape: (C, H, W) images or (C, T) sequences. levels: values per position (2:
    Bernoulli output). num_classes: 0, or the number of labels. hidden: LSTM width (also the
    input embedding's). layers: stacked LSTM layers. positional: add the per-axis learned
    positional encoding."""

    shape: tuple[int, ...] = (1, 28, 28)
    levels: int = 2
    num_classes: int = 0
    hidden: int = 256
    layers: int = 1
    positional: bool = True


LSTMState = tuple[torch.Tensor, torch.Tensor]


class ARRNN(DiscreteARModel):
    """LSTM over the raster sequence of x; see the module docstring. Interface:
    :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, *shape) -> logits (B, levels, *shape).
    ``generation_steps()``: (*shape) int64, the sequence index of each position.
    ``step(prev, t, state=None, cond=None) -> (logits (B, levels), state)``: one step of the
    recurrence (``prev``: (B,) float input of step t - 1). ``new_cache(batch_size,
    cond=None)``: the sampling cache over ``step``.
    """

    name = "ARRNN"

    def __init__(self, config: ARRNNConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes, (2, 3))
        if config.hidden < 1 or config.layers < 1:
            raise ValueError(f"{name}: hidden and layers must be >= 1, got {config.hidden} and "
                             f"{config.layers}")
        self.config, self.shape, self.length = config, shape, math.prod(shape)
        steps = raster_steps(shape)  # (*shape)
        order = steps.reshape(-1).argsort()  # flat position of each step, (D,)
        coords = torch.stack(torch.unravel_index(order, shape), -1)  # (D, ndim): (c, i, j)
        self.register_buffer("steps", steps.reshape(-1), persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("coords", coords, persistent=False)
        e = config.hidden
        self.value_in = nn.Linear(1, e)
        self.start = nn.Parameter(torch.zeros(e))
        self.pos = (nn.ModuleList(nn.Embedding(s, e) for s in shape) if config.positional
                    else None)
        self.class_emb = nn.Embedding(config.num_classes, e) if config.num_classes else None
        self.lstm = nn.LSTM(e, config.hidden, config.layers, batch_first=True)
        self.head = nn.Linear(config.hidden, logit_channels(config.levels))

    def _add_context(self, e: torch.Tensor, t: slice, cond: torch.Tensor | None
                     ) -> torch.Tensor:
        """e (B, T, E) value embeddings of steps ``t`` -> plus their positions and the
        class."""
        if self.pos is not None:
            coords = self.coords[t]  # (T, ndim)
            e = e + sum(emb(coords[:, a]) for a, emb in enumerate(self.pos))
        if self.class_emb is not None:
            e = e + self.class_emb(cond)[:, None, :]
        return e

    def _logits(self, out: torch.Tensor) -> torch.Tensor:
        """LSTM outputs (B, T, hidden) -> logits (B, levels, T)."""
        return level_logits(self.head(out).transpose(1, 2), self.config.levels)

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        b = v.shape[0]
        seq = v.reshape(b, self.length)[:, self.order].to(self.start.dtype)  # (B, D) in order
        e = self.value_in(seq[:, :-1, None])  # (B, D-1, E): the value of step t - 1
        e = torch.cat([self.start.expand(b, 1, -1), e], 1)  # (B, D, E)
        out, _ = self.lstm(self._add_context(e, slice(None), cond))  # (B, D, hidden)
        logits = self._logits(out)[:, :, self.steps]  # (B, L, D) back in x's layout
        return logits.reshape(b, logits.shape[1], *self.shape)

    def step(self, prev: torch.Tensor, t: int, state: LSTMState | None = None,
             cond: torch.Tensor | None = None) -> tuple[torch.Tensor, LSTMState]:
        """Step t of the recurrence. prev: (B,) the float input (``to_input``) of step t - 1;
        at t = 0 only its batch size is used (the start vector takes its place). state: the
        LSTM's (h, c) after step t - 1, None at t = 0. Returns (logits (B, levels) of step t,
        the state after step t)."""
        if t == 0:
            e = self.start.expand(prev.shape[0], 1, -1)  # (B, 1, E)
        else:
            e = self.value_in(prev.to(self.start.dtype)[:, None, None])  # (B, 1, E)
        out, state = self.lstm(self._add_context(e, slice(t, t + 1), cond), state)
        return self._logits(out)[:, :, 0], state

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None) -> ARRNNCache:
        """A :class:`artrt.sampling.arrnn.ARRNNCache` (the LSTM state carried from step to
        step) for ``batch_size`` samples, on the model's device."""
        return ARRNNCache(self, batch_size, cond)

    def extra_repr(self) -> str:
        return f"length={self.length}, positional={self.config.positional}"


__all__ = ["ARRNN", "ARRNNConfig"]
