"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves and Kavukcuoglu,
"Conditional Image Generation with PixelCNN Decoders", 2016): a stack of
:class:`artrt.nn.GatedPixelCNNLayer` (vertical and horizontal stacks, gated activations, no
blind spot), then a 1x1 head on the horizontal stack.

Ordering: pixel by pixel in raster order; within a pixel R, then G, then B. The layers see
only the pixels before the current one (the first is mask A) and model a pixel's channels
jointly, so for ``C > 1`` the head adds the current pixel's earlier channels through a mask-A
1x1 :class:`artrt.nn.MaskedConv2d` with ``color_groups=C`` (channel c's logits see channels
< c of its pixel), and its output layer is colour-grouped (mask B)::

    h (causal past) -> ReLU -> 1x1 ------------------+-> ReLU -> 1x1 mask B, C groups -> logits
    x (the image)   -> 1x1 mask A, C groups (C > 1) -+

Output: a Bernoulli logit per sub-pixel for binary data (returned as the two-level logits
(0, l)), a ``levels``-way softmax per channel otherwise. Class-conditional when
``num_classes > 0``: ``cond`` (B,) labels, one-hot encoded and fed to every layer as its
conditioning bias (``V^T h`` of the paper, one linear map per layer).

Sampling: ``sample`` runs :class:`artrt.sampling.pixelcnn.GatedPixelCNNCache` (``new_cache``)
by default, which recomputes only what depends on the newest sub-pixel (Fast PixelCNN);
``sample(cache=False)`` reruns the full network per sub-pixel.

Departures: the first layer's kernel (``kernel_size``, default 7) differs from the others'
(``layer_kernel_size``, default 3), as in PixelCNN; the colour path of the head above
replaces the paper's channel-split stacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from artrt.models._common import DiscreteARModel, check_config, grouped_logits, logit_channels
from artrt.nn.gated_pixelcnn import GatedPixelCNNLayer
from artrt.nn.masked_conv import MaskedConv2d
from artrt.sampling.cache import ARCache


@dataclass
class GatedPixelCNNConfig:
    """shape: (C, H, W). levels: values per sub-pixel (2: Bernoulli output). num_classes:
    0, or the number of class labels. channels: of each stack. layers: Gated PixelCNN
    layers, the first mask A. kernel_size: the first layer's (odd). layer_kernel_size: the
    others' (odd). head_channels: the head's hidden width (a multiple of C)."""

    shape: tuple[int, ...] = (1, 28, 28)
    levels: int = 2
    num_classes: int = 0
    channels: int = 64
    layers: int = 8
    kernel_size: int = 7
    layer_kernel_size: int = 3
    head_channels: int = 128


class GatedPixelCNN(DiscreteARModel):
    """Gated PixelCNN over images of ``config.shape``; see the module docstring. Interface:
    :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, C, H, W) -> logits (B, levels, C, H, W) (binary
    data: the Bernoulli logit l as (0, l)). ``generation_steps()``: (C, H, W) int64, the
    raster / RGB step of each sub-pixel.
    """

    name = "GatedPixelCNN"

    def __init__(self, config: GatedPixelCNNConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes)
        if config.layers < 1:
            raise ValueError(f"{name}: layers must be >= 1, got {config.layers}")
        c = shape[0]
        if config.head_channels < 1 or config.head_channels % c:
            raise ValueError(f"{name}: head_channels must be a positive multiple of C = {c}, "
                             f"got {config.head_channels}")
        self.config, self.shape = config, shape
        n = config.num_classes
        self.layers = nn.ModuleList(
            [GatedPixelCNNLayer(config.channels, config.kernel_size, n, residual=False,
                                mask_type="A", in_channels=c)]
            + [GatedPixelCNNLayer(config.channels, config.layer_kernel_size, n)
               for _ in range(config.layers - 1)])
        self.head = nn.Conv2d(config.channels, config.head_channels, 1)
        self.colour = (MaskedConv2d(c, config.head_channels, 1, "A", c, bias=False) if c > 1
                       else None)
        self.out = MaskedConv2d(config.head_channels, c * logit_channels(config.levels), 1,
                                "B", c)

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        v = v.to(self.head.weight.dtype)
        label = (None if cond is None
                 else F.one_hot(cond, self.config.num_classes).to(v.dtype))  # (B, classes)
        vert = horiz = v
        for layer in self.layers:
            vert, horiz = layer(vert, horiz, label)  # (B, channels, H, W) each
        hidden = self.head(F.relu(horiz))  # (B, head_channels, H, W)
        if self.colour is not None:
            hidden = hidden + self.colour(v)
        return grouped_logits(self.out(F.relu(hidden)), self.config.levels)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None) -> ARCache:
        """A fresh :class:`artrt.sampling.pixelcnn.GatedPixelCNNCache` for ``batch_size`` samples
        (cond: (batch_size,) int64 labels when class-conditional), on the model's device;
        it reads the weights at every step."""
        from artrt.sampling.pixelcnn import GatedPixelCNNCache  # it imports artrt.models

        return GatedPixelCNNCache(self, batch_size, cond)


__all__ = ["GatedPixelCNN", "GatedPixelCNNConfig"]
