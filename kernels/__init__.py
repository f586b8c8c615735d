"""Triton kernels and their launchers, installed as ``artrt.kernels``.

One file per op. A launcher checks what the kernel assumes (it trusts the op layer for
everything else), allocates the output and launches. Nothing here knows about autograd.

Triton decides at decoration time whether a ``@triton.jit`` function is compiled or
interpreted, so ``INTERPRET`` records the mode these kernels were built in: under
``TRITON_INTERPRET=1`` they run on CPU tensors (this is how CI tests them), otherwise on
CUDA tensors only.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
