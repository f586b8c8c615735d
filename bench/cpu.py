"""CPU benchmark: every artrt op against the plain PyTorch a user would write instead.

    python -m bench.cpu                 # the table of issue 11, one thread
    python -m bench.cpu --only gated    # one family (repeatable)
    python -m bench.cpu --smoke         # tiny shapes, one timed repetition (what CI runs)

Each row times artrt with no backend forced (what a CPU user gets: ``cpu`` where the op has
that backend, else the reference) and the plain alternative, in one process, on one thread,
interleaved (artrt, plain, plain, artrt, ...) so that drift and neighbours hit both alike. A
sample runs the call ``number`` times (chosen so that a sample lasts at least 2 ms: tiny
calls are timed in bulk); a time is the median of the samples, per call.
``ratio = artrt / plain``: below 1, artrt is faster. Target: at most 1.0 (0.8 for
masked_conv2d at k >= 5; 2.0 for the tiny per-call case, whose plain call is one bare aten
``F.conv2d`` with the masked weight made beforehand).

Passes: ``fwd+bwd`` is the forward and the backward of a fixed upstream gradient into every
input that takes one (weights included); ``no_grad`` is the forward under ``torch.no_grad``;
``784 steps`` is a decode loop under ``torch.no_grad``: artrt's ``attention_decode`` plus the
``cache_seqlens += 1`` its caller does, against a slot write of k and v and
``F.scaled_dot_product_attention`` on the filled prefix. ``max_err`` is the largest
difference between artrt's and plain's gradients (fwd+bwd) or outputs (the other passes),
computed once before timing.

Results: ``bench/results/cpu-<cpu>.json`` and ``.md`` (``-smoke`` added in smoke mode), with
the CPU model, thread count, torch version and date.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import artrt
from artrt import backends
from bench import common

COLUMNS = [("op", "op"), ("shape", "shape"), ("pass", "pass"), ("backend", "artrt backend"),
           ("artrt_ms", "artrt ms"), ("plain_ms", "plain ms"), ("ratio", "ratio"),
           ("target", "target"), ("met", "met"), ("max_err", "max err"), ("samples", "samples")]
FAMILIES = ("attention", "decode", "gated", "wavenet_gate", "masked_conv2d", "shifted_conv2d",
            "causal_conv1d")
MIN_SAMPLE_S = 2e-3  # a sample runs the call enough times to last this long
MIN_SAMPLES, MAX_SAMPLES, BUDGET_S = 7, 41, 4.0  # per row: at least 7, then up to 4 s


@dataclass
class Case:
    """One row: ``artrt(*inputs)`` against ``plain(*inputs)``. ``leaves``: indices of the
    inputs that take a gradient (fwd+bwd pass); ``loop``: the calls are whole decode loops
    (no inputs, no gradient)."""

    family: str
    op: str
    shape: str
    artrt: Callable
    plain: Callable
    inputs: tuple = ()
    leaves: tuple[int, ...] = ()
    passes: tuple[str, ...] = ("fwd+bwd", "no_grad")
    target: float = 1.0
    backend: str = "-"
    loop_pass: str | None = None


def _backend(module: str, op: str, dtype: torch.dtype = torch.float32) -> str:
    """The backend an artrt op takes on a CPU tensor with nothing forced."""
    prefs = importlib.import_module(f"artrt.ops.{module}").PREFERENCE
    return backends.select(op, torch.device("cpu"), dtype, backends.requested(None), prefs)


def _rand(*shape, grad: bool = False, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen).requires_grad_(grad)


# --------------------------------------------------------------------------- cases

def attention_cases(smoke: bool, gen) -> list[Case]:
    shapes = [(2, 2, 9, 4)] if smoke else [(8, 4, 784, 32), (32, 4, 784, 16), (1, 4, 784, 32)]
    cases = []
    backend = _backend("attention", "causal_attention")
    for b, h, t, d in shapes:
        q, k, v = (_rand(b, h, t, d, grad=True, gen=gen) for _ in range(3))
        cases.append(Case("attention", "causal_attention", f"B{b} H{h} T{t} D{d}",
                          lambda q, k, v: artrt.causal_attention(q, k, v),
                          lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                         is_causal=True),
                          (q, k, v), (0, 1, 2), backend=backend))
    # An arbitrary order: plain SDPA needs the dense boolean mask of the order.
    b, h, t, d = shapes[0]
    rank = torch.randperm(t, generator=gen)
    visible = rank[None, :] <= rank[:, None]  # (T, T): query i sees key j
    q, k, v = (_rand(b, h, t, d, grad=True, gen=gen) for _ in range(3))
    cases.append(Case("attention", "causal_attention, random order", f"B{b} H{h} T{t} D{d}",
                      lambda q, k, v: artrt.causal_attention(q, k, v, order=rank),
                      lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                     attn_mask=visible),
                      (q, k, v), (0, 1, 2), backend=backend))
    return cases


def decode_cases(smoke: bool, gen) -> list[Case]:
    h, d, steps = (2, 4, 5) if smoke else (4, 16, 784)
    cases = []
    for b in (1, 2) if smoke else (1, 16):
        qs, ks, vs = (_rand(steps, b, h, 1, d, gen=gen) for _ in range(3))
        caches = [torch.zeros(b, h, steps, d) for _ in range(4)]

        def artrt_loop(qs=qs, ks=ks, vs=vs, kc=caches[0], vc=caches[1], b=b):
            seqlens = torch.zeros(b, dtype=torch.int64)
            out = []
            for i in range(steps):
                out.append(artrt.attention_decode(qs[i], kc, vc, seqlens, ks[i], vs[i]))
                seqlens += 1
            return torch.stack(out)

        def plain_loop(qs=qs, ks=ks, vs=vs, kc=caches[2], vc=caches[3]):
            out = []
            for i in range(steps):
                kc[:, :, i:i + 1] = ks[i]
                vc[:, :, i:i + 1] = vs[i]
                out.append(F.scaled_dot_product_attention(qs[i], kc[:, :, :i + 1],
                                                          vc[:, :, :i + 1]))
            return torch.stack(out)

        cases.append(Case("decode", "attention_decode", f"B{b} H{h} D{d}", artrt_loop,
                          plain_loop, passes=(), loop_pass=f"{steps} steps",
                          backend=_backend("attention_decode", "attention_decode")))
    return cases


def _plain_tanh_gate(x):
    a, b = x.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


def _plain_sigmoid_gate(x):
    a, b = x.chunk(2, 1)
    return a * torch.sigmoid(b)


def gated_cases(smoke: bool, gen) -> list[Case]:
    shapes = [(2, 8, 5, 3)] if smoke else [(16, 128, 28, 28), (1, 128, 28, 28)]
    cases = []
    for shape in shapes:
        for op, fn, plain in (("gated_tanh", artrt.gated_tanh, _plain_tanh_gate),
                              ("gated_sigmoid", artrt.gated_sigmoid, _plain_sigmoid_gate)):
            x = _rand(*shape, grad=True, gen=gen)
            cases.append(Case("gated", op, "x".join(map(str, shape)), fn, plain, (x,), (0,),
                              backend=_backend("gated", op)))
    return cases


def wavenet_gate_cases(smoke: bool, gen) -> list[Case]:
    b, r, g2, t, k, dil = (2, 3, 4, 11, 2, 2) if smoke else (32, 32, 64, 784, 2, 1)
    x = _rand(b, r, t, grad=True, gen=gen)
    w = (_rand(g2, r, k, gen=gen) / (r * k) ** 0.5).requires_grad_()
    bias = _rand(g2, grad=True, gen=gen)

    def plain(x, w, bias):
        return _plain_tanh_gate(F.conv1d(F.pad(x, ((k - 1) * dil, 0)), w, bias, dilation=dil))

    return [Case("wavenet_gate", "wavenet_gate", f"B{b} {r}->{g2} T{t} K{k} d{dil}",
                 lambda x, w, bias: artrt.wavenet_gate(x, w, bias, dilation=dil), plain,
                 (x, w, bias), (0, 1, 2), backend=_backend("causal_conv1d", "wavenet_gate"))]


def masked_conv2d_cases(smoke: bool, gen) -> list[Case]:
    from artrt.ops.masked_conv2d import tap_mask

    b, c, s = (2, 3, 5) if smoke else (16, 64, 28)
    backend = _backend("masked_conv2d", "masked_conv2d")
    cases = []
    for k in (3,) if smoke else (3, 5, 7):
        x = _rand(b, c, s, s, grad=True, gen=gen)
        w = (_rand(c, c, k, k, gen=gen) / (c * k * k) ** 0.5).requires_grad_()
        bias = _rand(c, grad=True, gen=gen)
        mask = tap_mask(tuple(w.shape), k // 2, k // 2, "B")
        cases.append(Case("masked_conv2d", "masked_conv2d, mask B", f"B{b} {c}->{c} {s}x{s} k{k}",
                          lambda x, w, bias: artrt.masked_conv2d(x, w, bias, "B"),
                          lambda x, w, bias, mask=mask, k=k: F.conv2d(x, w * mask, bias,
                                                                      padding=k // 2),
                          (x, w, bias), (0, 1, 2), target=0.8 if k >= 5 else 1.0,
                          backend=backend))
    # Per call at a tiny shape: plain is one bare aten call (the masked weight made once).
    x = _rand(1, 4, 1, 1, gen=gen)
    w = _rand(4, 4, 3, 3, gen=gen)
    bias = _rand(4, gen=gen)
    w_masked = w * tap_mask((4, 4, 3, 3), 1, 1, "B")
    cases.append(Case("masked_conv2d", "masked_conv2d per call (vs bare F.conv2d)",
                      "1x4x1x1 k3", lambda x, w, bias: artrt.masked_conv2d(x, w, bias, "B"),
                      lambda x, w, bias: F.conv2d(x, w_masked, bias, padding=1),
                      (x, w, bias), passes=("no_grad",), target=2.0, backend=backend))
    return cases


def shifted_conv2d_cases(smoke: bool, gen) -> list[Case]:
    b, c, s = (2, 3, 5) if smoke else (32, 32, 28)
    backend = _backend("masked_conv2d", "down_shifted_conv2d")
    cases = []
    for op, fn, (kh, kw), pad in (
            ("down_shifted_conv2d", artrt.down_shifted_conv2d, (2, 3), (1, 1, 1, 0)),
            ("down_right_shifted_conv2d", artrt.down_right_shifted_conv2d, (2, 2),
             (1, 0, 1, 0))):
        x = _rand(b, c, s, s, grad=True, gen=gen)
        w = (_rand(c, c, kh, kw, gen=gen) / (c * kh * kw) ** 0.5).requires_grad_()
        bias = _rand(c, grad=True, gen=gen)
        cases.append(Case("shifted_conv2d", op, f"B{b} {c}->{c} {s}x{s} {kh}x{kw}",
                          fn, lambda x, w, bias, pad=pad: F.conv2d(F.pad(x, pad), w, bias),
                          (x, w, bias), (0, 1, 2), backend=backend))
    return cases


def causal_conv1d_cases(smoke: bool, gen) -> list[Case]:
    b, c, t, k, dil = (2, 3, 11, 2, 2) if smoke else (32, 32, 784, 2, 1)
    x = _rand(b, c, t, grad=True, gen=gen)
    w = (_rand(c, c, k, gen=gen) / (c * k) ** 0.5).requires_grad_()
    bias = _rand(c, grad=True, gen=gen)
    return [Case("causal_conv1d", "causal_conv1d", f"B{b} {c}->{c} T{t} K{k} d{dil}",
                 lambda x, w, bias: artrt.causal_conv1d(x, w, bias, dil),
                 lambda x, w, bias: F.conv1d(F.pad(x, ((k - 1) * dil, 0)), w, bias,
                                             dilation=dil),
                 (x, w, bias), (0, 1, 2), backend=_backend("causal_conv1d", "causal_conv1d"))]


CASES = {"attention": attention_cases, "decode": decode_cases, "gated": gated_cases,
         "wavenet_gate": wavenet_gate_cases, "masked_conv2d": masked_conv2d_cases,
         "shifted_conv2d": shifted_conv2d_cases, "causal_conv1d": causal_conv1d_cases}


# --------------------------------------------------------------------------- timing

def _calls(case: Case, pass_: str) -> tuple[Callable, Callable]:
    """(artrt call, plain call) of one pass."""
    if case.loop_pass == pass_:
        def loop(fn):
            def call():
                with torch.no_grad():
                    return fn()
            return call
        return loop(case.artrt), loop(case.plain)
    if pass_ == "no_grad":
        def fwd(fn):
            def call():
                with torch.no_grad():
                    return fn(*case.inputs)
            return call
        return fwd(case.artrt), fwd(case.plain)
    leaves = [case.inputs[i] for i in case.leaves]
    grad = torch.randn_like(case.plain(*case.inputs))

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(*case.inputs), leaves, grad)
    return fwd_bwd(case.artrt), fwd_bwd(case.plain)


def _max_err(a: Callable, b: Callable) -> float:
    out_a, out_b = a(), b()
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    return max(((x.detach() - y.detach()).abs().max().item() if x.numel() else 0.0)
               for x, y in zip(out_a, out_b, strict=True))


def time_pair(artrt_call: Callable, plain_call: Callable, smoke: bool
              ) -> tuple[float, float, int]:
    """Median ms per call of each, interleaved; and the number of samples."""
    calls = {"artrt": artrt_call, "plain": plain_call}
    number = {}
    for name, fn in calls.items():  # warm-up, then how many calls make a sample
        fn()
        start = time.perf_counter()
        fn()
        number[name] = 1 if smoke else max(1, int(MIN_SAMPLE_S / (time.perf_counter() - start)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    begin = time.perf_counter()
    i = 0
    while True:
        for name in (("artrt", "plain") if i % 2 == 0 else ("plain", "artrt")):
            fn, n = calls[name], number[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n * 1e3)
        i += 1
        if smoke or i >= MAX_SAMPLES or (i >= MIN_SAMPLES
                                        and time.perf_counter() - begin > BUDGET_S):
            break
    return statistics.median(times["artrt"]), statistics.median(times["plain"]), i


def run(families: list[str], smoke: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for family in families:
        for case in CASES[family](smoke, gen):
            for pass_ in (*case.passes, *([case.loop_pass] if case.loop_pass else [])):
                artrt_call, plain_call = _calls(case, pass_)
                err = _max_err(artrt_call, plain_call)
                artrt_ms, plain_ms, samples = time_pair(artrt_call, plain_call, smoke)
                ratio = artrt_ms / plain_ms
                met = "-" if smoke else "yes" if ratio <= case.target else "NO"
                row = {"family": family, "op": case.op, "shape": case.shape, "pass": pass_,
                       "backend": case.backend, "artrt_ms": artrt_ms, "plain_ms": plain_ms,
                       "ratio": ratio, "target": case.target, "met": met, "max_err": err,
                       "samples": samples}
                rows.append(row)
                print(f"{case.op:45s} {case.shape:24s} {pass_:9s} artrt {artrt_ms:9.3f} ms  "
                      f"plain {plain_ms:9.3f} ms  ratio {ratio:5.2f}  err {err:.1e}",
                      flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=FAMILIES, action="append",
                        help="run only this family (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one timed repetition: checks the code paths")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    env = common.environment("cpu")
    env["threads"] = str(torch.get_num_threads())
    print(", ".join(f"{k} {v}" for k, v in env.items()) + (" [smoke]" if args.smoke else ""))
    rows = run(args.only or list(FAMILIES), args.smoke)
    table = common.markdown_table(rows, COLUMNS)
    met = sum(r["met"] == "yes" for r in rows)
    table += ("\n\nratio = artrt / plain (median of interleaved samples); " + (
        "smoke pass: the times mean nothing." if args.smoke
        else f"{met} of {len(rows)} rows within target."))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower() or "cpu"
    stem = f"cpu-{slug}" + ("-smoke" if args.smoke else "")
    paths = common.write_results(args.out, stem, env, {"smoke": args.smoke, "rows": rows},
                                 table)
    print(f"\n{table}\n\nwrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
