"""Causal self-attention recognised by its dependency pattern, replaced by
:class:`artrt.nn.CausalSelfAttention` on the same projection weights.

Candidates, found by structure (a module taking x (B, T, C), any other argument of its
forward with a default):

- one that owns exactly one ``nn.MultiheadAttention`` and no other parameters (it calls it
  with an ``attn_mask`` / ``is_causal`` it builds itself); q, k, v come from
  ``in_proj_weight`` (3C, C), the output from ``out_proj``;
- one that owns exactly two projections, ``nn.Linear`` or the transposed layout of
  transformers' ``Conv1D`` (GPT-2, ImageGPT: weight (in, out), bias (out,), y = x @ W + b,
  recognised by its shapes and checked on a probe): a fused projection C -> (H + 2 Hk) D laid
  out q | k | v (heads contiguous, nanoGPT's ``c_attn``) and an output projection C -> C, with
  ``F.scaled_dot_product_attention`` or a hand-written softmax between them (a mask buffer
  is kept for checkpoints).

A bare ``nn.MultiheadAttention`` is reported, not replaced: its mask is an argument.

Behaviour: the candidate runs on a random x and on T copies with one position changed
(batch row 0 only); which outputs change gives the dependency matrix D[t, s] (output t
depends on input s). Causal attention is exactly ``D = lower triangle with the diagonal``
and batch rows independent; anything else (a bidirectional or windowed mask, a
sequence-first layout) is reported. The head count is then found by running
``CausalSelfAttention`` with each (H, Hk) that fits the projection (attributes such as
``n_head`` first) and keeping the one that reproduces the output.

Layers called like transformers' attention (ImageGPT's: ``forward(hidden_states,
layer_past=None, attention_mask=None, ..., use_cache=False, output_attentions=False)``
returning ``(output, attention weights)``) are probed with every other argument at its
default, and replaced by :class:`PatchedAttention`, which takes the same arguments and
returns the same tuple, with None where the layer returned its attention weights (artrt
never forms them). It computes the layer only where the probes showed it does: each
argument at its default; ``use_cache`` at any value when flipping it alone changed nothing;
a KV cache (an object with ``update(key, value, layer_idx)`` and ``get_seq_length``, as
transformers' ``DynamicCache``) when the layer, given a stand-in cache, filled it with the
replacement's keys and values and returned its outputs over a prefill and two steps. Any
other value (a padding ``attention_mask``, ``output_attentions=True``, encoder states, a
head mask, an unknown keyword) raises a ValueError naming the argument.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artrt.nn import CausalSelfAttention
from artrt.ops.attention import MAX_HEAD_DIM, causal_attention
from artrt.ops.attention_decode import prefix_attention
from artrt.patch._common import (
    Match,
    Reject,
    dropout_rate,
    extra_arguments,
    forward_overridden,
    from_artrt,
    generator,
    mismatch,
    post_hooks,
    randn,
    run,
    tolerance,
)

_T, _B = 6, 2
_HEAD_HINTS = ("n_head", "n_heads", "num_heads", "nhead", "heads", "num_attention_heads")
_KV_HINTS = ("n_kv_head", "n_kv_heads", "num_kv_heads", "num_key_value_heads", "kv_heads")
_CACHE_NAMES = ("layer_past", "past_key_value", "past_key_values", "cache")
_HINTS = {
    "attention_mask": "a padding or custom mask: batch sequences of one length without "
                      "padding",
    "output_attentions": "artrt never forms the attention weights",
    "need_weights": "artrt never forms the attention weights",
    "head_mask": "artrt's attention does not scale heads",
    "encoder_hidden_states": "cross-attention: artrt's is causal self-attention",
    "encoder_attention_mask": "cross-attention: artrt's is causal self-attention",
}


class _TransposedLinear(nn.Module):
    """y = x @ W + b with W (in, out), b (out,): transformers' ``Conv1D`` layout, on the
    layer's own Parameters (W is used transposed, never copied)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape
        self.weight = weight
        self.register_parameter("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.t(), self.bias)  # (..., in) -> (..., out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight (in, out)")


