"""Gated activations recognised by what they return: ``tanh(a) * sigmoid(b)`` (Gated
PixelCNN, WaveNet) or ``a * sigmoid(b)`` (PixelCNN++, ``nn.GLU``) of the two halves a, b of
one dimension.

Candidates: parameter- and buffer-free modules with their own ``forward`` (user code, not
``torch.nn`` activations), and ``nn.GLU``. Each runs on a 4-D and a 3-D random probe; the
dimension it halves in both gives the gate's ``dim`` (positive when it is the same index in
both, negative when it is the same from the end, as ``x.chunk(2, -1)``), and its outputs are
compared with :func:`artrt.ops.gated_tanh_ref` and :func:`artrt.ops.gated_sigmoid_ref`.
"""

from __future__ import annotations

import torch
from torch import nn

from artrt.nn import GatedSigmoid, GatedTanh
from artrt.ops.gated import gated_sigmoid_ref, gated_tanh_ref
from artrt.patch._common import (
    Match,
    Reject,
    forward_overridden,
    from_artrt,
    generator,
    mismatch,
    post_hooks,
    randn,
    run,
    single_input,
    state_of,
)

_GATES = (("tanh(a) * sigmoid(b)", gated_tanh_ref, GatedTanh),
          ("a * sigmoid(b)", gated_sigmoid_ref, GatedSigmoid))


def _halved(shape: torch.Size, y) -> int | None:
    """The one dimension that ``y`` has half of (all others equal to ``shape``), or None."""
    if not isinstance(y, torch.Tensor) or y.dim() != len(shape):
        return None
    dims = [d for d in range(len(shape)) if y.shape[d] != shape[d]]
    if len(dims) != 1 or 2 * y.shape[dims[0]] != shape[dims[0]]:
        return None
    return dims[0]


def recognise(m: nn.Module) -> Match | Reject | None:
    if state_of(m) or from_artrt(m) or not single_input(m):
        return None
    if not (type(m) is nn.GLU
            or (forward_overridden(m) and not type(m).__module__.startswith("torch."))):
        return None
    gen = generator(3)
    x4, x3 = randn((2, 8, 6, 10), None, gen), randn((2, 6, 10), None, gen)
    try:
        y4, y3 = run(m, (x4,)), run(m, (x3,))
    except Exception:  # noqa: BLE001 - not a function of one tensor: not a gate
        return None
    d4, d3 = _halved(x4.shape, y4), _halved(x3.shape, y3)
    if d4 is None or d3 is None:
        return None
    if d4 - 4 == d3 - 3:
        dim = d4 - 4
    elif d4 == d3:
        dim = d4
    else:
        return None
    for formula, ref, cls in _GATES:
        if mismatch(ref(x4, None, dim), y4) is None and mismatch(ref(x3, None, dim), y3) is None:
            hooked = post_hooks(m)
            if hooked is not None:
                return Reject("it has forward or backward hooks, which the replacement would "
                              "not run")
            return Match(cls(dim), f"{formula} over dim {dim}", [(x4,), (x3,)])
    return Reject(f"it halves dim {dim} like a gate, but computes neither tanh(a) * "
                  "sigmoid(b) nor a * sigmoid(b) of the halves")
