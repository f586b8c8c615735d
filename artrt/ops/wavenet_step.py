"""One generation step of a whole WaveNet: every layer for one new position, then the sample.

Fast WaveNet generation (Paine et al., 2016, "Fast Wavenet Generation Algorithm"): a layer
with dilation d and kernel size K needs, besides its current input, only its inputs at
t - d, ..., t - (K-1) d. Each layer keeps them in a ring buffer of (K-1) d slots, so a step
costs O(layers) instead of O(receptive field). ``wavenet_step`` runs that step for a batch
of sequences, all layers in one call (one kernel launch on the ``cuda`` and ``triton``
backends)::

    tokens[:, t-1] --to_input--> v (start value at t = 0)
    v + input ring ---- input conv (1 -> R, K taps) ----> x
    per layer l:  [x(t-(K-1)d) .. x(t-d) from ring_l, x, cond(t)]  (B, K R + Cc)
                  z = . @ conv_w[l] + conv_b[l]                     (B, 2G)
                  h = tanh(z[:, :G]) * sigmoid(z[:, G:])            (B, G)
                  [res | skip] = h @ out_w[l] + out_b[l]            (B, R + S)
                  ring_l[t mod (K-1)d] = x;  x += res;  skips += skip
    logits = relu(relu(skips) @ head_w1 + head_b1) @ head_w2 + head_b2   (B, levels)
    tokens[:, t] = inverse CDF of softmax(logits) at u[:, t]

The ring buffers of all layers live in one float32 state row per sequence (layout in
:class:`WaveNetStepWeights`); zeroing it starts a sequence (the zeros are the causal
padding). The position is ``t = step + offset``: ``step`` may be a device tensor, so a
captured CUDA graph replays steps without host work; a position at or past
``tokens.shape[1]`` does nothing (a graph of a fixed number of steps may run past the end),
a negative one is an error.

The op is ``artrt::wavenet_step`` (mutates ``state``, ``tokens`` and ``logits``; inference
only, no autograd). Its arguments are the tensors of :class:`WaveNetStepWeights` one by one,
the dilations as ``int[]``, and the position as an optional (1,) tensor plus an int; the
public :func:`wavenet_step` unpacks the weights into it.

Departure from the paper: the paper pushes each layer's output into the next layer's queue;
here each layer keeps its own input history, which is the same data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from artrt import backends
from artrt.ops._checks import capturing, check_finite, check_range, value_range

# Backends of this op on CUDA tensors, fastest first (provisional until measured on a GPU).
PREFERENCE = ("cuda", "triton", "reference")
_TORCH_TO_C_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_NAME = "wavenet_step"
MAX_KERNEL_SIZE = 8
# The tensor fields of WaveNetStepWeights, in field order: the op's first arguments.
_TENSOR_FIELDS = ("start", "in_w", "in_b", "conv_w", "conv_b", "out_w", "out_b", "head_w1",
                  "head_b1", "head_w2", "head_b2", "meta")


# --------------------------------------------------------------------------- packed weights

@dataclass(frozen=True)
class WaveNetStepWeights:
    """The weights of a WaveNet packed for :func:`wavenet_step`: L layers of residual R, gate
    G and skip S channels, kernel size K, Cc conditioning channels (0: unconditioned) and
    ``levels`` output classes. Every tensor is contiguous and on one device; the float ones
    share one dtype. Build it with :func:`pack_wavenet_step_weights`.

    Attributes:
        start: (1,) the learned input value of position 0.
        in_w: (K, R) input convolution, ``in_w[k]`` multiplies the input at t - (K-1-k).
        in_b: (R,).
        conv_w: (L, K R + Cc, 2G) dilated convolution and conditioning: row ``k R + r`` is
            ``conv.weight[:, r, k]`` (tap k sees t - (K-1-k) d), row ``K R + c`` is
            ``cond.weight[:, c, 0]``; columns [0, G) the tanh half, [G, 2G) the sigmoid half.
        conv_b: (L, 2G).
        out_w: (L, G, R + S) residual (columns [0, R)) and skip (columns [R, R + S)) 1x1.
        out_b: (L, R + S).
        head_w1: (S, S), head_b1: (S,), head_w2: (S, levels), head_b2: (levels,): the head
            ``relu -> 1x1 -> relu -> 1x1``, weights input-major (``conv.weight[:, :, 0].T``).
        meta: (L, 2) int32, per layer its dilation and the offset of its ring in a state row.
        dilations: the dilations as Python ints.

    State layout, one float32 row of ``state_size`` per sequence::

        [ input ring (K-1) | layer 0 ring ((K-1) d_0, R) | layer 1 ring ((K-1) d_1, R) | ...]
    """

    start: torch.Tensor
    in_w: torch.Tensor
    in_b: torch.Tensor
    conv_w: torch.Tensor
    conv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    head_w1: torch.Tensor
    head_b1: torch.Tensor
    head_w2: torch.Tensor
    head_b2: torch.Tensor
    meta: torch.Tensor
    dilations: tuple[int, ...]

    def __post_init__(self):
        _check_weights(self)

    @property
    def layers(self) -> int:
        return self.conv_w.shape[0]

    @property
    def kernel_size(self) -> int:
        return self.in_w.shape[0]

    @property
    def res_channels(self) -> int:
        return self.in_w.shape[1]

    @property
    def gate_channels(self) -> int:
        return self.conv_w.shape[2] // 2

    @property
    def skip_channels(self) -> int:
        return self.head_w1.shape[0]

    @property
    def cond_channels(self) -> int:
        return self.conv_w.shape[1] - self.kernel_size * self.res_channels

    @property
    def levels(self) -> int:
        return self.head_w2.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_w.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_w.device

    def ring_slices(self) -> list[tuple[int, int]]:
        """(offset, slots) of every layer's ring in a state row; a ring is (slots, R)."""
        k, r = self.kernel_size, self.res_channels
        off, out = k - 1, []
        for d in self.dilations:
            out.append((off, (k - 1) * d))
            off += (k - 1) * d * r
        return out

    @property
    def state_size(self) -> int:
        """Floats of state per sequence: (K-1) (1 + R sum(d))."""
        return (self.kernel_size - 1) * (1 + self.res_channels * sum(self.dilations))

    def new_state(self, batch_size: int) -> torch.Tensor:
        """A zeroed (batch_size, state_size) float32 state on the weights' device."""
        return torch.zeros((batch_size, self.state_size), device=self.device)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor field, in field order."""
        return [getattr(self, name) for name in _TENSOR_FIELDS]

    def to(self, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> WaveNetStepWeights:
        """A copy with the float tensors in ``dtype`` and everything on ``device``."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                v = v.contiguous()
            kw[f.name] = v
        return WaveNetStepWeights(**kw)

    def copy_(self, other: WaveNetStepWeights) -> None:
        """Copy ``other``'s values into these tensors in place (same sizes), keeping their
        addresses (a captured CUDA graph reads them)."""
        if other.dilations != self.dilations or any(
                a.shape != b.shape for a, b in zip(self.tensors(), other.tensors(), strict=True)):
            raise ValueError("WaveNetStepWeights.copy_: other has different sizes or dilations")
        for a, b in zip(self.tensors(), other.tensors(), strict=True):
            a.copy_(b)


