"""MADE (Germain, Gregor, Murray and Larochelle, "MADE: Masked Autoencoder for Distribution
Estimation", 2015): an MLP whose weights are masked so that output d sees only the inputs
before d in an ordering, with order- and connectivity-agnostic training over several masks.

Variables: the D = prod(shape) entries of x, flattened in x's layout. Each mask set draws
(from a generator seeded by ``(seed, index)``, so mask set k is the same on every run):

- an ordering: input degree m0(d) in 1..D, the step at which variable d is generated
  (``ordering="raster"``: d + 1, x's layout; ``"random"``: a random permutation);
- a connectivity: hidden unit k of layer l gets degree m_l(k) uniform in
  [min m_{l-1}, D - 1], and the masks are::

      hidden:  M_l[k, k'] = m_l(k) >= m_{l-1}(k')        output:  M[d, k] = m0(d) > m_L(k)

  so output d depends only on inputs d' with m0(d') < m0(d). A 3-variable example, order
  (x1, x0, x2), i.e. m0 = (2, 1, 3), one hidden layer with degrees (1, 2)::

      input  x0 (2)   x1 (1)   x2 (3)          mask to hidden   mask to output
                                                  x0 x1 x2         h0 h1
      hidden h0 (1)   h1 (2)                  h0   0  1  0    x0   1  0   (x0 sees x1)
                                              h1   1  1  0    x1   0  0   (x1: bias only)
                                                              x2   1  1   (x2 sees x0, x1)

``num_masks`` mask sets form a fixed pool (the paper's "number of masks"). Training: call
``model.resample_masks(generator)`` before each step (a uniformly drawn member of the pool).
Test: ``nll(x, num_masks=k)`` is -log of the mean likelihood over the first k mask sets (the
paper's ensemble). Sampling follows the current mask set's ordering (``generation_steps()``);
resampling the masks before ``sample`` draws from the ensemble, one mask set per call. The
cached sampler (:class:`artrt.sampling.made.MADECache`, ``new_cache``) updates the first
layer's pre-activation by one input column per step and recomputes the later layers.

Output: a Bernoulli logit per variable for binary data (returned as the two-level logits
(0, l)), a ``levels``-way softmax otherwise; the input is the [-1, 1] value of each variable.
Class-conditional when ``num_classes > 0``: a learned per-class bias on every hidden layer
and on the output (the label is context, allowed everywhere).

Departures: no direct input-to-output connections; ReLU hidden units; a mask set is picked
at random from the pool rather than cycled through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from artrt.models._common import DiscreteARModel, check_config, level_logits, logit_channels
from artrt.sampling.made import MADECache

ORDERINGS = ("raster", "random")


@dataclass
class MADEConfig:
    """shape: (C, H, W) or (C, T) (any shape: MADE sees D = prod(shape) variables). levels:
    values per variable (2: Bernoulli output). num_classes: 0, or the number of labels.
    hidden: width of each hidden layer. num_masks: mask sets in the pool. ordering:
    "raster" (every mask set keeps x's layout order; only connectivity varies) or "random"
    (each mask set draws its own ordering too). seed: fixes the pool."""

    shape: tuple[int, ...] = (1, 28, 28)
    levels: int = 2
    num_classes: int = 0
    hidden: tuple[int, ...] = (500,)
    num_masks: int = 1
    ordering: str = "raster"
    seed: int = 0


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight (out, in) is multiplied by a 0/1 ``mask`` buffer of the same
    shape, set by :meth:`MADE.resample_masks` (not saved: it follows from the config)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(DiscreteARModel):
    """MADE over x of ``config.shape``; see the module docstring. Interface:
    :mod:`artrt.models`, with ``nll(x, cond=None, num_masks=1)``.

    ``forward(x, cond=None)``: x int (B, *shape) -> logits (B, levels, *shape) under the
    current mask set (``mask_index``). ``generation_steps()``: (*shape) int64, the step of
    each variable in the current ordering, which ``sample`` follows.
    ``resample_masks(generator=None, index=None)``: switch to mask set ``index`` of the
    pool, or to one drawn uniformly with ``generator``. ``new_cache(batch_size, cond=None)``:
    the incremental sampling cache that ``sample`` runs by default.
    """

    name = "MADE"

    def __init__(self, config: MADEConfig):
        super().__init__()
        name = self.name
        shape = check_config(name, config.shape, config.levels, config.num_classes, (2, 3))
        if not config.hidden or any(not isinstance(h, int) or h < 1 for h in config.hidden):
            raise ValueError(f"{name}: hidden must be a non-empty tuple of positive ints, got "
                             f"{config.hidden!r}")
        if not isinstance(config.num_masks, int) or config.num_masks < 1:
            raise ValueError(f"{name}: num_masks must be an int >= 1, got {config.num_masks!r}")
        if config.ordering not in ORDERINGS:
            raise ValueError(f"{name}: ordering must be one of {ORDERINGS}, got "
                             f"{config.ordering!r}")
        self.config, self.shape, self.dims = config, shape, math.prod(shape)
        sizes = [self.dims, *config.hidden]
        self.layers = nn.ModuleList(MaskedLinear(a, b)
                                    for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out = MaskedLinear(sizes[-1], logit_channels(config.levels) * self.dims)
        n = config.num_classes
        self.class_bias = (nn.ModuleList(nn.Embedding(n, h) for h in [*config.hidden,
                                                                       self.out.out_features])
                           if n else None)
        self.register_buffer("steps", torch.zeros(self.dims, dtype=torch.int64),
                             persistent=False)
        self.mask_index = 0
        self.resample_masks(index=0)

    def _degrees(self, index: int) -> list[torch.Tensor]:
        """Degrees of mask set ``index``: [m0 (D,), m_1 (H_1,), ..., m_L (H_L,)], int64."""
        cfg = self.config
        g = torch.Generator().manual_seed((cfg.seed << 20) + index)
        d = self.dims
        if cfg.ordering == "raster":
            m0 = torch.arange(1, d + 1)
        else:
            m0 = torch.empty(d, dtype=torch.int64)
            m0[torch.randperm(d, generator=g)] = torch.arange(1, d + 1)
        degrees = [m0]
        for h in cfg.hidden:
            low = min(int(degrees[-1].min()), d - 1)
            degrees.append(torch.randint(low, d, (h,), generator=g))
        return degrees

    @torch.no_grad()
    def resample_masks(self, generator: torch.Generator | None = None,
                       index: int | None = None) -> int:
        """Switch to mask set ``index`` (0 .. num_masks-1) of the pool, or, without it, to one
        drawn uniformly with ``generator`` (a CPU generator, or None for the global one).
        Returns the index now in use (also ``self.mask_index``)."""
        if index is None:
            index = int(torch.randint(self.config.num_masks, (), generator=generator))
        if not isinstance(index, int) or not 0 <= index < self.config.num_masks:
            raise ValueError(f"MADE: mask index must be an int in [0, "
                             f"{self.config.num_masks}), got {index!r}")
        degrees = self._degrees(index)
        for layer, prev, cur in zip(self.layers, degrees[:-1], degrees[1:], strict=True):
            layer.mask.copy_(cur[:, None] >= prev[None, :])  # (H_l, H_{l-1})
        m_out = degrees[0].repeat(logit_channels(self.config.levels))  # (K * D,), layout (K, D)
        self.out.mask.copy_(m_out[:, None] > degrees[-1][None, :])
        self.steps.copy_(degrees[0] - 1)
        self.mask_index = index
        return index

    def generation_steps(self) -> torch.Tensor:
        """(*shape) int64: the step at which each variable is drawn under the current masks."""
        return self.steps.view(self.shape).clone()

    def forward_input(self, v: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(v, cond)
        b = v.shape[0]
        biases = [None] * (len(self.layers) + 1) if self.class_bias is None else [
            emb(cond) for emb in self.class_bias]
        h = v.reshape(b, self.dims).to(self.out.weight.dtype)  # (B, D)
        for layer, bias in zip(self.layers, biases[:-1], strict=True):
            h = layer(h)  # (B, H_l)
            h = F.relu(h if bias is None else h + bias)
        out = self.out(h)  # (B, K * D)
        if biases[-1] is not None:
            out = out + biases[-1]
        return level_logits(out.view(b, logit_channels(self.config.levels), *self.shape),
                            self.config.levels)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None) -> MADECache:
        """A :class:`artrt.sampling.made.MADECache` for ``batch_size`` samples under the
        current mask set (a reset follows the mask set current then), on the model's
        device."""
        return MADECache(self, batch_size, cond)

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            num_masks: int = 1) -> torch.Tensor:
        """(B,) negative log-likelihood in nats. ``num_masks=1``: under the current mask set
        (training); ``k > 1``: -log of the mean likelihood over mask sets 0 .. k-1 of the
        pool (the ensemble; the current mask set is restored afterwards)."""
        if num_masks == 1:
            return super().nll(x, cond)
        if not isinstance(num_masks, int) or not 1 <= num_masks <= self.config.num_masks:
            raise ValueError(f"MADE: num_masks must be an int in [1, {self.config.num_masks}] "
                             f"(the pool), got {num_masks!r}")
        current = self.mask_index
        try:
            logp = []
            for index in range(num_masks):
                self.resample_masks(index=index)
                logp.append(-super().nll(x, cond))
        finally:
            self.resample_masks(index=current)
        return math.log(num_masks) - torch.stack(logp).logsumexp(0)

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, num_masks={self.config.num_masks}, "
                f"ordering={self.config.ordering!r}, mask_index={self.mask_index}")


__all__ = ["MADE", "MADEConfig"]