def _transposed_shape(c: nn.Module) -> bool:
    """c owns exactly a 2-D ``weight`` (in, out) and a ``bias`` (out,) or None, nothing else,
    and has no forward pre-hook (the replacement computes x @ W + b without calling it)."""
    w, b = c._parameters.get("weight"), c._parameters.get("bias")
    if isinstance(c, nn.Linear) or not isinstance(w, nn.Parameter) or w.dim() != 2:
        return False
    if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[1]):
        return False
    own = {id(w)} | ({id(b)} if b is not None else set())
    return ({id(p) for p in c.parameters()} == own and forward_overridden(c)
            and not c._forward_pre_hooks)


def _computes_x_w_plus_b(c: nn.Module) -> bool:
    w, b = c.weight, c.bias
    z = randn((2, 3, w.shape[0]), w, generator(7))
    try:
        got = run(c, (z,))
    except Exception:  # noqa: BLE001 - then it is not such a projection
        return False
    with torch.no_grad():
        want = z @ w + (b if b is not None else 0)
    return mismatch(want, got) is None


class _ProbeCache:
    """A stand-in for a transformers KV cache (``DynamicCache``) in the probes: ``update``
    appends a layer's keys and values (B, H, T_new, D) and returns all of them so far."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        if layer_idx in self.keys:
            key = torch.cat([self.keys[layer_idx], key], dim=-2)
            value = torch.cat([self.values[layer_idx], value], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx in self.keys else 0


@dataclass(frozen=True)
class _Call:
    """How the replaced layer is called: what :class:`PatchedAttention` accepts."""

    layer: str  # the layer's class name, for errors
    names: tuple[str, ...]  # its parameters after x that can be given by position
    defaults: dict[str, Any]  # every named parameter after x -> its default
    var_positional: bool
    var_keyword: bool
    outputs: int | None  # None: returns the output; n: (output, n more), None here
    use_cache: bool = False  # use_cache takes any value (flipping it alone changed nothing)
    cache: str | None = None  # the KV-cache argument, once the cache probe passed
    cache_flags: tuple = ()  # the use_cache values (None: no such argument) it passed with


def _same_as_default(value, default) -> bool:
    if value is default:
        return True
    if isinstance(default, bool):  # a flag: None stands for False, as in transformers
        return (value is None and default is False) or (isinstance(value, bool)
                                                        and value == default)
    if default is None or isinstance(value, torch.Tensor):
        return False
    return (type(value) is type(default) and isinstance(default, (int, float, str))
            and value == default)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)[:60]
    return f"a {type(value).__name__}"


class PatchedAttention(CausalSelfAttention):
    """:class:`artrt.nn.CausalSelfAttention` called as the layer it replaced: the same
    arguments after x (B, T, C) and the same output, (B, T, C) or a tuple of it and as many
    Nones as the layer returned more elements (its attention weights, which artrt never
    forms). Arguments are accepted only at the values the patch-time probes covered (see
    the module docstring); any other value raises a ValueError naming it. With a KV cache,
    the T new positions' keys and values (B, Hk, T, D) are appended through
    ``cache.update(k, v, layer_idx)`` and the queries attend causally to all cached ones
    (:func:`artrt.causal_attention` when nothing was cached before, else the bottom-right
    aligned prefix attention of :mod:`artrt.integrations.transformers`)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, call: _Call, layer_idx: int = 0):
        super().__init__(dim, heads, kv_heads, layer_idx=layer_idx)
        self.call = call

    def forward(self, x: torch.Tensor, *args, **kwargs):
        cache = self._arguments(args, kwargs)
        b, t, c = x.shape
        q, k, v = self._qkv(x)  # (B, H, T, D), (B, Hk, T, D) x 2
        if cache is not None:
            k, v = self._update(cache, k, v, t)  # (B, Hk, Tk, D), Tk = cached + T
        if k.shape[2] == t:
            y = causal_attention(q, k, v)  # (B, H, T, D)
        else:
            y = prefix_attention(q, k, v, None)
        out = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return out if self.call.outputs is None else (out,) + (None,) * self.call.outputs

    def _where(self) -> str:
        info = vars(self).get("_artrt_patch")
        return f"the {self.call.layer}" + (f" at '{info.path}'" if info is not None else "")

    def _refuse(self, name: str, value, why: str = "") -> ValueError:
        call = self.call
        at = (f"{name}={call.defaults[name]!r}" if name in call.defaults
              else f"no {name}")
        why = why or _HINTS.get(name, "the patch-time probe ran it with the default only")
        return ValueError(f"artrt.patch replaced {self._where()} with artrt's causal "
                          f"attention, which computes it with {at} only; got "
                          f"{name}={_describe(value)} ({why}). artrt.unpatch(model) puts the "
                          "original back")

    def _arguments(self, args: tuple, kwargs: dict):
        """The KV cache given (or None), after checking every argument; see the class."""
        call = self.call
        if len(args) > len(call.names):
            if not call.var_positional:
                raise TypeError(f"{self._where()} takes {1 + len(call.names)} positional "
                                f"arguments, got {1 + len(args)}")
            raise self._refuse("*args", args[len(call.names):])
        given = dict(zip(call.names[:len(args)], args, strict=True))
        for name, value in kwargs.items():
            if name in given:
                raise TypeError(f"{self._where()} got multiple values for '{name}'")
            if name not in call.defaults and not call.var_keyword:
                raise TypeError(f"{self._where()} got an unexpected keyword argument '{name}'")
            given[name] = value
        cache = given.get(call.cache) if call.cache is not None else None
        for name, value in given.items():
            if name == call.cache and cache is not None:
                continue
            if (name == "use_cache" and (value is None or isinstance(value, bool))
                    and (call.use_cache or cache is not None)):
                continue  # with a cache: checked below
            if not (name in call.defaults and _same_as_default(value, call.defaults[name])):
                raise self._refuse(name, value)
        if cache is not None:
            flag = given.get("use_cache", call.defaults.get("use_cache"))
            flag = None if "use_cache" not in call.defaults else bool(flag)
            if flag not in call.cache_flags:
                raise self._refuse("use_cache", flag, f"with {call.cache} given, only "
                                   f"use_cache={call.cache_flags[0]} was probed")
        return cache

    def _update(self, cache, k: torch.Tensor, v: torch.Tensor, t: int):
        name = self.call.cache
        if hasattr(cache, "self_attention_cache"):
            raise self._refuse(name, cache, "an encoder-decoder cache: artrt patches causal "
                               "self-attention with a plain KV cache")
        if not (callable(getattr(cache, "update", None))
                and callable(getattr(cache, "get_seq_length", None))):
            raise TypeError(f"{self._where()}: {name} must be None or a KV cache with "
                            f"update() and get_seq_length() (a transformers Cache), got "
                            f"{type(cache).__name__}")
        past = int(cache.get_seq_length(self.layer_idx))
        k, v = cache.update(k, v, self.layer_idx)
        if k.shape[2] != past + t or v.shape[2] != past + t:
            raise self._refuse(name, cache, f"it returned {k.shape[2]} keys for {past} cached "
                               f"and {t} new positions, a static or sliding-window cache? "
                               "artrt attends to exactly the cached and new positions")
        return k, v