def pack_wavenet_step_weights(*, start: torch.Tensor, input_weight: torch.Tensor,
                              input_bias: torch.Tensor | None,
                              conv_weights: Sequence[torch.Tensor],
                              conv_biases: Sequence[torch.Tensor | None],
                              cond_weights: Sequence[torch.Tensor] | None,
                              res_weights: Sequence[torch.Tensor],
                              res_biases: Sequence[torch.Tensor | None],
                              skip_weights: Sequence[torch.Tensor],
                              skip_biases: Sequence[torch.Tensor | None],
                              dilations: Sequence[int],
                              head: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                          torch.Tensor | None],
                              dtype: torch.dtype | None = None) -> WaveNetStepWeights:
    """Pack weights in ``nn.Conv1d`` layouts into :class:`WaveNetStepWeights`.

    Args:
        start: () or (1,), the input value of position 0.
        input_weight: (R, 1, K); input_bias: (R,) or None.
        conv_weights: L tensors (2G, R, K); conv_biases: L tensors (2G,) or None.
        cond_weights: None, or L tensors (2G, Cc, 1).
        res_weights: L tensors (R, G, 1); skip_weights: L tensors (S, G, 1); their biases
            (R,), (S,) or None.
        dilations: L ints >= 1.
        head: (w1 (S, S, 1), b1 (S,), w2 (levels, S, 1), b2 (levels,)).
        dtype: of the packed float tensors (default: that of ``conv_weights[0]``).
    """
    dtype = dtype or conv_weights[0].dtype
    dev = conv_weights[0].device

    def bias(b, n):
        return torch.zeros(n, device=dev, dtype=dtype) if b is None else b.detach()

    with torch.no_grad():
        r, _, k = input_weight.shape
        g2, s = conv_weights[0].shape[0], skip_weights[0].shape[0]
        conv = []
        for i, w in enumerate(conv_weights):
            rows = w.detach().permute(2, 1, 0).reshape(k * r, g2)  # (K R, 2G), row k R + r
            if cond_weights is not None:
                rows = torch.cat([rows, cond_weights[i].detach()[:, :, 0].t()])
            conv.append(rows)
        out_w = [torch.cat([rw.detach()[:, :, 0], sw.detach()[:, :, 0]]).t()  # (G, R + S)
                 for rw, sw in zip(res_weights, skip_weights, strict=True)]
        out_b = [torch.cat([bias(rb, r), bias(sb, s)])
                 for rb, sb in zip(res_biases, skip_biases, strict=True)]
        w1, b1, w2, b2 = head
        dilations = tuple(int(d) for d in dilations)
        offsets, off = [], k - 1
        for d in dilations:
            offsets.append(off)
            off += (k - 1) * d * r
        packed = {
            "start": start.detach().reshape(1),
            "in_w": input_weight.detach()[:, 0, :].t(),
            "in_b": bias(input_bias, r),
            "conv_w": torch.stack(conv),
            "conv_b": torch.stack([bias(b, g2) for b in conv_biases]),
            "out_w": torch.stack(out_w),
            "out_b": torch.stack(out_b),
            "head_w1": w1.detach()[:, :, 0].t(),
            "head_b1": bias(b1, w1.shape[0]),
            "head_w2": w2.detach()[:, :, 0].t(),
            "head_b2": bias(b2, w2.shape[0]),
        }
        packed = {key: v.to(device=dev, dtype=dtype).contiguous() for key, v in packed.items()}
        meta = torch.tensor([[d, o] for d, o in zip(dilations, offsets, strict=True)],
                            dtype=torch.int32, device=dev).reshape(-1, 2)
    return WaveNetStepWeights(**packed, meta=meta, dilations=dilations)


