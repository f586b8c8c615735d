"""Drop-in acceleration: ``artrt.patch(model)`` replaces, in place, the layers of a model that
compute what an artrt module computes, on the same parameter tensors.

Layers are recognised by what they compute, not by their class name: each candidate runs on
probe inputs (impulses for convolutions, one changed position at a time for attention) and
the connectivity it shows is matched against the artrt ops. Recognised:

==============================================  ===========================================
layer (any class, any way of writing it)        replaced by
==============================================  ===========================================
masked 2-D convolution, masks A / B in raster   ``artrt.nn.MaskedConv2d`` (mask type and
order, with or without R < G < B colour groups  colour groups read from the probe)
PixelCNN++ down-(right-)shifted convolution     ``artrt.nn.DownShiftedConv2d`` /
(``ZeroPad2d`` / ``F.pad`` + conv)              ``DownRightShiftedConv2d``
causal 1-D convolution (left pad, or symmetric  ``artrt.nn.CausalConv1d``
pad + right crop), any dilation, K <= 8
``tanh(a) * sigmoid(b)``, ``a * sigmoid(b)``    ``artrt.nn.GatedTanh`` / ``GatedSigmoid``
causal self-attention over one fused q|k|v      ``artrt.nn.CausalSelfAttention``
projection (``nn.Linear``, or transformers'     (``PatchedAttention``, a subclass, for a
``Conv1D`` with weight (in, out)) or            layer with more arguments or a tuple
``nn.MultiheadAttention``                       output, as ImageGPT's)
==============================================  ===========================================

How each is probed: :mod:`artrt.patch._conv`, :mod:`artrt.patch._gate`,
:mod:`artrt.patch._attention`. Probes never write to the model (they run on clones of its
tensors) and draw random numbers from their own generator.

Checkpoints: a replacement keeps every tensor of the layer it replaces (tensors it does not
use, such as a mask buffer, are kept under ``_artrt_*`` names), and its ``state_dict`` /
``load_state_dict`` use the original's keys, in the original's order: a checkpoint of the
original model loads into the patched one and the other way round. Loading a mask (or any
tensor the replacement does not use) that differs from the one the layer was patched with
raises: the replacement would compute the old function. ``artrt.unpatch`` puts the
originals back, with the replacement's current tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from artrt.patch import _attention, _conv, _gate
from artrt.patch._common import Match, Reject, from_artrt, mismatch, run, state_of

__all__ = ["LeftAlone", "PatchReport", "Replaced", "patch", "unpatch"]

_RECOGNISERS = (_attention.recognise, _conv.recognise, _gate.recognise)
_EXTRA = "_artrt_"  # prefix of the tensors a replacement keeps only for checkpoints


@dataclass(frozen=True)
class Replaced:
    """A layer replaced: its path in the model, its class, the artrt class now there, and
    what was recognised (mask type, heads, ...)."""

    path: str
    old_type: type
    new_type: type
    detail: str


@dataclass(frozen=True)
class LeftAlone:
    """A candidate layer that was not replaced, and why."""

    path: str
    layer_type: type
    reason: str


@dataclass
class PatchReport:
    """What :func:`patch` did: ``replaced`` and ``left_alone`` lists; ``print`` it."""

    replaced: list[Replaced] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"artrt.patch: {len(self.replaced)} replaced, {len(self.left_alone)} left "
                 "alone"]
        if self.replaced:
            rows = [(r.path or "<model>", f"{r.old_type.__name__} -> {_name(r.new_type)}",
                     r.detail) for r in self.replaced]
            lines += ["replaced:", *_table(rows)]
        if self.left_alone:
            rows = [(r.path or "<model>", r.layer_type.__name__, r.reason)
                    for r in self.left_alone]
            lines += ["left alone:", *_table(rows)]
        return "\n".join(lines)


def _name(cls: type) -> str:
    """``artrt.nn.X`` for artrt's modules (the public path), the class name otherwise."""
    return f"artrt.nn.{cls.__name__}" if cls.__module__.startswith("artrt.nn") else cls.__name__


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
            + "  " + row[-1] for row in rows]


@dataclass
class _PatchInfo:
    """Kept on a replacement (``module._artrt_patch``): the layer it replaced and how their
    tensors' names correspond."""

    original: nn.Module
    path: str
    keys: list[tuple[str, str]]  # (name in the replacement, name in the original)
    saved: list[str]  # the original's state_dict keys, in order
    extras: frozenset[str]  # replacement names of tensors kept only for checkpoints
    prefix: str = ""  # the prefix of the load_state_dict call in progress


# --------------------------------------------------------------------------- checkpoints

