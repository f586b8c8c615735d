"""Incremental sampling caches of PixelCNN and Gated PixelCNN, after Ramachandran et al.,
"Fast Generation for Convolutional Autoregressive Models" (2017): a generation step
recomputes only the activations that depend on the newest sub-pixel, from cached activations
of the steps before it.

:class:`PixelCNNCache` (:class:`artrt.models.PixelCNN`) keeps, for every masked k x k
convolution, its input as a zero-padded image buffer (B, Cin, H + p, W + 2p), p = k // 2.
Step (c, i, j) runs the network at pixel (i, j) only: each k x k convolution reads the rows
i-p..i of its input around column j (a (p+1) x k window: the rows below are masked out), each
1x1 convolution, residual and the head act on the (B, channels) vector of that pixel::

    input buffer, pixel (i, j), k = 5        per layer at (i, j), cost O(k^2 C^2):
      x x x x x     row i-2                    window (B, Cin, p+1, k) -> (B, Cout)
      x x x x x     row i-1                    1x1 / residual / head on (B, C) vectors
      x x o . .     row i     (o: (i, j); ".": not yet computed, zero, masked out)

Gated PixelCNN (:class:`GatedPixelCNNCache`): the vertical stack of row i depends on image
rows <= i only, and reaches the horizontal stack shifted down one row, so it is computed once
per row, for the whole row and every layer, when row i is complete (row caches of the last
p + 1 rows of each layer's vertical input); its link into the horizontal stack is kept for
row i + 1. The horizontal stack is computed once per pixel from its own row cache (columns
j-p..j of row i) plus the kept link, then the head, per sub-pixel::

    step (c, i, j)                          end of row i (after its last sub-pixel)
      horizontal stack at (i, j), once        vertical stack of row i, all layers:
      per pixel (every layer)                 (B, Cin, p+1, W + 2p) -> (B, 2C, W)
      head at (i, j), every sub-pixel         link = v_to_h(v_pre) kept for row i + 1

Colour channels (C = 3): the sub-pixels of a pixel are one step each, R < G < B. A
PixelCNN step recomputes the whole pixel with the channels not yet drawn holding a
placeholder (zero, or an earlier recomputation's output): the masks make channel c's output
independent of inputs of channels >= c of its pixel (mask A) / > c (mask B), so the step's
logits are exact, and the pixel's activations are exact once its last channel's step has
run. Gated PixelCNN's stacks do not see the current pixel at all; only its head (the mask-A
colour 1x1) is rerun per channel.

The caches read the model's weights (and class biases) at every step, so they follow the
model as it is; the masks, fixed by the architecture, are built at ``reset()``. A cached
activation keeps the weights it was computed with. Both caches work in the model's dtype and
on its device with plain torch ops (a window or pixel times a weight matrix, ``F.conv2d`` on
a row), and run the model's own head layers on the step's pixel (a 1 x 1 image);
``logits()`` returns float32. Both follow the model's raster / RGB generation order
(``raster_steps``), one sub-pixel per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from artrt.levels import to_input
from artrt.sampling._shared import grouped_logits
from artrt.sampling.cache import ARCache


def _window_mask(conv) -> torch.Tensor:
    """The mask of a k x k :class:`artrt.nn.MaskedConv2d`, rows 0..p only (the rows below
    the centre are masked out): (Cout, Cin, p+1, k)."""
    p = conv.kernel_size[0] // 2
    return conv.mask()[:, :, :p + 1].contiguous()


def _window_conv(win: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:
    """One output pixel of a convolution from its window: win (B, Cin, kh, kw), weight
    (Cout, Cin, kh, kw), bias (Cout,) or None -> (B, Cout), as one matrix product."""
    return F.linear(win.reshape(win.shape[0], -1), weight.reshape(weight.shape[0], -1), bias)


def _pixel_mask(conv) -> torch.Tensor | None:
    """The (Cout, Cin) mask of a 1x1 :class:`artrt.nn.MaskedConv2d`, None when all ones."""
    mask = conv.mask()[:, :, 0, 0]
    return None if bool(mask.all()) else mask.contiguous()


def _pixel_conv(conv, mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (masked by ``mask`` (Cout, Cin) unless None) on pixel vectors:
    x (B, Cin) -> (B, Cout)."""
    w = conv.weight[:, :, 0, 0]
    return F.linear(x, w if mask is None else w * mask, conv.bias)


