"""The incremental sampling cache every model of :mod:`artrt.models` shares the protocol of.

A plain sampling loop reruns the whole network for every generation step. A cache keeps what
the earlier steps computed (ring buffers, row caches, keys and values, hidden states) so that
a step computes only what depends on the newest values. The protocol, one step at a time in
the model's ``generation_steps()`` order (a step may cover several positions: a pixel's
channels drawn together, a whole group of a multiscale scale)::

    cache = model.new_cache(batch_size, cond)     # or cache.reset(cond) to start over
    while not cache.done:
        pos = cache.positions()                   # (G,) int64 flat positions of this step
        logits = cache.logits()                   # (B, levels, G) float32
        values = ...                              # (B, G) int64, drawn from the logits
        cache.push(values)                        # record them, advance one step

``model.sample(n, cond, cache=True)`` runs exactly this loop with the inverse CDF of the
same uniforms the plain loop uses, so both give the same samples. Teacher forcing (pushing
a known ``x``) makes ``logits()`` equal ``model(x, cond)`` at every position.

Subclasses implement ``_reset(cond)``, ``_logits()`` and ``_push(values)``; this base owns
the step counter and every check, done before any state changes, so a bad call leaves the
cache as it was. ``push`` checks the values' range with one host read (a device sync on
CUDA); the samplers of the models push the values they drew themselves through
``_push_unchecked``, so their steps read nothing back.
"""

from __future__ import annotations

import torch
from torch import nn

from artrt.ops._checks import value_range
from artrt.sampling._shared import check_cond


class ARCache:
    """Incremental sampling state of ``model`` for ``batch_size`` sequences on ``device``.

    Args:
        model: the :mod:`artrt.models` model (kept by reference: the cache reads its weights).
        batch_size: B.
        cond: (B,) int64 class labels for a conditional model, else None.

    Attributes:
        model, batch_size, device, levels.
        num_steps: generation steps of one sample.
        step: steps pushed so far (0 after ``reset``).
    """

    def __init__(self, model: nn.Module, batch_size: int, cond: torch.Tensor | None = None):
        name = f"{type(self).__name__}"
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{name}: batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.batch_size = model, batch_size
        self.device = next(model.parameters()).device
        self.levels = model.config.levels
        self._steps: torch.Tensor | None = None
        self._step_graphs = None  # artrt.sampling.graphs.StepGraphs, made on first use
        self.step = 0
        self.reset(cond)

    # ----------------------------------------------------------------------- protocol

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    def reset(self, cond: torch.Tensor | None = None) -> None:
        """Start a new batch of samples (optionally with new labels ``cond`` (B,))."""
        check_cond(type(self).__name__, cond, self.batch_size, self.model.config.num_classes)
        if cond is not None and cond.device != self.device:
            cond = cond.to(self.device)
        self.cond = cond
        self.step = 0
        self._plan_steps()
        self._reset(cond)

    def _plan_steps(self) -> None:
        """The positions of every step, from ``model.generation_steps()`` as it is now (a
        model may change its ordering between samples, e.g. MADE's mask sets); rebuilt only
        when it changed."""
        steps = self.model.generation_steps().reshape(-1).cpu()  # (D,) step of each position
        if self._steps is not None and torch.equal(steps, self._steps):
            return
        order = steps.argsort(stable=True)
        counts = torch.bincount(steps).tolist()
        self._positions = list(order.to(self.device).split(counts))
        self.num_steps = len(self._positions)
        self._steps = steps

    def positions(self) -> torch.Tensor:
        """(G,) int64 flat positions (into ``prod(model.config.shape)``) of the next step."""
        self._check_not_done("positions")
        return self._positions[self.step]

    def logits(self) -> torch.Tensor:
        """(B, levels, G) float32 logits of the next step's positions given everything
        pushed so far."""
        self._check_not_done("logits")
        return self._logits()

    def push(self, values: torch.Tensor) -> None:
        """Record the next step's values (B, G) int64 in [0, levels) and advance."""
        self._check_not_done("push")
        name = f"{type(self).__name__}.push"
        g = self._positions[self.step].numel()
        if not isinstance(values, torch.Tensor) or values.is_floating_point() \
                or values.dtype == torch.bool:
            raise TypeError(f"{name}: values must be an integer tensor, got "
                            f"{getattr(values, 'dtype', type(values).__name__)}")
        if tuple(values.shape) != (self.batch_size, g):
            raise ValueError(f"{name}: values must have shape ({self.batch_size}, {g}) (batch "
                             f"size of the cache, positions of step {self.step}), got "
                             f"{tuple(values.shape)}")
        if values.device != self.device:
            raise ValueError(f"{name}: values are on {values.device}, the cache on "
                             f"{self.device}")
        if values.numel():
            lo, hi = value_range(values)  # the one host read of a push
            if lo < 0 or hi >= self.levels:
                raise ValueError(f"{name}: values must be levels in [0, {self.levels}), got "
                                 f"[{int(lo)}, {int(hi)}]")
        self._push(values.long())
        self.step += 1

    def _push_unchecked(self, values: torch.Tensor) -> None:
        """:meth:`push` of values the caller drew itself from this cache's output: (B, G)
        int64 levels in [0, levels) on the cache's device, not checked (no host read)."""
        self._check_not_done("push")
        self._push(values)
        self.step += 1

    def check_for(self, model: nn.Module, n: int) -> None:
        """ValueError unless the cache serves ``model`` for a batch of ``n`` on its device."""
        name = type(self).__name__
        if self.model is not model:
            raise ValueError(f"{name}: the cache belongs to another model "
                             f"({type(self.model).__name__} at {id(self.model):#x})")
        if n != self.batch_size:
            raise ValueError(f"{name}: the cache holds batch_size={self.batch_size}, the call "
                             f"asks for n={n}")
        device = next(model.parameters()).device
        if device != self.device:
            raise ValueError(f"{name}: the cache is on {self.device}, the model on {device}")

    def _check_not_done(self, what: str) -> None:
        if self.done:
            raise RuntimeError(f"{type(self).__name__}.{what}: all {self.num_steps} steps are "
                               f"pushed; call reset() to start a new batch")

    # ----------------------------------------------------------------------- subclass hooks

    def _reset(self, cond: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _logits(self) -> torch.Tensor:
        raise NotImplementedError

    def _push(self, values: torch.Tensor) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch_size={self.batch_size}, device={self.device}, "
                f"step={self.step}/{self.num_steps})")


__all__ = ["ARCache"]
