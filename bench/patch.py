"""Benchmark: a model written the way public code writes it, before and after
``artrt.patch``.

Two models, each our own code in the common public style:

- ``pixelcnn``: PixelCNN with mask-buffer convolutions (``F.conv2d(x, weight * mask)``):
  a 7x7 mask-A colour-grouped first layer, residual blocks of a 3x3 mask-B convolution and a
  ``tanh * sigmoid`` gate module, a 1x1 mask-B output layer;
- ``gpt``: nanoGPT-style blocks (LayerNorm, fused-qkv attention with
  ``F.scaled_dot_product_attention(is_causal=True)``, MLP).

Rows: the unpatched model in eager mode, the same under ``torch.compile`` and the patched
model (``artrt.patch``), forward and forward + backward; ``max err`` is the patched (or
compiled) output against the unpatched one in float32. On a GPU the patched model runs
artrt's Triton kernels; on the CPU (smoke pass) its reference or cpu backends.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import artrt
from bench.common import time_ms

COLUMNS = [("model", "model"), ("shape", "shape"), ("dtype", "dtype"), ("pass", "pass"),
           ("impl", "impl"), ("ms", "ms"), ("vs_eager", "x eager"),
           ("vs_compile", "x compile"), ("replaced", "layers replaced"),
           ("max_err", "max err"), ("note", "note")]

# (model, batch, size: image side or sequence length, channels, layers, dtype)
FULL = [("pixelcnn", 32, 32, 192, 6, torch.float32), ("pixelcnn", 32, 32, 192, 6, torch.bfloat16),
        ("gpt", 16, 1024, 512, 4, torch.float32), ("gpt", 16, 1024, 512, 4, torch.bfloat16)]
SMOKE = [("pixelcnn", 2, 8, 12, 2, torch.float32), ("gpt", 2, 16, 32, 1, torch.float32)]


class _MaskedConv(nn.Conv2d):
    def __init__(self, cin, cout, k, mask_type, groups=1):
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        c = k // 2
        mask[:, :, c, c:] = 0
        mask[:, :, c + 1:] = 0
        go = torch.arange(cout) // (cout // groups)
        gi = torch.arange(cin) // (cin // groups)
        see = gi[None] < go[:, None] if mask_type == "A" else gi[None] <= go[:, None]
        mask[:, :, c, c] = see.float()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class _Gate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, 1)
        return torch.tanh(a) * torch.sigmoid(b)


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = _MaskedConv(c, 2 * c, 3, "B", groups=3)
        self.gate = _Gate()

    def forward(self, x):
        return x + self.gate(self.conv(x))


class PixelCNN(nn.Module):
    def __init__(self, c, layers):
        super().__init__()
        self.first = _MaskedConv(3, c, 7, "A", groups=3)
        self.blocks = nn.Sequential(*[_Residual(c) for _ in range(layers)])
        self.out = _MaskedConv(c, 3 * 256, 1, "B", groups=3)

    def forward(self, x):
        return self.out(self.blocks(self.first(x)))


class _Attention(nn.Module):
    def __init__(self, c, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class _Block(nn.Module):
    def __init__(self, c, n_head):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = _Attention(c, n_head)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c, layers):
        super().__init__()
        self.blocks = nn.Sequential(*[_Block(c, max(1, c // 64)) for _ in range(layers)])

    def forward(self, x):
        return self.blocks(x)


def _model_and_input(name, b, size, c, layers):
    """(the unpatched model, its float32 CPU input, the shape label) of one case, seeded."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "pixelcnn":
        return (PixelCNN(c, layers), torch.rand(b, 3, size, size, generator=gen) * 2 - 1,
                f"{b},3,{size},{size} C={c} L={layers}")
    return GPT(c, layers), torch.randn(b, size, c, generator=gen), f"{b},{size},{c} L={layers}"