def _first(y):
    """The output of a layer that returns it alone or first in a tuple."""
    return y[0] if type(y) is tuple and y and isinstance(y[0], torch.Tensor) else y


def _attention_weights(w, b: int, t: int) -> bool:
    """w looks like causal attention weights (B, H, T, T): rows of probabilities, zero above
    the diagonal."""
    if not (isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[0] == b
            and tuple(w.shape[2:]) == (t, t) and w.is_floating_point()):
        return False
    w = w.double()
    future = torch.ones(t, t, dtype=torch.bool, device=w.device).triu(1)
    return bool(torch.isfinite(w).all() and (w >= 0).all() and (w[..., future] == 0).all()
                and ((w.sum(-1) - 1).abs() <= 1e-2).all())


def _outputs(y, x: torch.Tensor) -> tuple[int | None, str | None]:
    """(None, None): y is the output; (n, None): y is (output, n more), each None or the
    attention weights; (None, why) otherwise."""
    if type(y) is not tuple:
        return None, None
    b, t = x.shape[:2]
    for i, extra in enumerate(y[1:], 1):
        if extra is not None and not _attention_weights(extra, b, t):
            got = (f"a tensor of shape {tuple(extra.shape)}" if isinstance(extra, torch.Tensor)
                   else type(extra).__name__)
            return None, (f"it returns a tuple whose element {i} is {got}, not attention "
                          "weights: the replacement would return None there")
    return len(y) - 1, None


