"""Fast WaveNet sampling: the incremental cache of :class:`artrt.models.WaveNet`.

Follows the Fast WaveNet generation algorithm (Paine et al., 2016): every layer keeps the
last (K-1) d inputs it saw in a ring buffer, so one new sample costs O(layers) work instead
of a pass over the receptive field. One step of every layer is the op
:func:`artrt.ops.wavenet_step.wavenet_step` (one kernel launch on the ``cuda`` and
``triton`` backends, the pure PyTorch reference elsewhere).

Two ways to drive it:

- the :class:`artrt.sampling.ARCache` protocol (``logits()`` / ``push(values)``): after each
  push the cache runs the step of the next position, so ``logits()`` only returns it;
- :meth:`WaveNetCache.draw` (what ``WaveNet.sample(cache=True)`` calls): the op samples
  every position itself from the pre-drawn uniforms. On CUDA with the extension built, the
  steps are captured once in a ``torch.cuda.CUDAGraph`` of ``graph_steps`` steps (the
  position advanced on the device) and replayed, so the host launches nothing per sample.

The cache checks its buffers' shapes once per ``reset``, the uniforms once per ``draw`` and
the pushed levels at each ``push``; its steps then run the op's unchecked entry, so a step
reads nothing back from the device (no synchronisation).

Departure from the paper: each layer keeps its own input history rather than pushing its
output into the next layer's queue (the same data).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from artrt import backends
from artrt.ops._checks import check_range
from artrt.ops.wavenet_step import (
    WaveNetStepWeights,
    _check,
    _cuda_launch,
    _wavenet_step_unchecked,
    pack_wavenet_step_weights,
)
from artrt.sampling.cache import ARCache

# Steps per captured CUDA graph: long enough that one replay's host cost (a few us) is small
# against its steps, short enough that capturing stays quick (an estimate, not measured).
GRAPH_STEPS = 128


def pack_wavenet(model: nn.Module) -> WaveNetStepWeights:
    """:class:`WaveNetStepWeights` of an :class:`artrt.models.WaveNet`, in its dtype."""
    blocks = list(model.blocks)
    conditioned = blocks[0].cond is not None
    head = model.head
    return pack_wavenet_step_weights(
        start=model.start, input_weight=model.input.weight, input_bias=model.input.bias,
        conv_weights=[b.conv.weight for b in blocks], conv_biases=[b.conv.bias for b in blocks],
        cond_weights=[b.cond.weight for b in blocks] if conditioned else None,
        res_weights=[b.res.weight for b in blocks], res_biases=[b.res.bias for b in blocks],
        skip_weights=[b.skip.weight for b in blocks], skip_biases=[b.skip.bias for b in blocks],
        dilations=[b.conv.dilation[0] for b in blocks],
        head=(head[1].weight, head[1].bias, head[3].weight, head[3].bias))


class WaveNetCache(ARCache):
    """Ring buffers of every layer of a :class:`artrt.models.WaveNet` for ``batch_size``
    sequences (see the module docstring).

    Args:
        model: the WaveNet (its weights are packed again at every ``reset``).
        batch_size: B.
        cond: (B,) int64 class labels of a class-conditional model, else None.
        cuda_graph: on CUDA with the ``cuda`` backend available, let :meth:`draw` capture
            and replay CUDA graphs (False: one launch per step).
        graph_steps: steps per captured graph.

    Attributes:
        weights: the packed :class:`artrt.ops.wavenet_step.WaveNetStepWeights`.
        state: (B, state_size) float32, all ring buffers; ``rings()`` gives the views.
        tokens: (B, T) int64, the sequence so far in generation order.
        cond_table: None, (B, Cc, T) or (B, Cc, 1) float32: the positional table column of
            each step plus the class embedding (expanded over B when there is no class).
    """

    def __init__(self, model: nn.Module, batch_size: int, cond: torch.Tensor | None = None,
                 *, cuda_graph: bool = True, graph_steps: int = GRAPH_STEPS):
        if isinstance(graph_steps, bool) or not isinstance(graph_steps, int) or graph_steps < 1:
            raise ValueError(f"WaveNetCache: graph_steps must be an int >= 1, got "
                             f"{graph_steps!r}")
        self.cuda_graph, self.graph_steps = bool(cuda_graph), graph_steps
        self.weights: WaveNetStepWeights | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        super().__init__(model, batch_size, cond)

    # ----------------------------------------------------------------------- buffers

    def _cond_values(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """float32 conditioning: (B, Cc, T) positional + class, (1, Cc, T) positional alone
        (expanded over B by the caller), (B, Cc, 1) class alone, or None."""
        m = self.model
        label = m.class_emb(cond).float().unsqueeze(-1) if m.class_emb is not None else None
        if m.pos is None:
            return label
        pos = m.pos.float().unsqueeze(0)  # (1, Cc, T)
        return pos if label is None else pos + label

    def _reset(self, cond: torch.Tensor | None) -> None:
        with torch.no_grad():
            weights = pack_wavenet(self.model)
            values = self._cond_values(cond)
        b, length = self.batch_size, self.model.length
        if self.weights is None:  # first reset: allocate every buffer once (graphs keep them)
            self.weights = weights
            self.state = weights.new_state(b)
            self.tokens = torch.zeros((b, length), dtype=torch.int64, device=self.device)
            self.u = torch.zeros((b, length), device=self.device)
            self.position = torch.zeros(1, dtype=torch.int64, device=self.device)
            self._cond_store = None if values is None else values.clone()
            self.cond_table = (None if values is None
                               else self._cond_store.expand(b, -1, -1))
            self._logits_buf = torch.empty((b, self.levels), device=self.device)
            self.order = torch.cat(self._positions)  # (T,) flat position of each step
        else:
            self.weights.copy_(weights)
            if values is not None:
                self._cond_store.copy_(values)
            self.state.zero_()
        # the steps skip the op's checks: its shapes once here (no host read)
        _check(self.weights, self.state, self.tokens, self.u, 0, self.cond_table, 0,
               self._logits_buf)
        self._run(0, self._logits_buf)

    def rings(self) -> list[torch.Tensor]:
        """Views of the ring buffers: the input convolution's (B, K-1), then one (B, (K-1) d,
        R) per layer (slot ``t mod ((K-1) d)`` holds that layer's input at step t)."""
        w, b = self.weights, self.batch_size
        out = [self.state[:, :w.kernel_size - 1]]
        for off, slots in w.ring_slices():
            out.append(self.state[:, off:off + slots * w.res_channels]
                       .view(b, slots, w.res_channels))
        return out

    def _run(self, t: int, logits: torch.Tensor | None = None) -> None:
        """The step op at position t (reading tokens[:, t-1], writing tokens[:, t]), through
        its unchecked entry: the buffers are the cache's own, checked at reset, tokens hold
        pushed (checked) or drawn levels and u checked uniforms, so no host read."""
        _wavenet_step_unchecked(self.weights, self.state, self.tokens, self.u, t,
                                self.cond_table, logits=logits)

    # ----------------------------------------------------------------------- protocol

    def _logits(self) -> torch.Tensor:
        return self._logits_buf.clone().unsqueeze(-1)  # (B, levels, 1)

    def _push(self, values: torch.Tensor) -> None:
        t = self.step
        self.tokens[:, t] = values[:, 0]
        if t + 1 < self.num_steps:
            self._run(t + 1, self._logits_buf)

    # ----------------------------------------------------------------------- sampler

    def _graph_ready(self, cuda_graph: bool | None = None) -> bool:
        wanted = self.cuda_graph if cuda_graph is None else cuda_graph
        return (wanted and self.device.type == "cuda"
                and backends.select("wavenet_step", self.device, self.weights.dtype,
                                    backends.requested(), ("cuda", "reference")) == "cuda")

    def draw(self, u: torch.Tensor, progress: bool = False, desc: str = "WaveNet"
             ) -> torch.Tensor:
        """Sample B sequences with this cache's labels from the uniforms u (B, *shape)
        float32 in [0, 1) (one per position, as ``WaveNet.sample`` takes them) through the
        step op alone, without the per-step protocol checks; CUDA graphs when enabled and
        available. Returns the samples (B, *shape) int64; the cache is left done (``reset``
        before using the protocol again). Gives the same samples as the protocol loop with
        ``inverse_cdf``. u is checked once (one host read), the steps read nothing back."""
        name = f"{type(self).__name__}.draw"
        shape = (self.batch_size, *self.model.shape)
        if not isinstance(u, torch.Tensor) or u.dtype != torch.float32 \
                or tuple(u.shape) != shape:
            raise ValueError(f"{name}: u must be a float32 tensor of shape {shape}, got "
                             f"{getattr(u, 'dtype', type(u).__name__)} "
                             f"{tuple(getattr(u, 'shape', ()))}")
        if u.device != self.device:
            raise ValueError(f"{name}: u is on {u.device}, the cache on {self.device}")
        check_range(name, "u", u, 0.0, 1.0)  # NaN is out of range too
        return self._draw(u, progress, desc)

    def _draw(self, u: torch.Tensor, progress: bool = False, desc: str = "WaveNet",
              cuda_graph: bool | None = None) -> torch.Tensor:
        """:meth:`draw` on checked uniforms (``WaveNet.sample`` checked them); ``cuda_graph``
        (None: the cache's own setting) chooses graphs or one launch per step."""
        shape = (self.batch_size, *self.model.shape)
        b = self.batch_size
        self.u.copy_(u.reshape(b, -1)[:, self.order])  # generation order
        self.state.zero_()
        self.step = 0
        if self._graph_ready(cuda_graph):
            self._draw_graphs(progress, desc)
        else:
            for t in tqdm(range(self.num_steps), disable=not progress, desc=desc):
                self._run(t)
        self.step = self.num_steps
        out = torch.empty(shape, dtype=torch.int64, device=self.device)
        out.view(b, -1)[:, self.order] = self.tokens
        return out

    def _chunk(self) -> None:
        """``graph_steps`` kernel launches at positions position + i, then position +=
        graph_steps; positions past the end do nothing."""
        args = (self.weights, self.state, self.tokens, self.u, self.position, self.cond_table)
        for i in range(self.graph_steps):
            _cuda_launch(*args, i, None)
        self.position.add_(self.graph_steps)

    def _draw_graphs(self, progress: bool, desc: str) -> None:
        if self._graph is None:
            _check(self.weights, self.state, self.tokens, self.u, self.position,
                   self.cond_table, self.graph_steps - 1, None)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the capture
                self.position.zero_()
                self._chunk()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._chunk()
            self._graph = graph
            self.state.zero_()  # the warm-up wrote into it
        self.position.zero_()
        replays = math.ceil(self.num_steps / self.graph_steps)
        for _ in tqdm(range(replays), disable=not progress, desc=desc):
            self._graph.replay()


__all__ = ["GRAPH_STEPS", "WaveNetCache", "pack_wavenet"]
