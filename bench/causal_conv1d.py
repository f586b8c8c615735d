"""Benchmark: causal dilated conv1d and the fused WaveNet block against cuDNN, eager PyTorch
and torch.compile.

Cases (on a GPU), WaveNet at 16 kHz: B = 16, T = 16000, residual R = 64, gate G = 128
(the dilated conv maps 64 -> 256 channels), skip S = 128, kernel width 2.

* ``conv d=<d>``: ``causal_conv1d`` (B, 64, T) -> (B, 256, T), K = 2, for dilations 1 ... 512,
  against cuDNN ``F.conv1d`` on the input padded on the left (``F.pad``, the usual way) and
  the same in ``torch.compile``.
* ``block stack``: one WaveNet cycle, 10 gated residual blocks with dilations 1, 2, ..., 512,
  skip outputs summed; ``artrt.nn.WaveNetBlock`` against the unfused eager block (cuDNN convs,
  gate, 1x1 convs, residual add) and the same in ``torch.compile``.

FLOPs count multiply-adds twice; forward+backward counts 3x the forward (dx and dw each cost
a forward). GB/s counts the fewest bytes the forward must move (read x, write y).
"""

from __future__ import annotations

import torch

from artrt import backends
from artrt.nn.wavenet import WaveNetBlock
from artrt.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref, wavenet_block_ref
from bench.common import time_ms

B, T, R, G, S, K = 16, 16000, 64, 128, 128, 2
DILATIONS = [2 ** i for i in range(10)]  # 1 ... 512: one WaveNet cycle
DTYPES = [torch.bfloat16, torch.float32]
SMOKE = {"b": 2, "t": 33, "r": 3, "g": 4, "s": 5, "dilations": [2], "dtypes": [torch.float32]}

COLUMNS = [("case", "case"), ("shape", "shape"), ("dtype", "dtype"), ("pass", "pass"),
           ("impl", "impl"), ("ms", "ms"), ("tflops", "TFLOP/s"), ("gbs", "fwd GB/s"),
           ("vs_base", "x cuDNN/eager"), ("vs_compile", "x compile"), ("max_err", "max err"),
           ("note", "note")]


def _artrt_backends(device: str, smoke: bool) -> list[str]:
    names = [b for b in ("triton",) if backends.unavailable_reason(b, device) is None]
    if smoke and device == "cpu":
        names.insert(0, "reference")
    return names


def _compiled(fn):
    """torch.compile(fn); compiling happens at the first call, where a failure (e.g. no C++
    compiler on CPU) is caught by ``_time`` and recorded in the row's note."""
    return torch.compile(fn, fullgraph=True)


def _time(call, smoke: bool, baseline: bool):
    """(ms, None), or for a baseline (None, why it could not run); artrt errors propagate."""
    if not baseline:
        return time_ms(call, smoke), None
    try:
        return time_ms(call, smoke), None
    except Exception as e:  # a missing baseline is recorded, never fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"


def _rows(case, shape, dtype, impls, flops, fwd_bytes, base, want_fn, smoke):
    """Time each impl (fwd, fwd+bwd) and compare against ``base`` and 'torch.compile'."""
    times, errs, notes = {}, {}, {}
    for name, (fwd, fwd_bwd) in impls.items():
        times[name] = {}
        for pass_, call in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            times[name][pass_], why = _time(call, smoke, not name.startswith("artrt-"))
            notes[name] = notes.get(name) or why
        if times[name]["fwd"] is not None:
            errs[name] = want_fn(fwd())
    rows = []
    for name in impls:
        for pass_ in ("fwd", "fwd+bwd"):
            ms = times[name][pass_]
            base_ms = times.get(base, {}).get(pass_)
            comp_ms = times.get("torch.compile", {}).get(pass_)
            work = flops * (3 if pass_ == "fwd+bwd" else 1)
            rows.append({
                "case": case, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
                "pass": pass_, "impl": name, "ms": ms,
                "tflops": None if ms is None else work / (ms * 1e-3) / 1e12,
                "gbs": None if ms is None or pass_ != "fwd" else fwd_bytes / (ms * 1e-3) / 1e9,
                "vs_base": None if ms is None or base_ms is None else base_ms / ms,
                "vs_compile": None if ms is None or comp_ms is None else comp_ms / ms,
                "max_err": errs.get(name), "note": notes.get(name)})
    return rows


def _conv_rows(device, smoke, dtype, d, b, t, cin, cout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, cin, t, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(cout, cin, K, generator=gen) / (cin * K) ** 0.5).to(device, dtype)
    w.requires_grad_()
    bias = torch.randn(cout, generator=gen).to(device, dtype)
    dy = torch.randn(b, cout, t, generator=gen).to(device, dtype)
    want = causal_conv1d_ref(x.detach().float(), w.detach().float(), bias.float(), d)

    def pair(fn):
        return (lambda: fn(x.detach(), w.detach()),
                lambda: torch.autograd.grad(fn(x, w), (x, w), dy))

    def ref(x, w):
        return causal_conv1d_ref(x, w, bias, d)

    impls = {"cuDNN": pair(ref), "torch.compile": pair(_compiled(ref))}
    for name in _artrt_backends(device, smoke):
        impls[f"artrt-{name}"] = pair(
            lambda x, w, name=name: causal_conv1d(x, w, bias, d, backend=name))
    flops = 2 * b * t * cout * cin * K
    fwd_bytes = b * t * (cin + cout) * x.element_size()
    return _rows(f"conv d={d}", f"{b}x{cin}->{cout}x{t}", dtype, impls, flops, fwd_bytes,
                 "cuDNN", lambda y: (y.float() - want).abs().max().item(), smoke)


