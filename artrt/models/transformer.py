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
no dropout. The plain ``sample`` loop reruns the whole network per token (the cached sampler
over ``CausalSelfAttention.step`` belongs to the sampling issue).

This file also holds the small checks and the inverse-CDF sampler shared by the models in
``artrt.models.wavenet`` and ``artrt.models.multiscale``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from artrt.data import to_input
from artrt.nn import CausalSelfAttention
from artrt.ops.attention import random_order, raster_order, zigzag_order

# --------------------------------------------------------------------------- shared helpers


def check_config(name: str, shape: tuple[int, ...], levels: int, num_classes: int,
                 ndims: tuple[int, ...] = (3,)) -> tuple[int, ...]:
    """Validate the common config fields; returns ``shape`` as a tuple of ints."""
    shape = tuple(shape)
    if len(shape) not in ndims or not all(isinstance(s, int) and s >= 1 for s in shape):
        want = " or ".join({2: "(C, T)", 3: "(C, H, W)"}[n] for n in ndims)
        raise ValueError(f"{name}: shape must be {want} of positive ints, got {shape}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"{name}: levels must be an int >= 2, got {levels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{name}: num_classes must be an int >= 0, got {num_classes!r}")
    return shape


def check_data(name: str, x: torch.Tensor, shape: tuple[int, ...], levels: int) -> None:
    """x: integer levels (B, *shape) in [0, levels); TypeError / ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor of integer levels, got "
                        f"{type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: x must hold integer levels (int64 or uint8), got {x.dtype}; "
                        f"floats in [-1, 1] go to forward_input")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name}: x must have shape (B, {', '.join(map(str, shape))}), got "
                         f"{tuple(x.shape)}")
    if x.numel():
        lo, hi = int(x.min()), int(x.max())  # Python ints: uint8 would wrap levels = 256
        if lo < 0 or hi >= levels:
            raise ValueError(f"{name}: x must hold levels in [0, {levels}), got values in "
                             f"[{lo}, {hi}]")


def check_input(name: str, v: torch.Tensor, shape: tuple[int, ...]) -> None:
    """v: float model input (B, *shape)."""
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"{name}: forward_input takes the float input to_input(x, levels), got "
                        f"{getattr(v, 'dtype', type(v).__name__)}")
    if v.dim() != len(shape) + 1 or tuple(v.shape[1:]) != shape:
        raise ValueError(f"{name}: input must have shape (B, {', '.join(map(str, shape))}), "
                         f"got {tuple(v.shape)}")


def check_cond(name: str, cond: torch.Tensor | None, batch: int, num_classes: int) -> None:
    """cond: None when num_classes == 0, else int64 labels (B,) in [0, num_classes)."""
    if num_classes == 0:
        if cond is not None:
            raise ValueError(f"{name}: got cond, but the model is unconditional "
                             f"(num_classes=0)")
        return
    if cond is None:
        raise ValueError(f"{name}: the model is class-conditional (num_classes={num_classes}): "
                         f"cond, int64 labels of shape ({batch},), is required")
    if not isinstance(cond, torch.Tensor) or cond.dtype != torch.int64:
        raise TypeError(f"{name}: cond must be an int64 tensor of labels, got "
                        f"{getattr(cond, 'dtype', type(cond).__name__)}")
    if tuple(cond.shape) != (batch,):
        raise ValueError(f"{name}: cond must have shape ({batch},), got {tuple(cond.shape)}")
    if cond.numel() and (cond.min() < 0 or cond.max() >= num_classes):
        raise ValueError(f"{name}: labels must be in [0, {num_classes}), got values in "
                         f"[{cond.min().item()}, {cond.max().item()}]")


def categorical_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits (B, L, *shape), x int (B, *shape) -> (B,) nats, summed over all dimensions."""
    nll = F.cross_entropy(logits.float(), x.long(), reduction="none")  # (B, *shape)
    return nll.flatten(1).sum(1)


def inverse_cdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw from softmax(logits) by the inverse CDF: logits (..., L), u (...) in [0, 1) ->
    int64 (...): the smallest level whose cumulative probability exceeds u."""
    cdf = logits.float().softmax(-1).cumsum(-1).contiguous()  # (..., L)
    idx = torch.searchsorted(cdf, u.to(cdf.dtype).unsqueeze(-1).contiguous(), right=True)
    return idx.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def draw_uniforms(name: str, n: int, shape: tuple[int, ...], generator: torch.Generator | None,
                  uniforms: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The U(0, 1) number of every position, (n, *shape) float32 on ``device``: ``uniforms``
    as given (checked), else drawn from ``generator`` (on the generator's device)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be an int >= 1, got {n!r}")
    if uniforms is None:
        gen_device = generator.device if generator is not None else device
        return torch.rand((n, *shape), generator=generator, device=gen_device).to(device)
    if not isinstance(uniforms, torch.Tensor) or not uniforms.is_floating_point():
        raise TypeError(f"{name}: uniforms must be a float tensor, got "
                        f"{getattr(uniforms, 'dtype', type(uniforms).__name__)}")
    if tuple(uniforms.shape) != (n, *shape):
        raise ValueError(f"{name}: uniforms must have shape {(n, *shape)}, got "
                         f"{tuple(uniforms.shape)}")
    if uniforms.numel() and (uniforms.min() < 0 or uniforms.max() >= 1):
        raise ValueError(f"{name}: uniforms must lie in [0, 1)")
    return uniforms.to(device=device, dtype=torch.float32)


@contextmanager
def sampling_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a sampling loop; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- the model

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
    """Pre-LN transformer block: h + attn(ln(h)), then + mlp(ln(h)). (B, T, dim) both ways."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, h: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), order)
        return h + self.mlp(self.ln2(h))


class ARTransformer(nn.Module):
    """Decoder-only transformer over (sub-)pixels; see the module docstring for the ordering
    and the shift. Interface: :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, C, H, W) -> logits (B, levels, C, H, W).
    ``generation_steps()``: (C, H, W) int64, the step at which each sub-pixel is drawn.
    """

    def __init__(self, config: ARTransformerConfig):
        super().__init__()
        name = "ARTransformer"
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
        self.blocks = nn.ModuleList(_Block(d, config.heads, config.mlp_ratio)
                                    for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.levels)

    def generation_steps(self) -> torch.Tensor:
        """(C, H, W) int64: the rank at which each sub-pixel is generated."""
        c, h, w = self.shape
        return self.rank.view(h, w, c).permute(2, 0, 1).contiguous()

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        name = "ARTransformer"
        check_input(name, v, self.shape)
        b = v.shape[0]
        check_cond(name, cond, b, self.config.num_classes)
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
        return logits.view(b, h, w, c, -1).permute(0, 4, 3, 1, 2)  # (B, L, C, H, W)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_data("ARTransformer", x, self.shape, self.config.levels)
        return self.forward_input(to_input(x, self.config.levels).to(self.pos.device), cond)

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) negative log-likelihood in nats."""
        return categorical_nll(self(x, cond), x)

    def sample(self, n: int, cond: torch.Tensor | None = None, *,
               generator: torch.Generator | None = None, progress: bool = False,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """(n, C, H, W) int64, one token per network pass in generation order; ``uniforms``
        (n, C, H, W) in [0, 1): the number used for each sub-pixel."""
        name = "ARTransformer.sample"
        device = self.pos.device
        u = draw_uniforms(name, n, self.shape, generator, uniforms, device)
        check_cond(name, cond, n, self.config.num_classes)
        c, h, w = self.shape
        x = torch.zeros((n, *self.shape), dtype=torch.int64, device=device)
        with sampling_mode(self):
            for t in tqdm(self.rank.argsort().tolist(), disable=not progress, desc=name):
                pixel, ch = divmod(t, c)
                i, j = divmod(pixel, w)
                logits = self(x, cond)[:, :, ch, i, j]  # (n, L)
                x[:, ch, i, j] = inverse_cdf(logits, u[:, ch, i, j])
        return x

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, ordering={self.config.ordering!r}"


__all__ = ["ARTransformer", "ARTransformerConfig"]
