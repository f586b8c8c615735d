"""Benchmark: fused gated activations against eager PyTorch and torch.compile.

Bytes are the fewest the op must move, counted the same for every implementation:
forward reads x (2N) and writes y (N); backward reads x (2N) and dy (N) and writes dx (2N),
N = y.numel(). Forward+backward therefore moves 8N elements.
"""

from __future__ import annotations

import torch

import artrt
from artrt import backends
from artrt.ops.gated import gated_sigmoid_ref, gated_tanh_ref
from bench.common import time_ms

# (x shape with 2C on dim 1, dtype): a Gated PixelCNN activation (B=64, 2C=256, 32x32) and a
# WaveNet one (B=16, 2C=512, T=16000).
SHAPES = [
    ((64, 256, 32, 32), torch.bfloat16),
    ((16, 512, 16000), torch.bfloat16),
    ((64, 256, 32, 32), torch.float32),
    ((16, 512, 16000), torch.float32),
]
SMOKE_SHAPES = [((2, 8, 5, 7), torch.float32)]

GATES = {"tanh": (artrt.gated_tanh, gated_tanh_ref),
         "sigmoid": (artrt.gated_sigmoid, gated_sigmoid_ref)}

COLUMNS = [("gate", "gate"), ("shape", "x shape"), ("dtype", "dtype"), ("pass", "pass"),
           ("impl", "impl"), ("ms", "ms"), ("gbs", "GB/s"), ("pct_copy", "% copy BW"),
           ("vs_eager", "x eager"), ("vs_compile", "x compile"), ("max_err", "max err")]


def _implementations(fn, ref, device: str, smoke: bool) -> dict:
    impls = {"eager": ref, "torch.compile": torch.compile(ref, fullgraph=True)}
    names = [b for b in backends.BACKENDS if b != "reference"
             and backends.unavailable_reason(b, device) is None]
    if smoke and device == "cpu":
        names.insert(0, "reference")
    for name in names:
        impls[f"artrt-{name}"] = lambda x, name=name: fn(x, backend=name)
    return impls


def _time_case(impl, x: torch.Tensor, dy: torch.Tensor, smoke: bool) -> dict[str, float]:
    """Median ms of the forward alone and of forward + backward."""
    x_in = x.detach()
    return {"fwd": time_ms(lambda: impl(x_in), smoke),
            "fwd+bwd": time_ms(lambda: torch.autograd.grad(impl(x), x, dy), smoke)}


def run(device: str, smoke: bool, copy_gbs: float) -> list[dict]:
    rows = []
    for shape, dtype in SMOKE_SHAPES if smoke else SHAPES:
        for gate, (fn, ref) in GATES.items():
            torch._dynamo.reset()
            x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
            want = ref(x.detach().float())
            dy = torch.randn_like(want).to(dtype)
            elems = {"fwd": 3 * want.numel(), "fwd+bwd": 8 * want.numel()}
            impls = _implementations(fn, ref, device, smoke)
            times = {name: _time_case(impl, x, dy, smoke) for name, impl in impls.items()}
            for name, impl in impls.items():
                err = (impl(x.detach()).float() - want).abs().max().item()
                for pass_, ms in times[name].items():
                    gbs = elems[pass_] * x.element_size() / (ms * 1e-3) / 1e9
                    rows.append({"gate": gate, "shape": "x".join(map(str, shape)),
                                 "dtype": str(dtype).removeprefix("torch."), "pass": pass_,
                                 "impl": name, "ms": ms, "gbs": gbs,
                                 "pct_copy": 100 * gbs / copy_gbs,
                                 "vs_eager": times["eager"][pass_] / ms,
                                 "vs_compile": times["torch.compile"][pass_] / ms,
                                 "max_err": err})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """The foundation targets, judged on bf16 forward+backward rows of the fastest artrt
    backend: >= 85% of copy bandwidth, >= 2x eager, >= 1x torch.compile."""
    lines = []
    for gate in GATES:
        for shape in sorted({r["shape"] for r in rows}):
            cands = [r for r in rows if r["gate"] == gate and r["shape"] == shape
                     and r["dtype"] == "bfloat16" and r["pass"] == "fwd+bwd"
                     and r["impl"].startswith("artrt-")]
            if not cands:
                continue
            best = min(cands, key=lambda r: r["ms"])
            met = best["pct_copy"] >= 85 and best["vs_eager"] >= 2 and best["vs_compile"] >= 1
            lines.append(f"{gate} {shape} bf16 fwd+bwd, {best['impl']}: {best['pct_copy']:.0f}% "
                         f"of copy BW, {best['vs_eager']:.2f}x eager, "
                         f"{best['vs_compile']:.2f}x compile: {'met' if met else 'MISSED'}")
    return lines
