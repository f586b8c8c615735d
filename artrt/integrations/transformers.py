"""artrt's causal attention as an attention implementation of Hugging Face transformers.

``register()`` adds ``"artrt"`` to transformers' ``AttentionInterface`` (the attention
function that models written on it, GPT-2, Llama, Mistral and most recent ones, call in each
layer) and to its ``AttentionMaskInterface`` (how such a model builds its mask for that
implementation; without it transformers would build no mask at all), so that::

    from artrt.integrations.transformers import register
    register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="artrt")

runs :func:`artrt.causal_attention` in every self-attention layer; with a KV cache (``generate``)
the new positions run :func:`artrt.attention_decode` against the cached keys.

Masks. The mask builder is transformers' own SDPA one, which returns None where the mask is
plain causal (no padding, no window shorter than the sequence). A mask that is given is read
(one host read per layer) and accepted only when it is causal attention of the T_q queries
to a prefix of the keys (bottom-right aligned, as after a KV cache)::

    n = 5 visible keys of Tk = 6, Tq = 2 queries (x visible)
    key     0 1 2 3 4 5
    q0      x x x x . .
    q1      x x x x x .

Anything else is refused with a ValueError, never computed with the wrong mask: a padded
batch (pad tokens are keys some rows must not see), a sliding window shorter than the
sequence, packed sequences, an additive bias (ALiBi, position_bias), a bidirectional or
cross-attention module (``module.is_causal`` False), attention dropout (``dropout > 0``: a
model in training mode with a non-zero attention dropout), logit soft-capping, attention
sinks, and ``output_attentions=True`` (artrt never forms the attention weights). For padded
batches load the model with ``attn_implementation="sdpa"``, or batch sequences of one length.

Shapes follow the interface: query (B, H, Tq, D), key and value (B, Hk, Tk, D) with H a
multiple of Hk (grouped-query attention: artrt takes the Hk heads as they are, query head h
reads kv head h // (H / Hk), as transformers' ``repeat_kv``); returns ((B, Tq, H, D), None).

Models that do not call the attention interface (ImageGPT, with its own attention code)
ignore ``attn_implementation="artrt"`` and run their own attention.
"""

from __future__ import annotations

import torch
from torch import nn

from artrt.ops.attention import causal_attention
from artrt.ops.attention_decode import prefix_attention

NAME = "artrt"

_PADDING_HINT = ("artrt's causal attention takes no key mask: batch sequences of one length "
                 "without padding (or one at a time), or load the model with "
                 "attn_implementation=\"sdpa\"")

# transformers' context variable of the outputs being captured (``output_attentions=True``
# puts an "attentions" list there); set by register() where this transformers has one.
_collector = None


def register() -> None:
    """Register artrt's attention as ``attn_implementation="artrt"`` in transformers (the
    attention function and the mask builder), for every model whose
    ``config._attn_implementation`` is "artrt". Calling it again changes nothing.

    Raises ImportError when transformers is missing or too old to have the attention and
    mask interfaces.
    """
    global _collector
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as e:
        raise ImportError("artrt.integrations.transformers needs transformers with "
                          "AttentionInterface and masking_utils.AttentionMaskInterface: "
                          f"pip install \"artrt[hf]\" ({e})") from e
    try:
        from transformers.utils.output_capturing import _active_collector as _collector
    except ImportError:
        _collector = None
    AttentionInterface.register(NAME, attention_forward)
    # The SDPA builder: None for a plain causal mask, else a boolean (B, 1, Tq, Tk) mask.
    AttentionMaskInterface.register(NAME, AttentionMaskInterface._global_mapping["sdpa"])


def _refuse(what: str) -> ValueError:
    return ValueError(f"attn_implementation=\"{NAME}\": {what}")


def _attentions_requested(kwargs: dict) -> bool:
    if kwargs.get("output_attentions"):
        return True
    captured = _collector.get() if _collector is not None else None
    return isinstance(captured, dict) and "attentions" in captured