def _check_weights(w: WaveNetStepWeights, values: bool = True) -> None:
    """Types, devices, dtypes, shapes and dilations of w; with ``values`` also the contents of
    ``meta`` (read on the host: a device sync on CUDA, so the op leaves it to construction)."""
    name = "WaveNetStepWeights"
    for f in fields(w):
        v = getattr(w, f.name)
        if f.name == "dilations":
            continue
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name}: {f.name} must be a torch.Tensor, got {type(v).__name__}")
        if not v.is_contiguous():
            raise ValueError(f"{name}: {f.name} must be contiguous")
        if v.device != w.conv_w.device:
            raise ValueError(f"{name}: {f.name} is on {v.device}, conv_w on {w.conv_w.device}")
        if f.name != "meta" and v.dtype != w.conv_w.dtype:
            raise TypeError(f"{name}: {f.name} has dtype {v.dtype}, conv_w {w.conv_w.dtype}")
    if not w.conv_w.is_floating_point():
        raise TypeError(f"{name}: the weights must be floating point, got {w.conv_w.dtype}")
    if w.meta.dtype != torch.int32:
        raise TypeError(f"{name}: meta must be int32, got {w.meta.dtype}")
    if w.in_w.dim() != 2 or w.conv_w.dim() != 3 or w.conv_w.shape[2] % 2 \
            or w.head_w1.dim() != 2 or w.head_w2.dim() != 2:
        raise ValueError(f"{name}: in_w must be (K, R), conv_w (L, K R + Cc, 2G), head_w1 "
                         f"(S, S) and head_w2 (S, levels), got {tuple(w.in_w.shape)}, "
                         f"{tuple(w.conv_w.shape)}, {tuple(w.head_w1.shape)}, "
                         f"{tuple(w.head_w2.shape)}")
    k, r = w.in_w.shape
    lay, g2 = w.conv_w.shape[0], w.conv_w.shape[2]
    g, cc = g2 // 2, w.conv_w.shape[1] - k * r
    s, levels = w.head_w1.shape[0], w.head_w2.shape[1]
    if not (1 <= k <= MAX_KERNEL_SIZE and r >= 1 and lay >= 1 and g >= 1 and s >= 1
            and levels >= 2 and cc >= 0):
        raise ValueError(f"{name}: sizes out of range: K={k} (1..{MAX_KERNEL_SIZE}), R={r}, "
                         f"L={lay}, G={g}, S={s}, levels={levels} (>= 2), Cc={cc} (>= 0)")
    want = {"start": (1,), "in_b": (r,), "conv_b": (lay, g2), "out_w": (lay, g, r + s),
            "out_b": (lay, r + s), "head_w1": (s, s), "head_b1": (s,), "head_w2": (s, levels),
            "head_b2": (levels,), "meta": (lay, 2)}
    for key, shape in want.items():
        got = tuple(getattr(w, key).shape)
        if got != shape:
            raise ValueError(f"{name}: {key} must have shape {shape} (K={k}, R={r}, G={g}, "
                             f"S={s}, L={lay}, levels={levels}), got {got}")
    if len(w.dilations) != lay or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in w.dilations):
        raise ValueError(f"{name}: dilations must be {lay} ints >= 1, got {w.dilations}")
    if not values:
        return
    meta = [[d, off] for d, (off, _) in zip(w.dilations, w.ring_slices(), strict=True)]
    if w.meta.tolist() != meta:
        raise ValueError(f"{name}: meta must hold each layer's (dilation, ring offset) = "
                         f"{meta}, got {w.meta.tolist()}")


