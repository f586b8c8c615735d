"""artrt.patch on a zoo of layer idioms, each written the way public PyTorch code writes it
(our own code): masks as a buffer, a parameter or an attribute, applied in forward, in place
on weight.data, by a hook, by torch's prune or parametrize utilities; colour masks;
PixelCNN++ shifts by ZeroPad2d, nn.Sequential and F.pad; causal 1-D convolutions by F.pad,
ConstantPad1d and symmetric padding + crop; gate modules and nn.GLU; causal attention over
nn.MultiheadAttention and F.scaled_dot_product_attention (is_causal, bool / float masks, a
tril buffer, grouped-query heads).

For each idiom: the layer is replaced by the expected artrt module on the same parameter
tensors, outputs and gradients equal the original's, the state_dict keeps its keys, order
and values and checkpoints load both ways, unpatch restores, and the artrt op runs (the
profiler sees it). Look-alikes are left alone with a reason. Attention written as
transformers writes it (Conv1D projections, a forward with a KV cache and other defaulted
arguments, an (output, weights) tuple) is replaced too, and its arguments are computed or
refused as probed. Everything runs on the reference backend (CPU)."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
import torch.nn.utils.prune as prune
from torch import nn

import artrt
from artrt.patch import LeftAlone, PatchReport, Replaced


def raster_mask(cout, cin, k, mask_type, groups=1, interleaved=False):
    """PixelCNN's mask, written out: taps before the centre in raster order; the centre tap
    by mask type, or by colour group (contiguous blocks, or channel c in group c % groups)."""
    m = torch.ones(cout, cin, k, k)
    c = k // 2
    m[:, :, c, c + 1:] = 0
    m[:, :, c + 1:] = 0
    if groups == 1:
        m[:, :, c, c] = float(mask_type == "B")
        return m
    if interleaved:
        g_out, g_in = torch.arange(cout) % groups, torch.arange(cin) % groups
    else:
        g_out, g_in = torch.arange(cout) // (cout // groups), torch.arange(cin) // (cin // groups)
    allowed = g_in[None] < g_out[:, None] if mask_type == "A" else g_in[None] <= g_out[:, None]
    m[:, :, c, c] = allowed.float()
    return m


# --------------------------------------------------------------------------- masked convs

class MaskBuffer(nn.Conv2d):
    """The most common idiom: a mask buffer multiplied into the weight in forward."""

    def __init__(self, cin, cout, k, mask_type, colour_groups=1, mask=None, **kw):
        super().__init__(cin, cout, k, padding=k // 2, **kw)
        self.register_buffer("mask", raster_mask(cout, cin, k, mask_type, colour_groups)
                             if mask is None else mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class MaskParameter(nn.Conv2d):
    def __init__(self, cin, cout, k, mask_type):
        super().__init__(cin, cout, k, padding=k // 2)
        self.mask = nn.Parameter(raster_mask(cout, cin, k, mask_type), requires_grad=False)

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class MaskAttribute(nn.Conv2d):
    def __init__(self, cin, cout, k, mask_type):
        super().__init__(cin, cout, k, padding=k // 2, bias=False)
        self.mask = raster_mask(cout, cin, k, mask_type)  # a plain tensor attribute

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, None)


class MaskInPlace(nn.Conv2d):
    """Masks weight.data in place at every call (the weight's masked entries stay zero)."""

    def __init__(self, cin, cout, k, mask_type):
        super().__init__(cin, cout, k, padding=k // 2)
        self.register_buffer("mask", raster_mask(cout, cin, k, mask_type))

    def forward(self, x):
        self.weight.data *= self.mask
        return super().forward(x)


def _mul_mask_hook(module, inputs):
    module.weight.data.mul_(module.mask)


def mask_hook(cin, cout, k, mask_type):
    """A plain nn.Conv2d masked by a forward pre-hook."""
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    conv.register_buffer("mask", raster_mask(cout, cin, k, mask_type))
    conv.register_forward_pre_hook(_mul_mask_hook)
    return conv


def mask_prune(cin, cout, k, mask_type):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    prune.custom_from_mask(conv, "weight", raster_mask(cout, cin, k, mask_type))
    return conv


class Masking(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def mask_parametrize(cin, cout, k, mask_type):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    parametrize.register_parametrization(
        conv, "weight", Masking(raster_mask(cout, cin, k, mask_type)))
    return conv


# --------------------------------------------------------------------------- shifted convs

class DownShifted(nn.Module):
    """PixelCNN++ code's down-shifted conv: ZeroPad2d((left, right, top, 0)) then the conv."""

    def __init__(self, cin, cout, k=(2, 3)):
        super().__init__()
        self.pad = nn.ZeroPad2d(((k[1] - 1) // 2, (k[1] - 1) // 2, k[0] - 1, 0))
        self.conv = nn.Conv2d(cin, cout, k)

    def forward(self, x):
        return self.conv(self.pad(x))


class DownShiftedFPad(nn.Conv2d):
    def __init__(self, cin, cout):
        super().__init__(cin, cout, (2, 3))

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 0)))


def down_right_sequential(cin, cout):
    return nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(cin, cout, 2))


# --------------------------------------------------------------------------- causal conv1d

class CausalFPad(nn.Module):
    def __init__(self, cin, cout, k, dilation):
        super().__init__()
        self.pad = (k - 1) * dilation
        self.conv = nn.Conv1d(cin, cout, k, dilation=dilation)

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, 0)))


