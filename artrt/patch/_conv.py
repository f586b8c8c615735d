"""Convolutions recognised by their connectivity: PixelCNN masked 2-D convolutions (masks A
and B, R < G < B colour groups), PixelCNN++'s down-shifted and down-right-shifted
convolutions, and causal (dilated) 1-D convolutions.

Candidates, found by structure:

- an ``nn.Conv2d`` / ``nn.Conv1d`` that may not be a plain dense convolution: a subclass
  (its ``forward`` may mask, pad or crop), one with forward pre-hooks (hook-based masking),
  or one holding more tensors than ``weight`` and ``bias`` (a mask buffer or parameter);
- a module whose only parameters are those of the single convolution inside it (padding
  modules, ``F.pad`` or a crop around it), e.g. ``nn.Sequential(nn.ZeroPad2d(..), conv)``.

What it computes is then read, not assumed: the candidate runs on impulse inputs (one per
input channel, at the centre of a grid) with its weight parameter replaced by ones, and
output channel o at offset (dy, dx) from the impulse gives the connectivity
``K[o, c, dy, dx]``: which input channel c at which relative position reaches which output.
A second run with a random positive weight R checks that the weight enters as ``R * K``
(a 0/1 mask, nothing else: not weight norm, not a non-linearity). K is then matched against
the tap sets of the artrt ops (``artrt.ops.masked_conv2d.tap_mask``), which fixes the mask
type and the colour groups (from the centre tap's channel pattern) or the shift.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from artrt.nn import CausalConv1d, DownRightShiftedConv2d, DownShiftedConv2d, MaskedConv2d
from artrt.ops.causal_conv1d import MAX_KERNEL_SIZE
from artrt.ops.masked_conv2d import tap_mask
from artrt.patch._common import (
    Match,
    Reject,
    forward_overridden,
    from_artrt,
    generator,
    mismatch,
    post_hooks,
    randn,
    run,
    single_input,
    state_of,
)

_CONVS = (nn.Conv1d, nn.Conv2d)
_CHUNK = 64  # input channels per impulse batch (bounds the probe's memory on wide layers)


class _ProbeError(Exception):
    """A probe call failed or gave an output of the wrong shape; the message says which."""


def _structure(m: nn.Module) -> nn.Module | None:
    """The convolution of candidate ``m`` (m itself or the one inside it), or None."""
    if isinstance(m, _CONVS):
        plain = type(m) in _CONVS and not m._forward_pre_hooks
        if plain and set(state_of(m)) <= {"weight", "bias"}:
            return None  # a dense convolution
        return m
    if not forward_overridden(m) or any(from_artrt(x) for x in m.modules()):
        return None
    convs = [c for c in m.modules() if isinstance(c, _CONVS)]
    if len(convs) != 1:
        return None
    own = {id(p) for p in convs[0].parameters()}
    if any(id(p) not in own for p in m.parameters()):
        return None
    return convs[0]


def _is_pad(m: nn.Module) -> bool:
    return type(m).__module__ == "torch.nn.modules.padding"


def _param_name(m: nn.Module, conv: nn.Module, attr: str, shape: tuple) -> str | None:
    """The name in ``m`` of the parameter that is ``conv.<attr>`` (``weight`` / ``bias``), or
    of the one parameter of that shape that computes it (prune's ``weight_orig``, a
    parametrization's ``original``); None when there is none or several."""
    names = {id(t): n for n, t in m.named_parameters(remove_duplicate=False)}
    direct = conv._parameters.get(attr)
    if direct is not None:
        return names.get(id(direct))
    found = [n for n, t in m.named_parameters(remove_duplicate=False)
             if tuple(t.shape) == shape and not n.endswith("bias")]
    return found[0] if len(found) == 1 else None


def _response(m: nn.Module, replace: dict[str, torch.Tensor], like: torch.Tensor,
              cin: int, cout: int, nd: int, size: int) -> torch.Tensor:
    """Connectivity of ``m`` with its weight replaced by a probe weight and its bias by zeros
    (``replace`` maps their names to them), on ``like``'s device and dtype: (Cout, Cin, S, ..)
    with entry [o, c, centre + offset] = d out[o, p] / d x[c, p + offset] (S = ``size`` per
    spatial dim, centre S // 2). Exact in any dtype: each entry is one weight times 1."""
    centre = size // 2
    grid = (size,) * nd
    parts = []
    for start in range(0, cin, _CHUNK):
        n = min(_CHUNK, cin - start)
        x = like.new_zeros((n + 1, cin, *grid))  # x[0]: zeros, the baseline
        x[(torch.arange(1, n + 1), torch.arange(start, start + n),
           *[torch.full((n,), centre)] * nd)] = 1
        try:
            y = run(m, (x,), replace)
        except Exception as e:  # noqa: BLE001 - any failure means "not this op"
            raise _ProbeError(f"calling it on a probe of shape {tuple(x.shape)} raised "
                              f"{type(e).__name__}: {str(e)[:120]}") from e
        want = (n + 1, cout, *grid)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != want:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise _ProbeError(f"maps a {tuple(x.shape)} input to {got}, not {want}: artrt's "
                              "convolutions are stride 1 and keep the size")
        parts.append((y[1:] - y[:1]).to(like.dtype))
    resp = torch.cat(parts)  # (Cin, Cout, *S): the output around each impulse
    return resp.flip(list(range(2, 2 + nd))).transpose(0, 1)


def _place(taps: torch.Tensor, origin: tuple[int, ...], step: int, size: int) -> torch.Tensor:
    """The connectivity of a kernel ``taps`` (Cout, Cin, *k) whose tap 0 sits at grid index
    ``origin`` (tap i at origin + i * step): (Cout, Cin, S, ..)."""
    nd = taps.dim() - 2
    out = taps.new_zeros((*taps.shape[:2], *(size,) * nd))
    index = tuple(slice(o, o + (k - 1) * step + 1, step)
                  for o, k in zip(origin, taps.shape[2:], strict=True))
    out[(slice(None), slice(None), *index)] = taps
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a.double() - b.double()).abs().max() < 1e-3)