# --------------------------------------------------------------------------- reference

def _position(step: int | torch.Tensor, offset: int) -> int:
    return (int(step.reshape(())) if isinstance(step, torch.Tensor) else step) + offset


def wavenet_step_ref(weights: WaveNetStepWeights, state: torch.Tensor, tokens: torch.Tensor,
                     u: torch.Tensor, step: int | torch.Tensor, cond: torch.Tensor | None = None,
                     *, offset: int = 0, logits: torch.Tensor | None = None) -> None:
    """Pure PyTorch :func:`wavenet_step`, math in float32 (a tensor ``step`` is read on the
    host). Arguments as :func:`wavenet_step`."""
    w = weights
    t = _position(step, offset)
    b, length = tokens.shape
    if t >= length:
        return
    k, r, g, levels = w.kernel_size, w.res_channels, w.gate_channels, w.levels
    if t == 0:
        v = w.start.float().expand(b)
    else:  # artrt.data.to_input of the previous level
        v = tokens[:, t - 1].to(torch.float32) * (2.0 / (levels - 1)) - 1.0
    # input convolution: tap j sees v(t - (K-1-j)), stored in ring slot (t + j) mod (K-1)
    taps = [state[:, (t + j) % (k - 1)] for j in range(k - 1)] + [v]
    x = torch.addmm(w.in_b.float(), torch.stack(taps, 1), w.in_w.float())  # (B, R)
    if k > 1:
        state[:, t % (k - 1)] = v
    c = None
    if cond is not None:
        c = cond[:, :, t if cond.shape[2] > 1 else 0].float()  # (B, Cc)
    skips = torch.zeros((b, w.skip_channels), device=state.device)
    for layer, (off, slots) in enumerate(w.ring_slices()):
        d = w.dilations[layer]
        ring = state[:, off:off + slots * r].view(b, slots, r)  # (B, (K-1) d, R)
        a = [ring[:, (t + slots - (k - 1 - j) * d) % slots] for j in range(k - 1)] + [x]
        if c is not None:
            a.append(c)
        z = torch.addmm(w.conv_b[layer].float(), torch.cat(a, 1), w.conv_w[layer].float())
        h = torch.tanh(z[:, :g]) * torch.sigmoid(z[:, g:])  # (B, G)
        o = torch.addmm(w.out_b[layer].float(), h, w.out_w[layer].float())  # (B, R + S)
        if slots:
            ring[:, t % slots] = x  # the slot of x(t - (K-1) d), read above
        x = x + o[:, :r]
        skips = skips + o[:, r:]
    y = torch.relu(torch.addmm(w.head_b1.float(), torch.relu(skips), w.head_w1.float()))
    out = torch.addmm(w.head_b2.float(), y, w.head_w2.float())  # (B, levels)
    if logits is not None:
        logits.copy_(out)
    # inverse CDF, as artrt.models' inverse_cdf: the smallest level with cdf > u
    cdf = out.softmax(-1).cumsum(-1).contiguous()
    ut = u[:, t].to(torch.float32).unsqueeze(-1).contiguous()
    tokens[:, t] = torch.searchsorted(cdf, ut, right=True).squeeze(-1).clamp_(max=levels - 1)


