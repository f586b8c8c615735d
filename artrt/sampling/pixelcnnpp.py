"""Incremental sampling cache of PixelCNN++ (:class:`artrt.models.PixelCNNpp`), after
Ramachandran et al., "Fast Generation for Convolutional Autoregressive Models" (2017), and the
layer graph the model's forward pass runs through.

The network is a list of :class:`Layer` s: each maps same-grid input windows to an output
window with a translation-equivariant function (shifted convolutions, 1x1 convolutions,
pointwise ops, zero padding at the image border), reads its inputs at a known set of offsets
(its *taps*), and optionally changes resolution:

    resample   output (i, j) is                    input window of an output box
    "same"     fn(inputs) at (i, j)                box + the taps' bounding box
    "down"     fn(input) at (2i, 2j)               the fine box + taps (a stride-2 conv)
    "up"       fn(zero-stuffed input) at (i, j)    the coarse rows / columns it covers;
               (input (a, b) placed at (2a, 2b),   (a stride-2 transposed conv)
               zeros between, cropped to size)

:func:`run_layers` evaluates the whole image (the model's forward pass); the cache evaluates
boxes. Because every layer is translation-equivariant, an output box computed from an input
window that covers its taps (or reaches the image border) equals the full pass there.

Ready maps: the step after which a layer's output at q is final, r(q) = max over its taps t
of the input's r(q + t) (0 outside the image: zero padding is known from the start); for the
image, pixel (i, j) is final after step i * W + j, r = i * W + j + 1. Pixel p's output
parameters have r <= p (the model is causal; the cache checks it). After step s - 1 is
pushed, :class:`PixelCNNppCache` computes, for each layer in order, exactly the outputs with
r = s, inside their bounding box::

    step s:  for each layer:   box of {q : r(q) = s}  (a few positions, a row at row ends)
                               input window = box + taps  ->  fn  ->  write where r = s

so each position of each layer is computed once per sample, from final inputs, and a
step touches a local window per layer instead of the whole image. ``params()`` reads the
output layer at the next pixel. The output is the discretized logistic mixture of
:mod:`artrt.ops.dmol`, not categorical logits: ``logits()`` raises, ``params()`` gives
(B, P) and ``push(values)`` takes the pixel's (B, C) int64 levels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from artrt.levels import to_input
from artrt.ops._checks import check_finite
from artrt.sampling.cache import ARCache

Taps = frozenset  # of (dy, dx) offsets: output q reads the input at q + (dy, dx)


@dataclass(frozen=True)
class Layer:
    """One node of the layer graph.

    name: its output's name. inputs: the names it reads ("x": the network input (B, Cx, H, W)).
    fn: ``fn(*windows, cond)`` -> (B, channels, h, w) on the inputs' grid (the zero-stuffed
    grid for "up"); cond is the (B,) labels or None. taps: per input, the offsets it reads.
    channels: the output's. resample: "same", "down" or "up". size: the (h, w) output of an
    "up" layer (the crop).
    """

    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., torch.Tensor]
    taps: tuple[Taps, ...]
    channels: int
    resample: str = "same"
    size: tuple[int, int] | None = None

    def reach(self) -> tuple[int, int, int, int]:
        """(dy_min, dy_max, dx_min, dx_max) of all taps, widened to contain (0, 0)."""
        all_taps = set().union(*self.taps) | {(0, 0)}
        dys, dxs = [t[0] for t in all_taps], [t[1] for t in all_taps]
        return min(dys), max(dys), min(dxs), max(dxs)


def _out_size(layer: Layer, size: tuple[int, int]) -> tuple[int, int]:
    if layer.resample == "down":
        return (size[0] + 1) // 2, (size[1] + 1) // 2
    if layer.resample == "up":
        return layer.size
    return size


def _window(lo: int, hi: int, dmin: int, dmax: int, n_in: int, resample: str
            ) -> tuple[int, int, slice]:
    """One axis: output indices [lo, hi) -> the input window [a, b) to evaluate and the
    slice of fn's output (on the window's grid) that holds them."""
    if resample == "down":
        a, b = max(0, 2 * lo + dmin), min(n_in, 2 * (hi - 1) + dmax + 1)
        return a, b, slice(2 * lo - a, 2 * (hi - 1) - a + 1, 2)
    if resample == "up":  # coarse window; fn runs on its zero-stuffed (2x) grid from 2a
        a, b = max(0, (lo + dmin) // 2), min(n_in, (hi - 1 + dmax) // 2 + 1)
        return a, b, slice(lo - 2 * a, hi - 2 * a)
    a, b = max(0, lo + dmin), min(n_in, hi + dmax)
    return a, b, slice(lo - a, hi - a)


def _zero_stuff(t: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 2h, 2w): t at the even positions, zeros between."""
    b, c, h, w = t.shape
    z = t.new_zeros((b, c, 2 * h, 2 * w))
    z[:, :, ::2, ::2] = t
    return z


