"""Masked (PixelCNN) and shifted (PixelCNN++) convolution layers over
:mod:`artrt.ops.masked_conv2d`.

Each is an ``nn.Conv2d`` (same constructor arguments for channels, kernel size and bias, same
``weight`` (Cout, Cin, kh, kw) and ``bias`` (Cout,) parameters and initialisation), so an
``nn.Conv2d`` state_dict loads as is; the forward runs the masked / shifted op instead of a
dense convolution. Masked positions of the weight are ignored and receive zero gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from artrt.ops.masked_conv2d import (
    _masked_conv2d,
    check_masked_input,
    down_right_shifted_conv2d,
    down_shifted_conv2d,
    tap_mask,
)


def _pair(k) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)


class MaskedConv2d(nn.Conv2d):
    """PixelCNN masked k x k convolution ("same" padding, stride 1).

    ``MaskedConv2d(in_channels, out_channels, kernel_size, mask_type="B", color_groups=1,
    bias=True)``; ``kernel_size`` odd. ``forward(x, cond=None)``: x (B, Cin, H, W), cond an
    optional (B, Cout) class-conditional bias; returns (B, Cout, H, W). See
    :func:`artrt.ops.masked_conv2d.masked_conv2d` for the masks.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 mask_type: str = "B", color_groups: int = 1, bias: bool = True,
                 device=None, dtype=None):
        kh, kw = _pair(kernel_size)
        if kh != kw or kh % 2 == 0:
            raise ValueError(f"MaskedConv2d: kernel_size must be odd and square, got "
                             f"{kernel_size}")
        if mask_type not in ("A", "B"):
            raise ValueError(f"MaskedConv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
        if (not isinstance(color_groups, int) or color_groups < 1
                or in_channels % color_groups or out_channels % color_groups):
            raise ValueError(f"MaskedConv2d: color_groups={color_groups!r} must be a positive "
                             f"int dividing in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        super().__init__(in_channels, out_channels, kh, padding=kh // 2, bias=bias,
                         device=device, dtype=dtype)
        self.mask_type = mask_type
        self.color_groups = color_groups

    def mask(self) -> torch.Tensor:
        """The 0/1 mask (Cout, Cin, k, k) applied to ``weight``."""
        k = self.kernel_size[0]
        return tap_mask(tuple(self.weight.shape), k // 2, k // 2, self.mask_type,
                        self.color_groups, self.weight.device, self.weight.dtype)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # the weight's kernel, the mask and the colour groups were checked at construction:
        # only x and cond are checked per call
        weight = self.weight
        check_masked_input(x, weight, cond, "MaskedConv2d")
        return _masked_conv2d(x, weight, self.bias, self.mask_type, self.color_groups, cond)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, mask_type={self.mask_type!r}, "
                f"color_groups={self.color_groups}")


class _ShiftedConv2d(nn.Conv2d):
    _op = staticmethod(down_shifted_conv2d)
    _default = (2, 3)

    def __init__(self, in_channels: int, out_channels: int, kernel_size=None,
                 bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, _pair(kernel_size or self._default),
                         bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self._op(x, self.weight, self.bias, cond)


class DownShiftedConv2d(_ShiftedConv2d):
    """PixelCNN++ down-shifted convolution, kernel (kh, kw) = (2, 3) by default: output (i, j)
    sees rows i-kh+1..i and the kw columns centred on j.

    ``forward(x, cond=None)``: x (B, Cin, H, W), cond (B, Cout) or None; returns
    (B, Cout, H, W). See :func:`artrt.ops.masked_conv2d.down_shifted_conv2d`.
    """

    _op = staticmethod(down_shifted_conv2d)
    _default = (2, 3)


class DownRightShiftedConv2d(_ShiftedConv2d):
    """PixelCNN++ down-right-shifted convolution, kernel (2, 2) by default: output (i, j) sees
    rows i-kh+1..i and columns j-kw+1..j.

    Shapes as :class:`DownShiftedConv2d`.
    """

    _op = staticmethod(down_right_shifted_conv2d)
    _default = (2, 2)