def _call_of(m: nn.Module, extras: list[inspect.Parameter],
             outputs: int | None) -> _Call | None:
    """None when the layer takes x alone and returns the output alone (a plain
    CausalSelfAttention replaces it)."""
    if not extras and outputs is None:
        return None
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    by_position = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return _Call(type(m).__name__,
                 tuple(p.name for p in extras if p.kind in by_position),
                 {p.name: p.default for p in extras if p.kind not in variadic},
                 any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in extras),
                 any(p.kind is inspect.Parameter.VAR_KEYWORD for p in extras), outputs)


def _owned_by(m: nn.Module, parts: list[nn.Module]) -> bool:
    own = {id(p) for part in parts for p in part.parameters()}
    return all(id(p) in own for p in m.parameters())


def _dependencies(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """(D (T, T) bool, None) or (None, why the probe failed)."""
    try:
        y, again = _first(run(m, (x,))), _first(run(m, (x,)))
    except Exception as e:  # noqa: BLE001
        return None, (f"calling it on a (B, T, C) = {tuple(x.shape)} probe raised "
                      f"{type(e).__name__}: {str(e)[:120]}")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        return None, f"it maps a (B, T, C) = {tuple(x.shape)} input to {got}"
    if not bool(torch.isfinite(y).all()):
        return None, "its output on a random input is not finite (a row that sees nothing?)"
    if not torch.equal(y, again):
        return None, "its output is random (dropout in training mode?)"
    gen = generator(5)
    xs = x.repeat(_T, 1, 1)  # (T * B, T, C): copy s has position s of batch row 0 changed
    for s in range(_T):
        xs[s * _B, s] += randn(x.shape[-1:], x, gen)
    ys = _first(run(m, (xs,))).view(_T, _B, _T, -1)
    moved = (ys - y).abs().amax(-1)  # (T copies, B, T outputs)
    moved = moved > max(1e-4, tolerance(x.dtype, x.device)) * y.abs().max()
    if bool(moved[:, 1:].any()):
        return None, ("a change in one batch row changes another: it reads (T, B, C), "
                      "sequence first? artrt patches batch-first attention")
    return moved[:, 0].t(), None  # D[t, s]


def _pattern_reason(d: torch.Tensor) -> str | None:
    causal = torch.ones_like(d).tril()
    if torch.equal(d, causal):
        return None
    future = (d & ~causal).nonzero()
    if len(future):
        t, s = future[0].tolist()
        return f"bidirectional: output {t} depends on input {s}, a later position"
    t, s = (causal & ~d).nonzero()[0].tolist()
    return (f"output {t} does not depend on input {s} before it: a window or another "
            "mask, not full causal attention")


def _candidates(m: nn.Module, dim: int, qkv_out: int) -> list[tuple[int, int]]:
    """(H, Hk) with D = C / H <= 128 and (H + 2 Hk) D = qkv_out; hinted values first."""
    found = [(h, hk) for h in range(1, dim + 1) if dim % h == 0 and dim // h <= MAX_HEAD_DIM
             for hk in range(1, h + 1) if h % hk == 0 and (h + 2 * hk) * (dim // h) == qkv_out]
    hint_h = [getattr(m, a) for a in _HEAD_HINTS if isinstance(getattr(m, a, None), int)]
    hint_k = [getattr(m, a) for a in _KV_HINTS if isinstance(getattr(m, a, None), int)]
    return sorted(found, key=lambda c: (c[0] not in hint_h, c[1] not in hint_k + [c[0]], c))


def _projections(m: nn.Module, mhas: list[nn.Module]) -> list[nn.Module] | None:
    """The two projections (``nn.Linear`` as they are, transposed ones wrapped in a
    :class:`_TransposedLinear` on their Parameters) that own every parameter of ``m``, or
    None."""
    found = [c for c in m.modules() if c is not m and (
        (isinstance(c, nn.Linear) and not any(c is mha.out_proj for mha in mhas))
        or _transposed_shape(c))]
    if len(found) != 2 or not _owned_by(m, found):
        return None
    if not all(isinstance(c, nn.Linear) or _computes_x_w_plus_b(c) for c in found):
        return None
    return [c if isinstance(c, nn.Linear) else _TransposedLinear(c.weight, c.bias)
            for c in found]


def _same_outputs(want, got) -> str | None:
    """mismatch, and the same structure: for a tuple (output, rest) from the layer, the
    replacement's is (output, None, ...) of the same length (the rest, None or attention
    weights, was checked by :func:`_outputs`)."""
    why = mismatch(want, got)
    if why is None and type(want) is not type(got):
        return f"outputs are {type(want).__name__} and {type(got).__name__}"
    if why is None and type(got) is tuple and any(g is not None for g in got[1:]):
        return "the replacement returned more than its output"
    return why


def _cache_probe(m: nn.Module, new: PatchedAttention, name: str, flag: bool | None,
                 x: torch.Tensor) -> str | None:
    """None when ``m`` and ``new``, each given a fresh :class:`_ProbeCache` as ``name`` (and
    ``use_cache=flag``), give the same outputs over a prefill of 3 positions and steps of 1
    and 2, and leave the same keys and values in their caches; else what differed."""
    theirs, ours = _ProbeCache(), _ProbeCache()
    extra = {} if flag is None else {"use_cache": flag}
    for lo, hi in ((0, 3), (3, 4), (4, _T)):
        part = x[:, lo:hi].contiguous()
        try:
            want = run(m, (part,), kwargs={name: theirs, **extra})
        except Exception as e:  # noqa: BLE001
            return f"given a KV cache it raised {type(e).__name__}: {str(e)[:80]}"
        try:
            with torch.no_grad():
                got = new(part, **{name: ours}, **extra)
        except ValueError as e:
            return f"the replacement refused the cache: {str(e)[:80]}"
        why = _same_outputs(want, got)
        if why is not None:
            return f"with a KV cache, positions {lo}..{hi - 1}: {why}"
    if theirs.keys.keys() != ours.keys.keys():
        return (f"it filled the cache's layers {sorted(theirs.keys)}, the replacement "
                f"{sorted(ours.keys)}")
    for i in theirs.keys:
        why = (mismatch(theirs.keys[i], ours.keys[i])
               or mismatch(theirs.values[i], ours.values[i]))
        if why is not None:
            return f"the keys and values it caches differ from artrt's: {why}"
    return None


def _probe_call(m: nn.Module, new: PatchedAttention, want,
                x: torch.Tensor) -> tuple[str, str | None]:
    """Widen ``new.call`` to what the probes show it computes as ``m`` does (``use_cache``,
    a KV cache). Returns (what to add to the report's detail, None), or ("", why) when the
    layer takes a KV cache the replacement was not shown to fill as it does: transformers
    passes one by default, so such a layer is left alone rather than replaced by one that
    refuses the model's every call."""
    call = new.call
    default = call.defaults.get("use_cache")
    if isinstance(default, bool):
        try:
            flipped = run(m, (x,), kwargs={"use_cache": not default})
            same = (type(flipped) is type(want) and mismatch(want, flipped) is None
                    and _outputs(flipped, x) == (call.outputs, None))
            call = dataclasses.replace(call, use_cache=same)
        except Exception:  # noqa: BLE001 - then use_cache keeps its default
            pass
    new.call = call
    names = [n for n in _CACHE_NAMES if n in call.defaults and call.defaults[n] is None]
    if not names:
        return "", None
    name = names[0]
    if not isinstance(getattr(m, "layer_idx", None), int):
        return "", (f"its forward takes a KV cache ({name}) but it has no int layer_idx to "
                    "index one with: artrt cannot fill it as the layer does")
    new.layer_idx = m.layer_idx
    flags, whys = [], []
    for flag in (True, False) if isinstance(default, bool) else (None,):
        new.call = dataclasses.replace(call, cache=name, cache_flags=(flag,))
        why = _cache_probe(m, new, name, flag, x)
        if why is None:
            flags.append(flag)
        else:
            whys.append(why)
    if not flags:
        return "", (f"its forward takes a KV cache ({name}), and the replacement, given one, "
                    f"differs from it: {whys[0]}")
    new.call = dataclasses.replace(call, cache=name, cache_flags=tuple(flags))
    return f", KV cache ({name})", None


def recognise(m: nn.Module) -> Match | Reject | None:
    if isinstance(m, nn.MultiheadAttention):
        return Reject("nn.MultiheadAttention gets its mask from the caller: artrt replaces the "
                      "module around it that calls it with a causal mask, if that module owns "
                      "no other parameters", final=False)
    if from_artrt(m) or not forward_overridden(m) or any(from_artrt(c) for c in m.modules()):
        return None
    mhas = [c for c in m.modules() if isinstance(c, nn.MultiheadAttention)]
    extras = extra_arguments(m)
    needs_more = Reject("its forward needs more than x (an argument without a default: a "
                        "mask, a cache?): a probe cannot see what it does")
    if len(mhas) == 1 and _owned_by(m, mhas) and not any(
            isinstance(c, nn.Linear) and c is not mhas[0].out_proj for c in m.modules()):
        mha = mhas[0]
        dim, like = mha.embed_dim, mha.out_proj.weight
        if extras is None:
            return needs_more
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            return Reject("its nn.MultiheadAttention has separate q/k/v weights (kdim/vdim): "
                          "artrt's attention layer has one fused projection")
        if mha.bias_k is not None or mha.add_zero_attn:
            return Reject("its nn.MultiheadAttention adds bias_k/v or a zero attention row")
        heads = [(mha.num_heads, mha.num_heads)]
    elif not mhas and (projections := _projections(m, mhas)) is not None:
        qkv, proj = sorted(projections, key=lambda lin: lin.out_features, reverse=True)
        dim = proj.out_features
        if not (proj.in_features == dim == qkv.in_features and qkv.out_features > dim):
            return None
        heads = _candidates(m, dim, qkv.out_features)
        if not heads:
            return None
        if extras is None:
            return needs_more
        like = qkv.weight
    else:
        return None
    hooked = post_hooks(m)
    if hooked is not None:
        return Reject(f"{'its submodule ' + hooked if hooked else 'it'} has forward or "
                      "backward hooks, which the replacement would not run")
    rate = dropout_rate(m)
    if rate > 0:
        return Reject(f"attention with dropout p={rate:g}: artrt's attention has no dropout")
    x = randn((_B, _T, dim), like, generator(4))
    d, why = _dependencies(m, x)
    if why is None:
        why = _pattern_reason(d)
    if why is not None:
        return Reject(why)
    want = run(m, (x,))
    outputs, why = _outputs(want, x)
    if why is not None:
        return Reject(why)
    call = _call_of(m, extras, outputs)
    tried = []
    for h, hk in heads:
        with torch.device("meta"):  # the projections are replaced by the layer's below
            new = (CausalSelfAttention(dim, h, hk) if call is None
                   else PatchedAttention(dim, h, hk, call))
        if mhas:
            mha = mhas[0]
            new.qkv = nn.Linear(dim, 3 * dim, bias=mha.in_proj_bias is not None, device="meta")
            new.qkv.weight = mha.in_proj_weight
            if mha.in_proj_bias is not None:
                new.qkv.bias = mha.in_proj_bias
            new.proj = mha.out_proj
        else:
            new.qkv, new.proj = qkv, proj
        new.train(m.training)
        with torch.no_grad():
            got = new(x)
        if _same_outputs(want, got) is None:
            detail = f"causal, {h} heads" + (f", {hk} key/value heads" if hk != h else "")
            if call is not None:
                more, why = _probe_call(m, new, want, x)
                if why is not None:
                    return Reject(why)
                detail += more
            short = randn((1, 3, dim), like, generator(6))
            return Match(new, detail, [(x,), (short,)])
        tried.append(h if hk == h else f"{h}/{hk}")
    return Reject(f"causal attention, but artrt's CausalSelfAttention with heads "
                  f"{', '.join(map(str, tried))} does not reproduce it (another projection "
                  "layout, scale or position term?)")
