"""Thin autoregressive models, one per file, nanoGPT-sized, all with one interface.

Interface (every model follows it, so training and sampling treat them alike):

- ``<Model>Config``: a dataclass with at least ``shape`` ((C, H, W) images or (C, T)
  sequences), ``levels`` (2 = binary, 17, 256) and ``num_classes`` (0 = unconditional), plus
  the model's own sizes with small defaults. ``<Model>(config)`` keeps it as ``model.config``.
- ``x`` is always the data's integer levels (see :mod:`artrt.data`): int64 (or uint8) of shape
  (B, *shape), values in [0, levels). ``cond`` is None or int64 class labels (B,) in
  [0, num_classes). Both are validated with clear ValueError/TypeError.
- ``forward(x, cond=None)``: the distribution's parameters, e.g. logits (B, levels, *shape)
  for a categorical output, or the discretized logistic mixture's (B, P, H, W) of
  :class:`PixelCNNpp` (whose ``sample`` takes (n, 1 + C, H, W) uniforms: one step per
  pixel). The network sees ``artrt.data.to_input(x, levels)`` (floats in [-1, 1]);
  ``forward_input(v, cond=None)`` takes that float input directly, so the autoregressive
  property can be checked through the Jacobian.
- ``nll(x, cond=None)``: (B,) negative log-likelihood in nats, summed over all dimensions
  (bits per dimension = nll / (dims * ln 2)).
- ``sample(n, cond=None, *, cache=True, generator=None, progress=False, uniforms=None)``:
  (n, *shape) int64, drawn one generation step at a time in the model's ordering by
  inverse-CDF sampling, from ``generator`` or from pre-drawn U(0, 1) ``uniforms``; a tqdm
  progress bar with ``progress=True``; no gradients; eval mode during the loop.
  ``cache=True`` runs the model's incremental cache, ``cache=False`` the plain loop (one full
  network pass per step): the same uniforms give the same samples.
- ``new_cache(batch_size, cond=None)``: the model's :class:`artrt.sampling.ARCache`
  (``positions()``, ``logits()``, ``push(values)``, ``reset(cond)``), which ``sample`` uses.

Tests for each model live in ``tests/models/test_<name>.py``: the autoregressive property
through the Jacobian, ``nll`` equal to the sum of the per-step log-probabilities of the
sampling order, a few optimiser steps on real data lowering the loss, and clear errors for
bad input; its cache's in ``tests/sampling/test_<name>.py``: teacher forcing through the
cache equal to the forward pass at every position, cached samples equal to the plain loop's,
clear errors that leave the cache unchanged.
"""

from artrt.models.arrnn import ARRNN, ARRNNConfig
from artrt.models.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from artrt.models.made import MADE, MADEConfig
from artrt.models.multiscale import MultiscalePixelCNN, MultiscalePixelCNNConfig
from artrt.models.pixelcnn import PixelCNN, PixelCNNConfig
from artrt.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from artrt.models.transformer import ARTransformer, ARTransformerConfig
from artrt.models.wavenet import WaveNet, WaveNetConfig

# name -> (model class, config class), for scripts that pick a model by name.
MODELS = {
    "arrnn": (ARRNN, ARRNNConfig),
    "made": (MADE, MADEConfig),
    "pixelcnn": (PixelCNN, PixelCNNConfig),
    "pixelcnnpp": (PixelCNNpp, PixelCNNppConfig),
    "gated_pixelcnn": (GatedPixelCNN, GatedPixelCNNConfig),
    "wavenet": (WaveNet, WaveNetConfig),
    "transformer": (ARTransformer, ARTransformerConfig),
    "multiscale": (MultiscalePixelCNN, MultiscalePixelCNNConfig),
}

__all__ = [
    "ARRNN", "ARRNNConfig", "ARTransformer", "ARTransformerConfig", "GatedPixelCNN",
    "GatedPixelCNNConfig", "MADE", "MADEConfig", "MODELS", "MultiscalePixelCNN",
    "MultiscalePixelCNNConfig", "PixelCNN", "PixelCNNConfig", "PixelCNNpp", "PixelCNNppConfig",
    "WaveNet", "WaveNetConfig",
]
