"""PixelCNN (van den Oord, Kalchbrenner and Kavukcuoglu, "Pixel Recurrent Neural Networks",
2016): a mask-A k x k convolution, residual blocks of mask-B convolutions, a 1x1 head.

Ordering: pixel by pixel in raster order; within a pixel R, then G, then B (``C = 3``:
every convolution is an :class:`artrt.nn.MaskedConv2d` with ``color_groups=3``, so channel c
of pixel p sees every channel of the pixels before p and channels < c of p)::

    raster order of a 3 x 3 image       first layer, mask A (k = 5)
      0 1 2                               x x x x x
      3 4 5                               x x x x x
      6 7 8                               x x . . .      x: live tap, .: masked
                                          . . . . .      (mask B adds the centre)
                                          . . . . .

Residual block (the paper's Figure 5), on a stream of ``channels`` = 2h channels::

    x -> ReLU -> 1x1 (2h -> h) -> ReLU -> k x k mask B (h -> h) -> ReLU -> 1x1 (h -> 2h) -> + x

Output: a Bernoulli logit per sub-pixel for binary data (``levels == 2``; ``forward`` returns
it as the two-level logits (0, l), the layout every model of :mod:`artrt.models` shares), a
``levels``-way softmax per colour channel otherwise (256 for 8-bit data). ``num_classes > 0``
makes it class-conditional: a learned per-class bias on every masked convolution (the
"one-hot label fed as a bias" of Conditional PixelCNN).

Sampling: ``sample`` runs :class:`artrt.sampling.pixelcnn.PixelCNNCache` (``new_cache``)
by default, which recomputes only what depends on the newest sub-pixel (Fast PixelCNN);
``sample(cache=False)`` reruns the full network per sub-pixel.

Departures: the 1x1 convolutions are mask-B :class:`artrt.nn.MaskedConv2d` (plain 1x1 for
one channel, colour-grouped for RGB) instead of separate per-colour layers; colour groups are
contiguous channel blocks (the output of channel c, level l is channel ``c * K + l``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from artrt.models._common import DiscreteARModel, check_config, grouped_logits, logit_channels
from artrt.nn.masked_conv import MaskedConv2d
from artrt.sampling.cache import ARCache


@dataclass
class PixelCNNConfig:
    """shape: (C, H, W) (C = 3: RGB). levels: values per sub-pixel (2: Bernoulli output).
    num_classes: 0, or the labels of class-conditional PixelCNN. channels: the residual
    stream 2h (h a multiple of C). blocks: residual blocks. kernel_size: the first layer's
    (odd). block_kernel_size: the blocks' (odd). head_channels: the 1x1 head's hidden width
    (a multiple of C)."""

    shape: tuple[int, ...] = (1, 28, 28)
    levels: int = 2
    num_classes: int = 0
    channels: int = 64
    blocks: int = 7
    kernel_size: int = 7
    block_kernel_size: int = 3
    head_channels: int = 128


class ResidualBlock(nn.Module):
    """The paper's residual block: 1x1 down to h, k x k mask B, 1x1 up to 2h, plus x.
    (B, 2h, H, W) both ways; cond (B,) labels or None."""

    def __init__(self, channels: int, kernel_size: int, groups: int, num_classes: int):
        super().__init__()
        h = channels // 2
        self.down = MaskedConv2d(channels, h, 1, "B", groups)
        self.conv = MaskedConv2d(h, h, kernel_size, "B", groups)
        self.up = MaskedConv2d(h, channels, 1, "B", groups)
        self.cond = nn.Embedding(num_classes, h) if num_classes else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        bias = None if self.cond is None else self.cond(cond)  # (B, h)
        y = self.conv(F.relu(self.down(F.relu(x))), bias)
        return x + self.up(F.relu(y))


class PixelCNN(DiscreteARModel):
    """PixelCNN over images of ``config.shape``; see the module docstring. Interface:
    :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, C, H, W) -> logits (B, levels, C, H, W) (for
    binary data the Bernoulli logit l of each sub-pixel as the two-level logits (0, l)).
    ``generation_steps()``: (C, H, W) int64, the raster / RGB step of each sub-pixel.
    """

    name = "PixelCNN"

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes)
        c = shape[0]
        for field in ("kernel_size", "block_kernel_size"):
            k = getattr(config, field)
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"{name}: {field} must be an odd positive int, got {k!r}")
        if config.channels < 2 or config.channels % (2 * c):
            raise ValueError(f"{name}: channels must be a positive multiple of 2C = {2 * c}, "
                             f"got {config.channels}")
        if config.head_channels < 1 or config.head_channels % c:
            raise ValueError(f"{name}: head_channels must be a positive multiple of C = {c}, "
                             f"got {config.head_channels}")
        if config.blocks < 0:
            raise ValueError(f"{name}: blocks must be >= 0, got {config.blocks}")
        self.config, self.shape = config, shape
        n = config.num_classes
        self.first = MaskedConv2d(c, config.channels, config.kernel_size, "A", c)
        self.first_cond = nn.Embedding(n, config.channels) if n else None
        self.blocks = nn.ModuleList(ResidualBlock(config.channels, config.block_kernel_size, c, n)
                                    for _ in range(config.blocks))
        self.head = MaskedConv2d(config.channels, config.head_channels, 1, "B", c)
        self.out = MaskedConv2d(config.head_channels, c * logit_channels(config.levels), 1,
                                "B", c)

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        v = v.to(self.first.weight.dtype)
        bias = None if self.first_cond is None else self.first_cond(cond)  # (B, 2h)
        h = self.first(v, bias)  # (B, 2h, H, W)
        for block in self.blocks:
            h = block(h, cond)
        return grouped_logits(self.out(F.relu(self.head(F.relu(h)))), self.config.levels)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None) -> ARCache:
        """A fresh :class:`artrt.sampling.pixelcnn.PixelCNNCache` for ``batch_size`` samples
        (cond: (batch_size,) int64 labels when class-conditional), on the model's device;
        it reads the weights at every step."""
        from artrt.sampling.pixelcnn import PixelCNNCache  # it imports artrt.models

        return PixelCNNCache(self, batch_size, cond)


__all__ = ["PixelCNN", "PixelCNNConfig"]