class CausalCrop(nn.Conv1d):
    """Symmetric padding (K-1) d, then the last (K-1) d outputs cropped."""

    def __init__(self, cin, cout, k, dilation, crop_left=False):
        super().__init__(cin, cout, k, padding=(k - 1) * dilation, dilation=dilation)
        self.crop_left = crop_left

    def forward(self, x):
        out = super().forward(x)
        p = self.padding[0]
        return out[:, :, p:] if self.crop_left else out[:, :, :-p]


def causal_constant_pad(cin, cout):
    return nn.Sequential(nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(cin, cout, 3))


# --------------------------------------------------------------------------- gates

class TanhGate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)


class SigmoidGateLast(nn.Module):
    def forward(self, x):
        c = x.shape[-1] // 2
        return x[..., :c] * torch.sigmoid(x[..., c:])


class SwappedGate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.sigmoid(a) * torch.tanh(b)


# --------------------------------------------------------------------------- attention

class MHACausal(nn.Module):
    """nn.MultiheadAttention called with a causal mask built from x's length."""

    def __init__(self, dim, heads, mask="bool", dropout=0.0, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=batch_first)
        self.mask = mask

    def forward(self, x):
        t = x.shape[1] if self.attn.batch_first else x.shape[0]
        if self.mask == "bool":
            y, _ = self.attn(x, x, x, attn_mask=torch.ones(t, t, dtype=torch.bool,
                                                           device=x.device).triu(1))
        elif self.mask == "float":
            m = torch.full((t, t), float("-inf"), device=x.device).triu(1)
            y, _ = self.attn(x, x, x, attn_mask=m, is_causal=True, need_weights=False)
        else:
            y, _ = self.attn(x, x, x, need_weights=False)  # bidirectional
        return y


class SDPACausal(nn.Module):
    """nanoGPT's CausalSelfAttention: one fused projection, heads split by view,
    F.scaled_dot_product_attention with is_causal=True (or a tril bool mask, or a sliding
    window)."""

    def __init__(self, dim, n_head, n_kv_head=None, window=None, tril=False):
        super().__init__()
        self.tril = tril
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        self.hd = dim // n_head
        self.c_attn = nn.Linear(dim, dim + 2 * self.n_kv_head * self.hd)
        self.c_proj = nn.Linear(dim, dim)
        self.window = window

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split([c, self.n_kv_head * self.hd, self.n_kv_head * self.hd],
                                       dim=2)
        q = q.view(b, t, self.n_head, self.hd).transpose(1, 2)
        k = k.view(b, t, self.n_kv_head, self.hd).transpose(1, 2)
        v = v.view(b, t, self.n_kv_head, self.hd).transpose(1, 2)
        rep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        if self.tril:
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        elif self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            i = torch.arange(t, device=x.device)
            keep = (i[None] <= i[:, None]) & (i[:, None] - i[None] < self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class TrilBuffer(nn.Module):
    """nanoGPT's manual path: a (1, 1, L, L) tril buffer "bias", masked_fill and softmax."""

    def __init__(self, dim, n_head, block_size=16):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))
                             .view(1, 1, block_size, block_size))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


# --------------------------------------------------------------------------- the zoo