# --------------------------------------------------------------------------- checks

def _check_tensor(t, what: str, dtype: torch.dtype, device: torch.device, shape: tuple,
                  hint: str, contiguous: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_NAME}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{_NAME}: {what} must be {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{_NAME}: {what} must be on the weights' device {device}, "
                         f"got {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{_NAME}: {what} must have shape {hint} = {tuple(shape)}, "
                         f"got {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{_NAME}: {what} must be contiguous (it is written in place)")


# An int argument, or under torch.compile a symbolic one.
_INT = (int, torch.SymInt)


def _check(weights, state, tokens, u, step, cond, offset, logits) -> None:
    if not isinstance(weights, WaveNetStepWeights):
        raise TypeError(f"{_NAME}: weights must be WaveNetStepWeights (see "
                        f"pack_wavenet_step_weights), got {type(weights).__name__}")
    dev = weights.device
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or 0 in tokens.shape:
        raise ValueError(f"{_NAME}: tokens must be a (B, T) int64 tensor with B, T >= 1, got "
                         f"{tuple(getattr(tokens, 'shape', ())) or type(tokens).__name__}")
    b, length = tokens.shape
    _check_tensor(tokens, "tokens", torch.int64, dev, (b, length), "(B, T)", True)
    _check_tensor(state, "state", torch.float32, dev, (b, weights.state_size),
                  "(B, state_size)", True)
    _check_tensor(u, "u", torch.float32, dev, (b, length), "(B, T)")
    if isinstance(step, torch.Tensor):
        _check_tensor(step, "step", torch.int64, dev, (1,), "(1,)")
    elif isinstance(step, bool) or not isinstance(step, _INT) or step < 0:
        raise TypeError(f"{_NAME}: step must be an int >= 0 or a (1,) int64 tensor, got "
                        f"{step!r}")
    if isinstance(offset, bool) or not isinstance(offset, _INT) or offset < 0:
        raise TypeError(f"{_NAME}: offset must be an int >= 0, got {offset!r}")
    cc = weights.cond_channels
    if cc == 0 and cond is not None:
        raise ValueError(f"{_NAME}: got cond, but the weights have no conditioning channels")
    if cc > 0:
        if not isinstance(cond, torch.Tensor) or cond.dim() != 3:
            got = "None" if cond is None else tuple(getattr(cond, "shape", ()))
            raise ValueError(f"{_NAME}: the weights take Cc={cc} conditioning channels: cond "
                             f"must be a (B, Cc, T) or (B, Cc, 1) tensor, got {got}")
        tc = 1 if cond.shape[2] == 1 else length
        _check_tensor(cond, "cond", torch.float32, dev, (b, cc, tc), "(B, Cc, T) or (B, Cc, 1)")
    if logits is not None:
        _check_tensor(logits, "logits", torch.float32, dev, (b, weights.levels),
                      "(B, levels)", True)