def _picture(live: torch.Tensor) -> str:
    """The live taps around the output position, one line: rows top to bottom separated by
    '/', ``x`` live, ``.`` not; the output's own position ``O`` (live) or ``o`` (not)."""
    centre = live.shape[-1] // 2
    offsets = live.nonzero() - centre
    reach = max(1, int(offsets.abs().max())) if len(offsets) else 1
    window = live[..., centre - reach:centre + reach + 1]
    if live.dim() == 2:
        window = window[centre - reach:centre + reach + 1]
    else:
        window = window[None]
    rows = []
    for r, row in enumerate(window.tolist()):
        chars = ["x" if v else "." for v in row]
        if window.shape[0] == 1 or r == reach:
            chars[reach] = "O" if row[reach] else "o"
        rows.append("".join(chars))
    return " / ".join(rows)


def _divisors(n: int) -> list[int]:
    return [g for g in range(2, n + 1) if n % g == 0]


def _masked_spec(k1: torch.Tensor, cin: int, cout: int, k: int, size: int):
    """(mask_type, color_groups) of a k x k masked convolution whose connectivity is k1, or
    (None, why)."""
    centre = size // 2
    mid = k1[:, :, centre, centre]  # (Cout, Cin): the channels the centre tap connects
    if bool((mid == 0).all()):
        found = [("A", 1)]
    elif bool((mid == 1).all()):
        found = [("B", 1)]
    else:
        found = [(t, g) for g in _divisors(math.gcd(cin, cout)) for t in ("A", "B")
                 if torch.equal(mid, tap_mask((cout, cin, 1, 1), 0, 0, t, g, mid.device,
                                              mid.dtype)[:, :, 0, 0])]
    if not found:
        return None, ("its centre tap connects channels in no R < G < B order of "
                      "contiguous colour groups (interleaved groups?)")
    mask_type, groups = found[0]
    mask = tap_mask((cout, cin, k, k), k // 2, k // 2, mask_type, groups, k1.device, k1.dtype)
    if not _same(_place(mask, (centre - k // 2,) * 2, 1, size), k1):
        return None, None
    return mask_type, groups


def _shapes_2d(conv: nn.Conv2d, k1: torch.Tensor, size: int):
    """Candidate artrt ops for a 2-D connectivity k1: a list of (name, kernel mask, grid
    origin of tap (0, 0), extra) and a reason when the masked match failed on its colours."""
    cout, cin, kh, kw = k1.shape[0], k1.shape[1], *conv.kernel_size
    centre = size // 2
    ones = k1.new_ones((cout, cin, kh, kw))
    specs = []
    if kh % 2 and kw % 2:
        specs.append(("dense", ones, (centre - kh // 2, centre - kw // 2), None))
    why = None
    if kh == kw and kh % 2:
        mask_type, groups = _masked_spec(k1, cin, cout, kh, size)
        if mask_type is None:
            why = groups
        else:
            mask = tap_mask((cout, cin, kh, kh), kh // 2, kh // 2, mask_type, groups,
                            k1.device, k1.dtype)
            specs.append(("masked", mask, (centre - kh // 2,) * 2, (mask_type, groups)))
    specs.append(("down", ones, (centre - kh + 1, centre - (kw - 1) // 2), None))
    specs.append(("down_right", ones, (centre - kh + 1, centre - kw + 1), None))
    return specs, why


def _build_2d(kind, extra, conv, weight, bias):
    cin, cout = conv.in_channels, conv.out_channels
    kw = {"bias": bias is not None, "device": "meta", "dtype": weight.dtype}
    kh_, kw_ = conv.kernel_size
    if kind == "masked":
        mask_type, groups = extra
        new = MaskedConv2d(cin, cout, kh_, mask_type, groups, **kw)
        detail = f"mask {mask_type}" + (f", {groups} colour groups" if groups > 1 else "")
    elif kind == "down":
        new = DownShiftedConv2d(cin, cout, (kh_, kw_), **kw)
        detail = f"down-shifted {kh_}x{kw_}"
    else:
        new = DownRightShiftedConv2d(cin, cout, (kh_, kw_), **kw)
        detail = f"down-right-shifted {kh_}x{kw_}"
    return new, f"{detail}, kernel {kh_}x{kw_}" if kind == "masked" else detail


def _causal_reason_2d(live: torch.Tensor) -> str:
    centre = live.shape[-1] // 2
    for dy, dx in (live.nonzero() - centre).tolist():
        if dy > 0 or (dy == 0 and dx > 0):
            return (f"not causal: output (i, j) sees input (i{dy:+d}, j{dx:+d}), after it "
                    f"in raster order; taps {_picture(live)}")
    return ("causal, but its taps match no artrt convolution (mask A or B in an odd k x k "
            f"window, down-shifted, down-right-shifted): taps {_picture(live)}")


def recognise(m: nn.Module) -> Match | Reject | None:
    """A Match (the artrt module on m's tensors), a Reject (a candidate left alone) or None
    (not a convolution candidate)."""
    conv = _structure(m)
    if conv is None:
        return None
    nd = 2 if isinstance(conv, nn.Conv2d) else 1
    loud = m is conv or any(_is_pad(c) for c in m.modules())

    def reject(reason: str, final: bool = True):
        return Reject(reason, final) if loud else None

    if not single_input(m):
        return reject("its forward takes more than one argument: a probe cannot see what the "
                      "others do")
    hooked = post_hooks(m)
    if hooked is not None:
        return reject(f"{'its submodule ' + hooked if hooked else 'it'} has forward or "
                      "backward hooks, which the replacement would not run")
    if conv.groups != 1:
        return reject(f"groups={conv.groups}: artrt's convolutions mix all channels "
                      "(groups=1)")
    if any(s != 1 for s in conv.stride):
        return reject(f"stride {tuple(conv.stride)}: artrt's convolutions are stride 1")
    if nd == 2 and any(d != 1 for d in conv.dilation):
        return reject(f"dilation {tuple(conv.dilation)}: artrt's masked and shifted "
                      "convolutions are not dilated")
    if conv.padding_mode != "zeros":
        return reject(f"padding_mode={conv.padding_mode!r}: artrt pads with zeros")
    k = conv.kernel_size
    if nd == 1 and k[0] > MAX_KERNEL_SIZE:
        return reject(f"kernel size {k[0]}: artrt's causal_conv1d takes 1..{MAX_KERNEL_SIZE}")
    cin, cout = conv.in_channels, conv.out_channels
    wname = _param_name(m, conv, "weight", (cout, cin, *k))
    if wname is None:
        return reject("its weight is not one parameter (computed from several?)")
    if "bias" not in conv._parameters:
        return reject("its bias is computed, not a parameter")
    tensors = state_of(m)
    weight, bias = tensors[wname], conv._parameters["bias"]
    dilation = conv.dilation[0]
    reach = (k[0] - 1) * dilation + 1 if nd == 1 else max(k)
    size = 2 * reach + 1
    gen = generator(1)
    r = (randn(weight.shape, weight, gen).abs() + 0.5).to(weight.dtype)  # R in [0.5, inf)
    names = {id(t): n for n, t in m.named_parameters(remove_duplicate=False)}
    zero_bias = {} if bias is None else {names[id(bias)]: torch.zeros_like(bias)}
    try:
        k1 = _response(m, {wname: torch.ones_like(weight), **zero_bias}, weight, cin, cout,
                       nd, size)
        kr = _response(m, {wname: r, **zero_bias}, weight, cin, cout, nd, size)
    except _ProbeError as e:  # its parent may pad or crop around it
        return reject(str(e), final=False)
    if not _same(k1, k1.round()) or not bool(((k1.round() == 0) | (k1.round() == 1)).all()):
        return reject("its weight reaches the output through more than a 0/1 mask (weight "
                      "norm, a parametrization or a non-linearity?)")
    k1 = k1.round()
    live = k1.abs().amax((0, 1)) > 0
    centre = size // 2

    if nd == 1:
        origin = centre - (k[0] - 1) * dilation
        ones = k1.new_ones((cout, cin, k[0]))
        span = (k[0] - 1) * dilation
        if span % 2 == 0 and _same(_place(ones, (centre - span // 2,), dilation, size), k1):
            return reject("a dense (centred) convolution: nothing for artrt")
        if not _same(_place(ones, (origin,), dilation, size), k1):
            future = [o for o in (live.nonzero()[:, 0] - centre).tolist() if o > 0]
            if future:
                return reject(f"not causal: output t sees input t+{future[0]}; taps "
                              f"{_picture(live)}")
            return reject(f"causal, but its taps are not those of a kernel-{k[0]} "
                          f"convolution with dilation {dilation}: taps {_picture(live)}")
        if mismatch(_place(r, (origin,), dilation, size), kr) is not None:
            return reject("its weight enters the output other than as the kernel (flipped "
                          "or transformed?)")
        new = CausalConv1d(cin, cout, k[0], dilation, bias is not None, device="meta",
                           dtype=weight.dtype)
        detail = f"causal, kernel {k[0]}, dilation {dilation}"
        inputs = [(randn((2, cin, 2 * (k[0] - 1) * dilation + 5), weight, generator(2)),)]
    else:
        specs, why = _shapes_2d(conv, k1, size)
        matched = next(((kind, mask, origin, extra) for kind, mask, origin, extra in specs
                        if _same(_place(mask, origin, 1, size), k1)), None)
        if matched is None:
            return reject(why or _causal_reason_2d(live))
        kind, mask, origin, extra = matched
        if kind == "dense":
            return reject("a dense convolution (no mask, centred): nothing for artrt")
        if mismatch(_place(r * mask, origin, 1, size), kr) is not None:
            return reject("its weight enters the output other than as the kernel (flipped "
                          "or transformed?)")
        new, detail = _build_2d(kind, extra, conv, weight, bias)
        inputs = [(randn((2, cin, size + 1, size + 2), weight, generator(2)),)]
    new.weight = weight
    if bias is not None:
        new.bias = bias
    new.train(m.training)
    return Match(new, detail, inputs)
