"""WaveNet layers over :mod:`artrt.ops.causal_conv1d`: ``CausalConv1d`` and ``WaveNetBlock``.

Follows WaveNet (van den Oord et al., 2016): dilated causal convolutions (section 2.1), the
gated activation unit ``tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h)`` (sections 2.3 and
2.5, local and global conditioning), residual and skip connections (section 2.4). Parameters
keep the layouts of ``nn.Conv1d`` so weights of existing implementations load as they are,
and so a later step kernel for generation can read them: ``conv.weight`` (2G, R, K) with the
filter (tanh) half in rows [0, G) and the gate (sigmoid) half in rows [G, 2G), the 1x1
``res.weight`` (R, G, 1) and ``skip.weight`` (S, G, 1), and ``cond.weight`` (2G, Cc, 1).
"""

from __future__ import annotations

import torch
from torch import nn

from artrt.ops.causal_conv1d import MAX_KERNEL_SIZE, causal_conv1d, wavenet_gate


def _check_layer_args(name: str, kernel_size: int, dilation: int) -> None:
    if not (isinstance(kernel_size, int) and 1 <= kernel_size <= MAX_KERNEL_SIZE):
        raise ValueError(f"{name}: kernel_size must be an int in 1..{MAX_KERNEL_SIZE}, "
                         f"got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{name}: dilation must be an int >= 1, got {dilation!r}")


class CausalConv1d(nn.Conv1d):
    """Causal dilated ``nn.Conv1d``: output t sees the input at t, t - d, ..., t - (K-1) d.

    ``CausalConv1d(in_channels, out_channels, kernel_size, dilation=1, bias=True)``; the
    parameters are ``nn.Conv1d``'s (``weight`` (Cout, Cin, K), ``bias`` (Cout,)), so a state
    dict of an ``nn.Conv1d`` of the same sizes loads. Stride 1, no groups; the left zero
    padding is implicit (there is no ``padding`` argument).

    ``forward(x)``: x (B, Cin, T) -> (B, Cout, T).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 dilation: int = 1, bias: bool = True, device=None, dtype=None):
        _check_layer_args("CausalConv1d", kernel_size, dilation)
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias,
                         device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_conv1d(x, self.weight, self.bias, self.dilation[0])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[0]}, "
                f"dilation={self.dilation[0]}, bias={self.bias is not None}, causal")


class WaveNetBlock(nn.Module):
    """WaveNet's gated residual block, fused into two kernels.

    ::

        x (B, R, T) --> causal conv K, d (R -> 2G) --+--> tanh(a) * sigmoid(b) = h (B, G, T)
           |                       cond (1x1) ------/                  |
           |                                          1x1 (G -> R) ----+---- 1x1 (G -> S)
           +-----------------------------------------------> (+)               |
                                                      out (B, R, T)     skip (B, S, T)

    Kernel 1 (``wavenet_gate``): dilated conv, bias, conditioning and the gate in one pass;
    kernel 2 (``causal_conv1d`` with K = 1): the residual and skip 1x1 projections together,
    the residual added in the epilogue.

    Args:
        res_channels: R, channels of the residual stream.
        gate_channels: G, channels after the gate (the conv produces 2G).
        skip_channels: S.
        kernel_size: K in 1..8 (WaveNet uses 2).
        dilation: d >= 1.
        cond_channels: Cc > 0 adds a 1x1 conditioning projection (no bias).
        bias: whether the three convolutions have biases.

    ``forward(x, cond=None)``: x (B, R, T); cond None, (B, Cc, T) (local) or (B, Cc)
    (global). Returns ``(out, skip)``: out = x + res(h) (B, R, T), skip (B, S, T). ``out`` is
    a view into a (B, R + S, T) buffer shared with ``skip`` (strided along batch).
    """

    def __init__(self, res_channels: int, gate_channels: int, skip_channels: int,
                 kernel_size: int = 2, dilation: int = 1, cond_channels: int = 0,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_layer_args("WaveNetBlock", kernel_size, dilation)
        kw = {"device": device, "dtype": dtype}
        self.res_channels, self.gate_channels = res_channels, gate_channels
        self.skip_channels, self.cond_channels = skip_channels, cond_channels
        self.conv = CausalConv1d(res_channels, 2 * gate_channels, kernel_size, dilation, bias,
                                 **kw)
        self.cond = (nn.Conv1d(cond_channels, 2 * gate_channels, 1, bias=False, **kw)
                     if cond_channels > 0 else None)
        self.res = nn.Conv1d(gate_channels, res_channels, 1, bias=bias, **kw)
        self.skip = nn.Conv1d(gate_channels, skip_channels, 1, bias=bias, **kw)

    def gate(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """h = tanh(a) * sigmoid(b) of the conditioned dilated convolution: (B, G, T)."""
        bias, local, local_weight = self.conv.bias, None, None
        if cond is not None:
            if self.cond is None:
                raise ValueError("WaveNetBlock: got cond, but the block was built with "
                                 "cond_channels=0")
            if not isinstance(cond, torch.Tensor) or cond.dim() not in (2, 3) \
                    or cond.shape[1] != self.cond_channels:
                raise ValueError(f"WaveNetBlock: cond must have shape (B, Cc) or (B, Cc, T) "
                                 f"with Cc = {self.cond_channels}, got "
                                 f"{tuple(getattr(cond, 'shape', ()))}")
            if cond.dim() == 2:  # global: one (2G,) vector per sequence, folded into the bias
                g = cond @ self.cond.weight[:, :, 0].t()  # (B, 2G)
                bias = g if bias is None else g + bias
            else:
                local, local_weight = cond, self.cond.weight
        elif self.cond is not None:
            raise ValueError(f"WaveNetBlock: the block was built with cond_channels="
                             f"{self.cond_channels}; forward needs cond")
        return wavenet_gate(x, self.conv.weight, bias, local, local_weight, self.conv.dilation[0])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.gate(x, cond)  # (B, G, T)
        weight = torch.cat([self.res.weight, self.skip.weight])  # (R + S, G, 1)
        bias = (torch.cat([self.res.bias, self.skip.bias]) if self.res.bias is not None
                else None)
        out = causal_conv1d(h, weight, bias, 1, residual=x)  # (B, R + S, T)
        return out[:, :self.res_channels], out[:, self.res_channels:]

    def extra_repr(self) -> str:
        return (f"res={self.res_channels}, gate={self.gate_channels}, "
                f"skip={self.skip_channels}, cond={self.cond_channels}")
