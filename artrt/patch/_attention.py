"""Causal self-attention recognised by its dependency pattern, replaced by
:class:`artrt.nn.CausalSelfAttention` on the same projection weights.

Candidates, found by structure (a module taking x (B, T, C) alone):

- one that owns exactly one ``nn.MultiheadAttention`` and no other parameters (it calls it
  with an ``attn_mask`` / ``is_causal`` it builds itself); q, k, v come from
  ``in_proj_weight`` (3C, C), the output from ``out_proj``;
- one that owns exactly two ``nn.Linear``: a fused projection C -> (H + 2 Hk) D laid out
  q | k | v (heads contiguous, nanoGPT's ``c_attn``) and an output projection C -> C, with
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
"""

from __future__ import annotations

import torch
from torch import nn

from artrt.nn import CausalSelfAttention
from artrt.ops.attention import MAX_HEAD_DIM
from artrt.patch._common import (
    Match,
    Reject,
    dropout_rate,
    forward_overridden,
    from_artrt,
    generator,
    mismatch,
    post_hooks,
    randn,
    run,
    single_input,
    tolerance,
)

_T, _B = 6, 2
_HEAD_HINTS = ("n_head", "n_heads", "num_heads", "nhead", "heads", "num_attention_heads")
_KV_HINTS = ("n_kv_head", "n_kv_heads", "num_kv_heads", "num_key_value_heads", "kv_heads")


def _owned_by(m: nn.Module, parts: list[nn.Module]) -> bool:
    own = {id(p) for part in parts for p in part.parameters()}
    return all(id(p) in own for p in m.parameters())


def _dependencies(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """(D (T, T) bool, None) or (None, why the probe failed)."""
    try:
        y, again = run(m, (x,)), run(m, (x,))
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
    ys = run(m, (xs,)).view(_T, _B, _T, -1)
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


def recognise(m: nn.Module) -> Match | Reject | None:
    if isinstance(m, nn.MultiheadAttention):
        return Reject("nn.MultiheadAttention gets its mask from the caller: artrt replaces the "
                      "module around it that calls it with a causal mask, if that module owns "
                      "no other parameters", final=False)
    if from_artrt(m) or not forward_overridden(m) or any(from_artrt(c) for c in m.modules()):
        return None
    mhas = [c for c in m.modules() if isinstance(c, nn.MultiheadAttention)]
    linears = [c for c in m.modules() if isinstance(c, nn.Linear)
               and not any(c is mha.out_proj for mha in mhas)]
    if len(mhas) == 1 and not linears and _owned_by(m, mhas):
        mha = mhas[0]
        dim, like = mha.embed_dim, mha.out_proj.weight
        if not single_input(m):
            return Reject("its forward takes more than x (a mask, a cache?): a probe cannot "
                          "see what the other arguments do")
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            return Reject("its nn.MultiheadAttention has separate q/k/v weights (kdim/vdim): "
                          "artrt's attention layer has one fused projection")
        if mha.bias_k is not None or mha.add_zero_attn:
            return Reject("its nn.MultiheadAttention adds bias_k/v or a zero attention row")
        heads = [(mha.num_heads, mha.num_heads)]
    elif not mhas and len(linears) == 2 and _owned_by(m, linears):
        qkv, proj = sorted(linears, key=lambda lin: lin.out_features, reverse=True)
        dim = proj.out_features
        if not (proj.in_features == dim == qkv.in_features and qkv.out_features > dim):
            return None
        heads = _candidates(m, dim, qkv.out_features)
        if not heads:
            return None
        if not single_input(m):
            return Reject("its forward takes more than x (a mask, a cache?): a probe cannot "
                          "see what the other arguments do")
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
    tried = []
    for h, hk in heads:
        with torch.device("meta"):  # the projections are replaced by the layer's below
            new = CausalSelfAttention(dim, h, hk)
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
        if mismatch(want, got) is None:
            detail = f"causal, {h} heads" + (f", {hk} key/value heads" if hk != h else "")
            short = randn((1, 3, dim), like, generator(6))
            return Match(new, detail, [(x,), (short,)])
        tried.append(h if hk == h else f"{h}/{hk}")
    return Reject(f"causal attention, but artrt's CausalSelfAttention with heads "
                  f"{', '.join(map(str, tried))} does not reproduce it (another projection "
                  "layout, scale or position term?)")
