"""Benchmark: cached (incremental) sampling against the plain loop, in samples per second.

WaveNet (20 layers, dilations 1..512 twice, residual 64, skip 128, 256 levels): the plain
loop (one full forward pass per sample) against the Fast WaveNet cache driven by the torch
reference step, by the CUDA step kernel one launch per sample, and by the kernel replayed
from captured CUDA graphs; a batch sweep 1..256 for the cached samplers. PixelCNN++ at CIFAR
size (160 filters, 5 blocks per stage), cached against plain at batch 1 and 256 (at 256 the
plain loop, one full pass per pixel, would take minutes: its time is that of its first
``PIXELCNNPP_PLAIN_POSITIONS`` pixels scaled to all 1024, every pass costing the same; no
samples to compare there, so no mismatch on that row). The
ARTransformer decode (KV cache) in tokens/s and as a share of the measured copy bandwidth.
Then every model of ``artrt.models.MODELS``, cached (its ``new_cache``) against plain at a
small config; models without a cache are listed as skipped.

``python -m bench.sampling`` runs the CPU comparison instead: every model at its default
sizes on a 12 x 12 image (or a 144-step sequence), batch 4, one thread, the median of 3 runs
after a warm-up run.

A sampling run takes milliseconds to seconds, so each time is the median of a few whole runs
on the host clock (after a warm-up run that also captures the graphs), with the device
synchronised around each, not ``do_bench``; the smoke pass times one run without warm-up.
``max_err`` is the fraction of positions whose sample differs from the plain loop's for the
same uniforms (exact sampling: 0).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

import artrt
from artrt.models import (
    MODELS,
    ARTransformer,
    ARTransformerConfig,
    PixelCNNpp,
    PixelCNNppConfig,
    WaveNet,
    WaveNetConfig,
)

WAVENET = {"layers": 20, "dilation_cycle": 10, "res_channels": 64, "gate_channels": 64,
           "skip_channels": 128, "levels": 256}
SMOKE_WAVENET = {"layers": 4, "dilation_cycle": 4, "res_channels": 8, "gate_channels": 8,
                 "skip_channels": 16, "levels": 16, "cond_channels": 4}
# (length, batches, impls): the comparison at a length where the plain loop is affordable,
# then the batch sweep of the cached samplers.
PLAN = [(512, [1], ["plain", "artrt-reference", "artrt-cuda", "artrt-cuda-graph"]),
        (2048, [1, 2, 4, 8, 16, 32, 64, 128, 256], ["artrt-cuda-graph"]),
        (2048, [1, 16, 256], ["artrt-cuda", "artrt-reference"])]
SMOKE_PLAN = [(12, [1, 2], ["plain", "artrt-reference"])]
LOWP_BATCHES = [1, 256]  # bf16 weights, graph sampler
# Shapes tried in turn for the other models (the first one each config accepts).
GPU_SHAPES = [(1, 8, 8), (1, 64)]
SMOKE_SHAPES = [(1, 2, 2), (1, 4), (1, 4, 4), (1, 16)]
TARGET_SAMPLES_S, TARGET_VS_PLAIN = 43_000, 100
# PixelCNN++ at CIFAR size (the paper's 160 filters, 5 blocks per stage, 10 logistics): the
# cached sampler against the plain loop (Fast PixelCNN++: >= 183x at batch 256, >= 10x at 1).
PIXELCNNPP = {"channels": 160, "blocks": 5, "stages": 3, "num_mix": 10, "dropout": 0.0}
PIXELCNNPP_TARGETS = {256: 183, 1: 10}
PIXELCNNPP_PLAIN_POSITIONS = {256: 64}  # batch -> pixels the plain loop is timed over
# ARTransformer decode over a 32 x 32 image (1024 tokens): tokens/s and the bytes the decode
# must read (weights, plus the keys and values of every earlier token in every layer) per
# second, against the measured copy bandwidth.
TRANSFORMER = {"dim": 512, "heads": 8, "layers": 8, "mlp_ratio": 4, "levels": 256}
TRANSFORMER_BATCHES = [1, 64]
# On a CPU without --smoke (python -m bench.sampling): every model at its default sizes on a
# small image or sequence, cached against plain, so a user without a GPU sees the gain.
CPU_SHAPES = [(1, 12, 12), (1, 144)]
CPU_BATCH = 4

COLUMNS = [("model", "model"), ("impl", "impl"), ("dtype", "dtype"), ("batch", "batch"),
           ("length", "length"), ("ms", "ms / run"), ("samples_s", "samples/s"),
           ("vs_plain", "x plain"), ("pct_copy_bw", "% copy bw"), ("max_err", "mismatch"),
           ("note", "note")]


def _seconds(fn: Callable[[], torch.Tensor], device: str, repeats: int
             ) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` calls after one warm-up call (none when repeats is 1:
    the smoke pass), and the last output."""
    if repeats > 1:
        fn()
    times, out = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _sampler(model, n: int, cond, u: torch.Tensor | None, impl: str
             ) -> Callable[[], torch.Tensor]:
    """A call that samples n with ``impl``: from the uniforms u, or (u None: any model's own
    uniform layout) from a generator seeded the same for every implementation."""
    device = next(model.parameters()).device

    def kw():
        if u is not None:
            return {"uniforms": u}
        return {"generator": torch.Generator(device=device).manual_seed(0)}

    if impl == "plain":
        return lambda: model.sample(n, cond, cache=False, **kw())
    if impl == "artrt-cached":  # any model: its own cache, default backends
        cache = model.new_cache(n, cond)
        return lambda: model.sample(n, cond, cache=cache, **kw())
    backend = "reference" if impl == "artrt-reference" else "cuda"
    cache = model.new_cache(n, cond, cuda_graph=impl == "artrt-cuda-graph")

    def sample():
        with artrt.use_backend(backend):
            return model.sample(n, cond, cache=cache, **kw())

    return sample


