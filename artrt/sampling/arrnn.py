"""The incremental sampling cache of :class:`artrt.models.ARRNN`: the LSTM's state carried
from one step to the next.

The full forward pass runs the LSTM over the whole raster sequence; a generation step needs
only one more LSTM step (``ARRNN.step``), fed the value just pushed plus the positional
encoding of the next position, from the state the earlier steps left::

    reset:      logits(0), state(0)   = step(start,       t=0, None)
    push(x_t):  logits(t+1), state(t+1) = step(v(x_t),   t+1, state(t))     O(1) in t

so a step costs one LSTM cell per layer instead of a pass over the sequence.
"""

from __future__ import annotations

import torch

from artrt.levels import to_input
from artrt.sampling.cache import ARCache


class ARRNNCache(ARCache):
    """Incremental sampling state of a :class:`artrt.models.ARRNN` for ``batch_size``
    sequences: one position per step, in raster order (channels of a pixel consecutive).

    Args:
        model: the ARRNN.
        batch_size: B.
        cond: (B,) int64 labels for a class-conditional model, else None.

    State: ``state``, the LSTM's (h, c), each (layers, B, hidden), after the step whose
    logits are ``logits()``; those logits, (B, levels, 1) float32, computed when the value
    before them is pushed (at reset for step 0).
    """

    def _reset(self, cond: torch.Tensor | None) -> None:
        blank = torch.zeros(self.batch_size, device=self.device)  # only its batch size is read
        self._run(blank, 0, None)

    def _run(self, prev: torch.Tensor, t: int,
             state: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """One LSTM step t from ``state`` with input ``prev`` (B,) float: the logits of step
        t and the state after it."""
        logits, self.state = self.model.step(prev, t, state, self.cond)  # (B, levels)
        self._out = logits.float().unsqueeze(-1)  # (B, levels, 1)

    def _logits(self) -> torch.Tensor:
        return self._out

    def _push(self, values: torch.Tensor) -> None:
        t = self.step + 1
        if t < self.num_steps:
            self._run(to_input(values[:, 0], self.levels), t, self.state)


__all__ = ["ARRNNCache"]