def _check_values(levels: int, tokens: torch.Tensor, u: torch.Tensor,
                  step: torch.Tensor | None, offset: int, cond: torch.Tensor | None) -> None:
    """The values this step reads, on checked arguments: ``step`` (one host read) makes
    t = step + offset >= 0; for t < T, the level ``tokens[:, t-1]`` must lie in [0, levels),
    ``u[:, t]`` in [0, 1) and ``cond``'s column of t be finite (one host read each). Nothing
    else is read, so nothing else is checked (tokens past t may hold anything). Skipped while
    a CUDA graph is captured."""
    if capturing():
        return
    t = offset
    if step is not None:
        first = int(value_range(step)[0])
        if first < 0:
            raise ValueError(f"{_NAME}: step must hold a position >= 0, got {first}")
        t += first
    if t >= tokens.shape[1]:  # past the end: the step does nothing and reads nothing
        return
    if t > 0:
        check_range(_NAME, f"tokens[:, {t - 1}] (the previous level at t = {t})",
                    tokens[:, t - 1], 0, levels)
    check_range(_NAME, f"u[:, {t}]", u[:, t], 0.0, 1.0)
    if cond is not None:
        col = t if cond.shape[2] > 1 else 0
        check_finite(_NAME, f"cond[:, :, {col}]", cond[:, :, col])


# --------------------------------------------------------------------------- cuda backend

def _cuda_launch(weights: WaveNetStepWeights, state: torch.Tensor, tokens: torch.Tensor,
                 u: torch.Tensor, step: int | torch.Tensor, cond: torch.Tensor | None,
                 offset: int, logits: torch.Tensor | None) -> None:
    """artrt._C.wavenet_step on checked arguments (u contiguous), on the current stream; no
    other work, so it can be captured in a CUDA graph."""
    from artrt import _C

    w = weights
    b, length = tokens.shape
    step_ptr, base = (step.data_ptr(), 0) if isinstance(step, torch.Tensor) else (0, step)
    cond_ptr, cond_len, cs = 0, 1, (0, 0, 0)
    if cond is not None:
        cond_ptr, cond_len, cs = cond.data_ptr(), cond.shape[2], cond.stride()
    _C.wavenet_step(
        start=w.start.data_ptr(), in_w=w.in_w.data_ptr(), in_b=w.in_b.data_ptr(),
        conv_w=w.conv_w.data_ptr(), conv_b=w.conv_b.data_ptr(), out_w=w.out_w.data_ptr(),
        out_b=w.out_b.data_ptr(), head_w1=w.head_w1.data_ptr(), head_b1=w.head_b1.data_ptr(),
        head_w2=w.head_w2.data_ptr(), head_b2=w.head_b2.data_ptr(), meta=w.meta.data_ptr(),
        state=state.data_ptr(), tokens=tokens.data_ptr(), u=u.data_ptr(), step=step_ptr,
        cond=cond_ptr, logits=0 if logits is None else logits.data_ptr(), batch=b,
        length=length, state_size=w.state_size, layers=w.layers, res=w.res_channels,
        gate=w.gate_channels, skip=w.skip_channels, kernel_size=w.kernel_size,
        cond_channels=w.cond_channels, cond_length=cond_len, levels=w.levels, sc_b=cs[0],
        sc_c=cs[1], sc_t=cs[2], offset=base + offset, dtype=_TORCH_TO_C_DTYPE[w.dtype],
        device=state.device.index, stream=torch.cuda.current_stream(state.device).cuda_stream)