def _block_rows(device, smoke, dtype, dilations, b, t, r, g, s):
    torch.manual_seed(0)
    blocks = [WaveNetBlock(r, g, s, K, d).to(device, dtype) for d in dilations]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, r, t, generator=gen).to(device, dtype).requires_grad_()
    dys = (torch.randn(b, r, t, generator=gen).to(device, dtype),
           torch.randn(b, s, t, generator=gen).to(device, dtype))
    params = [p for blk in blocks for p in blk.parameters()]

    def eager(x, *params):
        skip_sum = 0
        for i, blk in enumerate(blocks):
            cw, cb, rw, rb, sw, sb = params[6 * i: 6 * i + 6]
            x, skip = wavenet_block_ref(x, cw, cb, rw, rb, sw, sb, blk.conv.dilation[0])
            skip_sum = skip_sum + skip
        return x, skip_sum

    def fused(name):
        def fn(x, *_):
            with backends.use_backend(name):
                skip_sum = 0
                for blk in blocks:
                    x, skip = blk(x)
                    skip_sum = skip_sum + skip
                return x, skip_sum
        return fn

    def pair(fn):
        def fwd():
            with torch.no_grad():
                return fn(x, *params)
        return (fwd, lambda: torch.autograd.grad(fn(x, *params), [x, *params], dys))

    impls = {"eager": pair(eager), "torch.compile": pair(_compiled(eager))}
    for name in _artrt_backends(device, smoke):
        impls[f"artrt-{name}"] = pair(fused(name))
    with torch.no_grad():
        want = [y.float() for y in eager(x.float(), *(p.float() for p in params))]
    per_layer = 2 * b * t * (2 * g * r * K + (r + s) * g)
    flops = per_layer * len(blocks)
    fwd_bytes = len(blocks) * b * t * (r + r + s) * x.element_size()

    def err(out):
        return max((o.float() - w).abs().max().item() for o, w in zip(out, want, strict=True))

    return _rows(f"block stack d={dilations[0]}..{dilations[-1]}", f"{b}x({r}->{g})x{t}",
                 dtype, impls, flops, fwd_bytes, "eager", err, smoke)


def run(device: str, smoke: bool, copy_gbs: float) -> list[dict]:
    del copy_gbs  # the conv and the block are reported in TFLOP/s and speed-ups
    rows = []
    if smoke:
        c = SMOKE
        for dtype in c["dtypes"]:
            for d in c["dilations"]:
                torch._dynamo.reset()
                rows += _conv_rows(device, smoke, dtype, d, c["b"], c["t"], c["r"], 2 * c["g"])
            torch._dynamo.reset()
            rows += _block_rows(device, smoke, dtype, c["dilations"], c["b"], c["t"], c["r"],
                                c["g"], c["s"])
        return rows
    for dtype in DTYPES:
        for d in DILATIONS:
            torch._dynamo.reset()
            rows += _conv_rows(device, smoke, dtype, d, B, T, R, 2 * G)
        torch._dynamo.reset()
        rows += _block_rows(device, smoke, dtype, DILATIONS, B, T, R, G, S)
    return rows


def summary(rows: list[dict]) -> list[str]:
    """The issue's targets on bf16 rows of the fastest artrt backend: the fused WaveNet block
    >= 2x eager and >= 1.2x torch.compile; causal conv1d >= cuDNN with left padding."""
    lines = []
    keys = sorted({(r["case"], r["pass"]) for r in rows if r["dtype"] == "bfloat16"})
    for case, pass_ in keys:
        cands = [r for r in rows if r["case"] == case and r["pass"] == pass_
                 and r["dtype"] == "bfloat16" and r["impl"].startswith("artrt-")
                 and r["ms"] is not None]
        if not cands:
            continue
        best = min(cands, key=lambda r: r["ms"])
        vs_base, vs_comp = best["vs_base"] or 0.0, best["vs_compile"] or 0.0
        if case.startswith("block"):
            met = vs_base >= 2 and vs_comp >= 1.2
            what = f"{vs_base:.2f}x eager (>= 2), {vs_comp:.2f}x compile (>= 1.2)"
        else:
            met = vs_base >= 1
            what = f"{vs_base:.2f}x cuDNN (>= 1), {vs_comp:.2f}x compile"
        lines.append(f"{case} bf16 {pass_}, {best['impl']}: {what}: "
                     f"{'met' if met else 'MISSED'}")
    return lines