def eval_box(layer: Layer, values: dict[str, torch.Tensor], box: tuple[int, int, int, int],
             cond: torch.Tensor | None) -> torch.Tensor:
    """The layer's output on the box (r0, r1, c0, c1) (half-open, output grid) from its inputs'
    full tensors ``values[name]`` (B, C, h_in, w_in): (B, channels, r1 - r0, c1 - c0)."""
    r0, r1, c0, c1 = box
    dy0, dy1, dx0, dx1 = layer.reach()
    h_in, w_in = values[layer.inputs[0]].shape[2:]
    ra, rb, rows = _window(r0, r1, dy0, dy1, h_in, layer.resample)
    ca, cb, cols = _window(c0, c1, dx0, dx1, w_in, layer.resample)
    wins = [values[name][:, :, ra:rb, ca:cb] for name in layer.inputs]
    if layer.resample == "up":
        wins = [_zero_stuff(w) for w in wins]
    return layer.fn(*wins, cond)[:, :, rows, cols]


def run_layers(layers: list[Layer], x: torch.Tensor, cond: torch.Tensor | None
               ) -> dict[str, torch.Tensor]:
    """The whole-image pass: every layer's output (B, channels, h, w) by name (and "x")."""
    values = {"x": x}
    for layer in layers:
        h, w = _out_size(layer, values[layer.inputs[0]].shape[2:])
        values[layer.name] = eval_box(layer, values, (0, h, 0, w), cond)
    return values


