"""artrt: fused GPU kernels and thin models for autoregressive generative models.

Functional ops live in :mod:`artrt.ops` (re-exported here), modules in :mod:`artrt.nn`.
Backends and how to force one: :mod:`artrt.backends`; ``artrt info`` says which are available.
"""

from artrt import nn, ops, sampling
from artrt.backends import BackendUnavailableError, use_backend
from artrt.ops import (
    attention_decode,
    attention_decode_ref,
    causal_attention,
    causal_attention_ref,
    causal_conv1d,
    causal_conv1d_ref,
    dmol_nll,
    dmol_nll_ref,
    dmol_sample,
    dmol_sample_ref,
    down_right_shifted_conv2d,
    down_right_shifted_conv2d_ref,
    down_shifted_conv2d,
    down_shifted_conv2d_ref,
    gated_sigmoid,
    gated_sigmoid_ref,
    gated_tanh,
    gated_tanh_ref,
    masked_conv2d,
    masked_conv2d_ref,
    wavenet_gate,
    wavenet_gate_ref,
    wavenet_step,
    wavenet_step_ref,
)
from artrt.patch import PatchReport, patch, unpatch

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "PatchReport",
    "__version__",
    "attention_decode",
    "attention_decode_ref",
    "causal_attention",
    "causal_attention_ref",
    "causal_conv1d",
    "causal_conv1d_ref",
    "down_right_shifted_conv2d",
    "down_right_shifted_conv2d_ref",
    "down_shifted_conv2d",
    "down_shifted_conv2d_ref",
    "dmol_nll",
    "dmol_nll_ref",
    "dmol_sample",
    "dmol_sample_ref",
    "gated_sigmoid",
    "gated_sigmoid_ref",
    "gated_tanh",
    "gated_tanh_ref",
    "masked_conv2d",
    "masked_conv2d_ref",
    "wavenet_gate",
    "wavenet_gate_ref",
    "wavenet_step",
    "wavenet_step_ref",
    "nn",
    "ops",
    "patch",
    "sampling",
    "unpatch",
    "use_backend",
]