def _gate(pre: torch.Tensor) -> torch.Tensor:
    """(B, 2C, ...) -> (B, C, ...): tanh(first half) * sigmoid(second half)."""
    c = pre.shape[1] // 2
    return torch.tanh(pre[:, :c]) * torch.sigmoid(pre[:, c:])


def _step_logits(out: torch.Tensor, levels: int, c: int) -> torch.Tensor:
    """Head output of one pixel (B, C * K, 1, 1) -> channel c's logits (B, levels, 1)
    float32."""
    return grouped_logits(out, levels)[:, :, c, :, 0].float()


class _ImageCache(ARCache):
    """What both caches share: the input image as a zero-padded buffer ``_image`` (B, C,
    H + p, W + 2p), p of the first layer (pixel (i, j) at [i + p, j + p]), and the raster /
    RGB sub-pixel (c, i, j) of each step (see ``artrt.models._common.raster_steps``)."""

    def _reset_image(self, like: torch.Tensor, p: int) -> dict:
        """A zero image buffer in ``like``'s dtype and device; returns those as keyword
        arguments of ``torch.zeros`` for the other buffers."""
        c, height, width = self._dims = tuple(self.model.shape)
        zeros = {"dtype": like.dtype, "device": like.device}
        self._p = p
        self._image = torch.zeros((self.batch_size, c, height + p, width + 2 * p), **zeros)
        return zeros

    def _where(self) -> tuple[int, int, int]:
        """(c, i, j) of the current step."""
        pixel, c = divmod(self.step, self._dims[0])
        return (c, *divmod(pixel, self._dims[2]))

    def _write(self, values: torch.Tensor) -> tuple[int, int, int]:
        """Write the step's pushed levels (B, 1) into the image buffer; returns (c, i, j)."""
        c, i, j = self._where()
        p = self._p
        self._image[:, c, i + p, j + p] = to_input(values[:, 0], self.levels).to(
            self._image.dtype)
        return c, i, j


# --------------------------------------------------------------------------- PixelCNN


@dataclass
class _Block:
    """One residual block's masks and its k x k convolution's padded input buffer."""

    down: torch.Tensor | None  # (h, 2h) mask of the 1x1 down
    conv: torch.Tensor  # (h, h, p+1, k) mask of the k x k convolution
    up: torch.Tensor | None  # (2h, h) mask of the 1x1 up
    p: int
    buf: torch.Tensor  # (B, h, H + p, W + 2p): conv input, pixel (i, j) at [i + p, j + p]