def _measure(rows: list[dict], model, label: str, impls: list[str], batch: int, device: str,
             repeats: int, dtype: torch.dtype = torch.float32, seeded: bool = False) -> None:
    """Time each implementation on the same uniforms (``seeded``: the same generator seed
    instead); rows get samples/s and, when the plain loop is among ``impls``, the speed-up
    over it and the fraction of samples that differ from its."""
    cfg = model.config
    length = math.prod(cfg.shape)
    g = torch.Generator(device=device).manual_seed(0)
    u = None if seeded else torch.rand((batch, *cfg.shape), generator=g, device=device)
    cond = (torch.arange(batch, device=device) % cfg.num_classes if cfg.num_classes else None)
    found = [(impl, *_seconds(_sampler(model, batch, cond, u, impl), device, repeats))
             for impl in impls]
    plain = next((out for i, _, out in found if i == "plain"), None)
    plain_secs = next((s for i, s, _ in found if i == "plain"), None)
    for impl, secs, out in found:
        rows.append({"model": label, "impl": impl, "dtype": str(dtype).removeprefix("torch."),
                     "batch": batch, "length": length, "ms": secs * 1e3,
                     "samples_s": batch * length / secs,
                     "vs_plain": plain_secs / secs if plain_secs else None,
                     "max_err": (None if plain is None
                                 else (out != plain).double().mean().item())})