def _save_hook(module, state_dict, prefix, local_metadata) -> None:
    """state_dict of a replacement: its entries under the original's keys and order."""
    info: _PatchInfo = module._artrt_patch
    values = {new: state_dict.pop(prefix + new) for new, _ in info.keys
              if prefix + new in state_dict}
    to_new = {old: new for new, old in info.keys}
    for old in info.saved:
        if to_new[old] in values:
            state_dict[prefix + old] = values[to_new[old]]


def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
                   unexpected_keys, error_msgs) -> None:
    """load_state_dict of a replacement: the original's keys renamed to the replacement's;
    a kept tensor (a mask) that differs from the current one is an error."""
    info: _PatchInfo = module._artrt_patch
    info.prefix = prefix
    moved = {(new, old): state_dict.pop(prefix + old) for new, old in info.keys
             if prefix + old in state_dict}
    current = state_of(module)
    for (new, old), value in moved.items():
        if new in info.extras and isinstance(value, torch.Tensor):
            have = current[new]
            if value.shape != have.shape or not torch.equal(value.to(have), have):
                error_msgs.append(
                    f"artrt.patch: '{prefix}{old}' differs from the value the layer at "
                    f"'{info.path}' was patched with, and its replacement computes the "
                    "function of that value: artrt.unpatch(model), load, then "
                    "artrt.patch(model) again")
        state_dict[prefix + new] = value


def _load_post_hook(module, incompatible_keys) -> None:
    """Missing keys of a replacement named as the original's."""
    info: _PatchInfo = module._artrt_patch
    to_old = {info.prefix + new: info.prefix + old for new, old in info.keys}
    incompatible_keys.missing_keys[:] = [to_old.get(k, k) for k in incompatible_keys.missing_keys]


def _attach(original: nn.Module, new: nn.Module, path: str) -> str | None:
    """Give ``new`` the original's remaining tensors and checkpoint keys; None, or why not."""
    old_state = state_of(original)
    old_sd = original.state_dict(keep_vars=True)
    if set(old_sd) - set(old_state):
        return f"it has state artrt cannot map ({sorted(set(old_sd) - set(old_state))})"
    used = {id(t) for t in state_of(new).values()}
    for name, t in old_state.items():
        if id(t) in used:
            continue
        extra = _EXTRA + name.replace(".", "_")
        if isinstance(t, nn.Parameter):
            new.register_parameter(extra, t)
        else:
            new.register_buffer(extra, t, persistent=name in old_sd)
        used.add(id(t))
    new_names: dict[int, str] = {}
    for name, t in state_of(new).items():
        new_names.setdefault(id(t), name)
    keys = [(new_names[id(t)], name) for name, t in old_state.items()]
    if len({new for new, _ in keys}) != len(new_names):
        return "internal: the replacement holds tensors the layer does not"
    new_sd = set(new.state_dict(keep_vars=True))
    if new_sd != {new_ for new_, old in keys if old in old_sd}:
        return "internal: the replacement saves other tensors than the layer"
    new._artrt_patch = _PatchInfo(original, path, keys, list(old_sd),
                                  frozenset(n for n, _ in keys if n.startswith(_EXTRA)))
    new.register_state_dict_post_hook(_save_hook)
    new.register_load_state_dict_pre_hook(_load_pre_hook)
    new.register_load_state_dict_post_hook(_load_post_hook)
    return None


# --------------------------------------------------------------------------- patch / unpatch

def _verify(layer: nn.Module, match: Match) -> str | None:
    for x in match.inputs:
        try:
            want = run(layer, x)
        except Exception as e:  # noqa: BLE001
            return f"the layer raised {type(e).__name__} on the probe: {str(e)[:120]}"
        with torch.no_grad():
            got = match.module(*x)
        why = mismatch(want, got)
        if why is not None:
            return why
    return None


def _consider(layer: nn.Module, verify: bool) -> Match | Reject | None:
    for recognise in _RECOGNISERS:
        try:
            result = recognise(layer)
        except Exception as e:  # noqa: BLE001 - an exotic layer must not stop the walk
            return Reject(f"artrt.patch could not probe it ({type(e).__name__}: "
                          f"{str(e)[:120]})")
        if isinstance(result, Match) and verify:
            why = _verify(layer, result)
            if why is not None:
                return Reject(f"its replacement ({type(result.module).__name__}, "
                              f"{result.detail}) differs from it on a probe input: {why}; "
                              "kept the original")
        if result is not None:
            return result
    return None