def _triton_launch(weights: WaveNetStepWeights, state: torch.Tensor, tokens: torch.Tensor,
                   u: torch.Tensor, step: torch.Tensor | None, cond: torch.Tensor | None,
                   offset: int, logits: torch.Tensor | None) -> None:
    """artrt.kernels.wavenet_step on checked arguments: one launch."""
    from artrt.kernels.wavenet_step import wavenet_step_fwd

    wavenet_step_fwd(weights.tensors(), state, tokens, u.contiguous(), step, offset, cond,
                     logits)


# --------------------------------------------------------------------------- torch.library op

def _op_weights(tensors: Sequence[torch.Tensor], dilations: Sequence[int]) -> WaveNetStepWeights:
    """WaveNetStepWeights of the op's arguments, checked except for the values of ``meta``
    (no host read of a device tensor; :class:`WaveNetStepWeights` checked them when built)."""
    w = object.__new__(WaveNetStepWeights)
    for name, v in zip(_TENSOR_FIELDS, tensors, strict=True):
        object.__setattr__(w, name, v)
    object.__setattr__(w, "dilations", tuple(dilations))
    _check_weights(w, values=False)
    return w


def _launch(name: str, weights: WaveNetStepWeights, state: torch.Tensor, tokens: torch.Tensor,
            u: torch.Tensor, step: torch.Tensor | None, offset: int, cond: torch.Tensor | None,
            logits: torch.Tensor | None) -> None:
    """Backend ``name`` (selected) on checked arguments; the position is ``step + offset``
    (``step`` None: 0)."""
    if name == "reference":
        wavenet_step_ref(weights, state, tokens, u, 0 if step is None else step, cond,
                         offset=offset, logits=logits)
    elif name == "triton":
        _triton_launch(weights, state, tokens, u, step, cond, offset, logits)
    else:
        _cuda_launch(weights, state, tokens, u.contiguous(), 0 if step is None else step,
                     cond, offset, logits)


@torch.library.custom_op("artrt::wavenet_step", mutates_args=("state", "tokens", "logits"))
def _wavenet_step_op(start: torch.Tensor, in_w: torch.Tensor, in_b: torch.Tensor,
                     conv_w: torch.Tensor, conv_b: torch.Tensor, out_w: torch.Tensor,
                     out_b: torch.Tensor, head_w1: torch.Tensor, head_b1: torch.Tensor,
                     head_w2: torch.Tensor, head_b2: torch.Tensor, meta: torch.Tensor,
                     dilations: list[int], state: torch.Tensor, tokens: torch.Tensor,
                     u: torch.Tensor, step: torch.Tensor | None, offset: int,
                     cond: torch.Tensor | None, logits: torch.Tensor | None,
                     backend: str) -> None:
    """The op behind :func:`wavenet_step`: the position is ``step + offset`` (``step`` None:
    0)."""
    weights = _op_weights((start, in_w, in_b, conv_w, conv_b, out_w, out_b, head_w1, head_b1,
                           head_w2, head_b2, meta), dilations)
    _check(weights, state, tokens, u, 0 if step is None else step, cond, offset, logits)
    name = backends.select(_NAME, weights.device, weights.dtype, backend, PREFERENCE)
    _check_values(weights.levels, tokens, u, step, offset, cond)
    _launch(name, weights, state, tokens, u, step, offset, cond, logits)


