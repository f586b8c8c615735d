"""What the models of :mod:`artrt.models` share: the checks of the config, the data, the float
input, the class labels and the sampling arguments; the categorical nll and the inverse-CDF
sampler; the Bernoulli output in the categorical layout; the raster generation steps; and
:class:`DiscreteARModel`, the interface (``forward``, ``nll``, ``sample``) over a model's own
``forward_input`` and ``generation_steps``.

Every model file imports from here and keeps only its own model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from artrt.levels import to_input
from artrt.ops._checks import check_range, value_range

# Shared with the sampling caches, so they live below both; re-exported for the model files.
from artrt.sampling._shared import check_cond as check_cond
from artrt.sampling._shared import grouped_logits as grouped_logits
from artrt.sampling._shared import level_logits as level_logits
from artrt.sampling._shared import logit_channels as logit_channels
from artrt.sampling.cache import ARCache
from artrt.sampling.graphs import run_steps


class _KeptCaches(dict):
    """The graphed caches a model keeps for ``sample(cache=True, cuda_graph=True)``, by batch
    size. Copies and pickles of the model start without them (CUDA graphs cannot be copied,
    and they point at the original's tensors)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made_for: dict = {}  # batch size -> (device, dtype) of the model then

    def __deepcopy__(self, memo: dict) -> _KeptCaches:
        return _KeptCaches()

    def __reduce__(self):
        return (_KeptCaches, ())

# --------------------------------------------------------------------------- checks


def check_config(name: str, shape: tuple[int, ...], levels: int, num_classes: int,
                 ndims: tuple[int, ...] = (3,)) -> tuple[int, ...]:
    """Validate the common config fields; returns ``shape`` as a tuple of ints."""
    shape = tuple(shape)
    if len(shape) not in ndims or not all(isinstance(s, int) and s >= 1 for s in shape):
        want = " or ".join({2: "(C, T)", 3: "(C, H, W)"}[n] for n in ndims)
        raise ValueError(f"{name}: shape must be {want} of positive ints, got {shape}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"{name}: levels must be an int >= 2, got {levels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{name}: num_classes must be an int >= 0, got {num_classes!r}")
    return shape


def _check_shape(name: str, what: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    """t: (B, *shape); ValueError naming ``what`` otherwise."""
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise ValueError(f"{name}: {what} must have shape (B, {', '.join(map(str, shape))}), "
                         f"got {tuple(t.shape)}")


def check_data(name: str, x: torch.Tensor, shape: tuple[int, ...], levels: int) -> None:
    """x: integer levels (B, *shape) in [0, levels); TypeError / ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor of integer levels, got "
                        f"{type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: x must hold integer levels (int64 or uint8), got {x.dtype}; "
                        f"floats in [-1, 1] go to forward_input")
    _check_shape(name, "x", x, shape)
    lo, hi = value_range(x)  # one host read; Python numbers, so uint8 cannot wrap
    if x.numel() and (lo < 0 or hi >= levels):
        raise ValueError(f"{name}: x must hold levels in [0, {levels}), got values in "
                         f"[{int(lo)}, {int(hi)}]")


def check_input(name: str, v: torch.Tensor, shape: tuple[int, ...]) -> None:
    """v: float model input (B, *shape)."""
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"{name}: forward_input takes the float input to_input(x, levels), got "
                        f"{getattr(v, 'dtype', type(v).__name__)}")
    _check_shape(name, "input", v, shape)




# --------------------------------------------------------------------------- likelihood, sampling


def categorical_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits (B, L, *shape), x int (B, *shape) -> (B,) nats, summed over all dimensions."""
    nll = F.cross_entropy(logits.float(), x.long(), reduction="none")  # (B, *shape)
    return nll.flatten(1).sum(1)


def inverse_cdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw from softmax(logits) by the inverse CDF: logits (..., L), u (...) in [0, 1) ->
    int64 (...): the smallest level whose cumulative probability exceeds u."""
    cdf = logits.float().softmax(-1).cumsum(-1).contiguous()  # (..., L)
    idx = torch.searchsorted(cdf, u.to(cdf.dtype).unsqueeze(-1).contiguous(), right=True)
    return idx.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def draw_uniforms(name: str, n: int, shape: tuple[int, ...], generator: torch.Generator | None,
                  uniforms: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The U(0, 1) number of every position, (n, *shape) float32 on ``device``: ``uniforms``
    as given (checked), else drawn from ``generator`` (on the generator's device)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be an int >= 1, got {n!r}")
    if uniforms is None:
        gen_device = generator.device if generator is not None else device
        return torch.rand((n, *shape), generator=generator, device=gen_device).to(device)
    if not isinstance(uniforms, torch.Tensor) or not uniforms.is_floating_point():
        raise TypeError(f"{name}: uniforms must be a float tensor, got "
                        f"{getattr(uniforms, 'dtype', type(uniforms).__name__)}")
    if tuple(uniforms.shape) != (n, *shape):
        raise ValueError(f"{name}: uniforms must have shape {(n, *shape)}, got "
                         f"{tuple(uniforms.shape)}")
    check_range(name, "uniforms", uniforms, 0.0, 1.0)  # NaN is out of range too
    return uniforms.to(device=device, dtype=torch.float32)


@contextmanager
def sampling_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a sampling loop; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- generation order


def raster_steps(shape: tuple[int, ...]) -> torch.Tensor:
    """(*shape) int64 generation step of every position of a (C, *spatial) tensor: spatial
    raster order with the channels innermost, step ``(i * W + j) * C + c`` for an image
    (``t * C + c`` for a (C, T) sequence)::

        C = 3, 2 x 2 image:   R        G        B
                              0  3     1  4     2  5
                              6  9     7 10     8 11
    """
    return torch.arange(math.prod(shape)).view(*shape[1:], shape[0]).movedim(-1, 0).contiguous()


# --------------------------------------------------------------------------- the interface


class DiscreteARModel(nn.Module):
    """The :mod:`artrt.models` interface over a subclass's ``forward_input(v, cond)`` and
    ``generation_steps()`` (raster unless overridden): ``forward`` checks the integer levels
    and maps them to the [-1, 1] input, ``nll`` is the categorical nll of the logits,
    ``sample`` checks its arguments, draws the uniforms (``_uniforms_shape()`` per sample)
    and runs ``_draw`` (by default the plain loop: one full network pass per position) in
    sampling mode. A subclass sets
    ``name`` and keeps ``self.config`` (shape, levels, num_classes) and ``self.shape``."""

    name = "DiscreteARModel"

    def generation_steps(self) -> torch.Tensor:
        """(*shape) int64: the step at which each position is drawn; by default
        :func:`raster_steps` (raster order, the channels of a pixel consecutive)."""
        return raster_steps(self.shape)

    def _check_input(self, v: torch.Tensor, cond: torch.Tensor | None) -> None:
        """The checks at the top of ``forward_input``: v float (B, *shape), cond labels."""
        check_input(self.name, v, self.shape)
        check_cond(self.name, cond, v.shape[0], self.config.num_classes)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_data(self.name, x, self.shape, self.config.levels)
        device = next(self.parameters()).device
        return self.forward_input(to_input(x, self.config.levels).to(device), cond)

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) negative log-likelihood in nats."""
        return categorical_nll(self(x, cond), x)

    def new_cache(self, batch_size: int, cond: torch.Tensor | None = None) -> ARCache:
        """A fresh incremental sampling cache (:class:`artrt.sampling.ARCache`) of this model
        for ``batch_size`` samples, on the model's device."""
        raise NotImplementedError(f"{self.name} has no incremental sampling cache")

    def _uniforms_shape(self) -> tuple[int, ...]:
        """The uniforms of one sample: by default ``shape``, one per position."""
        return tuple(self.shape)

    # ``sample(cuda_graph=None)`` means this: WaveNet replays graphs by default
    cuda_graph_default = False

    def sample(self, n: int, cond: torch.Tensor | None = None, *,
               cache: bool | ARCache = True, generator: torch.Generator | None = None,
               progress: bool = False, uniforms: torch.Tensor | None = None,
               cuda_graph: bool | None = None) -> torch.Tensor:
        """(n, *shape) int64: positions in ``generation_steps()`` order, each drawn at its
        uniforms (by default by the inverse CDF of its logits); ``uniforms`` (n,
        *_uniforms_shape()) in [0, 1), else drawn from ``generator``. ``cache``: True runs
        the incremental sampler (:meth:`new_cache`), False the plain loop (one full network
        pass per step), a cache object from :meth:`new_cache` reuses it (reset first); both
        give the same samples for the same uniforms.

        ``cuda_graph``: on a CUDA model, replay the cached sampler's steps from CUDA graphs
        (:mod:`artrt.sampling.graphs`; WaveNet: its cache's own graphs), captured on the
        first call and kept on the cache (with ``cache=True``, one graphed cache per batch
        size is kept on the model). The samples are the same as without. None: the model's
        ``cuda_graph_default`` (True for WaveNet, False for the others). On the CPU it is
        ignored (nothing to capture: the steps run eagerly). ``cuda_graph=True`` with
        ``cache=False`` is a ValueError (the plain loop is not graphed)."""
        name = f"{self.name}.sample"
        device = next(self.parameters()).device
        if isinstance(cache, ARCache):
            cache.check_for(self, n)
        elif not isinstance(cache, bool):
            raise TypeError(f"{name}: cache must be True, False or a cache from new_cache(), "
                            f"got {type(cache).__name__}")
        if cuda_graph is not None and not isinstance(cuda_graph, bool):
            raise TypeError(f"{name}: cuda_graph must be a bool or None, got "
                            f"{type(cuda_graph).__name__}")
        if cuda_graph and cache is False:
            raise ValueError(f"{name}: cuda_graph=True needs the cached sampler (cache=True or "
                             f"a cache from new_cache()), got cache=False")
        graphed = self.cuda_graph_default if cuda_graph is None else cuda_graph
        u = draw_uniforms(name, n, self._uniforms_shape(), generator, uniforms, device)
        check_cond(name, cond, n, self.config.num_classes)
        x = torch.zeros((n, *self.shape), dtype=torch.int64, device=device)
        with sampling_mode(self):
            if cache is False:
                self._draw(x, u, cond, progress, name)
            else:
                if cache is True:
                    cache = self._sample_cache(n, cond, graphed and device.type == "cuda")
                else:
                    cache.reset(cond)
                self._draw_cached(cache, x, u, progress, name, cuda_graph=cuda_graph)
        return x

    def _sample_cache(self, n: int, cond: torch.Tensor | None, graphed: bool) -> ARCache:
        """The cache of ``sample(cache=True)``: a new one, or for CUDA graphs the model's kept
        cache of batch size n (reset), so that its graphs are replayed, not captured again."""
        if not graphed:
            return self.new_cache(n, cond)
        kept = self.__dict__.setdefault("_graphed_caches", _KeptCaches())
        param = next(self.parameters())
        cache = kept.get(n)
        if cache is None or kept.made_for.get(n) != (param.device, param.dtype):
            cache = kept[n] = self.new_cache(n, cond)  # a model moved: a new cache
            kept.made_for[n] = (param.device, param.dtype)
        else:
            cache.reset(cond)
        return cache

    def _draw_cached(self, cache: ARCache, x: torch.Tensor, u: torch.Tensor, progress: bool,
                     desc: str, cuda_graph: bool | None = None) -> None:
        """Fill x (n, *shape) int64 in place from the uniforms u (n, *shape) float32 through
        ``cache`` (freshly reset): one :meth:`_cached_step` per generation step (a tqdm bar
        ``desc``), replayed from CUDA graphs when ``cuda_graph`` (None: False) and on CUDA."""
        run_steps(cache, lambda xs, us: self._cached_step(cache, xs, us), x, u, progress,
                  desc, bool(cuda_graph))

    def _cached_step(self, cache: ARCache, x: torch.Tensor, u: torch.Tensor) -> None:
        """One cache step: draw the step's positions of x (n, *shape) int64 (contiguous)
        from u (n, *shape) float32 by the inverse CDF and push them. The drawn levels lie in
        [0, levels) by construction: pushed unchecked, so a step reads nothing back from the
        device (it can be captured in a CUDA graph)."""
        n = x.shape[0]
        xf, uf = x.view(n, -1), u.reshape(n, -1)
        pos = cache.positions()  # (G,)
        values = inverse_cdf(cache.logits().transpose(1, 2), uf[:, pos])  # (n, G)
        xf[:, pos] = values
        cache._push_unchecked(values)

    def _draw(self, x: torch.Tensor, u: torch.Tensor, cond: torch.Tensor | None,
              progress: bool, desc: str) -> None:
        """Fill x (n, *shape) int64 in place from the uniforms u (n, *shape) float32: one full
        network pass per position, in ``generation_steps()`` order (a tqdm bar ``desc``)."""
        n, levels = x.shape[0], self.config.levels
        xf, uf = x.view(n, -1), u.reshape(n, -1)
        order = self.generation_steps().reshape(-1).argsort()
        for t in tqdm(order.tolist(), disable=not progress, desc=desc):
            logits = self(x, cond).reshape(n, levels, -1)[:, :, t]  # (n, L)
            xf[:, t] = inverse_cdf(logits, uf[:, t])
