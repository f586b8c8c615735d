"""MultiscalePixelCNN: a small PixelCNN generates a coarse base image pixel by pixel; each finer
scale is then generated in a few parallel groups conditioned on the coarser one, so sampling
takes O(log N) network passes instead of N.

Follows Reed et al., "Parallel Multiscale Autoregressive Density Estimation" (2017): the
image at scale k is the subsample ``x[:, :, ::2**(S-k), ::2**(S-k)]`` (S = ``scales``), so
the coarser scale is exactly the top-left pixel of every 2x2 block of the finer one. A finer
scale splits into 4 groups, the 2x2 sub-lattice positions (a, b) in raster order; group 0
*is* the coarser scale, and groups 1, 2, 3 are each drawn in one parallel pass of a
convolutional network that sees the coarser scale and the earlier groups (all at the coarse
resolution, stacked as channels)::

    one scale (4 x 4 from 2 x 2)     groups
      0 1 0 1                        0: the coarser image (known)
      2 3 2 3                        1: (0, 1)   one pass, conditioned on group 0
      0 1 0 1                        2: (1, 0)   one pass, groups 0-1
      2 3 2 3                        3: (1, 1)   one pass, groups 0-2

The base, ``(H / 2**S, W / 2**S)``, is a PixelCNN of :class:`artrt.nn.MaskedConv2d` layers
(mask A, then mask B, R < G < B colour groups), one pixel (sub-pixel) per pass. Sampling
(its cache, :class:`artrt.sampling.multiscale.MultiscalePixelCNNCache`) therefore takes
``C * (H0 * W0 + 3 S)`` passes; with a base of fixed size and S = log2(H / H0), that is
O(log N). ``sample(cache=False)`` is the plain loop: one full forward pass per sub-pixel.

``p(x) = p(x_0) * prod_k prod_{g=1..3} p(group g of x_k | x_{k-1}, groups < g of x_k)``,
every factor a product of per-pixel ``levels``-way softmaxes; ``nll`` is exact.

Departures from the paper: colour images draw the channels of a group one after the other
(each (group, channel) is its own pass: 3 C passes per scale) where the paper conditions the
channels inside its group networks; the group networks are small gated residual CNNs
(:func:`artrt.gated_tanh`) rather than the paper's shallow PixelCNN/ResNet stacks with
spatial upsampling; one network per scale, shared by the 3 C steps of that scale through a
learned step embedding; class conditioning by learned biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from artrt.models._common import DiscreteARModel, check_config
from artrt.nn import MaskedConv2d
from artrt.ops.gated import gated_tanh
from artrt.sampling.multiscale import MultiscalePixelCNNCache

# The 2x2 sub-lattice offsets (a, b) of the four groups of a scale; group 0 is the coarser
# scale.
GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass
class MultiscalePixelCNNConfig:
    """shape (C, H, W), H and W multiples of 2**scales; levels; num_classes (0:
    unconditional); scales S: 2x upsampling stages above the base; base_channels (a multiple
    of C), base_layers, base_kernel (odd): the base PixelCNN; channels, layers: width and
    gated residual layers of each scale's group network."""

    shape: tuple[int, ...] = (1, 8, 8)
    levels: int = 17
    num_classes: int = 0
    scales: int = 2
    base_channels: int = 48
    base_layers: int = 2
    base_kernel: int = 3
    channels: int = 32
    layers: int = 2