def _walk(module: nn.Module, path: str, verify: bool, report: PatchReport,
          seen: dict[int, tuple[nn.Module | None, bool]], pending: set[int]) -> bool:
    """Bottom-up: a layer's children are considered before the layer itself, and a layer is
    not considered when a verdict (replaced, or left alone for good) was reached inside it.
    Returns whether one was reached in ``module``'s children or below. ``pending``: ids of
    the report's provisional entries (see ``Reject.final``)."""
    found = False
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        where = f"{path}.{name}" if path else name
        if id(child) in seen:  # a module used in two places gets one replacement
            new, below = seen[id(child)]
            if new is not None:
                module._modules[name] = new
            found |= below
            continue
        seen[id(child)] = (None, True)
        if from_artrt(child) or "_artrt_patch" in vars(child):
            found = True
            continue
        if _walk(child, where, verify, report, seen, pending):
            found = True
            continue
        result = _consider(child, verify)
        if isinstance(result, Match):
            why = _attach(child, result.module, where)
            if why is not None:
                result = Reject(why)
        final = isinstance(result, Match) or (isinstance(result, Reject) and result.final)
        if final:  # it supersedes the provisional verdicts below it
            report.left_alone[:] = [r for r in report.left_alone
                                    if not (r.path.startswith(where + ".") and id(r) in pending)]
        if isinstance(result, Match):
            module._modules[name] = result.module
            report.replaced.append(Replaced(where, type(child), type(result.module),
                                            result.detail))
        elif isinstance(result, Reject):
            report.left_alone.append(LeftAlone(where, type(child), result.reason))
            if not result.final:
                pending.add(id(report.left_alone[-1]))
        seen[id(child)] = (result.module if isinstance(result, Match) else None, final)
        found |= final
    return found


def patch(model: nn.Module, *, verify: bool = True) -> PatchReport:
    """Replace, in place, every layer of ``model`` that artrt recognises by what it computes
    (see the module docstring) with the artrt module that computes the same function on the
    same parameter tensors.

    Args:
        model: any ``nn.Module``; its submodules are replaced (``model`` itself is not: when
            it is a recognisable layer, the report says so).
        verify: run every replacement against the original on probe inputs at patch time and
            keep the original (reported, with the error) when the outputs differ beyond the
            dtype's tolerance (fp32: 1e-5 of the output's scale on CPU, 5e-3 on CUDA where
            TF32 is on; fp16 1e-2; bf16 5e-2). ``False`` trusts the connectivity probe alone.

    Returns:
        A :class:`PatchReport`: each replaced layer (path, old type, new type, what was
        recognised) and each candidate left alone with the reason; ``print`` it.

    After patching, masked weight entries are ignored and get zero gradient (a layer that
    masked ``weight.data`` in place gave them a gradient its next forward discarded); forward
    pre-hooks of a replaced layer (they applied the mask) no longer run; a replaced layer with
    other hooks is left alone. ``model.state_dict()`` keeps its keys (see the module
    docstring). Patching twice changes nothing more; :func:`unpatch` undoes it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"artrt.patch: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(verify, bool):
        raise TypeError(f"artrt.patch: verify must be a bool, got {type(verify).__name__}")
    report = PatchReport()
    if from_artrt(model) or "_artrt_patch" in vars(model):
        return report
    pending: set[int] = set()
    if _walk(model, "", verify, report, {}, pending):
        return report
    result = _consider(model, verify)
    if isinstance(result, Match) or (isinstance(result, Reject) and result.final):
        report.left_alone[:] = [r for r in report.left_alone if id(r) not in pending]
    if isinstance(result, Match):
        report.left_alone.append(LeftAlone(
            "", type(model), f"the model itself is the layer ({result.detail}): artrt.patch "
            "replaces submodules; put it in a container, e.g. nn.Sequential(model)"))
    elif isinstance(result, Reject):
        report.left_alone.append(LeftAlone("", type(model), result.reason))
    return report


def unpatch(model: nn.Module) -> int:
    """Put back every layer :func:`patch` replaced in ``model``, holding the replacement's
    current tensors (so training, ``.to()`` and ``load_state_dict`` after patching carry
    over) and its train/eval mode. Returns the number of layers put back."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"artrt.unpatch: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    restored: set[int] = set()
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            info = vars(child).get("_artrt_patch") if child is not None else None
            if info is None:
                continue
            if id(child) not in restored:
                _restore(child, info)
                restored.add(id(child))
            parent._modules[name] = info.original
    return len(restored)


def _restore(new: nn.Module, info: _PatchInfo) -> None:
    current = state_of(new)
    for new_name, old_name in info.keys:
        owner_path, _, leaf = old_name.rpartition(".")
        owner = info.original.get_submodule(owner_path)
        slots = owner._parameters if leaf in owner._parameters else owner._buffers
        slots[leaf] = current[new_name]
    info.original.train(new.training)