def _visible_prefix(mask: torch.Tensor, tq: int, tk: int) -> int:
    """n, when ``mask`` (bool: True = visible; float: 0 visible, -inf or the dtype's minimum
    masked) of shape (B or 1, H or 1, Tq, Tk) says exactly: query t, at position
    n - Tq + t, sees keys j <= n - Tq + t, where n - 1 is the last key any query sees (keys
    after it are unused cache slots). ValueError for any other mask."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attn_implementation=\"{NAME}\": attention_mask must be a tensor or "
                        f"None, got {type(mask).__name__}")
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (tq, tk):
        raise _refuse(f"attention_mask must have shape (B, 1, Tq, Tk) = (B, 1, {tq}, {tk}), "
                      f"got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        vis = mask
    elif mask.is_floating_point():
        vis = mask == 0
        if not bool((vis | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
            raise _refuse("the float attention_mask holds values other than 0 and -inf (an "
                          "additive bias such as ALiBi), which artrt's causal attention "
                          "does not add")
    else:
        raise TypeError(f"attn_implementation=\"{NAME}\": attention_mask must be bool or "
                        f"float, got {mask.dtype}")
    seen = vis.flatten(0, 2).any(0).nonzero()  # keys some query sees
    n = int(seen[-1]) + 1 if len(seen) else 0
    if n < tq:
        raise _refuse(f"the attention mask hides keys {n}..{tk - 1} from every query, so "
                      f"queries {n}..{tq - 1} are padding (a right-padded batch?). "
                      f"{_PADDING_HINT}")
    j = torch.arange(tk, device=mask.device)
    want = j <= (n - tq + torch.arange(tq, device=mask.device))[:, None]  # (Tq, Tk)
    wrong = (vis != want).nonzero()
    if len(wrong):
        b, h, t, k = wrong[0].tolist()
        pos = n - tq + t
        what = (f"sees key {k}, a later position" if bool(vis[b, h, t, k]) else
                f"does not see key {k}, at or before its own position")
        raise _refuse(f"the attention mask is not causal: in batch row {b}, query {t} "
                      f"(position {pos}) {what} (a padded batch, a sliding window, packed "
                      f"sequences or another mask). {_PADDING_HINT}")
    return n


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """The ``"artrt"`` attention function of transformers' ``AttentionInterface``.

    Args:
        module: the calling attention layer (``is_causal``, False for bidirectional or
            cross-attention, is refused).
        query: (B, H, Tq, D). key, value: (B, Hk, Tk, D), H a multiple of Hk; D <= 128.
        attention_mask: None (plain causal; with Tq < Tk as transformers' SDPA path reads
            it: Tq = 1 sees every key, else the first Tq keys are the sequence) or a
            (B, 1, Tq, Tk) bool / additive float mask, accepted only when it is causal over
            a prefix of the keys (see the module docstring).
        dropout: must be 0 (artrt's attention has no dropout).
        scaling: multiplier of the scores, default 1 / sqrt(D).
        is_causal: overrides ``module.is_causal``.

    Returns:
        ((B, Tq, H, D) contiguous, None): no attention weights.
    """
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal:
        raise _refuse(f"{type(module).__name__} is not causal attention (bidirectional or "
                      "cross-attention); artrt's attention is causal self-attention only")
    if dropout:
        raise _refuse(f"attention dropout {dropout:g} (the model is in training mode): "
                      "artrt's attention has no dropout; set the config's attention dropout "
                      "(GPT-2: attn_pdrop, Llama: attention_dropout) to 0, or model.eval()")
    if _attentions_requested(kwargs):
        raise _refuse("output_attentions=True: artrt never forms the attention weights; use "
                      "attn_implementation=\"eager\" to get them")
    for name in ("softcap", "position_bias", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise _refuse(f"{name} is not supported by artrt's causal attention")
    tq, tk = query.shape[2], key.shape[2]
    if attention_mask is not None:
        n = _visible_prefix(attention_mask, tq, tk)
    elif tq == 1 or tq == tk:
        n = tk
    elif tq < tk:  # an empty static cache being filled: keys past Tq are unused slots
        n = tq
    else:
        raise _refuse(f"query length {tq} exceeds key length {tk} and no mask says how they "
                      "align")
    window = kwargs.get("sliding_window")
    if isinstance(window, int) and n > window:
        raise _refuse(f"sliding window {window} shorter than the {n} keys a query would see. "
                      f"{_PADDING_HINT}")
    key, value = key[:, :, :n], value[:, :, :n]
    if tq == n:
        out = causal_attention(query, key, value, scaling)  # (B, H, T, D)
    else:
        out = prefix_attention(query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None