class _BasePixelCNN(nn.Module):
    """PixelCNN over the base image: v (B, C, h, w) floats -> logits (B, L, C, h, w)."""

    def __init__(self, c: int, levels: int, channels: int, layers: int, kernel: int,
                 num_classes: int):
        super().__init__()
        self.c, self.levels = c, levels
        self.inp = MaskedConv2d(c, channels, kernel, "A", color_groups=c)
        self.convs = nn.ModuleList(MaskedConv2d(channels, channels, kernel, "B", color_groups=c)
                                   for _ in range(layers))
        self.out = MaskedConv2d(channels, c * levels, 1, "B", color_groups=c)
        self.class_emb = nn.Embedding(num_classes, channels) if num_classes else None

    def forward(self, v: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        bias = self.class_emb(label) if self.class_emb is not None else None  # (B, F)
        h = self.inp(v, bias)  # (B, F, h, w)
        for conv in self.convs:
            h = h + conv(F.relu(h))
        out = self.out(F.relu(h))  # (B, C * L, h, w), channel c's logits in block c
        b, _, hh, ww = out.shape
        return out.view(b, self.c, self.levels, hh, ww).transpose(1, 2)  # (B, L, C, h, w)


class _GroupNet(nn.Module):
    """The network of one scale: the 4 C group slots at the coarse resolution (unknown ones
    zeroed) and the step id q = (g - 1) * C + c -> logits (N, L, h, w) of channel c of
    group g."""

    def __init__(self, c: int, levels: int, channels: int, layers: int, num_classes: int):
        super().__init__()
        self.layers, self.channels = layers, channels
        self.inp = nn.Conv2d(4 * c, channels, 3, padding=1)
        self.step_emb = nn.Embedding(3 * c, layers * 2 * channels)
        self.class_emb = (nn.Embedding(num_classes, layers * 2 * channels) if num_classes
                          else None)
        self.convs = nn.ModuleList(nn.Conv2d(channels, 2 * channels, 3, padding=1)
                                   for _ in range(layers))
        self.projs = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(layers))
        self.out = nn.Conv2d(channels, levels, 1)

    def forward(self, slots: torch.Tensor, step: torch.Tensor,
                label: torch.Tensor | None) -> torch.Tensor:
        n = slots.shape[0]
        bias = self.step_emb(step)  # (N, layers * 2F)
        if self.class_emb is not None:
            bias = bias + self.class_emb(label)
        bias = bias.view(n, self.layers, 2 * self.channels, 1, 1)
        h = self.inp(slots)  # (N, F, h, w)
        for i, (conv, proj) in enumerate(zip(self.convs, self.projs, strict=True)):
            h = h + proj(gated_tanh(conv(h), bias[:, i]))
        return self.out(F.relu(h))  # (N, L, h, w)


