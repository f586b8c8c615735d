"""PixelCNN++ (Salimans, Karpathy, Chen and Kingma, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications", ICLR 2017).

Two streams of ``channels`` feature maps: ``u`` (down-shifted convolutions: pixel (i, j) sees
the rows above it) and ``ul`` (down-right-shifted: the rows above and the pixels to its left).
The input is shifted once so that no output sees its own pixel::

    u0  = down_shift(down_shifted_conv_2x3(x))
    ul0 = down_shift(down_shifted_conv_1x3(x)) + right_shift(down_right_shifted_conv_2x1(x))

    receptive field of output (i, j) (o), raster order:   u: x x x x x    ul: x x x x x
                                                             x x x x x        x x x x x
                                                             . . o . .        x x o . .

Then ``stages`` resolutions (the paper's 3: H, H/2, H/4). The up pass runs ``blocks`` gated
resnet blocks per stage (``ul``'s blocks also read ``u``), then a stride-2 down-shifted /
down-right-shifted convolution; every output is kept for a skip connection. The down pass
mirrors it: ``blocks`` (+ 1 after the lowest stage) blocks per stage, each reading the skip of
its up-pass twin (``ul``'s reads ``u`` and its skip), and a stride-2 transposed shifted
convolution between stages. Gated resnet block (``a``: the skip inputs, ``h``: the label)::

    c1 = conv(concat_elu(x)) + nin(concat_elu(a))       concat_elu(x) = elu([x, -x])
    c2 = conv(dropout(concat_elu(c1))) + bias[h]        2 * channels outputs
    out = x + gated_sigmoid(c2)                         a * sigmoid(b), [a, b] = c2

The output ``nin(elu(ul))`` is the discretized mixture of ``num_mix`` logistics of
:mod:`artrt.ops.dmol` (P = 10 K parameters for RGB, the G and B means linear in R and G
through coefficients, 3 K for grayscale), over ``levels`` values of [-1, 1] per sub-pixel.
All channels of a pixel are one generation step: the mixture draws them jointly.

The network is written as a list of :class:`artrt.sampling.pixelcnnpp.Layer` s (each layer's
function, the offsets it reads and its resolution change), which the forward pass runs over
the whole image and :class:`artrt.sampling.pixelcnnpp.PixelCNNppCache` (``new_cache``,
``sample(cache=True)``) over the few positions each sampling step makes final.

Departures from the paper and its code:
- no weight normalisation nor data-dependent initialisation (plain ``nn.Conv2d`` init, the
  second convolution of each block scaled by 0.1 as the paper's ``init_scale``);
- the shifted convolution op has no stride: a stride-2 layer is the stride-1 shifted
  convolution read at the even positions (the same function as the paper's padded stride-2
  convolution), and a transposed one is a shifted convolution of the input placed at the
  even positions with zeros between (the paper's transposed convolution with its kernel
  flipped), cropped to the skip's size, so odd sizes work; both cost 4x the strided
  arithmetic on those layers;
- the class-conditional bias is an ``nn.Embedding`` of the label (the paper's ``h W``);
- the input carries a constant channel of ones, as in the paper's code (it tells the zero
  padding from the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from artrt.levels import from_input, to_input
from artrt.models._common import (
    DiscreteARModel,
    check_config,
    check_data,
)
from artrt.nn.masked_conv import DownRightShiftedConv2d, DownShiftedConv2d
from artrt.ops.dmol import _dmol_sample_unchecked, dmol_nll, dmol_sample
from artrt.ops.gated import gated_sigmoid
from artrt.sampling.cache import ARCache
from artrt.sampling.graphs import run_steps
from artrt.sampling.pixelcnnpp import Layer, run_layers


@dataclass
class PixelCNNppConfig:
    """shape: (C, H, W), C = 1 or 3. levels: values per sub-pixel (256 for 8-bit data).
    num_classes: 0, or the labels of the class-conditional model. channels: the streams'
    width (the paper's nr_filters, 160). blocks: gated resnet blocks per stage (nr_resnet, 5).
    stages: resolutions (3: H, H/2, H/4). num_mix: K, logistics in the mixture (10).
    dropout: inside every block (0.5)."""

    shape: tuple[int, ...] = (3, 32, 32)
    levels: int = 256
    num_classes: int = 0
    channels: int = 32
    blocks: int = 2
    stages: int = 3
    num_mix: int = 5
    dropout: float = 0.5


# --------------------------------------------------------------------------- taps


def _conv_taps(conv: nn.Conv2d) -> frozenset:
    """Offsets (dy, dx) a shifted convolution's output reads its input at."""
    kh, kw = conv.kernel_size
    left = kw - 1 if isinstance(conv, DownRightShiftedConv2d) else (kw - 1) // 2
    return frozenset((dy, dx) for dy in range(1 - kh, 1) for dx in range(-left, kw - left))


def _move(taps: frozenset, dy: int, dx: int) -> frozenset:
    return frozenset((a + dy, b + dx) for a, b in taps)


def _then(first: frozenset, second: frozenset) -> frozenset:
    """Taps of ``second`` applied to the output of ``first`` (a Minkowski sum)."""
    return frozenset((a + c, b + d) for a, b in first for c, d in second)


CENTRE = frozenset({(0, 0)})


# --------------------------------------------------------------------------- blocks


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C, H, W): elu of x and of -x."""
    return F.elu(torch.cat([x, -x], 1))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): row i holds row i - 1 of x (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): column j holds column j - 1 of x (zeros in column 0)."""
    return F.pad(x, (1, 0))[..., :-1]