# name: (build, input shape, artrt class, op the profiler must see, grads at masked entries)
ZOO = {
    "mask_buffer": (lambda: MaskBuffer(3, 8, 5, "A"), (2, 3, 7, 6),
                    artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "mask_parameter": (lambda: MaskParameter(4, 6, 3, "B"), (2, 4, 5, 5),
                       artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "mask_attribute": (lambda: MaskAttribute(4, 6, 3, "B"), (2, 4, 5, 5),
                       artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "mask_in_place": (lambda: MaskInPlace(3, 6, 5, "A"), (2, 3, 6, 6),
                      artrt.nn.MaskedConv2d, "tap_conv2d", True),
    "mask_hook": (lambda: mask_hook(4, 4, 3, "B"), (2, 4, 5, 7),
                  artrt.nn.MaskedConv2d, "tap_conv2d", True),
    "mask_prune": (lambda: mask_prune(4, 5, 3, "A"), (2, 4, 5, 5),
                   artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "mask_parametrize": (lambda: mask_parametrize(4, 5, 5, "B"), (2, 4, 6, 5),
                         artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "colour_mask_a": (lambda: MaskBuffer(3, 12, 5, "A", colour_groups=3), (2, 3, 6, 6),
                      artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "colour_mask_b": (lambda: MaskBuffer(6, 9, 1, "B", colour_groups=3), (2, 6, 4, 5),
                      artrt.nn.MaskedConv2d, "tap_conv2d", False),
    "down_shifted_zeropad": (lambda: DownShifted(4, 6), (2, 4, 5, 6),
                             artrt.nn.DownShiftedConv2d, "tap_conv2d", False),
    "down_shifted_fpad": (lambda: DownShiftedFPad(4, 6), (2, 4, 5, 6),
                          artrt.nn.DownShiftedConv2d, "tap_conv2d", False),
    "down_right_sequential": (lambda: down_right_sequential(4, 6), (2, 4, 5, 6),
                              artrt.nn.DownRightShiftedConv2d, "tap_conv2d", False),
    "causal1d_fpad": (lambda: CausalFPad(4, 6, 3, 2), (2, 4, 11),
                      artrt.nn.CausalConv1d, "causal_conv1d", False),
    "causal1d_constant_pad": (lambda: causal_constant_pad(4, 6), (2, 4, 9),
                              artrt.nn.CausalConv1d, "causal_conv1d", False),
    "causal1d_crop": (lambda: CausalCrop(4, 6, 2, 4), (2, 4, 13),
                      artrt.nn.CausalConv1d, "causal_conv1d", False),
    "gate_tanh": (TanhGate, (2, 8, 3, 4), artrt.nn.GatedTanh, "gated", False),
    "gate_sigmoid_last": (SigmoidGateLast, (2, 5, 6), artrt.nn.GatedSigmoid, "gated", False),
    "glu": (lambda: nn.GLU(dim=1), (2, 6, 5), artrt.nn.GatedSigmoid, "gated", False),
    "mha_bool_mask": (lambda: MHACausal(32, 4), (2, 7, 32),
                      artrt.nn.CausalSelfAttention, "causal_attention", False),
    "mha_float_mask": (lambda: MHACausal(32, 2, mask="float"), (2, 5, 32),
                       artrt.nn.CausalSelfAttention, "causal_attention", False),
    "sdpa_is_causal": (lambda: SDPACausal(32, 4), (2, 7, 32),
                       artrt.nn.CausalSelfAttention, "causal_attention", False),
    "sdpa_tril_mask": (lambda: SDPACausal(48, 3, tril=True), (2, 5, 48),
                       artrt.nn.CausalSelfAttention, "causal_attention", False),
    "sdpa_tril_buffer": (lambda: TrilBuffer(32, 2), (2, 9, 32),
                         artrt.nn.CausalSelfAttention, "causal_attention", False),
    "sdpa_grouped_query": (lambda: SDPACausal(64, 4, n_kv_head=2), (2, 6, 64),
                           artrt.nn.CausalSelfAttention, "causal_attention", False),
}


def build(name, seed=0):
    torch.manual_seed(seed)
    layer = ZOO[name][0]()
    return nn.Sequential(layer)


def forward_backward(model, x, upstream):
    """Output, input gradient, and the gradient of each tensor by its state_dict key (the
    original's names, also on a patched model)."""
    x = x.clone().requires_grad_()
    for p in model.parameters():
        p.grad = None
    y = model(x)
    y.backward(upstream)
    grads = {k: t.grad for k, t in model.state_dict(keep_vars=True).items()
             if isinstance(t, nn.Parameter) and t.requires_grad}
    return y.detach(), x.grad, grads


def artrt_ops_run(model, x) -> set[str]:
    """The artrt:: ops the profiler records in a forward and backward pass (reference backend:
    through the torch.library op, as on a GPU)."""
    x = x.clone().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
            artrt.use_backend("reference"):
        model(x).sum().backward()
    return {e.key for e in prof.key_averages() if e.key.startswith("artrt::")}


def live_mask(model):
    """The mask buffer of a masking idiom (to compare weight gradients on live entries)."""
    layer = model[0]
    return getattr(layer, "mask", None)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_idiom(name):
    _, shape, cls, op, dead_grads = ZOO[name]
    model, reference = build(name), build(name)  # (a pruned module cannot be deep-copied)
    mask = live_mask(reference)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    old_type = type(model[0])
    report = artrt.patch(model)

    assert torch.equal(torch.get_rng_state(), rng)  # probes use their own generator
    assert [(r.path, r.old_type, r.new_type) for r in report.replaced] == [
        ("0", old_type, cls)], str(report)
    assert type(model[0]) is cls and report.left_alone == []
    assert list(model[0].state_dict()) == list(reference[0].state_dict())
    # same parameter tensors: the patched layer holds the original layer's Parameter objects
    original = vars(model[0])["_artrt_patch"].original
    assert {id(p) for p in original.parameters()} == {id(p) for p in model[0].parameters()}

    # outputs and gradients
    upstream = torch.randn_like(reference(x))
    want, want_dx, want_dw = forward_backward(reference, x, upstream)
    got, got_dx, got_dw = forward_backward(model, x, upstream)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-5, atol=1e-5)
    assert want_dw.keys() == got_dw.keys()
    for key, g in got_dw.items():
        w = want_dw[key]
        if dead_grads and key.endswith("weight"):  # masked entries: zero after patching
            assert torch.equal(g * (1 - mask), torch.zeros_like(g))
            w = w * mask
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=key)

    # the artrt op runs
    assert f"artrt::{op}" in artrt_ops_run(model, x)

    # state_dict: same keys, same order, same values; checkpoints load both ways
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    trained = {k for k, t in reference.state_dict(keep_vars=True).items()
               if isinstance(t, nn.Parameter) and t.requires_grad}
    moved = {k: v + 0.1 * torch.randn_like(v) if k in trained else v for k, v in before.items()}
    model.load_state_dict(moved)  # an original checkpoint into the patched model
    reference.load_state_dict(moved)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == list(before)
    fresh = build(name, seed=1)
    fresh.load_state_dict(model.state_dict())  # and a patched model's into the original
    torch.testing.assert_close(fresh(x), reference(x), rtol=1e-5, atol=1e-5)

    # unpatch: the original class, holding the loaded tensors
    assert artrt.unpatch(model) == 1
    assert type(model[0]) is old_type
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == list(before)
    for k, v in model.state_dict().items():  # (an in-place idiom has zeroed masked entries)
        assert torch.equal(v * mask if dead_grads and k.endswith("weight") else v,
                           moved[k] * mask if dead_grads and k.endswith("weight") else moved[k])


# --------------------------------------------------------------------------- look-alikes

class Block(nn.Module):
    """A transformer block: the attention's mask comes from this block's forward, and the
    block owns other parameters (a LayerNorm)."""

    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        h = self.ln(x)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        return x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]


def _above_rows(cout, cin, k):
    """A k x k mask of the rows strictly above the centre: causal, but neither A nor B."""
    m = torch.zeros(cout, cin, k, k)
    m[:, :, :k // 2] = 1
    return m


def _blind_centre(cout, cin, k):
    """Every tap but the centre: not causal."""
    m = torch.ones(cout, cin, k, k)
    m[:, :, k // 2, k // 2] = 0
    return m


class Hooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MaskBuffer(3, 4, 3, "B")
        self.seen = []
        self.conv.register_forward_hook(lambda m, i, o: self.seen.append(o.shape))

    def forward(self, x):
        return self.conv(x)


LOOK_ALIKES = {
    "non_causal_mask": (lambda: MaskBuffer(3, 4, 3, "B", mask=_blind_centre(4, 3, 3)),
                        (2, 3, 5, 5), r"not causal: output \(i, j\) sees input \(i\+0, j\+1\)"),
    "mask_of_another_shape": (lambda: MaskBuffer(3, 4, 5, "B", mask=_above_rows(4, 3, 5)),
                              (2, 3, 6, 6), "causal, but its taps match no artrt convolution"),
    "interleaved_colours": (lambda: MaskBuffer(3, 6, 3, "A", mask=raster_mask(
        6, 3, 3, "A", groups=3, interleaved=True)), (2, 3, 5, 5), "no R < G < B order"),
    "stride": (lambda: MaskBuffer(3, 4, 3, "A", stride=2), (2, 3, 6, 6),
               r"stride \(2, 2\)"),
    "dilation": (lambda: MaskBuffer(3, 4, 3, "A", dilation=2), (2, 3, 6, 6),
                 r"dilation \(2, 2\)"),
    "groups": (lambda: MaskBuffer(4, 4, 3, "A", mask=raster_mask(4, 2, 3, "A"), groups=2),
               (2, 4, 5, 5), "groups=2"),
    "weight_norm": (lambda: torch.nn.utils.parametrizations.weight_norm(
        MaskBuffer(3, 4, 3, "B")), (2, 3, 5, 5), "more than a 0/1 mask"),
    "forward_hook": (Hooked, (2, 3, 5, 5), "hooks"),
    "depthwise_causal1d": (lambda: nn.Sequential(nn.ConstantPad1d((2, 0), 0.0),
                                                 nn.Conv1d(4, 4, 3, groups=4)),
                           (2, 4, 9), "groups=4"),
    "anti_causal_crop": (lambda: CausalCrop(4, 6, 2, 1, crop_left=True), (2, 4, 9),
                         r"not causal: output t sees input t\+1"),
    "swapped_gate": (SwappedGate, (2, 8, 3), "neither tanh"),
    "bidirectional_mha": (lambda: MHACausal(32, 4, mask=None), (2, 5, 32), "bidirectional"),
    "sequence_first_mha": (lambda: MHACausal(32, 4, batch_first=False), (5, 2, 32),
                           "sequence first"),
    "attention_dropout": (lambda: MHACausal(32, 4, dropout=0.1), (2, 5, 32), "dropout p=0.1"),
    "sliding_window": (lambda: SDPACausal(32, 4, window=2), (2, 5, 32), "a window"),
    "mask_from_caller": (lambda: Block(32), (2, 5, 32), "gets its mask from the caller"),
}


@pytest.mark.parametrize("name", sorted(LOOK_ALIKES))
def test_look_alike_left_alone(name):
    """Each look-alike stays as it is, and the report says why (once, at its path)."""
    make, shape, reason = LOOK_ALIKES[name]
    torch.manual_seed(0)
    model = nn.Sequential(make()).eval()
    x = torch.randn(shape)
    want = model(x)
    modules = list(model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    report = artrt.patch(model)

    assert report.replaced == [] and list(model.modules()) == modules, str(report)
    assert [r.path.split(".")[0] for r in report.left_alone] == ["0"], str(report)
    assert re.search(reason, report.left_alone[0].reason), str(report)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)


class ShiftPadOne(nn.Module):
    """A down-shifted conv whose pad value is 1, not 0: the impulse response (a difference
    of outputs) is that of a down-shifted conv, the borders are not."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ConstantPad2d((1, 1, 1, 0), 1.0)
        self.conv = nn.Conv2d(3, 4, (2, 3))

    def forward(self, x):
        return self.conv(self.pad(x))


def test_verify_reverts_a_wrong_replacement():
    torch.manual_seed(0)
    model = nn.Sequential(ShiftPadOne())
    x = torch.randn(2, 3, 5, 5)
    want = model(x)
    report = artrt.patch(model)
    assert type(model[0]) is ShiftPadOne and report.replaced == []
    (entry,) = report.left_alone
    assert entry.path == "0" and entry.layer_type is ShiftPadOne
    assert re.search(r"its replacement \(DownShiftedConv2d, down-shifted 2x3\) differs from "
                     r"it on a probe input: max error .* kept the original", entry.reason)
    assert torch.equal(model(x), want)
    # without verification, the connectivity probe alone is fooled: verify is what saves it
    unverified = artrt.patch(model, verify=False)
    assert type(model[0]) is artrt.nn.DownShiftedConv2d and len(unverified.replaced) == 1
    assert not torch.allclose(model(x), want, atol=1e-3)


def test_report_prints_readably():
    torch.manual_seed(0)
    model = nn.Sequential(MaskBuffer(3, 6, 5, "A", colour_groups=3), TanhGate(),
                          MaskBuffer(3, 4, 3, "A", stride=2))
    report = artrt.patch(model)
    assert isinstance(report, PatchReport)
    assert report.replaced == [
        Replaced("0", MaskBuffer, artrt.nn.MaskedConv2d, "mask A, 3 colour groups, kernel 5x5"),
        Replaced("1", TanhGate, artrt.nn.GatedTanh, "tanh(a) * sigmoid(b) over dim 1")]
    assert report.left_alone == [LeftAlone("2", MaskBuffer, "stride (2, 2): artrt's "
                                           "convolutions are stride 1")]
    assert str(report).splitlines() == [
        "artrt.patch: 2 replaced, 1 left alone",
        "replaced:",
        "  0  MaskBuffer -> artrt.nn.MaskedConv2d  mask A, 3 colour groups, kernel 5x5",
        "  1  TanhGate -> artrt.nn.GatedTanh       tanh(a) * sigmoid(b) over dim 1",
        "left alone:",
        "  2  MaskBuffer  stride (2, 2): artrt's convolutions are stride 1"]


def test_checkpoint_with_another_mask_is_refused():
    """A mask the replacement does not use must not change silently: loading a different one
    raises and names the key; a checkpoint without it reports it missing by its own name."""
    model = build("mask_buffer")
    artrt.patch(model)
    state = model.state_dict()
    other = dict(state, **{"0.mask": raster_mask(8, 3, 5, "B")})
    with pytest.raises(RuntimeError, match=r"'0.mask' differs from the value the layer at "
                                           r"'0' was patched with"):
        model.load_state_dict(other)
    missing = {k: v for k, v in state.items() if k != "0.mask"}
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0.mask"'):
        model.load_state_dict(missing)
    assert model.load_state_dict(missing, strict=False).missing_keys == ["0.mask"]


def test_state_moves_with_the_model_and_back():
    """.double() on the patched model reaches the kept mask; unpatch hands the converted
    tensors (and the train/eval mode) back to the original layer."""
    model, reference = build("mask_buffer"), build("mask_buffer")
    artrt.patch(model)
    model.double().eval()
    assert artrt.unpatch(model) == 1 and type(model[0]) is MaskBuffer
    assert model[0].mask.dtype == model[0].weight.dtype == torch.float64
    assert not model[0].training
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference.double()(x))


def test_shared_layer_patched_twice_and_patch_is_idempotent():
    torch.manual_seed(0)
    layer = MaskBuffer(4, 4, 3, "B")
    model = nn.Sequential(layer, nn.ReLU(), layer)
    x = torch.randn(2, 4, 5, 5)
    want = model(x)
    report = artrt.patch(model)
    assert [r.path for r in report.replaced] == ["0"]
    assert model[0] is model[2] and type(model[0]) is artrt.nn.MaskedConv2d
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    again = artrt.patch(model)
    assert again.replaced == [] and again.left_alone == [] and model[0] is model[2]
    assert artrt.unpatch(model) == 1 and model[0] is layer and model[2] is layer


def test_the_model_itself_is_not_replaced():
    layer = MaskBuffer(3, 4, 3, "A")
    report = artrt.patch(layer)
    assert report.replaced == [] and type(layer) is MaskBuffer
    assert report.left_alone[0].path == "" and "the model itself" in report.left_alone[0].reason


def test_bad_arguments():
    with pytest.raises(TypeError, match="artrt.patch: model must be a torch.nn.Module, got "
                                        "Tensor"):
        artrt.patch(torch.zeros(1))
    with pytest.raises(TypeError, match="verify must be a bool, got str"):
        artrt.patch(nn.Linear(2, 2), verify="yes")
    with pytest.raises(TypeError, match="artrt.unpatch: model must be a torch.nn.Module"):
        artrt.unpatch([])


class TinyPixelCNNpp(nn.Module):
    """A small model written like public PixelCNN(++) / transformer code, for compile."""

    def __init__(self):
        super().__init__()
        self.first = MaskBuffer(3, 12, 5, "A", colour_groups=3)
        self.gate = TanhGate()
        self.down = DownShifted(6, 8)
        self.glu = nn.GLU(1)
        self.right = down_right_sequential(4, 32)
        self.attn = SDPACausal(32, 4)

    def forward(self, x):
        h = self.right(self.glu(self.down(self.gate(self.first(x)))))  # (B, 32, H, W)
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)  # (B, H W, C)
        return self.attn(seq)


def test_patched_model_compiles_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, reference = TinyPixelCNNpp(), None
    reference = copy.deepcopy(model)
    report = artrt.patch(model)
    assert len(report.replaced) == 6 and report.left_alone == [], str(report)
    x = torch.randn(2, 3, 4, 4)
    with artrt.use_backend("reference"):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        xc = x.clone().requires_grad_()
        got = compiled(xc)
        got.sum().backward()
    xr = x.clone().requires_grad_()
    want = reference(xr)
    want.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["colour_mask_a", "down_shifted_zeropad", "causal1d_crop",
                                  "sdpa_is_causal", "mha_bool_mask"])
def test_low_precision_model(name, dtype):
    """A half-precision model is probed in its own dtype (the impulse responses are exact
    there: a biased baseline would round them) and verified to that dtype's tolerance."""
    model, reference = build(name).to(dtype), build(name).to(dtype)
    report = artrt.patch(model)
    assert [r.new_type for r in report.replaced] == [ZOO[name][2]], str(report)
    x = torch.randn(ZOO[name][1]).to(dtype)
    want = reference(x).float()
    err = (model(x).float() - want).abs().max().item()
    assert err <= 2 ** -7 * want.abs().max().item()  # a couple of bf16 / fp16 roundings


# --------------------------------------------------------------------------- transformers-style

class TransposedProjection(nn.Module):
    """GPT-2's Conv1D: weight (in, out), y = x @ W + b (``bias_scale`` != 1: a look-alike)."""

    def __init__(self, cin, cout, bias_scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cin, cout) * cin ** -0.5)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.bias_scale = bias_scale

    def forward(self, x):
        y = torch.addmm(self.bias * self.bias_scale, x.reshape(-1, x.shape[-1]), self.weight)
        return y.view(*x.shape[:-1], -1)


class ListCache:
    """A KV cache used as transformers' DynamicCache is: update() appends a layer's keys and
    values and returns all of them; ``unused`` > 0 returns that many empty slots after them
    as well (a static cache)."""

    def __init__(self, unused=0):
        self.keys, self.values, self.unused = {}, {}, unused

    def update(self, k, v, layer_idx, *args, **kwargs):
        if layer_idx in self.keys:
            k = torch.cat([self.keys[layer_idx], k], dim=2)
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        pad = (0, 0, 0, self.unused)
        return F.pad(k, pad), F.pad(v, pad)

    def get_seq_length(self, layer_idx=0):
        return self.keys[layer_idx].shape[2] if layer_idx in self.keys else 0


class HFAttention(nn.Module):
    """Attention written as transformers' GPT-2 / ImageGPT layers are: Conv1D projections, a
    tril "bias" buffer (not saved), extra arguments with defaults, a KV cache filled through
    ``layer_past.update(k, v, layer_idx)``, and (output, attention weights) returned.
    Look-alikes: ``cache_scale`` != 1 caches other keys than it attends to first;
    ``keys_out`` returns the keys in place of the weights."""

    def __init__(self, dim=32, n_head=4, layer_idx=0, positions=16, cache_scale=1.0,
                 keys_out=False):
        super().__init__()
        self.num_heads, self.head_dim, self.layer_idx = n_head, dim // n_head, layer_idx
        self.c_attn = TransposedProjection(dim, 3 * dim)
        self.c_proj = TransposedProjection(dim, dim)
        tril = torch.ones(positions, positions, dtype=torch.bool).tril()
        self.register_buffer("bias", tril.view(1, 1, positions, positions), persistent=False)
        self.cache_scale, self.keys_out = cache_scale, keys_out

    def forward(self, hidden_states, layer_past=None, attention_mask=None, head_mask=None,
                use_cache=False, output_attentions=False, **kwargs):
        b, t, c = hidden_states.shape
        q, k, v = self.c_attn(hidden_states).split(c, dim=2)
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for z in (q, k, v))  # (B, H, T, D)
        if layer_past is not None:
            k, v = layer_past.update(k * self.cache_scale, v, self.layer_idx)
        tk = k.shape[2]
        w = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        w = torch.where(self.bias[:, :, tk - t:tk, :tk], w, torch.finfo(w.dtype).min)
        if attention_mask is not None:
            w = w + attention_mask
        w = w.softmax(-1)
        if head_mask is not None:
            w = w * head_mask
        out = self.c_proj((w @ v).transpose(1, 2).reshape(b, t, c))
        return out, (k if self.keys_out else w)


class HFBlock(nn.Module):
    """A block calling its attention as transformers' do: by keyword, keeping element 0."""

    def __init__(self, **kw):
        super().__init__()
        self.ln = nn.LayerNorm(32)
        self.attn = HFAttention(**kw)

    def forward(self, x, cache=None):
        return x + self.attn(self.ln(x), layer_past=cache, use_cache=cache is not None)[0]


def test_conv1d_attention_with_arguments_patched():
    """Conv1D projections (weight (in, out)), a forward with more arguments and a tuple
    output: replaced on the same Parameters, same outputs, gradients and checkpoints."""
    torch.manual_seed(0)
    model = HFBlock()
    reference = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))

    report = artrt.patch(model)

    assert torch.equal(torch.get_rng_state(), rng)
    assert [(r.path, r.old_type, r.detail) for r in report.replaced] == [
        ("attn", HFAttention, "causal, 4 heads, KV cache (layer_past)")], str(report)
    assert report.left_alone == []
    new = model.attn
    assert isinstance(new, artrt.nn.CausalSelfAttention)
    original = vars(new)["_artrt_patch"].original
    # the Conv1D Parameters themselves, used transposed (not copied)
    assert new.qkv.weight is original.c_attn.weight and new.qkv.bias is original.c_attn.bias
    assert new.proj.weight is original.c_proj.weight and new.proj.bias is original.c_proj.bias
    assert {id(p) for p in original.parameters()} == {id(p) for p in new.parameters()}
    out = new(model.ln(x))
    assert type(out) is tuple and len(out) == 2 and out[1] is None  # no attention weights
    torch.testing.assert_close(out[0], reference.attn(reference.ln(x))[0], rtol=1e-5,
                               atol=1e-5)

    upstream = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    want, want_dx, want_dw = forward_backward(reference, x, upstream)
    got, got_dx, got_dw = forward_backward(model, x, upstream)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-5, atol=1e-5)
    assert got_dw.keys() == want_dw.keys() and "attn.c_attn.weight" in got_dw
    for key, g in got_dw.items():
        torch.testing.assert_close(g, want_dw[key], rtol=1e-5, atol=1e-5, msg=key)
    assert "artrt::causal_attention" in artrt_ops_run(model, x)

    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    moved = {k: v + 0.1 * torch.randn_like(v) for k, v in before.items()}
    model.load_state_dict(moved)
    reference.load_state_dict(moved)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    fresh = HFBlock()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), reference(x), rtol=1e-5, atol=1e-5)

    assert artrt.unpatch(model) == 1 and type(model.attn) is HFAttention
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, moved[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_patched_attention_fills_a_kv_cache_as_the_layer(grad):
    """A prefill and steps of 1 and 3 through a KV cache: the outputs and the cached keys and
    values equal the original's; a step runs artrt's decode attention."""
    torch.manual_seed(0)
    model = HFBlock(layer_idx=3)
    reference = copy.deepcopy(model)
    assert [r.path for r in artrt.patch(model).replaced] == ["attn"]
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1))
    ours, theirs = ListCache(), ListCache()
    with torch.set_grad_enabled(grad):
        for lo, hi in ((0, 5), (5, 6), (6, 9)):
            torch.testing.assert_close(model(x[:, lo:hi], ours), reference(x[:, lo:hi], theirs),
                                       rtol=1e-5, atol=1e-5)
    assert ours.keys.keys() == theirs.keys.keys() == {3}
    torch.testing.assert_close(ours.keys[3], theirs.keys[3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.values[3], theirs.values[3], rtol=1e-5, atol=1e-5)
    if not grad:
        cache = ListCache()
        with torch.no_grad():
            model(x[:, :4], cache)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) \
                    as prof, artrt.use_backend("reference"):
                model(x[:, 4:5], cache)
        assert "artrt::attention_decode" in {e.key for e in prof.key_averages()}


