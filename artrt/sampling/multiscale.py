"""The incremental sampling cache of :class:`artrt.models.MultiscalePixelCNN`: one network
pass per generation step, of the one network the step needs.

The full forward pass runs the base PixelCNN and every scale's group network for all of
their steps. A generation step needs one of them: a base step one pass of the (small) base
PixelCNN over the base image, of which it reads one sub-pixel's logits; a group step (channel
c of group g of scale k) one pass of scale k's network for that (g, c) alone, which gives the
logits of all of the step's positions at once::

    steps 0 .. C h0 w0 - 1          base PixelCNN, one sub-pixel         G = 1
    then per scale k = 1 .. S,
    per q = (g - 1) C + c           group net k, step id q               G = (H_k / 2)(W_k / 2)

so a sample takes ``model.passes`` network passes in all. The state is the [-1, 1] input
image, the values pushed so far and ``to_input(0)`` elsewhere, as the plain loop feeds it
(the masks make the not-yet-drawn values irrelevant either way).
"""

from __future__ import annotations

import torch

from artrt.levels import to_input
from artrt.sampling.cache import ARCache


class MultiscalePixelCNNCache(ARCache):
    """Incremental sampling state of a :class:`artrt.models.MultiscalePixelCNN` for
    ``batch_size`` images, in the model's ``generation_steps()`` order.

    Args:
        model: the MultiscalePixelCNN.
        batch_size: B.
        cond: (B,) int64 labels for a class-conditional model, else None.

    State: ``v`` (B, C, H, W), the model's input with the values pushed so far; the logits
    of the current step once computed, (B, levels, G) float32 (G = 1 in the base, the
    coarse grid of the scale in a group step).
    """

    def _reset(self, cond: torch.Tensor | None) -> None:
        model = self.model
        c, h, w = model.shape
        dtype = model.base.inp.weight.dtype
        blank = torch.zeros((self.batch_size, c, h, w), dtype=torch.int64, device=self.device)
        self.v = to_input(blank, self.levels).to(dtype)  # (B, C, H, W)
        self._base_steps = c * model.base_size[0] * model.base_size[1]
        self._group_ids = torch.arange(3 * c, device=self.device)  # (3C,) sliced per step
        self._out: torch.Tensor | None = None

    def _logits(self) -> torch.Tensor:
        if self._out is not None:
            return self._out
        model, s = self.model, self.step
        c = model.shape[0]
        if s < self._base_steps:  # base: raster order of (pixel, channel)
            ch, (i, j) = s % c, divmod(s // c, model.base_size[1])
            st = model._stride(0)
            out = model.base(self.v[:, :, ::st, ::st], self.cond)[:, :, ch, i, j]  # (B, L)
            out = out.unsqueeze(-1)  # (B, L, 1)
        else:  # group step q of scale k
            k, q = divmod(s - self._base_steps, 3 * c)
            q_ids = self._group_ids[q:q + 1]  # (1,), a view: no copy to the device
            out = model._scale_logits(k + 1, self.v, q_ids, self.cond)[0]  # (B, L, h, w)
            out = out.flatten(2)  # (B, L, G), raster over the coarse grid
        self._out = out.float()
        return self._out

    def _push(self, values: torch.Tensor) -> None:
        pos = self._positions[self.step]  # (G,)
        self.v.view(self.batch_size, -1)[:, pos] = to_input(values, self.levels).to(self.v.dtype)
        self._out = None


__all__ = ["MultiscalePixelCNNCache"]