class MultiscalePixelCNN(DiscreteARModel):
    """Base PixelCNN plus one group network per finer scale; see the module docstring.
    Interface: :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, C, H, W) -> logits (B, levels, C, H, W).
    ``generation_steps()``: (C, H, W) int64, the network pass in which each sub-pixel is
    drawn (sub-pixels of one step are drawn together); ``passes``: how many there are.
    ``nll`` is exact (see the module docstring); ``sample`` takes ``passes`` network passes
    through ``new_cache(batch_size, cond=None)``, the cache it runs by default.
    """

    name = "MultiscalePixelCNN"

    def __init__(self, config: MultiscalePixelCNNConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes)
        c, h, w = shape
        s = config.scales
        if isinstance(s, bool) or not isinstance(s, int) or s < 0 \
                or h % (1 << s) or w % (1 << s):
            raise ValueError(f"{name}: scales must be an int >= 0 with H and W multiples of "
                             f"2**scales, got scales={s!r} for shape {shape}")
        if config.base_channels % c:
            raise ValueError(f"{name}: base_channels {config.base_channels} must be a "
                             f"multiple of the {c} channels (colour groups)")
        self.config, self.shape = config, shape
        self.base_size = (h >> s, w >> s)
        self.base = _BasePixelCNN(c, config.levels, config.base_channels, config.base_layers,
                                  config.base_kernel, config.num_classes)
        self.upsamplers = nn.ModuleList(
            _GroupNet(c, config.levels, config.channels, config.layers, config.num_classes)
            for _ in range(s))
        # known[q, j]: slot j = g * C + c (group g, channel c) is known at step q of a scale.
        known = torch.arange(4 * c)[None, :] < (c + torch.arange(3 * c))[:, None]
        self.register_buffer("known", known, persistent=False)  # (3C, 4C) bool
        self.passes = c * (self.base_size[0] * self.base_size[1] + 3 * s)

    # ----------------------------------------------------------------- layout helpers

    def _stride(self, k: int) -> int:
        """Stride in x of the scale-k image (k = 0: base, k = S: x)."""
        return 1 << (self.config.scales - k)

    def _group_slice(self, k: int, q: int) -> tuple[int, slice, slice]:
        """(channel, rows, cols) of x drawn at step q of scale k >= 1."""
        c = self.shape[0]
        a, b = GROUPS[1 + q // c]
        st = self._stride(k)
        return q % c, slice(a * st, None, 2 * st), slice(b * st, None, 2 * st)

    def generation_steps(self) -> torch.Tensor:
        """(C, H, W) int64: the pass that draws each sub-pixel (base: raster order of
        (pixel, channel); then 3 C passes per scale)."""
        c = self.shape[0]
        h0, w0 = self.base_size
        steps = torch.empty(self.shape, dtype=torch.int64)
        st = self._stride(0)
        base = torch.arange(h0 * w0 * c).view(h0, w0, c).permute(2, 0, 1)
        steps[:, ::st, ::st] = base
        for k in range(1, self.config.scales + 1):
            for q in range(3 * c):
                ch, rows, cols = self._group_slice(k, q)
                steps[ch, rows, cols] = h0 * w0 * c + (k - 1) * 3 * c + q
        return steps

    # ----------------------------------------------------------------- networks

    def _scale_logits(self, k: int, v: torch.Tensor, q: torch.Tensor,
                      cond: torch.Tensor | None) -> torch.Tensor:
        """Logits of the given steps of scale k >= 1 in one batched pass of its network.

        v: (B, C, H, W) input; q: (Q,) int64 step ids on v's device (made there once: a
        tensor built from a host list inside the sampler's steps would be a copy to the
        device at every step); returns (Q, B, L, h, w), h, w the coarse size.
        """
        b, c = v.shape[:2]
        st = self._stride(k)
        xk = v[:, :, ::st, ::st]  # (B, C, Hk, Wk)
        slots = torch.stack([xk[:, :, a::2, bb::2] for a, bb in GROUPS], 1)  # (B, 4, C, h, w)
        slots = slots.flatten(1, 2)  # (B, 4C, h, w), slot g * C + c
        mask = self.known[q].to(v.dtype)[:, None, :, None, None]  # (Q, 1, 4C, 1, 1)
        inp = (slots.unsqueeze(0) * mask).flatten(0, 1)  # (Q * B, 4C, h, w)
        label = None if cond is None else cond.repeat(q.shape[0])
        out = self.upsamplers[k - 1](inp, q.repeat_interleave(b), label)  # (Q * B, L, h, w)
        return out.view(q.shape[0], b, *out.shape[1:])

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        b = v.shape[0]
        v = v.to(self.known.device, self.base.inp.weight.dtype)
        c, h, w = self.shape
        logits = v.new_zeros(b, self.config.levels, c, h, w)
        st = self._stride(0)
        logits[..., ::st, ::st] = self.base(v[:, :, ::st, ::st], cond)
        for k in range(1, self.config.scales + 1):
            q = torch.arange(3 * c, device=v.device)
            out = self._scale_logits(k, v, q, cond)  # (3C, B, L, h, w)
            for q in range(3 * c):
                ch, rows, cols = self._group_slice(k, q)
                logits[:, :, ch, rows, cols] = out[q]
        return logits  # (B, L, C, H, W)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None
                  ) -> MultiscalePixelCNNCache:
        """A :class:`artrt.sampling.multiscale.MultiscalePixelCNNCache` (one pass of one
        network per step: ``passes`` in all) for ``batch_size`` samples, on the model's
        device."""
        return MultiscalePixelCNNCache(self, batch_size, cond)

    def extra_repr(self) -> str:
        return f"base_size={self.base_size}, scales={self.config.scales}, passes={self.passes}"


__all__ = ["MultiscalePixelCNN", "MultiscalePixelCNNConfig"]