class PixelCNNCache(_ImageCache):
    """Incremental sampling state of an :class:`artrt.models.PixelCNN`; see the module
    docstring. ``PixelCNNCache(model, batch_size, cond=None)``, or ``model.new_cache``.

    State: the input image buffer (B, C, H + p, W + 2p) (p of the first layer) and one
    (B, h, H + p, W + 2p) buffer per residual block (the input of its k x k convolution),
    zero-padded; a step costs O(layers * k^2 * channels^2), independent of H and W.
    """

    def _reset(self, cond: torch.Tensor | None) -> None:
        m = self.model
        _, height, width = m.shape
        b = self.batch_size
        zeros = self._reset_image(m.first.weight, m.first.kernel_size[0] // 2)
        self._first_mask = _window_mask(m.first)
        self._blocks = []
        for blk in m.blocks:
            q = blk.conv.kernel_size[0] // 2
            self._blocks.append(_Block(
                down=_pixel_mask(blk.down), conv=_window_mask(blk.conv), up=_pixel_mask(blk.up),
                p=q, buf=torch.zeros((b, blk.conv.in_channels, height + q, width + 2 * q),
                                     **zeros)))
        self._x = None  # (B, 2h): the residual stream at the pixel of step self._x_step
        self._x_step = -1

    def _pixel(self, i: int, j: int) -> torch.Tensor:
        """The residual stream at pixel (i, j) (B, 2h), from the buffers; writes each block's
        k x k convolution input at (i, j)."""
        m, p = self.model, self._p
        win = self._image[:, :, i:i + p + 1, j:j + 2 * p + 1]  # (B, C, p+1, k): rows i-p..i
        x = _window_conv(win, m.first.weight[:, :, :p + 1] * self._first_mask,
                         m.first.bias)  # (B, 2h)
        if m.first_cond is not None:
            x = x + m.first_cond(self.cond)
        for blk, st in zip(m.blocks, self._blocks, strict=True):
            q = st.p
            st.buf[:, :, i + q, j + q] = F.relu(_pixel_conv(blk.down, st.down, F.relu(x)))
            win = st.buf[:, :, i:i + q + 1, j:j + 2 * q + 1]  # (B, h, q+1, k)
            y = _window_conv(win, blk.conv.weight[:, :, :q + 1] * st.conv, blk.conv.bias)
            if blk.cond is not None:
                y = y + blk.cond(self.cond)
            x = x + _pixel_conv(blk.up, st.up, F.relu(y))  # (B, 2h)
        return x

    def _logits(self) -> torch.Tensor:
        m = self.model
        c, i, j = self._where()
        if self._x_step != self.step:
            self._x, self._x_step = self._pixel(i, j), self.step
        # the model's own 1x1 head layers on the pixel, a 1 x 1 image
        out = m.out(F.relu(m.head(F.relu(self._x)[:, :, None, None])))  # (B, C * K, 1, 1)
        return _step_logits(out, self.levels, c)

    def _push(self, values: torch.Tensor) -> None:
        c, i, j = self._write(values)
        # the pixel's activations do not depend on its last channel (mask A): if this step's
        # logits ran, the buffers at (i, j) are final already
        if c == self._dims[0] - 1 and self._x_step != self.step:
            self._pixel(i, j)


# --------------------------------------------------------------------------- Gated PixelCNN


@dataclass
class _GatedRows:
    """One Gated PixelCNN layer's row caches."""

    p: int
    h_mask: torch.Tensor | None  # (1, 1, 1, p+1): mask A drops the centre column, else None
    link: torch.Tensor  # (B, 2C, W): v_to_h(v_pre of the row above), without its bias
    v_rows: torch.Tensor | None  # (B, Cin, p+1, W + 2p): vertical input rows i-p..i
    h_row: torch.Tensor | None  # (B, Cin, 1, W + p): horizontal input of the current row


class GatedPixelCNNCache(_ImageCache):
    """Incremental sampling state of an :class:`artrt.models.GatedPixelCNN`; see the module
    docstring. ``GatedPixelCNNCache(model, batch_size, cond=None)``, or ``model.new_cache``.

    State: the input image buffer (B, C, H + p, W + 2p) (p of the first layer); per later
    layer, row caches of its vertical input (B, channels, p+1, W + 2p) and horizontal input
    (B, channels, 1, W + p); per layer the link of the row above (B, 2 channels, W). A pixel
    costs O(layers * k * channels^2) for the horizontal stack and the head; the vertical
    stack costs O(layers * k^2 * channels^2 * W) once per row.
    """

    def _reset(self, cond: torch.Tensor | None) -> None:
        m = self.model
        width = m.shape[2]
        b = self.batch_size
        zeros = self._reset_image(m.head.weight, m.layers[0].kernel_size // 2)
        self._label = (None if cond is None else F.one_hot(
            cond, m.config.num_classes).to(zeros["dtype"]))  # (B, classes)
        self._rows = []
        for n, layer in enumerate(m.layers):
            q, cin = layer.kernel_size // 2, layer.in_channels
            h_mask = None
            if layer.mask_type == "A":
                h_mask = torch.ones((1, 1, 1, q + 1), **zeros)
                h_mask[..., -1] = 0
            self._rows.append(_GatedRows(
                p=q, h_mask=h_mask, link=torch.zeros((b, 2 * layer.channels, width), **zeros),
                v_rows=None if n == 0 else torch.zeros((b, cin, q + 1, width + 2 * q), **zeros),
                h_row=None if n == 0 else torch.zeros((b, cin, 1, width + q), **zeros)))
        self._h = None  # (B, channels): the top horizontal output at pixel self._h_pixel
        self._h_pixel = -1

    def _conds(self, layer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The layer's class biases (cond_v, cond_h), (B, 2C) each, or (None, None)."""
        if self._label is None:
            return None, None
        return layer.cond_proj(self._label).chunk(2, 1)

    def _horizontal(self, i: int, j: int) -> None:
        """The horizontal stack at pixel (i, j), every layer, into ``self._h``; writes each
        later layer's input at (i, j) into its row cache."""
        p = self._p
        h = self._image[:, :, i + p, j + p]  # (B, C): the first layer's residual input
        for n, (layer, st) in enumerate(zip(self.model.layers, self._rows, strict=True)):
            q = st.p
            if n == 0:
                win = self._image[:, :, i + p:i + p + 1, j + p - q:j + p + 1]  # (B, C, 1, q+1)
            else:
                st.h_row[:, :, 0, j + q] = h
                win = st.h_row[:, :, :, j:j + q + 1]  # (B, Cin, 1, q+1): columns j-q..j
            w = layer.h_conv.weight  # (2C, Cin, 1, q+1)
            w = w if st.h_mask is None else w * st.h_mask
            pre = _window_conv(win, w, layer.h_conv.bias + layer.v_to_h.bias)
            pre = pre + st.link[:, :, j]  # (B, 2C)
            cond_h = self._conds(layer)[1]
            if cond_h is not None:
                pre = pre + cond_h
            out = _pixel_conv(layer.h_out, None, _gate(pre))  # (B, C)
            h = out + h if layer.residual else out
        self._h, self._h_pixel = h, i * self._dims[2] + j

    def _vertical(self, i: int) -> None:
        """The vertical stack of the complete row i, every layer: each layer's link for row
        i + 1 and the next layer's vertical input row i."""
        p = self._p
        layers, rows = self.model.layers, self._rows
        for n, (layer, st) in enumerate(zip(layers, rows, strict=True)):
            # (B, Cin, q+1, W + 2q): rows i-q..i
            win = self._image[:, :, i:i + p + 1] if n == 0 else st.v_rows
            pre = F.conv2d(win, layer.v_conv.weight, layer.v_conv.bias)[:, :, 0]  # (B, 2C, W)
            cond_v = self._conds(layer)[0]
            if cond_v is not None:
                pre = pre + cond_v[:, :, None]
            st.link = torch.einsum("oc,bcw->bow", layer.v_to_h.weight[:, :, 0, 0], pre)
            if n + 1 < len(rows):
                nxt, q = rows[n + 1].v_rows, rows[n + 1].p
                nxt[:, :, :-1] = nxt[:, :, 1:].clone()
                nxt[:, :, -1, q:nxt.shape[-1] - q] = _gate(pre)

    def _logits(self) -> torch.Tensor:
        m = self.model
        c, i, j = self._where()
        if self._h_pixel != i * self._dims[2] + j:
            self._horizontal(i, j)
        # the model's own head layers on the pixel, a 1 x 1 image
        hidden = m.head(F.relu(self._h)[:, :, None, None])  # (B, head_channels, 1, 1)
        if m.colour is not None:  # mask A: channel c sees channels < c of its pixel
            p = self._p
            hidden = hidden + m.colour(self._image[:, :, i + p:i + p + 1, j + p:j + p + 1])
        return _step_logits(m.out(F.relu(hidden)), self.levels, c)

    def _push(self, values: torch.Tensor) -> None:
        c, i, j = self._write(values)
        channels, height, width = self._dims
        if c < channels - 1:
            return
        if j < width - 1 and self._h_pixel != i * width + j:
            self._horizontal(i, j)  # the row caches of the pixels to its right
        if j == width - 1 and i < height - 1:
            self._vertical(i)


__all__ = ["GatedPixelCNNCache", "PixelCNNCache"]
