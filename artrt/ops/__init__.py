"""The public functional ops of artrt (torch.library ops) and their pure-PyTorch references."""

from artrt.ops.gated import (
    gated_backward_ref,
    gated_sigmoid,
    gated_sigmoid_ref,
    gated_tanh,
    gated_tanh_ref,
)

__all__ = [
    "gated_backward_ref",
    "gated_sigmoid",
    "gated_sigmoid_ref",
    "gated_tanh",
    "gated_tanh_ref",
]