def _wavenet(length: int, sizes: dict, device: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return WaveNet(WaveNetConfig((1, length), **sizes)).to(device=device, dtype=dtype).eval()


def _small_model(model_cls, config_cls, device: str, shapes: list[tuple[int, ...]]):
    """The model at its default sizes on the first of ``shapes`` its config accepts."""
    for shape in shapes:
        try:
            torch.manual_seed(0)
            return model_cls(config_cls(shape=shape)).to(device).eval()
        except ValueError:
            continue
    raise ValueError(f"{model_cls.__name__}: takes none of the shapes {shapes}")


def _pixelcnnpp_scaled_plain(rows: list[dict], model, batch: int, device: str,
                             positions: int) -> None:
    """PixelCNN++ cached (one whole run) against the plain loop timed over its first
    ``positions`` pixels (one full pass and draw each, after a warm-up pass) and scaled to
    the whole image."""
    _measure(rows, model, "pixelcnnpp-cifar", ["artrt-cached"], batch, device, 1,
             seeded=True)
    cached = rows[-1]
    _, h, w = model.shape
    g = torch.Generator(device=device).manual_seed(0)
    u = torch.rand((batch, *model._uniforms_shape()), generator=g, device=device)
    x = torch.zeros((batch, *model.shape), dtype=torch.int64, device=device)
    with torch.no_grad():
        model(x)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        for p in range(positions):
            i, j = divmod(p, w)
            x[:, :, i, j] = model._pixel(model(x)[:, :, i, j], u[:, :, i, j])
        torch.cuda.synchronize()
        secs = (time.perf_counter() - start) * (h * w) / positions
    rows.append({"model": "pixelcnnpp-cifar", "impl": "plain", "dtype": "float32",
                 "batch": batch, "length": cached["length"], "ms": secs * 1e3,
                 "samples_s": batch * cached["length"] / secs,
                 "note": f"{positions} of {h * w} pixels timed, scaled"})
    cached.update(vs_plain=secs / (cached["ms"] * 1e-3),
                  note=f"vs plain scaled from {positions} pixels")


def _decode_bytes(model: ARTransformer, batch: int) -> int:
    """Bytes one whole decode of ``batch`` sequences must read at least: every parameter once
    per step, and at step t the keys and values of the t earlier tokens in every layer."""
    cfg = model.config
    tokens = math.prod(cfg.shape)
    elt = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) * elt
    kv = 2 * cfg.layers * cfg.dim * elt * batch * tokens * (tokens - 1) // 2
    return weights * tokens + kv


def _transformer_decode(rows: list[dict], device: str, copy_gbs: float, repeats: int) -> None:
    torch.manual_seed(0)
    model = ARTransformer(ARTransformerConfig((1, 32, 32), **TRANSFORMER)).to(device).eval()
    for batch in TRANSFORMER_BATCHES:
        start = len(rows)
        _measure(rows, model, "transformer-decode", ["artrt-cached"], batch, device, repeats)
        for row in rows[start:]:
            gbs = _decode_bytes(model, batch) / (row["ms"] * 1e-3) / 1e9
            row.update(pct_copy_bw=100 * gbs / copy_gbs, note="samples/s = tokens/s")


def run_cpu(rows: list[dict], repeats: int = 1) -> None:
    """Every model at its default sizes on ``CPU_SHAPES``, cached against plain, batch
    ``CPU_BATCH``, on the CPU (the reference ops)."""
    for name, (model_cls, config_cls) in MODELS.items():
        model = _small_model(model_cls, config_cls, "cpu", CPU_SHAPES)
        _measure(rows, model, name, ["plain", "artrt-cached"], CPU_BATCH, "cpu", repeats,
                 seeded=True)


