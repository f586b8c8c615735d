"""Causal self-attention layer over :mod:`artrt.ops.attention` and its KV-cache decode step.

The layer of a decoder-only transformer (Vaswani et al., 2017; nanoGPT's layout): one fused
q/k/v projection, causal attention in raster or any generation order, an output projection.
``forward`` runs a whole sequence (training, scoring); ``step`` runs the new positions of a
generation against an :class:`artrt.sampling.KVCache` with
:func:`artrt.ops.attention_decode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from artrt.ops.attention import causal_attention
from artrt.ops.attention_decode import attention_decode

if TYPE_CHECKING:
    from artrt.sampling import KVCache


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, with grouped-query attention when ``kv_heads`` < heads.

    Args:
        dim: C, model width; a multiple of ``heads``. Head dim D = C / heads, at most 128.
        heads: H, query heads.
        kv_heads: Hk, key/value heads (a divisor of ``heads``); default ``heads``.
        bias: biases in the projections.
        strict: a position does not attend to itself (see ``causal_attention``).
        layer_idx: which layer of a :class:`artrt.sampling.KVCache` ``step`` uses.

    ``forward(x, order=None)``: x (B, T, C) -> (B, T, C); ``order`` as in
    :func:`artrt.ops.attention.causal_attention` (positions of x in raster layout).

    ``step(x, cache)``: x (B, T_new, C), the next T_new positions *in generation order*
    (for an arbitrary order, the caller feeds tokens in that order: there the mask is
    causal). Appends their keys/values to layer ``layer_idx`` of ``cache``, advances that
    layer's lengths by T_new and returns (B, T_new, C): the same rows ``forward`` gives for
    those positions of the generation-ordered sequence.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, *, bias: bool = True,
                 strict: bool = False, layer_idx: int = 0):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if dim % heads:
            raise ValueError(f"CausalSelfAttention: dim {dim} must be a multiple of heads {heads}")
        if heads % kv_heads:
            raise ValueError(f"CausalSelfAttention: heads {heads} must be a multiple of "
                             f"kv_heads {kv_heads}")
        self.dim, self.heads, self.kv_heads = dim, heads, kv_heads
        self.head_dim = dim // heads
        self.strict, self.layer_idx = strict, layer_idx
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        d = self.head_dim
        qkv = self.qkv(x)  # (B, T, (H + 2 Hk) D)
        q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = q.view(b, t, self.heads, d).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, t, self.kv_heads, d).transpose(1, 2)  # (B, Hk, T, D)
        v = v.view(b, t, self.kv_heads, d).transpose(1, 2)  # (B, Hk, T, D)
        return q, k, v

    def forward(self, x: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self._qkv(x)
        y = causal_attention(q, k, v, order=order, strict=self.strict)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def step(self, x: torch.Tensor, cache: KVCache, *, length: int | None = None
             ) -> torch.Tensor:
        """x (B, T_new, C) -> (B, T_new, C): attend the new positions to layer ``layer_idx``
        of ``cache``, appending their keys and values and advancing it.

        ``length``: how many positions every sequence of that layer holds, when the caller
        knows it on the host (a sampler at step s); then the cache's lengths are not read
        back from the device, and the step does not synchronise. It must be right: it is not
        compared with the cache's own count."""
        b, t, c = x.shape
        cache.check(self.layer_idx, b, self.kv_heads, self.head_dim, x.dtype, x.device)
        q, k, v = self._qkv(x)
        k_cache, v_cache, seqlens = cache.layer(self.layer_idx)
        y = attention_decode(q, k_cache, v_cache, seqlens, k, v, strict=self.strict,
                             _lengths=None if length is None else [length] * b)
        cache.advance(self.layer_idx, t)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}, "
                f"strict={self.strict}, layer_idx={self.layer_idx}")
