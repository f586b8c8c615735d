"""The Gated PixelCNN layer (van den Oord et al., "Conditional Image Generation with PixelCNN
Decoders", 2016), fused: three kernel launches forward.

Two stacks with C channels each; k the (odd) kernel size, p = k // 2::

    vertical stack, (p+1) x k taps           horizontal stack, 1 x (p+1) taps
    (rows i-p..i, all k columns)             (row i, columns j-p..j; mask A drops j)

      x x x x x    row i-2                     x x o      ("o": the output pixel (i, j))
      x x x x x    row i-1
      x x o x x    row i

    v_pre = conv_v(v) + b_v + cond_v                                 (B, 2C, H, W)
    v_out = tanh(v_pre[:C]) * sigmoid(v_pre[C:])                     kernel 1 (gate epilogue)
    h_pre = conv_h(h) + b_h + cond_h + link(shift_down(v_pre))       (B, 2C, H, W)
    h_gate = tanh(h_pre[:C]) * sigmoid(h_pre[C:])                    kernel 2 (link = 2nd input)
    h_out = h + out_1x1(h_gate)                                      kernel 3 (residual epilogue)

``shift_down`` moves the vertical stack one row down before it reaches the horizontal stack,
so the horizontal output at (i, j) sees rows < i (through the vertical stack) and columns
<= j of row i (through its own stack): the whole causal past, no blind spot. The first layer
(``mask_type="A"``) drops the horizontal stack's centre tap so that no output sees its own
input pixel; its input is the image for both stacks (``in_channels`` may differ from
``channels``; then there is no residual).

Departures: colour channels are not split into groups here (the stacks model a pixel's
channels jointly, as PixelCNN++ does); cond is a (B, cond_dim) vector projected to both stacks
by one bias-free linear map (the "one-hot label fed as a bias" of the paper); the
vertical-to-horizontal link's bias is added to the horizontal bias (the same sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from artrt import backends
from artrt.ops.gated_pixelcnn import gated_tap_conv2d
from artrt.ops.masked_conv2d import tap_conv2d


class GatedPixelCNNLayer(nn.Module):
    """One Gated PixelCNN layer.

    ``GatedPixelCNNLayer(channels, kernel_size, cond_dim=0, residual=True, mask_type="B",
    in_channels=None)``: ``kernel_size`` odd; ``mask_type="A"`` for the first layer;
    ``in_channels`` (default ``channels``) the channels of the inputs v and h.

    ``forward(v, h, cond=None) -> (v_out, h_out)``: v, h (B, Cin, H, W) (for the first layer
    both are the image); cond (B, cond_dim) when ``cond_dim > 0``; v_out and h_out
    (B, channels, H, W). Parameters: ``v_conv``, ``h_conv``, ``v_to_h``, ``h_out`` are
    ``nn.Conv2d`` (so weights load from an ``nn.Conv2d`` implementation), ``cond_proj`` an
    ``nn.Linear(cond_dim, 4 * channels, bias=False)``.
    """

    def __init__(self, channels: int, kernel_size: int, cond_dim: int = 0,
                 residual: bool = True, mask_type: str = "B", in_channels: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        name = "GatedPixelCNNLayer"
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be an odd positive int, got "
                             f"{kernel_size!r}")
        if mask_type not in ("A", "B"):
            raise ValueError(f"{name}: mask_type must be 'A' or 'B', got {mask_type!r}")
        in_channels = channels if in_channels is None else in_channels
        if residual and in_channels != channels:
            raise ValueError(f"{name}: residual=True needs in_channels == channels, got "
                             f"{in_channels} and {channels}")
        if cond_dim < 0:
            raise ValueError(f"{name}: cond_dim must be >= 0, got {cond_dim}")
        p = kernel_size // 2
        kw = {"device": device, "dtype": dtype}
        self.channels, self.kernel_size, self.cond_dim = channels, kernel_size, cond_dim
        self.residual, self.mask_type, self.in_channels = residual, mask_type, in_channels
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (p + 1, kernel_size), **kw)
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, p + 1), **kw)
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1, **kw)
        self.h_out = nn.Conv2d(channels, channels, 1, **kw)
        self.cond_proj = (nn.Linear(cond_dim, 4 * channels, bias=False, **kw) if cond_dim
                          else None)

    def _conds(self, cond):
        if self.cond_proj is None:
            if cond is not None:
                raise ValueError("GatedPixelCNNLayer: cond given but the layer has cond_dim=0")
            return None, None
        if cond is None:
            raise ValueError(f"GatedPixelCNNLayer: the layer has cond_dim={self.cond_dim}: "
                             "cond (B, cond_dim) is required")
        return self.cond_proj(cond).chunk(2, 1)  # (B, 2C) each

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if v.shape != h.shape:
            raise ValueError(f"GatedPixelCNNLayer: v and h must have the same shape, got "
                             f"{tuple(v.shape)} and {tuple(h.shape)}")
        cond_v, cond_h = self._conds(cond)
        p = self.kernel_size // 2
        backend = backends.requested(None)
        v_out, v_pre = gated_tap_conv2d(v, self.v_conv.weight, self.v_conv.bias, cond_v, None,
                                        None, p, p, "none", backend)
        h_gate, _ = gated_tap_conv2d(h, self.h_conv.weight, self.h_conv.bias + self.v_to_h.bias,
                                     cond_h, v_pre, self.v_to_h.weight, 0, p, self.mask_type,
                                     backend)
        h_out = tap_conv2d(h_gate, self.h_out.weight, self.h_out.bias, None,
                           h if self.residual else None, 0, 0, "none", 1, backend)
        return v_out, h_out

    def reference(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same layer in eager PyTorch (``F.conv2d`` with explicit pads and shifts): the
        specification, and the eager baseline of the benchmark."""
        cond_v, cond_h = self._conds(cond)
        p = self.kernel_size // 2
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # rows i-p..i, columns j-p..j+p
        if cond_v is not None:
            v_pre = v_pre + cond_v[:, :, None, None]
        wh = self.h_conv.weight
        if self.mask_type == "A":  # drop the centre column
            wh = torch.cat([wh[..., :-1], torch.zeros_like(wh[..., -1:])], -1)
        h_pre = F.conv2d(F.pad(h, (p, 0, 0, 0)), wh, self.h_conv.bias)  # columns j-p..j
        h_pre = h_pre + self.v_to_h(F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1])  # shift_down
        if cond_h is not None:
            h_pre = h_pre + cond_h[:, :, None, None]
        c = self.channels
        v_out = torch.tanh(v_pre[:, :c]) * torch.sigmoid(v_pre[:, c:])
        h_gate = torch.tanh(h_pre[:, :c]) * torch.sigmoid(h_pre[:, c:])
        h_out = self.h_out(h_gate)
        return v_out, (h_out + h if self.residual else h_out)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"cond_dim={self.cond_dim}, residual={self.residual}, "
                f"mask_type={self.mask_type!r}, in_channels={self.in_channels}")
