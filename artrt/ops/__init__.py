"""The public functional ops of artrt (torch.library ops) and their pure-PyTorch references."""

from artrt.ops.attention import (
    causal_attention,
    causal_attention_backward_ref,
    causal_attention_ref,
    random_order,
    raster_order,
    subscale_order,
    zigzag_order,
)
from artrt.ops.attention_decode import attention_decode, attention_decode_ref
from artrt.ops.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_backward_ref,
    causal_conv1d_ref,
    wavenet_block_ref,
    wavenet_gate,
    wavenet_gate_backward_ref,
    wavenet_gate_ref,
)
from artrt.ops.dmol import (
    dmol_convert_layer,
    dmol_layout_index,
    dmol_nll,
    dmol_nll_backward_ref,
    dmol_nll_ref,
    dmol_sample,
    dmol_sample_ref,
)
from artrt.ops.gated import (
    gated_backward_ref,
    gated_sigmoid,
    gated_sigmoid_ref,
    gated_tanh,
    gated_tanh_ref,
)
from artrt.ops.masked_conv2d import (
    down_right_shifted_conv2d,
    down_right_shifted_conv2d_ref,
    down_shifted_conv2d,
    down_shifted_conv2d_ref,
    masked_conv2d,
    masked_conv2d_ref,
    tap_mask,
)
from artrt.ops.wavenet_step import (
    WaveNetStepWeights,
    pack_wavenet_step_weights,
    wavenet_step,
    wavenet_step_ref,
)

__all__ = [
    "WaveNetStepWeights",
    "attention_decode",
    "attention_decode_ref",
    "causal_attention",
    "causal_attention_backward_ref",
    "causal_attention_ref",
    "causal_conv1d",
    "causal_conv1d_backward_ref",
    "causal_conv1d_ref",
    "down_right_shifted_conv2d",
    "down_right_shifted_conv2d_ref",
    "down_shifted_conv2d",
    "down_shifted_conv2d_ref",
    "dmol_convert_layer",
    "dmol_layout_index",
    "dmol_nll",
    "dmol_nll_backward_ref",
    "dmol_nll_ref",
    "dmol_sample",
    "dmol_sample_ref",
    "gated_backward_ref",
    "gated_sigmoid",
    "gated_sigmoid_ref",
    "gated_tanh",
    "gated_tanh_ref",
    "masked_conv2d",
    "masked_conv2d_ref",
    "pack_wavenet_step_weights",
    "random_order",
    "raster_order",
    "subscale_order",
    "tap_mask",
    "wavenet_block_ref",
    "wavenet_gate",
    "wavenet_gate_backward_ref",
    "wavenet_gate_ref",
    "wavenet_step",
    "wavenet_step_ref",
    "zigzag_order",
]