@_wavenet_step_op.register_fake
def _(start, in_w, in_b, conv_w, conv_b, out_w, out_b, head_w1, head_b1, head_w2, head_b2,
      meta, dilations, state, tokens, u, step, offset, cond, logits, backend):
    weights = _op_weights((start, in_w, in_b, conv_w, conv_b, out_w, out_b, head_w1, head_b1,
                           head_w2, head_b2, meta), dilations)
    _check(weights, state, tokens, u, 0 if step is None else step, cond, offset, logits)


# --------------------------------------------------------------------------- public function

def wavenet_step(weights: WaveNetStepWeights, state: torch.Tensor, tokens: torch.Tensor,
                 u: torch.Tensor, step: int | torch.Tensor, cond: torch.Tensor | None = None,
                 *, offset: int = 0, logits: torch.Tensor | None = None,
                 backend: str | None = None) -> None:
    """One WaveNet generation step at position ``t = step + offset`` for B sequences.

    Args:
        weights: :class:`WaveNetStepWeights`; float32, float16 or bfloat16 on the cuda and
            triton backends (other float dtypes on the reference); math in float32 always.
        state: (B, state_size) float32 contiguous ring buffers, updated in place (zero it to
            start new sequences).
        tokens: (B, T) int64 contiguous levels: reads ``tokens[:, t-1]`` (the learned start
            value at t = 0; its values must lie in [0, levels)) and writes the sample to
            ``tokens[:, t]``; the other columns are neither read nor checked.
        u: (B, T) float32 uniforms; ``u[:, t]`` draws position t and must lie in [0, 1).
        step: an int >= 0, or a (1,) int64 tensor >= 0 on the weights' device (read on the
            device by the kernels, so a captured CUDA graph can advance it).
        cond: None, or (B, Cc, T) float32 conditioning (column t is used, and must be
            finite) or (B, Cc, 1) (the same column at every step); any strides (e.g.
            expanded over B).
        offset: int >= 0 added to ``step``.
        logits: optional (B, levels) float32 contiguous output: this step's logits.
        backend: ``"reference"``, ``"triton"`` or ``"cuda"``; None follows
            ``artrt.use_backend`` / ``ARTRT_BACKEND``, else the fastest available (on CUDA
            tensors cuda, then triton).

    The sample is the inverse CDF: the smallest level whose cumulative softmax probability
    exceeds ``u[:, t]``, clamped to levels - 1 (``inverse_cdf`` of :mod:`artrt.models`).
    Nothing is done (and nothing is read) when t >= T. Bad values (a negative step, a level
    or uniform out of range, a NaN) raise ValueError before anything is written, except
    while a CUDA graph is captured (those checks read values on the host and are skipped).
    """
    _check(weights, state, tokens, u, step, cond, offset, logits)
    if not isinstance(step, torch.Tensor):  # an int step is folded into the offset
        step, offset = None, step + offset
    _wavenet_step_op(*(getattr(weights, name) for name in _TENSOR_FIELDS),
                     list(weights.dilations), state, tokens, u, step, offset, cond, logits,
                     backends.requested(backend))


def _wavenet_step_unchecked(weights: WaveNetStepWeights, state: torch.Tensor,
                            tokens: torch.Tensor, u: torch.Tensor, step: int,
                            cond: torch.Tensor | None = None, *, offset: int = 0,
                            logits: torch.Tensor | None = None,
                            backend: str | None = None) -> None:
    """:func:`wavenet_step` without any check, straight to the backend (no host read): for a
    caller that built the arguments itself and checked them once (``WaveNetCache``: their
    shapes at ``reset``, the uniforms once per ``draw``, the levels ``push`` takes), with an
    int ``step``. Eager only (not through the torch.library op); bad values give wrong
    samples, not errors."""
    name = backends.select(_NAME, weights.device, weights.dtype, backends.requested(backend),
                           PREFERENCE)
    _launch(name, weights, state, tokens, u, None, step + offset, cond, logits)


__all__ = ["WaveNetStepWeights", "pack_wavenet_step_weights", "wavenet_step",
           "wavenet_step_ref"]
