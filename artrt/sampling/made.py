"""The incremental sampling cache of :class:`artrt.models.MADE`: the first hidden layer's
pre-activation accumulated one input at a time.

MADE's first layer is linear in the input, ``a = (W1 * M1) v + b1`` (W1 (H1, D)), so when the
variable d drawn at a step changes from the placeholder the plain loop feeds for undrawn
variables (``to_input(0)``) to its drawn value, ``a`` changes by column d of the masked
weight times the difference::

    a  <-  a + (W1 * M1)[:, d] * (to_input(x_d) - to_input(0))        O(H1) per step

instead of the O(D * H1) full product. The later layers cannot be updated this way (a ReLU
sits between them and the change of ``a`` reaches every unit), so they are recomputed from
``a`` at every step: O(H1 * H2 + ...) for the hidden layers, and only the K output rows of
the variable drawn next (K = 1 Bernoulli logit for binary data, else ``levels``).

The cache follows the mask set that is current when it is reset (``model.mask_index``): its
ordering and its masked weights are taken then, so a cache can be reused after
``resample_masks``; the plain loop samples under the same mask set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from artrt.levels import to_input
from artrt.sampling.cache import ARCache


class MADECache(ARCache):
    """Incremental sampling state of a :class:`artrt.models.MADE` for ``batch_size``
    sequences: one variable per step, in the ordering of the mask set current at
    :meth:`reset`.

    Args:
        model: the MADE.
        batch_size: B.
        cond: (B,) int64 labels for a class-conditional model, else None.

    State (per reset): ``acc`` (B, H1), the first layer's pre-activation (before the class
    bias and the ReLU) of the input holding the values pushed so far and ``to_input(0)``
    everywhere else; the masked weights of every layer; ``mask_index``, the mask set used.
    """

    def _reset(self, cond: torch.Tensor | None) -> None:
        model = self.model
        dims, levels = model.dims, self.levels
        self.mask_index = model.mask_index  # the base follows its ordering (generation_steps)
        self._order = model.steps.argsort().tolist()  # variable of each step
        first = model.layers[0]
        dtype = first.weight.dtype
        self._w1t = (first.weight * first.mask).t().contiguous()  # (D, H1): column d in row d
        self._hidden = [(layer.weight * layer.mask, layer.bias) for layer in model.layers[1:]]
        k = model.out.out_features // dims  # outputs per variable: 1 or levels
        self._k = k
        self._w_out = (model.out.weight * model.out.mask).view(k, dims, -1).transpose(0, 1)
        self._w_out = self._w_out.contiguous()  # (D, K, H_L)
        self._b_out = model.out.bias.view(k, dims).t().contiguous()  # (D, K)
        self._biases: list[torch.Tensor | None] = [None] * (len(model.layers) + 1)
        if model.class_bias is not None:
            self._biases = [emb(cond).to(dtype) for emb in model.class_bias]
            self._biases[-1] = self._biases[-1].view(self.batch_size, k, dims)  # (B, K, D)
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._blank = to_input(zero, levels).to(dtype)  # (1,) the placeholder of undrawn x_d
        v0 = self._blank.expand(self.batch_size, dims)  # (B, D)
        self.acc = first(v0)  # (B, H1): the only full first-layer product, once per reset
        self._out: torch.Tensor | None = None

    def _logits(self) -> torch.Tensor:
        if self._out is not None:
            return self._out
        d = self._order[self.step]
        h = self.acc if self._biases[0] is None else self.acc + self._biases[0]
        h = F.relu(h)  # (B, H1)
        for (w, b), bias in zip(self._hidden, self._biases[1:-1], strict=True):
            h = F.linear(h, w, b)  # (B, H_l)
            h = F.relu(h if bias is None else h + bias)
        out = F.linear(h, self._w_out[d], self._b_out[d])  # (B, K): variable d only
        if self._biases[-1] is not None:
            out = out + self._biases[-1][:, :, d]
        if self._k == 1:  # a Bernoulli logit l -> the two-level logits (0, l)
            out = torch.cat([torch.zeros_like(out), out], 1)
        self._out = out.float().unsqueeze(-1)  # (B, levels, 1)
        return self._out

    def _push(self, values: torch.Tensor) -> None:
        d = self._order[self.step]
        delta = to_input(values, self.levels).to(self.acc.dtype) - self._blank  # (B, 1)
        self.acc.addcmul_(delta, self._w1t[d].unsqueeze(0))  # (B, H1) += (B, 1) * (1, H1)
        self._out = None


__all__ = ["MADECache"]
