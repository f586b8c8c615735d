"""Bad and edge inputs to every public op and model entry point, drawn by hypothesis.

Each example draws a valid call with small sizes (zero-size dimensions included), then at
most one change to it: a wrong dtype, rank, size or device, a non-contiguous, expanded or
transposed view of the same values, a batch stride past int32 (a lazily allocated storage
of 2^31 elements: only the pages used are touched), a NaN or an infinity, or a value out of
range (orders, lengths, labels, uniforms, levels, dilations (2^31 - 1 among the valid
ones), steps). The call runs on the reference
backend and on the Triton kernels (under the interpreter on CPU), and its outcome is
classified. Two outcomes pass:

- a ``ValueError`` or ``TypeError`` whose message names the changed argument (for a change
  of size, any argument: the mismatch may be reported on its partner), with every tensor
  the op writes in place unchanged;
- a result (and the gradients of the differentiable inputs) equal on every backend to the
  reference run on contiguous copies of the same values, NaN where it has NaN (where both
  are finite for attention, as a NaN key or value may reach rows that do not see it through
  the product of a masked probability 0 with it, on every backend; and for dmol_nll, whose
  non-finite params give a non-finite NLL, NaN or inf).

A change that makes the call invalid (a wrong dtype, rank or device; a value outside its
range; a NaN where the op promises to reject it) must end in the first outcome. Any other
exception type, a crash or a silently accepted bad value fails the test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import artrt
from artrt import ops
from artrt.models import MODELS
from tests.helpers import kernel_backends

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# NaN and inf inputs are the point: numpy's warnings about them under the interpreter are not
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
# the cpu backend where an op has one (the others say BackendUnavailableError, skipped)
BACKENDS = ["reference", "cpu", *kernel_backends("cpu")]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TOL = dict(atol=1e-4, rtol=1e-4, equal_nan=True)


# --------------------------------------------------------------------------- calls


@dataclass
class Call:
    """One op call: ``fn(**args)``; ``grads``: the float arguments to differentiate;
    ``written``: the arguments the op writes in place; ``finite``: the float arguments whose
    NaN/inf the op rejects; ``bad``: (argument, value) pairs out of range (the call must
    raise naming the argument)."""

    fn: Callable
    args: dict
    grads: tuple[str, ...] = ()
    written: tuple[str, ...] = ()
    finite: tuple[str, ...] = ()
    bad: list = field(default_factory=list)
    # the changes that keep the op's own check (it accepts any broadcastable cond, say)
    loose: tuple[str, ...] = ()
    # arguments whose NaN/inf may reach outputs that do not see it (attention: the products
    # of a masked probability 0 with a NaN value): only the finite entries must agree
    nan_spreads: tuple[str, ...] = ()


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


def _gated(fn):
    def make(draw, g):
        b, c, n = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 4))
        x = _rand(g, b, 2 * c, n)
        cond = _rand(g, b, 2 * c, 1) if draw(st.booleans()) else None
        return Call(fn, dict(x=x, cond=cond, dim=1), grads=("x", "cond"), loose=("x", "cond"),
                    bad=[("dim", 3), ("dim", -4), ("dim", 1.0)])
    return make


def _causal_conv1d(draw, g):
    b, cin, cout = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    t, k = draw(st.integers(0, 6)), draw(st.integers(1, 3))
    d = draw(st.sampled_from([1, 2, 3, 2 ** 31 - 1]))
    r = draw(st.integers(0, cout))
    args = dict(x=_rand(g, b, cin, t), weight=_rand(g, cout, cin, k),
                bias=_rand(g, cout) if draw(st.booleans()) else None, dilation=d,
                residual=_rand(g, b, r, t) if draw(st.booleans()) else None)
    return Call(ops.causal_conv1d, args, grads=("x", "weight", "bias", "residual"),
                bad=[("dilation", 0), ("dilation", -1), ("dilation", 1.5), ("dilation", True),
                     ("weight", _rand(g, cout, cin, 9))])


def _wavenet_gate(draw, g):
    b, r, gate = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    t, k, cc = draw(st.integers(0, 6)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    local = draw(st.booleans())
    args = dict(x=_rand(g, b, r, t), weight=_rand(g, 2 * gate, r, k),
                bias=draw(st.sampled_from([None, _rand(g, 2 * gate), _rand(g, b, 2 * gate)])),
                cond=_rand(g, b, cc, t) if local else None,
                cond_weight=_rand(g, 2 * gate, cc, 1) if local else None,
                dilation=draw(st.sampled_from([1, 2, 2 ** 31 - 1])))
    return Call(ops.wavenet_gate, args, grads=("x", "weight", "bias", "cond", "cond_weight"),
                bad=[("dilation", 0), ("dilation", -2)])


def _masked_conv2d(draw, g):
    groups = draw(st.sampled_from([1, 3]))
    b, h, w = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    cin, cout = groups * draw(st.integers(0, 2)), groups * draw(st.integers(0, 2))
    k = draw(st.sampled_from([1, 3]))
    args = dict(x=_rand(g, b, cin, h, w), weight=_rand(g, cout, cin, k, k),
                bias=_rand(g, cout) if draw(st.booleans()) else None,
                mask_type=draw(st.sampled_from(["A", "B"])), color_groups=groups,
                cond=_rand(g, b, cout) if draw(st.booleans()) else None)
    return Call(ops.masked_conv2d, args, grads=("x", "weight", "bias", "cond"),
                bad=[("mask_type", "C"), ("color_groups", 0),
                     ("weight", _rand(g, cout, cin, 2, 2))])


def _shifted(fn, kernel):
    def make(draw, g):
        b, h, w = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
        cin, cout = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        args = dict(x=_rand(g, b, cin, h, w), weight=_rand(g, cout, cin, *kernel),
                    bias=_rand(g, cout) if draw(st.booleans()) else None,
                    cond=_rand(g, b, cout) if draw(st.booleans()) else None)
        return Call(fn, args, grads=("x", "weight", "bias", "cond"))
    return make


def _order(draw, g, b, t):
    kind = draw(st.sampled_from(["none", "shared", "per-row"]))
    if kind == "none":
        return None
    if kind == "shared":
        return torch.randperm(t, generator=g)
    return torch.stack([torch.randperm(t, generator=g) for _ in range(b)] or
                       [torch.empty(0, t, dtype=torch.int64)]).view(b, t)


def _causal_attention(draw, g):
    b, hk, t = draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 5))
    h, d = hk * draw(st.integers(1, 2)), draw(st.sampled_from([1, 3, 8]))
    order = _order(draw, g, b, t)
    bad = [("scale", math.nan), ("scale", math.inf)]
    if order is not None and t >= 2:
        dup = order.clone()
        dup[..., 0] = dup[..., 1]
        bad += [("order", dup), ("order", order + t), ("order", -order - 1)]
    args = dict(q=_rand(g, b, h, t, d), k=_rand(g, b, hk, t, d), v=_rand(g, b, hk, t, d),
                order=order, strict=draw(st.booleans()))
    return Call(ops.causal_attention, args, grads=("q", "k", "v"), bad=bad,
                nan_spreads=("q", "k", "v"))


def _attention_decode(draw, g):
    b, hk, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 4]))
    h, cap, t_new = hk * draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(
        st.integers(0, 2))
    t_new = min(t_new, cap)
    tq = draw(st.integers(1, 2))
    lens = torch.randint(0, cap - t_new + 1, (b,), generator=g)
    new = t_new > 0
    args = dict(q=_rand(g, b, h, tq, d), k_cache=_rand(g, b, hk, cap, d),
                v_cache=_rand(g, b, hk, cap, d), cache_seqlens=lens,
                k_new=_rand(g, b, hk, t_new, d) if new else None,
                v_new=_rand(g, b, hk, t_new, d) if new else None, strict=draw(st.booleans()))
    bad = [("cache_seqlens", lens - cap - 1), ("cache_seqlens", lens + cap + 1)]
    return Call(ops.attention_decode, args, written=("k_cache", "v_cache") if new else (),
                bad=bad, nan_spreads=("q", "k_cache", "v_cache", "k_new", "v_new"))


def _dmol_params(draw, g):
    c, k = draw(st.sampled_from([1, 3])), draw(st.integers(1, 3))
    b, h, w = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    per = 10 if c == 3 else 3
    return _rand(g, b, per * k, h, w), c, k


def _dmol_nll(draw, g):
    params, c, k = _dmol_params(draw, g)
    levels = draw(st.sampled_from([2, 5, 256]))
    i = torch.randint(0, levels, (params.shape[0], c, *params.shape[2:]), generator=g)
    x = (2 * i - (levels - 1)) / (levels - 1)
    return Call(ops.dmol_nll, dict(params=params, x=x, num_mix=k, levels=levels),
                grads=("params",), finite=("x",), nan_spreads=("params",),
                bad=[("levels", 1), ("num_mix", 0), ("num_mix", k + 1), ("x", x + 0.5 / levels),
                     ("x", x * 3 + 3)])


def _dmol_sample(draw, g):
    params, c, k = _dmol_params(draw, g)
    u = torch.rand((params.shape[0], 1 + c, *params.shape[2:]), generator=g)
    return Call(ops.dmol_sample, dict(params=params, num_mix=k, uniforms=u,
                                      levels=draw(st.sampled_from([2, 256]))),
                finite=("params", "uniforms"),
                bad=[("levels", 1), ("num_mix", 0), ("uniforms", u + 1), ("uniforms", u - 1)])


def _wavenet_step_weights():
    from artrt.models.wavenet import WaveNet, WaveNetConfig
    from artrt.sampling.wavenet import pack_wavenet

    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig((1, 8), 8, 2, layers=2, res_channels=4, gate_channels=3,
                                  skip_channels=5, cond_channels=2)).eval()
    return pack_wavenet(model)


_STEP_WEIGHTS = []


def _wavenet_step(draw, g):
    if not _STEP_WEIGHTS:
        _STEP_WEIGHTS.append(_wavenet_step_weights())
    w = _STEP_WEIGHTS[0]
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    step = draw(st.integers(0, t))
    args = dict(weights=w, state=torch.randn(b, w.state_size, generator=g),
                tokens=torch.randint(0, w.levels, (b, t), generator=g),
                u=torch.rand(b, t, generator=g), step=step, cond=_rand(g, b, 2, 1))
    bad = [("step", -1), ("step", torch.tensor([-1])), ("offset", -1)]
    if 0 < step < t:
        bad += [("tokens", args["tokens"] + w.levels), ("u", args["u"] + 1)]
    return Call(ops.wavenet_step, args, written=("state", "tokens"), bad=bad,
                finite=("u", "cond") if step < t else ())


OPS = {
    "gated_tanh": _gated(ops.gated_tanh),
    "gated_sigmoid": _gated(ops.gated_sigmoid),
    "causal_conv1d": _causal_conv1d,
    "wavenet_gate": _wavenet_gate,
    "masked_conv2d": _masked_conv2d,
    "down_shifted_conv2d": _shifted(ops.down_shifted_conv2d, (2, 3)),
    "down_right_shifted_conv2d": _shifted(ops.down_right_shifted_conv2d, (2, 2)),
    "causal_attention": _causal_attention,
    "attention_decode": _attention_decode,
    "dmol_nll": _dmol_nll,
    "dmol_sample": _dmol_sample,
    "wavenet_step": _wavenet_step,
}


def test_every_public_op_is_fuzzed():
    public = {n for n in ops.__all__ if callable(getattr(ops, n)) and not n.endswith("_ref")
              and not isinstance(getattr(ops, n), type)}
    helpers = {"dmol_convert_layer", "dmol_layout_index", "pack_wavenet_step_weights",
               "random_order", "raster_order", "subscale_order", "tap_mask", "zigzag_order"}
    assert public - helpers == set(OPS)


# --------------------------------------------------------------------------- changes

# a change: (kind, argument, how); "invalid" kinds must raise naming the argument
INVALID = ("dtype", "rank", "device", "nan", "inf", "bad")


def _expanded(t: torch.Tensor) -> torch.Tensor:
    """The first dimension of size > 1 broadcast from its first entry (stride 0)."""
    for dim, size in enumerate(t.shape):
        if size > 1:
            return t.narrow(dim, 0, 1).expand(t.shape)
    return t


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values, every other element of a twice-as-long last dimension."""
    big = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    big[..., ::2] = t
    return big[..., ::2]