def _shifted(r: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(h, w) map -> the map at q + (dy, dx), 0 outside."""
    h, w = r.shape
    p = max(abs(dy), abs(dx))
    rp = F.pad(r, (p, p, p, p))
    return rp[p + dy:p + dy + h, p + dx:p + dx + w]


def ready_maps(layers: list[Layer], height: int, width: int) -> dict[str, torch.Tensor]:
    """Every layer's ready map (h, w) int64 (see the module docstring), by name (and "x")."""
    maps = {"x": torch.arange(1, height * width + 1).view(height, width)}
    for layer in layers:
        out = None
        for name, taps in zip(layer.inputs, layer.taps, strict=True):
            r = maps[name]
            if layer.resample == "up":
                z = r.new_zeros((2 * r.shape[0], 2 * r.shape[1]))
                z[::2, ::2] = r
                r = z
            m = torch.stack([_shifted(r, dy, dx) for dy, dx in taps]).amax(0)
            out = m if out is None else torch.maximum(out, m)
        if layer.resample == "down":
            out = out[::2, ::2]
        elif layer.resample == "up":
            out = out[:layer.size[0], :layer.size[1]]
        maps[layer.name] = out.contiguous()
    return maps


def _boxes(r: torch.Tensor, num_steps: int) -> list[tuple[int, int, int, int] | None]:
    """Per step s in [0, num_steps): the half-open bounding box (r0, r1, c0, c1) of
    {q : r(q) = s}, or None when it is empty."""
    h, w = r.shape
    s = r.reshape(-1)
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    big = h * w + 1

    def reduce(v, how, init):
        return torch.full((num_steps + 1,), init).scatter_reduce(
            0, s.clamp(max=num_steps), v, how, include_self=True).tolist()

    rmin, rmax = reduce(rows, "amin", big), reduce(rows, "amax", -1)
    cmin, cmax = reduce(cols, "amin", big), reduce(cols, "amax", -1)
    return [None if rmax[t] < 0 else (rmin[t], rmax[t] + 1, cmin[t], cmax[t] + 1)
            for t in range(num_steps)]


class PixelCNNppCache(ARCache):
    """Incremental sampling state of a :class:`artrt.models.PixelCNNpp` for ``batch_size``
    images; see the module docstring.

    Per layer it keeps the full output (B, channels, h, w) in the model's dtype and on its
    device, and per step the box of the outputs that become final. Protocol of
    :class:`artrt.sampling.ARCache`, one step per pixel (raster order):
    ``positions()`` (C,) the flat positions of the pixel's channels, ``params()`` (B, P)
    float32 dmol parameters of the pixel, ``push(values)`` (B, C) int64 levels in
    [0, levels). The cache runs the layers in eval mode without gradients (dropout off) and
    reads the model's weights at every step.
    """

    def __init__(self, model, batch_size: int, cond: torch.Tensor | None = None):
        _, h, w = model.shape
        self._hw = (h, w)
        self._layers = model.layers()
        self._maps = ready_maps(self._layers, h, w)
        out = self._maps[self._layers[-1].name]
        late = (out.reshape(-1) > torch.arange(h * w)).nonzero()
        if late.numel():
            raise RuntimeError(f"{type(self).__name__}: pixel {late[0].item()}'s output needs "
                               f"pixels at or after it: the layer graph is not causal")
        self._boxes = {layer.name: _boxes(self._maps[layer.name], h * w)
                       for layer in self._layers}
        self._maps = {k: v.to(next(model.parameters()).device) for k, v in self._maps.items()}
        super().__init__(model, batch_size, cond)

    def _reset(self, cond: torch.Tensor | None) -> None:
        model = self.model
        dtype = next(model.parameters()).dtype
        c, (h, w) = model.shape[0], self._hw
        x = torch.zeros((self.batch_size, c + 1, h, w), dtype=dtype, device=self.device)
        x[:, c] = 1  # the constant channel that marks the image (see the model)
        self._values = {"x": x}
        size = {"x": (h, w)}
        for layer in self._layers:
            size[layer.name] = _out_size(layer, size[layer.inputs[0]])
            self._values[layer.name] = torch.zeros((self.batch_size, layer.channels,
                                                    *size[layer.name]), dtype=dtype,
                                                   device=self.device)
        self._advance(0)

    def _advance(self, s: int) -> None:
        """Compute every layer's outputs that become final once s pixels are pushed."""
        if s >= self._hw[0] * self._hw[1]:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for layer in self._layers:
                    box = self._boxes[layer.name][s]
                    if box is None:
                        continue
                    r0, r1, c0, c1 = box
                    new = eval_box(layer, self._values, box, self.cond)
                    buf = self._values[layer.name][:, :, r0:r1, c0:c1]
                    ready = self._maps[layer.name][r0:r1, c0:c1] == s
                    buf.copy_(torch.where(ready, new.to(buf.dtype), buf))
        finally:
            self.model.train(was_training)

    def params(self) -> torch.Tensor:
        """(B, P) float32 dmol parameters of the next pixel (layout of
        :mod:`artrt.ops.dmol`) given every pixel pushed so far."""
        self._check_not_done("params")
        i, j = divmod(self.step, self._hw[1])
        return self._values[self._layers[-1].name][:, :, i, j].float()

    def _check_params_finite(self, name: str) -> None:
        """ValueError naming ``name`` unless the dmol parameters of every pixel computed so far
        are finite (those not computed yet are zeros): one host read, what ``dmol_sample``
        checks per call, for a sampler that skips it at its steps."""
        check_finite(name, "params (logits, means, log-scales, coefficients)",
                     self._values[self._layers[-1].name])

    def logits(self) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__}: PixelCNN++ outputs discretized logistic "
                        f"mixture parameters, not categorical logits: use params() (B, P)")

    def _push(self, values: torch.Tensor) -> None:
        i, j = divmod(self.step, self._hw[1])
        x = self._values["x"]
        x[:, :values.shape[1], i, j] = to_input(values, self.levels).to(x.dtype)
        self._advance(self.step + 1)


__all__ = ["Layer", "PixelCNNppCache", "eval_box", "ready_maps", "run_layers"]
