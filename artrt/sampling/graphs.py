"""CUDA graphs of the cached samplers' steps: the driver ``model.sample(cache=True,
cuda_graph=True)`` runs for every model whose cache has no graphs of its own (all but
WaveNet, whose :class:`artrt.sampling.WaveNetCache` replays one launch per step itself).

A cached step launches many small kernels (PixelCNN++ about 60 per pixel); at batch 1 the
host's launch cost, not the device, sets the pace. A CUDA graph records those launches once
and replays them with one call. What makes a cache's steps capturable is that they read
nothing back from the device (``ARCache._push_unchecked`` and the ops' unchecked entries):
the Python code of step s then does the same thing for any data, so the kernels it launches
depend only on s and on the cache's structure, never on the values drawn.

Why one graph per run of steps, not one graph replayed at every step: a step's Python code
differs from step to step (PixelCNN's pixel (i, j) and its slices, Gated PixelCNN's row end,
PixelCNN++'s boxes, the transformer's key/value length, MultiscalePixelCNN's network of the
step), and a graph freezes every Python value it was captured with. So :class:`StepGraphs`
captures every step of a sample, in order, ``chunk`` steps per graph (all graphs share one
memory pool and are replayed in the order they were captured), and replays them all for
each sample::

    first call:   reset -> warm-up: every step eagerly (compiles, autotunes, workspaces)
                  -> reset again -> capture steps [0, c), [c, 2c), ...
                  -> replay them all
    later calls:  reset (eager: labels, masked weights, ...) -> copy the reset state into
                  the captured tensors -> replay them all

The captured tensors: every tensor the cache holds after ``reset`` (found by walking its
attributes, lists, tuples, dicts and its own helper objects, the model excluded), the
model's parameters and buffers (read where they are, so in-place updates are seen), and the
static uniforms and output buffers. Graphs are captured again when any of these changes
shape, dtype or place, when a parameter is replaced (``model.half()``), or when the cache's
Python state after reset differs (a new generation order, MADE's next mask set).

Memory: the graphs hold ``num_steps`` steps' kernels (about 60 nodes per PixelCNN++ pixel)
and a pool of the steps' temporaries; they live as long as the cache (``model.sample(
cache=True)`` keeps one graphed cache per batch size on the model).

On the CPU there is nothing to capture: ``cuda_graph=True`` runs the same steps eagerly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from artrt.sampling.cache import ARCache

# Steps per captured graph: one replay per ``CHUNK`` steps (the progress bar's unit); an
# estimate, not measured: long enough that a replay's few microseconds of host time are small
# against its steps' kernels, short enough that the bar moves.
CHUNK = 64

Step = Callable[[torch.Tensor, torch.Tensor], None]  # step(x, u): one cache step, x written


def _own(value: object) -> bool:
    """A helper object of the caches (a dataclass of masks and buffers, a KVCache, a
    PixelCNN++ layer) whose attributes are walked; never a module, a function or a torch
    object."""
    return (hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type))
            and type(value).__module__.startswith("artrt."))


def cache_state(cache: ARCache) -> tuple[list[torch.Tensor], list[object]]:
    """The cache's state, walked in a fixed order: (every tensor it holds on its device, every
    other value it holds, host tensors included). The model (read by reference) and the
    graphs are left out."""
    tensors: list[torch.Tensor] = []
    leaves: list[object] = []

    def visit(value: object) -> None:
        if isinstance(value, torch.Tensor) and value.device == cache.device:
            tensors.append(value)
        elif isinstance(value, frozenset) or (isinstance(value, tuple) and all(
                type(v) is int for v in value)):  # plain data, one leaf (PixelCNN++'s boxes)
            leaves.append(value)
        elif isinstance(value, (list, tuple)):
            leaves.append((type(value), len(value)))
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            leaves.append((dict, tuple(value)))
            for v in value.values():
                visit(v)
        elif _own(value):
            leaves.append(type(value))
            for v in vars(value).values():
                visit(v)
        else:
            leaves.append(value)

    for key, value in vars(cache).items():
        if key not in ("model", "_step_graphs"):
            leaves.append(key)
            visit(value)
    return tensors, leaves


def rebind(cache: ARCache, tensors: list[torch.Tensor]) -> None:
    """Make the cache hold ``tensors`` in place of its own, in :func:`cache_state`'s order
    (the same structure is assumed): lists, dicts and helper objects are updated in place,
    tuples rebuilt."""
    it = iter(tensors)

    def visit(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.device == cache.device:
            return next(it)
        if isinstance(value, list):
            value[:] = [visit(v) for v in value]
        elif isinstance(value, tuple):
            items = [visit(v) for v in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        elif isinstance(value, dict):
            for k in value:
                value[k] = visit(value[k])
        elif _own(value):
            for k, v in vars(value).items():
                new = visit(v)
                if new is not v:
                    object.__setattr__(value, k, new)  # frozen dataclasses too
        return value

    for key, value in list(vars(cache).items()):
        if key not in ("model", "_step_graphs"):
            new = visit(value)
            if new is not value:
                setattr(cache, key, new)


def _meta(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.dtype, t.device


def _same_leaves(a: list[object], b: list[object]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is y:
            continue
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                    and _meta(x) == _meta(y) and torch.equal(x, y)):
                return False
            continue
        try:
            if type(x) is not type(y) or not bool(x == y):
                return False
        except Exception:  # a value without a plain equality: only itself is the same
            return False
    return True


class StepGraphs:
    """The captured steps of one cache (see the module docstring).

    Args:
        cache: the :class:`ARCache` (on a CUDA device).
        chunk: steps per graph.

    Attributes:
        graphs: the captured graphs, in step order ([] before the first capture).
        state: the cache's tensors the graphs read and write (reset values are copied in).
        x, u: the static output and uniforms buffers.
    """

    def __init__(self, cache: ARCache, chunk: int = CHUNK):
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"StepGraphs: chunk must be an int >= 1, got {chunk!r}")
        self.cache, self.chunk = cache, chunk
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.state: list[torch.Tensor] = []
        self._key: tuple | None = None
        self._leaves: list[object] = []
        self.x = self.u = None

    def _params_key(self) -> tuple:
        m = self.cache.model
        return tuple((t.data_ptr(), *_meta(t)) for t in (*m.parameters(), *m.buffers()))

    def snapshot(self) -> None:
        """Take the cache's tensors as they are now (just reset) as the captured ones."""
        self.state, self._leaves = cache_state(self.cache)
        self._key = (tuple(_meta(t) for t in self.state), self._params_key())

    def load(self) -> bool:
        """After a reset: copy the cache's fresh state into the captured tensors and make the
        cache hold those. False (nothing done) when the graphs do not fit the cache as it
        is now (or there are none)."""
        tensors, leaves = cache_state(self.cache)
        key = (tuple(_meta(t) for t in tensors), self._params_key())
        if not self.graphs or key != self._key or not _same_leaves(leaves, self._leaves):
            return False
        for static, fresh in zip(self.state, tensors, strict=True):
            if static is not fresh:
                static.copy_(fresh)
        rebind(self.cache, self.state)
        return True

    def run(self, step: Step, x: torch.Tensor, u: torch.Tensor, progress: bool = False,
            desc: str = "sample") -> None:
        """Fill x (n, ...) from u (n, ...) through the cache, freshly reset: replay the
        graphs, captured first when needed. The cache is left done."""
        cache = self.cache
        fits = (self.x is not None and self.x.shape == x.shape and self.u.shape == u.shape
                and self.load())
        if not fits:
            self._capture(step, x, u)
        self.x.copy_(x)
        self.u.copy_(u)
        for graph in tqdm(self.graphs, disable=not progress, desc=desc):
            graph.replay()
        x.copy_(self.x)
        cache.step = cache.num_steps

    def _capture(self, step: Step, x: torch.Tensor, u: torch.Tensor) -> None:
        """Warm up, reset the cache again (its own code restores every Python value the
        warm-up moved on), capture every step from the reset state."""
        cache = self.cache
        self.graphs = []  # the old graphs and their pool go first
        self.x, self.u = x.clone(), u.clone()
        device = cache.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: every step once, outside any capture
            for _ in range(cache.num_steps - cache.step):
                step(self.x, self.u)
        torch.cuda.current_stream(device).wait_stream(side)
        cache.reset(cache.cond)
        self.snapshot()
        pool = torch.cuda.graph_pool_handle()
        for _ in range(math.ceil(cache.num_steps / self.chunk)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                for _ in range(min(self.chunk, cache.num_steps - cache.step)):
                    step(self.x, self.u)
            self.graphs.append(graph)


def run_steps(cache: ARCache, step: Step, x: torch.Tensor, u: torch.Tensor, progress: bool,
              desc: str, cuda_graph: bool) -> None:
    """Run every step of ``cache`` (freshly reset): ``step(x, u)`` draws one step's values
    into x from u and pushes them. ``cuda_graph`` on a CUDA cache replays the steps from
    CUDA graphs (:class:`StepGraphs`, kept on the cache); otherwise, and on the CPU, the
    steps run eagerly. Both give the same x."""
    if cuda_graph and cache.device.type == "cuda":
        if cache._step_graphs is None:
            cache._step_graphs = StepGraphs(cache)
        cache._step_graphs.run(step, x, u, progress, desc)
        return
    for _ in tqdm(range(cache.num_steps - cache.step), disable=not progress, desc=desc):
        step(x, u)


__all__ = ["CHUNK", "StepGraphs", "cache_state", "rebind", "run_steps"]
