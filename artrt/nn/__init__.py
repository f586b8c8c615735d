"""Modules of artrt: layers that own parameters (or configuration) and call ``artrt.ops``."""

from artrt.nn.attention import CausalSelfAttention
from artrt.nn.gated import GatedSigmoid, GatedTanh
from artrt.nn.gated_pixelcnn import GatedPixelCNNLayer
from artrt.nn.masked_conv import DownRightShiftedConv2d, DownShiftedConv2d, MaskedConv2d
from artrt.nn.wavenet import CausalConv1d, WaveNetBlock

__all__ = [
    "CausalConv1d",
    "CausalSelfAttention",
    "DownRightShiftedConv2d",
    "DownShiftedConv2d",
    "GatedPixelCNNLayer",
    "GatedSigmoid",
    "GatedTanh",
    "MaskedConv2d",
    "WaveNetBlock",
]
