"""ARTransformer: a decoder-only transformer over the pixels (or sub-pixels) of an image, in
raster, zig-zag or a fixed random generation order.

Follows the masked self-attention image models (Parmar et al., "Image Transformer", 2018;
Chen et al., "Generative Pretraining from Pixels", 2020) in nanoGPT's layout: pre-LayerNorm
blocks of :class:`artrt.nn.CausalSelfAttention` and an MLP, learned position embeddings, a
class embedding added to every token, a ``levels``-way softmax per token.

Tokens: one per pixel (C = 1) or one per sub-pixel (C > 1), laid out in raster order of
(pixel, channel): token ``t = (i * W + j) * C + c`` holds ``x[c, i, j]``. The ordering ranks
the *pixels* (``raster_order``, ``zigzag_order`` or ``random_order`` with a fixed seed); the
channels of a pixel follow one another, so token rank = pixel rank * C + c.

How the input at a position avoids its own value (shift along the ordering): the tokens stay
in raster layout and attention takes ``order=rank`` (non-strict), but the value fed at
position p is the value of the position generated just *before* p (a learned start vector for
the first); p's own embedding adds only its position (and the class). Position p then sees
the values of exactly the positions of lower rank::

    ranks (zig-zag)   input at p = value of the rank-1 position + pos(p)
      0 1 2             start+pos0  v0+pos1   v1+pos2
      5 4 3             v4+pos3     v3+pos4   v2+pos5      (vN: value of rank-N pixel)

Departures from the papers: values enter through a linear map of the [-1, 1] input (not a
token embedding table) so the Jacobian of the logits with respect to the input is defined;
no dropout. ``sample`` decodes one token per step in generation order against a key/value
cache (:class:`artrt.sampling.transformer.ARTransformerCache`, over
``CausalSelfAttention.step``); ``sample(cache=False)`` reruns the whole network per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from artrt.models._common import DiscreteARModel, check_config
from artrt.nn import CausalSelfAttention
from artrt.ops.attention import random_order, raster_order, zigzag_order
from artrt.sampling.transformer import ARTransformerCache

ORDERINGS = ("raster", "zigzag", "random")


@dataclass
class ARTransformerConfig:
    """shape (C, H, W); levels per sub-pixel; num_classes (0: unconditional); dim: model
    width; heads: attention heads (dim / heads <= 128); layers: transformer blocks;
    mlp_ratio: MLP hidden width / dim; ordering: "raster", "zigzag" or "random" (a random
    permutation of the pixels fixed by ``order_seed``)."""

    shape: tuple[int, ...] = (1, 8, 8)
    levels: int = 17
    num_classes: int = 0
    dim: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    ordering: str = "raster"
    order_seed: int = 0


def token_ranks(shape: tuple[int, int, int], ordering: str, seed: int = 0) -> torch.Tensor:
    """Generation rank of every token, (C * H * W,) int64 in the raster layout of
    (pixel, channel): pixels ranked by ``ordering``, channels of a pixel consecutive."""
    c, h, w = shape
    if ordering == "raster":
        pixel = raster_order(h * w)
    elif ordering == "zigzag":
        pixel = zigzag_order(h, w)
    elif ordering == "random":
        pixel = random_order(h * w, generator=torch.Generator().manual_seed(seed))
    else:
        raise ValueError(f"ARTransformer: ordering must be one of {ORDERINGS}, got "
                         f"{ordering!r}")
    return (pixel[:, None] * c + torch.arange(c)).reshape(-1)


class _Block(nn.Module):
    """Pre-LN transformer block: h + attn(ln(h)), then + mlp(ln(h)). (B, T, dim) both ways.
    ``layer_idx``: the block's layer of a :class:`artrt.sampling.KVCache` (decode steps)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, layer_idx: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, layer_idx=layer_idx)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, h: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), order)
        return h + self.mlp(self.ln2(h))


class ARTransformer(DiscreteARModel):
    """Decoder-only transformer over (sub-)pixels; see the module docstring for the ordering
    and the shift. Interface: :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, C, H, W) -> logits (B, levels, C, H, W).
    ``generation_steps()``: (C, H, W) int64, the step at which each sub-pixel is drawn;
    ``sample`` draws the tokens in that order. ``new_cache(batch_size, cond=None)``: the
    key/value cache ``sample`` decodes with by default.
    """

    name = "ARTransformer"

    def __init__(self, config: ARTransformerConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes)
        if config.dim % config.heads or config.dim // config.heads > 128:
            raise ValueError(f"{name}: dim {config.dim} must be a multiple of heads "
                             f"{config.heads} with dim / heads <= 128")
        self.config = config
        c, h, w = shape
        self.shape, self.tokens = shape, c * h * w
        rank = token_ranks(shape, config.ordering, config.order_seed)  # (T,)
        perm = rank.argsort()  # token index of the s-th generated token
        prev = torch.empty_like(perm)  # token generated just before each token
        prev[perm[1:]] = perm[:-1]
        prev[perm[0]] = perm[0]  # placeholder, replaced by the start vector
        self.register_buffer("rank", rank, persistent=False)
        self.register_buffer("prev", prev, persistent=False)
        self.register_buffer("is_first", rank == 0, persistent=False)
        d = config.dim
        self.value_in = nn.Linear(1, d)
        self.start = nn.Parameter(torch.zeros(d))
        self.pos = nn.Parameter(0.02 * torch.randn(self.tokens, d))
        self.class_emb = nn.Embedding(config.num_classes, d) if config.num_classes else None
        self.blocks = nn.ModuleList(_Block(d, config.heads, config.mlp_ratio, layer_idx=i)
                                    for i in range(config.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.levels)

    def generation_steps(self) -> torch.Tensor:
        """(C, H, W) int64: the rank at which each sub-pixel is generated."""
        c, h, w = self.shape
        return self.rank.view(h, w, c).permute(2, 0, 1).contiguous()

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        b = v.shape[0]
        c, h, w = self.shape
        tokens = v.permute(0, 2, 3, 1).reshape(b, self.tokens)  # (B, T) (pixel, channel)
        shifted = tokens[:, self.prev]  # (B, T): value of the previously generated token
        e = self.value_in(shifted.unsqueeze(-1).to(self.pos.dtype))  # (B, T, dim)
        e = torch.where(self.is_first[:, None], self.start, e) + self.pos
        if self.class_emb is not None:
            e = e + self.class_emb(cond)[:, None, :]
        order = None if self.config.ordering == "raster" else self.rank
        for block in self.blocks:
            e = block(e, order)
        logits = self.head(self.ln_f(e))  # (B, T, L)
        return logits.view(b, h, w, c, logits.shape[-1]).permute(0, 4, 3, 1, 2)  # (B, L, C, H, W)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None
                  ) -> ARTransformerCache:
        """A :class:`artrt.sampling.transformer.ARTransformerCache` (keys and values of every
        layer, one token per step) for ``batch_size`` samples, on the model's device."""
        return ARTransformerCache(self, batch_size, cond)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, ordering={self.config.ordering!r}"


__all__ = ["ARTransformer", "ARTransformerConfig"]