class GatedResnet(nn.Module):
    """The paper's gated resnet block (module docstring) with ``conv`` a
    :class:`DownShiftedConv2d` (2 x 3) or :class:`DownRightShiftedConv2d` (2 x 2).

    ``forward(x, *skips, cond=None)``: x (B, F, H, W), skips (B, F, H, W) each (concatenated,
    then the 1x1 ``nin``), cond (B,) labels or None. Returns (B, F, H, W).
    """

    def __init__(self, channels: int, conv: type, num_skips: int, dropout: float,
                 num_classes: int):
        super().__init__()
        self.conv1 = conv(2 * channels, channels)
        self.nin = nn.Conv2d(2 * num_skips * channels, channels, 1) if num_skips else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * channels, 2 * channels)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
        self.cond = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, x: torch.Tensor, *skips: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        c1 = self.conv1(concat_elu(x))  # (B, F, H, W)
        if skips:
            c1 = c1 + self.nin(concat_elu(torch.cat(skips, 1)))
        bias = None if self.cond is None else self.cond(cond)  # (B, 2F)
        c2 = self.conv2(self.dropout(concat_elu(c1)), bias)  # (B, 2F, H, W)
        return x + gated_sigmoid(c2)

    def taps(self) -> tuple[frozenset, frozenset]:
        """(taps on x, taps on each skip)."""
        second = _conv_taps(self.conv2)
        return _then(_conv_taps(self.conv1), second) | CENTRE, second


