"""artrt: fused GPU kernels and thin models for autoregressive generative models.

Functional ops live in :mod:`artrt.ops` (re-exported here), modules in :mod:`artrt.nn`.
Backends and how to force one: :mod:`artrt.backends`; ``artrt info`` says which are available.
"""

from artrt import nn, ops
from artrt.backends import BackendUnavailableError, use_backend
from artrt.ops import gated_sigmoid, gated_sigmoid_ref, gated_tanh, gated_tanh_ref

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "gated_sigmoid",
    "gated_sigmoid_ref",
    "gated_tanh",
    "gated_tanh_ref",
    "nn",
    "ops",
    "use_backend",
]