def _poison(value: float):
    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[t.numel() // 2] = value
        return t
    return fn


def _grown(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((*t.shape[:-1], t.shape[-1] + 1), dtype=t.dtype)


FAR = 2 ** 31 + 64  # a batch stride past int32 (in elements, 16-byte aligned)


def _far(t: torch.Tensor) -> torch.Tensor:
    """The same values with the second batch entry 2^31 + 64 elements after the first: a
    stride that overflows int32 index math. The storage is allocated but never touched
    beyond the two entries (the pages stay virtual)."""
    inner = t[0].contiguous()
    storage = torch.empty(FAR + inner.numel(), dtype=t.dtype)
    far = storage.as_strided(t.shape, (FAR, *inner.stride()))
    far.copy_(t)
    return far


def _changes(call: Call) -> list[tuple[str, str, Callable]]:
    """(kind, argument, how): ``how`` maps a fresh copy of the argument's value to the
    changed value (a fresh one per backend, so that in-place writes never leak)."""
    out = [("none", "", None)]
    for name, t in call.args.items():
        if not isinstance(t, torch.Tensor):
            continue
        out.append(("dtype", name, (lambda t: t.long()) if t.is_floating_point()
                    else (lambda t: t.float())))
        out.append(("rank", name, lambda t: t[None]))
        out.append(("device", name, lambda t: t.to("meta")))
        if t.dim():
            out.append(("size", name, _grown))
        if t.numel() and t.dim():
            out.append(("layout", name, _strided))
            if t.dim() >= 2:
                out.append(("layout", name,
                            lambda t: t.transpose(0, -1).contiguous().transpose(0, -1)))
            if _expanded(t) is not t:
                out.append(("expand", name, _expanded))
            if t.is_floating_point():
                out += [("nan", name, _poison(math.nan)), ("inf", name, _poison(math.inf))]
            if t.is_floating_point() and t.dim() >= 2 and t.shape[0] == 2:
                out.append(("far", name, _far))
    out += [("bad", name, (lambda _, v=value: v.clone() if isinstance(v, torch.Tensor) else v))
            for name, value in call.bad
            if not (isinstance(value, torch.Tensor) and value.numel() == 0)]  # nothing bad
    return out


def _materialize(args: dict) -> dict:
    """Contiguous copies of the tensors (expanded ones materialized)."""
    return {k: v.contiguous().clone() if isinstance(v, torch.Tensor) else v
            for k, v in args.items()}


def _run(call: Call, args: dict, backend: str, grad_seed: int):
    """(outputs, gradients) of one backend: the result, the written tensors and the
    gradients of ``call.grads`` for a fixed random upstream gradient."""
    args = dict(args)
    leaves = {}
    for name in call.grads:
        t = args.get(name)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == "cpu":
            leaves[name] = args[name] = t.detach().requires_grad_()
    out = call.fn(**args, backend=backend)
    outs = [out] + [args[name] for name in call.written]
    grads = {}
    if leaves and isinstance(out, torch.Tensor) and out.requires_grad:
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
        got = torch.autograd.grad(out, list(leaves.values()), up, allow_unused=True)
        grads = {n: gr for n, gr in zip(leaves, got, strict=True)}
    return [o.detach() if isinstance(o, torch.Tensor) else o for o in outs], grads


def _assert_same(got, want, what, finite_only=False):
    for a, b in zip(got, want, strict=True):
        if a is None or b is None:
            assert a is None and b is None, what
            continue
        assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        a, b = a.float(), b.float()
        if finite_only:
            both = a.isfinite() & b.isfinite()
            a, b = a[both], b[both]
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{what}: {m}")


def check_call(call: Call, kind: str, name: str, how: Callable | None,
               grad_seed: int) -> None:
    """Run ``call`` with argument ``name`` changed by ``how`` on every backend and classify
    the outcome (see the module docstring)."""

    def fresh() -> dict:
        args = {k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in call.args.items()}
        if kind != "none":
            args[name] = how(args.get(name))
        return args

    must_raise = kind in INVALID and not (kind in ("nan", "inf") and name not in call.finite)
    if kind == "rank" and name in call.loose:
        must_raise = False
    if kind == "device" and not any(isinstance(v, torch.Tensor) for k, v in call.args.items()
                                    if k != name):
        must_raise = False  # every tensor on the meta device: a valid call there
    want = None
    for backend in BACKENDS:
        trial = fresh()
        before = {k: trial[k].clone() for k in call.written
                  if isinstance(trial[k], torch.Tensor) and trial[k].device.type != "meta"}
        try:
            got = _run(call, trial, backend, grad_seed)
        except artrt.BackendUnavailableError:
            assert backend != "reference"
            continue
        except (ValueError, TypeError) as e:
            msg = str(e)
            names = [name] if kind != "size" else list(call.args)
            assert any(n in msg for n in names), (
                f"{backend}: {kind} change of {name!r}: the error does not name it: {msg}")
            for k, t in before.items():
                assert torch.equal(trial[k], t), f"{backend}: {k} written before the error"
            continue
        assert not must_raise, f"{backend}: a {kind} change of {name!r} was accepted"
        if want is None:  # the reference on contiguous copies of the same values
            want = _run(call, _materialize(fresh()), "reference", grad_seed)
        spread = kind in ("nan", "inf") and name in call.nan_spreads
        _assert_same(got[0], want[0], f"{backend}, {kind} change of {name!r}: outputs", spread)
        assert got[1].keys() == want[1].keys()
        _assert_same(list(got[1].values()), list(want[1].values()),
                     f"{backend}, {kind} change of {name!r}: gradients", spread)


@pytest.mark.parametrize("op", list(OPS))
@FUZZ
@given(data=st.data(), seed=st.integers(0, 2 ** 16))
def test_op_bad_and_edge_inputs(op, data, seed):
    g = torch.Generator().manual_seed(seed)
    call = OPS[op](data.draw, g)
    changes = _changes(call)
    picked = data.draw(st.lists(st.integers(0, len(changes) - 1), min_size=1, max_size=4,
                                unique=True), label="changes")
    for i in picked:
        kind, name, how = changes[i]
        check_call(call, kind, name, how, seed)


# --------------------------------------------------------------------------- models

_MODEL_CONFIGS = {
    "arrnn": dict(hidden=8),
    "made": dict(hidden=(16,)),
    "pixelcnn": dict(channels=6, blocks=1, head_channels=6),
    "pixelcnnpp": dict(channels=4, blocks=1, stages=2, num_mix=2, dropout=0.0),
    "gated_pixelcnn": dict(channels=4, layers=2, head_channels=6),
    "wavenet": dict(layers=2, res_channels=4, gate_channels=4, skip_channels=4,
                    cond_channels=2),
    "transformer": dict(dim=8, heads=2, layers=1),
    "multiscale": dict(scales=1, base_channels=3, base_layers=1, channels=3, layers=1),
}
_MODELS: dict = {}


def _model(name: str):
    if name not in _MODELS:
        cls, cfg_cls = MODELS[name]
        torch.manual_seed(0)
        levels = 5 if name != "pixelcnnpp" else 7
        _MODELS[name] = cls(cfg_cls((3, 2, 2), levels, 3, **_MODEL_CONFIGS[name])).eval()
    return _MODELS[name]


def _model_changes(model, g, n):
    """(entry, argument, value, must_raise) for ``nll`` and ``sample``."""
    levels, shape = model.config.levels, tuple(model.config.shape)
    x = torch.randint(0, levels, (n, *shape), generator=g)
    cond = torch.randint(0, 3, (n,), generator=g)
    u = torch.rand((n, *model._uniforms_shape()), generator=g)
    big = torch.zeros((n, *shape[:-1], 2 * shape[-1]), dtype=torch.int64)
    big[..., ::2] = x
    return x, cond, u, [
        ("nll", "x", x, False), ("nll", "x", x[:0], False), ("nll", "x", big[..., ::2], False),
        ("nll", "x", x.to(torch.uint8), False), ("nll", "x", x.float(), True),
        ("nll", "x", x + levels, True), ("nll", "x", x - levels, True),
        ("nll", "x", x[..., :-1], True), ("nll", "x", x[None], True),
        ("nll", "cond", cond + 3, True), ("nll", "cond", cond - 3, True),
        ("nll", "cond", cond.float(), True), ("nll", "cond", None, True),
        ("nll", "cond", cond[:-1], True),
        ("sample", "uniforms", u, False), ("sample", "uniforms", u.transpose(0, -1)
                                            .contiguous().transpose(0, -1), False),
        ("sample", "uniforms", torch.full_like(u, math.nan), True),
        ("sample", "uniforms", u + 1, True), ("sample", "uniforms", u - 1, True),
        ("sample", "uniforms", u[..., :-1], True), ("sample", "uniforms", (u * 4).long(), True),
        ("sample", "cond", cond + 3, True), ("sample", "n", 0, True),
        ("sample", "n", -1, True), ("sample", "n", True, True), ("sample", "n", 1.0, True),
    ]


def _model_call(model, entry: str, args: dict, backend: str) -> torch.Tensor:
    with torch.no_grad(), artrt.use_backend(backend):
        if entry == "nll":
            return model.nll(args["x"], args["cond"])
        return model.sample(args["n"], args["cond"], uniforms=args["uniforms"])


@pytest.mark.parametrize("name", list(MODELS))
@settings(FUZZ, max_examples=3)
@given(data=st.data(), seed=st.integers(0, 2 ** 16))
def test_model_bad_and_edge_inputs(name, data, seed):
    """``nll`` and ``sample`` of every model under every change of its arguments: a clear
    error naming the argument, or the result of clean (contiguous int64) arguments, equal on
    every backend (samples exactly, nll to float rounding)."""
    model = _model(name)
    g = torch.Generator().manual_seed(seed)
    n = data.draw(st.integers(1, 2))
    x, cond, u, changes = _model_changes(model, g, n)
    for change in changes:
        _check_model_change(model, name, x, cond, u, n, *change)


def _check_model_change(model, name, x, cond, u, n, entry, arg, value, must_raise):
    args = {**dict(x=x, cond=cond, uniforms=u, n=n), arg: value}
    if entry == "sample" and arg == "n":
        args["uniforms"] = None
    if arg == "x" and value.shape[:1] == (0,):  # an empty batch, with its empty labels
        args["cond"] = cond[:0]
    want = None
    for backend in BACKENDS:
        try:
            got = _model_call(model, entry, args, backend)
        except artrt.BackendUnavailableError:  # an op of the model lacks this backend
            assert backend != "reference"
            continue
        except (ValueError, TypeError) as e:
            label = "label" if arg == "cond" else arg
            assert label in str(e) or arg in str(e), f"{entry}({arg}=...): {e}"
            continue
        assert not must_raise, f"{backend}: {name}.{entry} accepted a bad {arg}"
        if want is None:
            clean = {k: v.contiguous().long() if k == "x" else (
                v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
            want = _model_call(model, entry, clean, "reference")
        assert got.shape == want.shape
        if entry == "sample":
            assert torch.equal(got, want), f"{backend}: samples differ"
        else:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
@FUZZ
@given(seed=st.integers(0, 2 ** 16), data=st.data())
def test_cache_push_bad_values_leave_it_unchanged(name, seed, data):
    """A bad push raises naming the values and leaves the cache where it was; a good push
    after it gives the logits of the plain model."""
    model = _model(name)
    g = torch.Generator().manual_seed(seed)
    cond = torch.randint(0, 3, (2,), generator=g)
    cache = model.new_cache(2, cond)
    k = cache.positions().numel()
    good = torch.randint(0, model.config.levels, (2, k), generator=g)
    bad = data.draw(st.sampled_from([good + model.config.levels, good - model.config.levels,
                                     good.float(), good[:, :0] if k else good[:1],
                                     good[None]]))
    read = cache.params if name == "pixelcnnpp" else cache.logits  # dmol parameters
    with torch.no_grad():
        first = read().clone()
        with pytest.raises((ValueError, TypeError), match="values"):
            cache.push(bad)
        assert cache.step == 0
        torch.testing.assert_close(read(), first)
        cache.push(good)
        assert cache.step == 1
