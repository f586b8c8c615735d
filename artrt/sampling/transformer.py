"""The incremental sampling cache of :class:`artrt.models.ARTransformer`: a key/value cache
(:class:`artrt.sampling.KVCache`) decoded one token per step with
:func:`artrt.ops.attention_decode` (through ``CausalSelfAttention.step``).

The full forward pass keeps the tokens in raster layout and masks attention by generation
rank; the cache feeds the tokens *in generation order* instead, where that mask is plain
causal, so each step appends one key/value per layer and attends one query to the cache::

    step s (token p = perm[s], the s-th generated):
        e = (start if s == 0 else value_in(v(x of token perm[s-1]))) + pos[p] (+ class)
        per block:  e = e + attn.step(ln1(e), kv);  e = e + mlp(ln2(e))
        logits(p) = head(ln_f(e))                                  O(s) attention, O(1) rest

The logits of step s + 1 are computed when step s's value is pushed (step 0's at reset).
Every layer's cache holds s positions of every sequence at step s, a number the cache knows
on the host: it passes it to each layer's ``step`` (``length=``), which then reads nothing
back from the device, so a step does not synchronise.
"""

from __future__ import annotations

import torch

from artrt.levels import to_input
from artrt.sampling.cache import ARCache
from artrt.sampling.kv_cache import KVCache


class ARTransformerCache(ARCache):
    """Incremental sampling state of an :class:`artrt.models.ARTransformer` for
    ``batch_size`` images: one token (sub-pixel) per step in the model's generation order.

    Args:
        model: the ARTransformer.
        batch_size: B.
        cond: (B,) int64 labels for a class-conditional model, else None.

    State: ``kv``, a :class:`artrt.sampling.KVCache` of (layers, B, heads, T, dim / heads)
    keys and values in generation order; the logits of the next step, (B, levels, 1)
    float32; ``tokens``, (T,) int64, the token index (raster layout of (pixel, channel)) of
    each step.
    """

    def __init__(self, model, batch_size: int, cond: torch.Tensor | None = None):
        cfg = model.config
        dtype, device = model.pos.dtype, model.pos.device
        self.tokens = model.rank.argsort()  # (T,) token of each step
        self._token_list = self.tokens.tolist()  # the same on the host: indexing reads none
        self.kv = KVCache(cfg.layers, batch_size, cfg.heads, model.tokens, cfg.dim // cfg.heads,
                          dtype=dtype, device=device)
        super().__init__(model, batch_size, cond)

    def _reset(self, cond: torch.Tensor | None) -> None:
        model = self.model
        self.kv.reset()
        dtype = model.pos.dtype
        self._class = None if model.class_emb is None else model.class_emb(cond).to(dtype)
        self._run(model.start.expand(self.batch_size, -1), 0)

    def _run(self, e: torch.Tensor, s: int) -> None:
        """Decode step s from its value embedding e (B, dim): append its keys and values to
        every layer of ``kv`` and keep its logits."""
        model = self.model
        e = e + model.pos[self._token_list[s]]  # (B, dim)
        if self._class is not None:
            e = e + self._class
        e = e.unsqueeze(1)  # (B, 1, dim)
        for block in model.blocks:  # every layer's cache holds s positions
            e = e + block.attn.step(block.ln1(e), self.kv, length=s)
            e = e + block.mlp(block.ln2(e))
        logits = model.head(model.ln_f(e))  # (B, 1, levels)
        self._out = logits.float().transpose(1, 2)  # (B, levels, 1)

    def _logits(self) -> torch.Tensor:
        return self._out

    def _push(self, values: torch.Tensor) -> None:
        s = self.step + 1
        if s < self.num_steps:
            v = to_input(values, self.levels).to(self.model.pos.dtype)  # (B, 1)
            self._run(self.model.value_in(v), s)


__all__ = ["ARTransformerCache"]