def _case(name, b, size, c, layers, dtype, device, smoke):
    eager, x, shape = _model_and_input(name, b, size, c, layers)
    eager = eager.to(device, dtype)
    x = x.to(device, dtype)
    patched = copy.deepcopy(eager)
    report = artrt.patch(patched)
    with torch.no_grad():
        want = eager.float()(x.float())
        eager.to(dtype)
    impls = {"eager": eager, "artrt.patch": patched}
    notes = {}
    try:
        impls["torch.compile"] = torch.compile(
            eager, fullgraph=True, backend="aot_eager" if smoke else "inductor")
    except Exception as e:  # noqa: BLE001 - recorded in the results, never fatal
        notes["torch.compile"] = f"{type(e).__name__}: {e}"[:200]
    times, errs = {}, {}
    for impl, model in impls.items():
        xg = x.clone().requires_grad_()

        def step(model=model, xg=xg):
            model(xg).float().sum().backward()

        try:
            with torch.no_grad():
                t_fwd = time_ms(lambda model=model: model(x), smoke)
                out = model(x)
            times[impl] = {"fwd": t_fwd, "fwd+bwd": time_ms(step, smoke)}
            errs[impl] = (out.float() - want).abs().max().item()
        except Exception as e:  # noqa: BLE001
            notes[impl] = f"{type(e).__name__}: {e}"[:200]
    rows = []
    for impl in impls:
        if impl not in times:
            rows.append({"model": name, "shape": shape, "impl": impl, "note": notes[impl]})
            continue
        for pass_, ms in times[impl].items():
            row = {"model": name, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
                   "pass": pass_, "impl": impl, "ms": ms, "max_err": errs[impl]}
            if impl == "artrt.patch":
                row["replaced"] = len(report.replaced)
            for ref, col in (("eager", "vs_eager"), ("torch.compile", "vs_compile")):
                if ref in times:
                    row[col] = times[ref][pass_] / ms
            rows.append(row)
    return rows


def run(device: str, smoke: bool, copy_gbs: float) -> list[dict]:
    del copy_gbs  # whole models: times only
    rows = []
    for case in SMOKE if smoke else FULL:
        torch._dynamo.reset()
        rows += _case(*case, device, smoke)
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Speed-up of the patched model over eager and compile, forward + backward (GPU)."""
    return [f"{r['model']} {r['shape']} {r['dtype']} fwd+bwd: {r.get('vs_eager', 0):.2f}x eager,"
            f" {r.get('vs_compile') or float('nan'):.2f}x compile"
            for r in rows if r.get("impl") == "artrt.patch" and r.get("pass") == "fwd+bwd"
            and not r.get("note") and torch.cuda.is_available()]


# The CPU report (bench/results/patch-cpu.md): small shapes, one thread, float32.
CPU_CASES = [("pixelcnn", 8, 16, 48, 3), ("gpt", 4, 256, 128, 2)]


def cpu_report(smoke: bool = False) -> str:
    """Patched against unpatched on the CPU, one thread, each pass timed by bench.cpu's
    interleaved medians: the markdown of bench/results/patch-cpu.md."""
    import datetime
    import platform

    from bench.common import _cpu_name
    from bench.cpu import time_pair

    torch.set_num_threads(1)
    lines = [
        "| model | shape | pass | layers replaced | unpatched ms | patched ms | ratio | "
        "max err |", "|---|---|---|---|---|---|---|---|"]
    for name, b, size, c, layers in CPU_CASES[:1] if smoke else CPU_CASES:
        eager, x, shape = _model_and_input(name, b, size, c, layers)
        patched = copy.deepcopy(eager)
        replaced = len(artrt.patch(patched).replaced)
        with torch.no_grad():
            err = (patched(x) - eager(x)).abs().max().item()
        xg = x.clone().requires_grad_()

        def fwd(model, x=x):
            def call():
                with torch.no_grad():
                    return model(x)
            return call

        def step(model, xg=xg):
            def call():
                model(xg).sum().backward()
            return call

        for pass_, make in (("no_grad", fwd), ("fwd+bwd", step)):
            patched_ms, eager_ms, _ = time_pair(make(patched), make(eager), smoke)
            lines.append(f"| {name} | {shape} | {pass_} | {replaced} | {eager_ms:.2f} | "
                         f"{patched_ms:.2f} | {patched_ms / eager_ms:.2f} | {err:.1e} |")
    head = (f"# patch-cpu\n\n{_cpu_name()}, 1 thread, torch {torch.__version__}, python "
            f"{platform.python_version()}, {datetime.date.today()}; medians of interleaved "
            f"samples (bench.cpu's timer); ratio = patched / unpatched (below 1: the patched "
            f"model is faster). Models of bench/patch.py (public-style code: mask-buffer "
            f"convolutions and a gate module; nanoGPT blocks with SDPA). Written by "
            f"`python -m bench.patch --cpu`.\n\n")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from bench.common import markdown_table

    if "--cpu" in sys.argv[1:]:
        out = Path(__file__).parent / "results" / "patch-cpu.md"
        out.write_text(cpu_report())
        print(out.read_text())
        raise SystemExit(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    table = markdown_table(run(dev, dev == "cpu", 0.0), COLUMNS)
    print(table)
