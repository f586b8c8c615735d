"""What the models of :mod:`artrt.models` and their sampling caches share: the check of the
class labels, and the layout of the logits a network outputs (a Bernoulli logit for binary
data, the channels of colour-grouped convolutions). It lives here, below the models, so that
the caches never import the models that import them.
"""

from __future__ import annotations

import torch

from artrt.ops._checks import value_range


def check_cond(name: str, cond: torch.Tensor | None, batch: int, num_classes: int) -> None:
    """cond: None when num_classes == 0, else int64 labels (B,) in [0, num_classes)."""
    if num_classes == 0:
        if cond is not None:
            raise ValueError(f"{name}: got cond, but the model is unconditional "
                             f"(num_classes=0)")
        return
    if cond is None:
        raise ValueError(f"{name}: the model is class-conditional (num_classes={num_classes}): "
                         f"cond, int64 labels of shape ({batch},), is required")
    if not isinstance(cond, torch.Tensor) or cond.dtype != torch.int64:
        raise TypeError(f"{name}: cond must be an int64 tensor of labels, got "
                        f"{getattr(cond, 'dtype', type(cond).__name__)}")
    if tuple(cond.shape) != (batch,):
        raise ValueError(f"{name}: cond must have shape ({batch},), got {tuple(cond.shape)}")
    lo, hi = value_range(cond)
    if cond.numel() and (lo < 0 or hi >= num_classes):
        raise ValueError(f"{name}: labels must be in [0, {num_classes}), got values in "
                         f"[{lo}, {hi}]")


def logit_channels(levels: int) -> int:
    """Outputs per variable: 1 (a Bernoulli logit) for binary data, else ``levels``."""
    return 1 if levels == 2 else levels


def level_logits(out: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, K, *rest) network outputs, K = :func:`logit_channels` -> (B, levels, *rest) logits.

    A Bernoulli logit l (K = 1, binary data) becomes the two-level logits (0, l), whose
    softmax is (1 - sigmoid(l), sigmoid(l)): the same distribution, in the categorical
    layout that ``categorical_nll`` and ``inverse_cdf`` take.
    """
    if levels != 2:
        return out
    return torch.cat([torch.zeros_like(out), out], 1)


def grouped_logits(out: torch.Tensor, levels: int) -> torch.Tensor:
    """Colour-grouped convolution outputs (B, C * K, H, W), channel ``c * K + k`` (K =
    :func:`logit_channels`) -> logits (B, levels, C, H, W)."""
    b, _, height, width = out.shape
    k = logit_channels(levels)
    out = out.view(b, out.shape[1] // k, k, height, width).transpose(1, 2)
    return level_logits(out, levels)  # (B, levels, C, H, W)
