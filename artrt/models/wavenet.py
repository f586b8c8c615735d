"""WaveNet: stacks of gated residual blocks with doubling dilations and a categorical output,
for mu-law audio and, over the raster sequence with a positional encoding, for images.

Follows WaveNet (van den Oord et al., 2016): a causal input convolution, blocks of
:class:`artrt.nn.WaveNetBlock` (dilated causal conv, ``tanh * sigmoid`` gate, residual and
skip 1x1 convolutions) with dilations 1, 2, 4, ..., 2**(cycle - 1) repeated, the summed
skips through ReLU - 1x1 - ReLU - 1x1 to a ``levels``-way softmax (256 for 8-bit mu-law,
section 2.2; the mu-law companding itself is done by :mod:`artrt.data`, whose
``membrane-mulaw`` set holds the levels), global conditioning on a class label (section 2.5).

Sequence and ordering: x of shape (C, T) or (C, H, W) is read as one sequence with the channel
dimension innermost, ``seq[t * C + c] = x[c, t]`` (images: ``seq[(i * W + j) * C + c] =
x[c, i, j]``, the raster order with the channels of a pixel consecutive); the generation order
is that sequence order.

The shift: the network input at step t is ``seq[t - 1]`` (a learned start value at t = 0),
so with causal convolutions the output at t sees ``seq[t - R .. t - 1]``, R =
``receptive_field``, and never ``seq[t]``::

    seq:     x0    x1    x2    x3  ...
    input:   s     x0    x1    x2  ...     (s: learned start value)
    output:  p(x0) p(x1|x0) ...

Images get a positional encoding (the lecture notes' advice for sequence models of images): a
learned (cond_channels, T) table fed to every block as local conditioning, so the network
knows the row, column and channel of the step it predicts. A class label adds a learned
(cond_channels,) vector to it (or is the global conditioning alone, without the table).

Sampling: ``sample(cache=True)`` (the default) runs the Fast WaveNet sampler of
:mod:`artrt.sampling.wavenet` (Paine et al., 2016): one ring buffer of (K-1) d past inputs
per layer, one step of every layer per sample (one kernel launch on CUDA, replayed from a
captured CUDA graph), O(layers) work per sample; ``cache=False`` keeps the plain loop, which
reruns the whole network per step. Both give the same samples for the same uniforms.

Departures: no local conditioning on linguistic features; the positional encoding is learned
rather than fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from artrt.models._common import DiscreteARModel, check_config
from artrt.nn import CausalConv1d, WaveNetBlock
from artrt.sampling.cache import ARCache
from artrt.sampling.wavenet import WaveNetCache


@dataclass
class WaveNetConfig:
    """shape (C, T) sequences or (C, H, W) images; levels (256: 8-bit mu-law); num_classes
    (0: unconditional); res/gate/skip channels R, G, S of the blocks; kernel_size K; layers
    blocks with dilation ``2 ** (i % dilation_cycle)``; cond_channels: width of the class
    and positional conditioning; positional: the learned positional encoding (None: on for
    images, off for sequences)."""

    shape: tuple[int, ...] = (1, 512)
    levels: int = 256
    num_classes: int = 0
    res_channels: int = 32
    gate_channels: int = 32
    skip_channels: int = 64
    kernel_size: int = 2
    layers: int = 8
    dilation_cycle: int = 8
    cond_channels: int = 16
    positional: bool | None = None


class WaveNet(DiscreteARModel):
    """WaveNet over the channel-innermost sequence of x; see the module docstring.
    Interface: :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, *shape) -> logits (B, levels, *shape).
    ``generation_steps()``: (*shape) int64, the sequence index of each position.
    ``receptive_field``: R, the output at step t sees steps t - R .. t - 1.
    ``sample``: in sequence order; cached (Fast WaveNet, :meth:`new_cache`) by default, one
    network pass per step with ``cache=False``.
    ``new_cache(batch_size, cond=None, cuda_graph=True)``: a
    :class:`artrt.sampling.wavenet.WaveNetCache`.
    """

    name = "WaveNet"

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes, (2, 3))
        if config.layers < 1 or config.dilation_cycle < 1 or config.cond_channels < 1:
            raise ValueError(f"{name}: layers, dilation_cycle and cond_channels must be >= 1, "
                             f"got {config.layers}, {config.dilation_cycle}, "
                             f"{config.cond_channels}")
        self.config = config
        self.shape, self.length = shape, math.prod(shape)
        positional = len(shape) == 3 if config.positional is None else config.positional
        self.positional = positional
        k, cc = config.kernel_size, config.cond_channels
        conditioned = positional or config.num_classes > 0
        dilations = [2 ** (i % config.dilation_cycle) for i in range(config.layers)]
        self.receptive_field = (k - 1) * (1 + sum(dilations)) + 1
        self.start = nn.Parameter(torch.zeros(()))
        self.input = CausalConv1d(1, config.res_channels, k)
        self.pos = nn.Parameter(0.1 * torch.randn(cc, self.length)) if positional else None
        self.class_emb = nn.Embedding(config.num_classes, cc) if config.num_classes else None
        self.blocks = nn.ModuleList(
            WaveNetBlock(config.res_channels, config.gate_channels, config.skip_channels, k, d,
                         cond_channels=cc if conditioned else 0) for d in dilations)
        s = config.skip_channels
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(s, s, 1), nn.ReLU(),
                                  nn.Conv1d(s, config.levels, 1))

    def _conditioning(self, cond: torch.Tensor | None, b: int) -> torch.Tensor | None:
        """(B, Cc, T) local (positional, plus the class), (B, Cc) global (class only), or
        None."""
        label = self.class_emb(cond) if self.class_emb is not None else None  # (B, Cc)
        if self.pos is None:
            return label
        pos = self.pos.unsqueeze(0).expand(b, -1, -1)  # (B, Cc, T)
        return pos if label is None else pos + label.unsqueeze(-1)

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        b = v.shape[0]
        seq = v.movedim(1, -1).reshape(b, 1, self.length).to(self.start.dtype)  # (B, 1, T)
        u = torch.cat([self.start.expand(b, 1, 1), seq[:, :, :-1]], -1)  # shifted right
        h = self.input(u)  # (B, R, T)
        c = self._conditioning(cond, b)
        skips = 0
        for block in self.blocks:
            h, skip = block(h, c)  # (B, R, T), (B, S, T)
            skips = skips + skip
        logits = self.head(skips)  # (B, L, T)
        spatial = self.shape[1:]
        logits = logits.view(b, logits.shape[1], *spatial, self.shape[0])
        return logits.movedim(-1, 2)  # (B, L, *shape)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None, *,
                  cuda_graph: bool = True) -> WaveNetCache:
        """A Fast WaveNet sampling cache (:class:`artrt.sampling.wavenet.WaveNetCache`) for
        ``batch_size`` sequences with labels ``cond`` (B,); ``cuda_graph=False`` makes its
        sampler launch one kernel per step instead of replaying captured CUDA graphs."""
        return WaveNetCache(self, batch_size, cond, cuda_graph=cuda_graph)

    cuda_graph_default = True

    def _draw_cached(self, cache: ARCache, x: torch.Tensor, u: torch.Tensor, progress: bool,
                     desc: str, cuda_graph: bool | None = None) -> None:
        """Fill x (n, *shape) from the uniforms u through the WaveNetCache's own sampler (the
        step op draws every position; CUDA graphs on CUDA unless ``cuda_graph`` is False, or
        None and the cache was made with ``cuda_graph=False``)."""
        x.copy_(cache._draw(u, progress, desc, cuda_graph=cuda_graph))  # u checked by sample

    def extra_repr(self) -> str:
        return (f"length={self.length}, receptive_field={self.receptive_field}, "
                f"positional={self.positional}")


__all__ = ["WaveNet", "WaveNetConfig"]