def test_patched_attention_compiles_fullgraph():
    """The argument checks of the replacement trace: no graph break."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = HFBlock()
    reference = copy.deepcopy(model)
    artrt.patch(model)
    x = torch.randn(2, 5, 32)
    with artrt.use_backend("reference"):
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, reference(x), rtol=1e-5, atol=1e-5)


def test_patched_attention_refuses_arguments_it_does_not_compute():
    torch.manual_seed(0)
    model = HFBlock()
    reference = copy.deepcopy(model)
    artrt.patch(model)
    attn, want = model.attn, reference.attn
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    close = dict(rtol=1e-5, atol=1e-5)
    # defaults, by keyword or by position, and use_cache=True without a cache: computed
    torch.testing.assert_close(attn(x, use_cache=True)[0], want(x)[0], **close)
    torch.testing.assert_close(attn(x, None, None, None, False, False)[0], want(x)[0], **close)
    torch.testing.assert_close(attn(x, output_attentions=None)[0], want(x)[0], **close)
    at = "artrt.patch replaced the HFAttention at 'attn' with artrt's causal attention, "
    for kw, message in [
        (dict(attention_mask=torch.zeros(2, 1, 5, 5)),
         r"which computes it with attention_mask=None only; got attention_mask=a "
         r"torch.float32 tensor of shape \(2, 1, 5, 5\) \(a padding or custom mask"),
        (dict(output_attentions=True), r"output_attentions=False only; got "
                                       r"output_attentions=True \(artrt never forms"),
        (dict(head_mask=torch.ones(4, 1, 1)), r"head_mask=None only; got head_mask=a "
                                              r"torch.float32 tensor of shape \(4, 1, 1\)"),
        (dict(position_bias=0.5), r"computes it with no position_bias only; got "
                                  r"position_bias=0.5"),
        (dict(layer_past=ListCache(unused=2)), r"got layer_past=a ListCache \(it returned 7 "
                                               r"keys for 0 cached and 5 new positions, a "
                                               r"static"),
    ]:
        with pytest.raises(ValueError, match=re.escape(at) + ".*" + message):
            attn(x, **kw)
    with pytest.raises(TypeError, match="layer_past must be None or a KV cache with update"):
        attn(x, layer_past=object())
    with pytest.raises(TypeError, match="takes 6 positional arguments, got 7"):
        attn(x, None, None, None, False, False, True)
    with pytest.raises(TypeError, match="multiple values for 'layer_past'"):
        attn(x, None, layer_past=None)


def test_transformers_style_look_alikes():
    """A layer whose tuple holds more than attention weights and one with a required
    argument are left alone; a projection that is not x @ W + b is no candidate; a layer
    that caches other keys than it attends to is left alone (transformers passes a cache by
    default: a replacement that refused it would break the model's every call)."""
    torch.manual_seed(0)
    report = artrt.patch(nn.Sequential(HFAttention(keys_out=True)))
    assert report.replaced == [] and len(report.left_alone) == 1, str(report)
    assert re.search(r"element 1 is a tensor of shape \(2, 4, 6, 8\), not attention weights",
                     report.left_alone[0].reason)

    class NeedsMask(HFAttention):
        def forward(self, hidden_states, attention_mask):
            return super().forward(hidden_states, attention_mask=attention_mask)

    report = artrt.patch(nn.Sequential(NeedsMask()))
    assert report.replaced == [] and "needs more than x" in report.left_alone[0].reason

    odd = nn.Sequential(HFAttention())
    odd[0].c_attn.bias_scale = 2.0
    assert artrt.patch(odd) == PatchReport() and type(odd[0]) is HFAttention

    model = HFBlock(cache_scale=0.5)
    report = artrt.patch(model)
    assert report.replaced == [] and type(model.attn) is HFAttention
    assert [r.path for r in report.left_alone] == ["attn"], str(report)
    assert re.search(r"its forward takes a KV cache \(layer_past\), and the replacement, given "
                     r"one, differs from it: with a KV cache, positions 0..2: max error",
                     report.left_alone[0].reason)