def run(device: str, smoke: bool, copy_gbs: float) -> list[dict]:
    rows: list[dict] = []
    on_gpu = device == "cuda" and not smoke
    sizes = WAVENET if on_gpu else SMOKE_WAVENET
    repeats = 3 if on_gpu else 1
    label = "wavenet-20" if on_gpu else "wavenet-tiny"
    for length, batches, impls in PLAN if on_gpu else SMOKE_PLAN:
        model = _wavenet(length, sizes, device)
        for batch in batches:
            _measure(rows, model, label, impls, batch, device, repeats)
    if on_gpu:
        model = _wavenet(PLAN[1][0], sizes, device, torch.bfloat16)
        for batch in LOWP_BATCHES:
            _measure(rows, model, label, ["artrt-cuda-graph"], batch, device, repeats,
                     torch.bfloat16)
    if on_gpu:
        torch.manual_seed(0)
        model = PixelCNNpp(PixelCNNppConfig((3, 32, 32), **PIXELCNNPP)).to(device).eval()
        for batch in PIXELCNNPP_TARGETS:  # one run each: the plain loop takes minutes
            positions = PIXELCNNPP_PLAIN_POSITIONS.get(batch)
            if positions is None:
                _measure(rows, model, "pixelcnnpp-cifar", ["plain", "artrt-cached"], batch,
                         device, 1, seeded=True)
            else:
                _pixelcnnpp_scaled_plain(rows, model, batch, device, positions)
        _transformer_decode(rows, device, copy_gbs, repeats)
    for name, (model_cls, config_cls) in MODELS.items():
        try:
            model = _small_model(model_cls, config_cls, device,
                                 GPU_SHAPES if on_gpu else SMOKE_SHAPES)
            _measure(rows, model, name, ["plain", "artrt-cached"], 2, device, repeats,
                     seeded=True)
        except NotImplementedError as e:
            rows.append({"model": name, "impl": "artrt-cached", "batch": 2,
                         "note": f"skipped: {e}"})
        except Exception as e:  # a model whose cache is being written elsewhere: report it
            rows.append({"model": name, "impl": "artrt-cached", "batch": 2,
                         "note": f"failed: {type(e).__name__}: {e}"[:120]})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """WaveNet at batch 1: the fastest cached sampler's samples/s (target >= 43,000) and its
    speed-up over the plain eager loop at the same length (target >= 100x); whether every
    cached sampler matched the plain loop; the models skipped or failing."""
    lines = []
    for label in sorted({r["model"] for r in rows if r["model"].startswith("wavenet-")}):
        cached = [r for r in rows if r["model"] == label and r["impl"].startswith("artrt-")
                  and r["batch"] == 1 and r.get("samples_s")]
        if not cached:
            continue
        best = max(cached, key=lambda r: r["samples_s"])
        met = best["samples_s"] >= TARGET_SAMPLES_S
        lines.append(f"{label} batch 1, {best['impl']} ({best['dtype']}, length "
                     f"{best['length']}): {best['samples_s']:.0f} samples/s (target >= "
                     f"{TARGET_SAMPLES_S}): {'met' if met else 'MISSED'}")
        same = [r for r in cached if r.get("vs_plain")]
        if same:
            top = max(same, key=lambda r: r["vs_plain"])
            met = top["vs_plain"] >= TARGET_VS_PLAIN
            lines.append(f"{label} batch 1, {top['impl']} vs the plain eager loop (length "
                         f"{top['length']}): {top['vs_plain']:.0f}x (target >= "
                         f"{TARGET_VS_PLAIN}x): {'met' if met else 'MISSED'}")
    for batch, target in PIXELCNNPP_TARGETS.items():
        row = next((r for r in rows if r["model"] == "pixelcnnpp-cifar"
                    and r["impl"] == "artrt-cached" and r["batch"] == batch), None)
        if row is not None:
            lines.append(f"pixelcnnpp-cifar batch {batch}: cached {row['vs_plain']:.0f}x the "
                         f"plain loop (target >= {target}x): "
                         f"{'met' if row['vs_plain'] >= target else 'MISSED'}")
    for row in (r for r in rows if r["model"] == "transformer-decode"):
        lines.append(f"transformer decode batch {row['batch']}: {row['samples_s']:.0f} "
                     f"tokens/s, {row['pct_copy_bw']:.0f}% of the copy bandwidth")
    mism = [r["max_err"] for r in rows if r.get("max_err") is not None]
    if mism:
        lines.append("cached samples equal the plain loop's: "
                     + ("yes" if max(mism) == 0 else f"NO (mismatch up to {max(mism):.3g})"))
    for what in ("skipped", "failed"):
        names = sorted(r["model"] for r in rows if str(r.get("note") or "").startswith(what))
        if names:
            lines.append(f"cached sampling {what}: {', '.join(names)}")
    return lines


def main() -> int:
    """The CPU comparison (``run_cpu``), written to ``bench/results/sampling-<cpu>.md``."""
    from pathlib import Path

    from bench.common import environment, markdown_table, write_results

    torch.set_num_threads(1)
    rows: list[dict] = []
    run_cpu(rows, repeats=3)
    env = {**environment("cpu"), "threads": "1"}
    table = markdown_table(rows, COLUMNS)
    lines = summary(rows)
    if lines:
        table += "\n\nTargets:\n" + "\n".join(f"- {line}" for line in lines)
    slug = "".join(c if c.isalnum() else "-" for c in env["device"].lower()).strip("-")
    paths = write_results(Path(__file__).parent / "results", f"sampling-cpu-{slug}", env,
                          {"smoke": False, "rows": rows}, table)
    print(table + "\n\nwrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