class PixelCNNpp(DiscreteARModel):
    """PixelCNN++ over images of ``config.shape``; see the module docstring. Interface:
    :mod:`artrt.models`.

    ``forward(x, cond=None)``: x int (B, C, H, W) levels -> dmol parameters (B, P, H, W),
    P = 10 K (C = 3) or 3 K (C = 1), in the layout of :mod:`artrt.ops.dmol`.
    ``nll(x, cond=None)``: (B,) nats, :func:`artrt.dmol_nll` at ``levels``.
    ``generation_steps()``: (C, H, W) int64, step ``i * W + j`` for every channel of pixel
    (i, j). ``sample(...)``: uniforms (n, 1 + C, H, W), the layout of
    :func:`artrt.dmol_sample` (the component, then one per channel).
    """

    name = "PixelCNNpp"

    def __init__(self, config: PixelCNNppConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes)
        if shape[0] not in (1, 3):
            raise ValueError(f"{name}: shape must have C = 1 (grayscale) or 3 (RGB) channels, "
                             f"got C = {shape[0]} in {shape}")
        for field in ("channels", "blocks", "stages", "num_mix"):
            v = getattr(config, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {field} must be an int >= 1, got {v!r}")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {config.dropout!r}")
        self.config, self.shape = config, shape
        c, f, n, r = shape[0], config.channels, config.num_classes, config.blocks
        s = config.stages
        self.u_first = DownShiftedConv2d(c + 1, f, (2, 3))
        self.ul_first_up = DownShiftedConv2d(c + 1, f, (1, 3))
        self.ul_first_left = DownRightShiftedConv2d(c + 1, f, (2, 1))

        def blocks(count: int, conv: type, skips: int) -> nn.ModuleList:
            return nn.ModuleList(GatedResnet(f, conv, skips, config.dropout, n)
                                 for _ in range(count))

        # up pass: per stage r blocks on u, r on ul (reading u); stride-2 between stages
        self.up_u = nn.ModuleList(blocks(r, DownShiftedConv2d, 0) for _ in range(s))
        self.up_ul = nn.ModuleList(blocks(r, DownRightShiftedConv2d, 1) for _ in range(s))
        self.down_u = nn.ModuleList(DownShiftedConv2d(f, f, (2, 3)) for _ in range(s - 1))
        self.down_ul = nn.ModuleList(DownRightShiftedConv2d(f, f, (2, 2)) for _ in range(s - 1))
        # down pass: r blocks at the lowest stage, r + 1 above it; transposed convs between
        counts = [r] + [r + 1] * (s - 1)
        self.dn_u = nn.ModuleList(blocks(k, DownShiftedConv2d, 1) for k in counts)
        self.dn_ul = nn.ModuleList(blocks(k, DownRightShiftedConv2d, 2) for k in counts)
        self.upsample_u = nn.ModuleList(DownShiftedConv2d(f, f, (2, 3)) for _ in range(s - 1))
        self.upsample_ul = nn.ModuleList(DownRightShiftedConv2d(f, f, (2, 2))
                                         for _ in range(s - 1))
        self.out = nn.Conv2d(f, (10 if c == 3 else 3) * config.num_mix, 1)

    # ----------------------------------------------------------------------- the network

    def layers(self) -> list[Layer]:
        """The network as a list of :class:`artrt.sampling.pixelcnnpp.Layer` s, in
        evaluation order; input "x" (B, C + 1, H, W), output the last layer (B, P, H, W)."""
        f, stages = self.config.channels, self.config.stages
        layers: list[Layer] = []
        sizes = [tuple(self.shape[1:])]
        for _ in range(stages - 1):
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))

        def add(name, inputs, fn, taps, resample="same", size=None, channels=f):
            layers.append(Layer(name, tuple(inputs), fn, tuple(taps), channels, resample, size))
            return name

        def block(name, module, inputs):
            on_x, on_skip = module.taps()
            return add(name, inputs, lambda *t: module(*t[:-1], cond=t[-1]),
                       [on_x] + [on_skip] * (len(inputs) - 1))

        def conv(name, module, inp, resample):
            return add(name, [inp], lambda t, cond: module(t), [_conv_taps(module)], resample)

        ul_up, ul_left = _conv_taps(self.ul_first_up), _conv_taps(self.ul_first_left)
        us = [add("u0", ["x"], lambda x, cond: down_shift(self.u_first(x)),
                  [_move(_conv_taps(self.u_first), -1, 0)])]
        uls = [add("ul0", ["x"], lambda x, cond: (down_shift(self.ul_first_up(x))
                                                  + right_shift(self.ul_first_left(x))),
                   [_move(ul_up, -1, 0) | _move(ul_left, 0, -1)])]
        for st in range(stages):  # up pass
            for k in range(self.config.blocks):
                us.append(block(f"up{st}.u{k}", self.up_u[st][k], [us[-1]]))
                uls.append(block(f"up{st}.ul{k}", self.up_ul[st][k], [uls[-1], us[-1]]))
            if st < stages - 1:
                us.append(conv(f"down{st}.u", self.down_u[st], us[-1], "down"))
                uls.append(conv(f"down{st}.ul", self.down_ul[st], uls[-1], "down"))
        u, ul = us.pop(), uls.pop()
        for st in range(stages):  # down pass, from the lowest resolution
            for k, (bu, bul) in enumerate(zip(self.dn_u[st], self.dn_ul[st], strict=True)):
                u = block(f"dn{st}.u{k}", bu, [u, us.pop()])
                ul = block(f"dn{st}.ul{k}", bul, [ul, u, uls.pop()])
            if st < stages - 1:
                size = sizes[stages - 2 - st]
                u = add(f"upsample{st}.u", [u], lambda t, cond, m=self.upsample_u[st]: m(t),
                        [_conv_taps(self.upsample_u[st])], "up", size)
                ul = add(f"upsample{st}.ul", [ul], lambda t, cond, m=self.upsample_ul[st]: m(t),
                         [_conv_taps(self.upsample_ul[st])], "up", size)
        assert not us and not uls
        add("out", [ul], lambda t, cond: self.out(F.elu(t)), [CENTRE],
            channels=self.out.out_channels)
        return layers

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """v float (B, C, H, W) in [-1, 1] -> dmol parameters (B, P, H, W)."""
        self._check_input(v, cond)
        v = v.to(self.out.weight.dtype)
        x = torch.cat([v, torch.ones_like(v[:, :1])], 1)  # (B, C + 1, H, W)
        layers = self.layers()
        return run_layers(layers, x, cond)[layers[-1].name]

    # ----------------------------------------------------------------------- likelihood, sampling

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) negative log-likelihood in nats (dmol over ``levels`` values per channel)."""
        check_data(self.name, x, self.shape, self.config.levels)
        v = to_input(x, self.config.levels).to(self.out.weight.device)
        params = self.forward_input(v, cond)
        return dmol_nll(params, v, self.config.num_mix, levels=self.config.levels)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None) -> ARCache:
        """A fresh :class:`artrt.sampling.pixelcnnpp.PixelCNNppCache` for ``batch_size``
        images (cond: (batch_size,) int64 labels when class-conditional), on the model's
        device."""
        from artrt.sampling.pixelcnnpp import PixelCNNppCache

        return PixelCNNppCache(self, batch_size, cond)

    def generation_steps(self) -> torch.Tensor:
        """(C, H, W) int64: pixel (i, j) is step ``i * W + j``, all its channels at once."""
        c, h, w = self.shape
        return torch.arange(h * w).view(1, h, w).expand(c, h, w).contiguous()

    def _uniforms_shape(self) -> tuple[int, ...]:
        """(1 + C, H, W): per pixel the component's uniform, then one per channel (the layout
        of :func:`artrt.dmol_sample`, which draws every channel of a pixel at once)."""
        c, h, w = self.shape
        return (1 + c, h, w)

    def _pixel(self, params: torch.Tensor, u: torch.Tensor, checked: bool = True
               ) -> torch.Tensor:
        """params (n, P), u (n, 1 + C) -> (n, C) int64 levels of one pixel; ``checked=False``
        skips dmol_sample's checks (params finite, u in [0, 1): host reads)."""
        params, u = params[:, :, None, None], u[:, :, None, None].contiguous()
        levels = self.config.levels
        if checked:
            v = dmol_sample(params, self.config.num_mix, uniforms=u, levels=levels)
        else:
            v = _dmol_sample_unchecked(params, u, self.config.num_mix, levels)
        return from_input(v[:, :, 0, 0], levels)

    def _draw(self, x: torch.Tensor, u: torch.Tensor, cond: torch.Tensor | None,
              progress: bool, desc: str) -> None:
        """Fill x (n, C, H, W) in place from u (n, 1 + C, H, W): one full pass per pixel."""
        _, _, h, w = x.shape
        for p in tqdm(range(h * w), disable=not progress, desc=desc):
            i, j = divmod(p, w)
            x[:, :, i, j] = self._pixel(self(x, cond)[:, :, i, j], u[:, :, i, j])

    def _draw_cached(self, cache: ARCache, x: torch.Tensor, u: torch.Tensor, progress: bool,
                     desc: str, cuda_graph: bool | None = None) -> None:
        """Fill x (n, C, H, W) in place from u (n, 1 + C, H, W) through ``cache`` (freshly
        reset): one :meth:`_cached_step` per pixel, replayed from CUDA graphs when
        ``cuda_graph`` and on CUDA. The finiteness of the params that dmol_sample checks per
        call is checked once, over the whole image, after the last step (ValueError)."""
        run_steps(cache, lambda xs, us: self._cached_step(cache, xs, us), x, u, progress,
                  desc, bool(cuda_graph))
        cache._check_params_finite(desc)

    def _cached_step(self, cache: ARCache, x: torch.Tensor, u: torch.Tensor) -> None:
        """One cache step: draw the next pixel of x (n, C, H, W) from u (n, 1 + C, H, W) and
        push it. It reads nothing back from the device (u is checked by ``sample``, the
        levels drawn lie in [0, levels)), so it can be captured in a CUDA graph."""
        i, j = divmod(cache.step, x.shape[3])
        values = self._pixel(cache.params(), u[:, :, i, j], checked=False)  # (n, C)
        x[:, :, i, j] = values
        cache._push_unchecked(values)


__all__ = ["PixelCNNpp", "PixelCNNppConfig"]
