"""``artrt demo``: what artrt is for, on the machine at hand, in a few minutes.

1. The fused gated activation on every available backend against its reference.
2. A model trained on binarized MNIST-5k (the 4,000 training digits; test NLL on the 1,000
   test digits) with a progress bar, the test NLL measured a few times on the way.
3. Samples: the grid drawn with the incremental cache (class-conditional: one row per
   digit class), then a few samples drawn both with the cache and with the plain loop (one
   full network pass per generation step), the two times and the speed-up.
4. Into ``out``: ``samples.png``, ``loss.png`` (training and test NLL against the step),
   ``report.md`` (both pictures and the numbers) and the run's ``ckpt.pt`` and
   ``metrics.jsonl``.

The default model is the class-conditional multiscale PixelCNN (:data:`DEMOS`): of the
models that fit about two minutes on a 2-core CPU it drew the most recognisable digits (it
draws a coarse 7 x 7 digit first and refines it, so the global shape comes first), and its
labels make the grid easy to judge (row k: digit k); its cache samples in O(log N) network
passes. Every model of :data:`artrt.models.MODELS` has a budget of its own that finishes in
a few minutes on a CPU (``artrt demo --model NAME``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from artrt import backends

DATA = "mnist5k-binary"
# The README's table "Test NLL on binarized MNIST-5k" (python -m bench.nll): every model,
# unconditional, default config, after 300 Adam steps at batch 32, lr 1e-3; (model, test NLL
# in nats per image, bits/dim), best first. A test keeps it equal to the README.
TABLE_300 = (
    ("PixelCNNpp", 67.42, 0.1241),
    ("GatedPixelCNN", 73.49, 0.1352),
    ("PixelCNN", 74.39, 0.1369),
    ("WaveNet", 77.90, 0.1434),
    ("MultiscalePixelCNN", 79.30, 0.1459),
    ("ARRNN", 96.97, 0.1785),
    ("ARTransformer", 135.79, 0.2499),
    ("MADE", 160.74, 0.2958),
)
TABLE_TITLE = ("the README's table: every model after 300 steps at batch 32 (unconditional, "
               "default config, lr 1e-3)")


def _table_rows(name: str, nll: float, bpd: float, steps: int
                ) -> list[tuple[str, float, float, str, bool]]:
    """The 300-step table with this run's row in its place: (model, nll, bits/dim, budget,
    whether the row is this run's)."""
    rows = [(m, n, b, "300 steps", False) for m, n, b in TABLE_300]
    at = sum(n < nll for _, n, _ in TABLE_300)
    rows.insert(at, (f"this run: {name}", nll, bpd, f"{steps} steps", True))
    return rows


@dataclasses.dataclass(frozen=True)
class Demo:
    """The budget of one model in ``artrt demo``: ``steps`` Adam steps at learning rate
    ``lr`` and ``batch_size``, the config fields ``overrides`` (``key=value``), test NLL every
    ``eval_every`` steps and the cached-vs-plain timing on ``timed`` samples; ``ema``: the
    decay of the moving average of the weights that is evaluated and sampled (0: none; see
    :func:`artrt.train.train`)."""

    steps: int
    batch_size: int
    overrides: tuple[str, ...]
    eval_every: int
    timed: int
    lr: float = 1e-3
    ema: float = 0.0


DEMOS: dict[str, Demo] = {
    "gated_pixelcnn": Demo(400, 16, ("channels=32", "layers=5", "head_channels=64",
                                     "num_classes=10"), 100, 2, 3e-3),
    "pixelcnn": Demo(300, 32, ("num_classes=10",), 100, 2),
    "pixelcnnpp": Demo(300, 16, ("channels=16", "blocks=1", "num_mix=3"), 100, 1),
    "multiscale": Demo(800, 32, ("num_classes=10", "base_channels=64", "base_layers=4",
                                 "base_kernel=5", "channels=48", "layers=3"), 200, 2, 3e-3,
                       0.995),
    "made": Demo(5000, 64, ("num_classes=10",), 1000, 8),
    "arrnn": Demo(250, 32, ("hidden=128", "num_classes=10"), 50, 2),
    "wavenet": Demo(400, 32, ("res_channels=16", "gate_channels=16", "skip_channels=32",
                              "num_classes=10"), 100, 2),
    "transformer": Demo(200, 16, ("dim=48", "heads=4", "layers=2", "num_classes=10"), 50, 1),
}
DEFAULT = "multiscale"


def _what_runs(device: str) -> str:
    """One line: which implementations the ops run on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        kernels = [name for name in ("triton", "cuda")
                   if backends.unavailable_reason(name, dev, torch.float32) is None]
        if kernels:
            return (f"on {torch.cuda.get_device_name(dev)}: artrt's fused GPU kernels "
                    f"({', '.join(kernels)})")
        return f"on {dev}: no fused kernel backend available, the reference ops"
    return ("on the CPU: artrt's cpu backend (aten convolutions over the live taps, fused "
            "gates, SDPA) where an op has one, else the reference")


def _terminal() -> bool:
    """Progress bars only on a terminal (none in a log file), as ``artrt train`` draws them."""
    return sys.stderr.isatty()


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_sampling(model, n: int, seed: int) -> tuple[dict[str, float], bool]:
    """({"cached": s, "plain": s}: seconds to draw the same ``n`` samples (same uniforms)
    with the cache and with the plain loop, whether the two agree). Class-conditional:
    labels 0, 1, ..."""
    device = next(model.parameters()).device
    classes = model.config.num_classes
    cond = torch.arange(n, device=device) % classes if classes else None
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((n, *model._uniforms_shape()), generator=gen).to(device)
    times = {}
    got = {}
    for name, cache in (("cached", True), ("plain", False)):
        _sync(device)
        start = time.perf_counter()
        got[name] = model.sample(n, cond, cache=cache, uniforms=u, progress=_terminal())
        _sync(device)
        times[name] = time.perf_counter() - start
    return times, torch.equal(got["cached"], got["plain"])


def _seconds(t: float) -> str:
    """A time in seconds to at least 3 significant digits, in fixed point (the printed
    times give back the printed speed-up, even for a cache that takes milliseconds)."""
    return f"{t:.{max(2, 2 - math.floor(math.log10(t)))}f}" if t > 0 else "0"


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss and test NLL (nats per image) against the step into the PNG ``path``;
    False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", label="training NLL (mean since the "
                "previous point)")
    ax.plot([r["step"] for r in rows], [r["test_nll"] for r in rows], marker="s",
            label="test NLL")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per image")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _report(path: Path, facts: dict[str, Any]) -> None:
    """``report.md``: the pictures and the numbers of one demo run, written atomically."""
    f = facts
    lines = [
        f"# artrt demo: {f['model']} on binarized MNIST-5k",
        "",
        f"{f['runs_on']}. artrt {f['artrt']}, torch {f['torch']}.",
        "",
        f"Trained for {f['steps']} steps at batch {f['batch_size']} (Adam, lr {f['lr']:g}"
        + (f", evaluated and sampled with the moving average of the weights (decay "
           f"{f['ema']:g})" if f["ema"] else "") + "; config "
        f"{', '.join(f['overrides']) or 'default'}; {f['parameters']:,} parameters) in "
        f"{f['train_s']:.0f} s.",
        "",
        f"**Test NLL: {f['test_nll']:.2f} nats per image, {f['test_bpd']:.4f} bits/dim** "
        f"(1,000 test digits" + (", given their class" if f["conditional"] else "")
        + f"), next to {TABLE_TITLE}:",
        "",
        "| model | test NLL (nats) | bits/dim | budget |",
        "|---|---|---|---|",
        *[(f"| **{m}** | **{n:.2f}** | **{b:.4f}** | **{s}** |" if mine else
           f"| {m} | {n:.2f} | {b:.4f} | {s} |")
          for m, n, b, s, mine in _table_rows(f["class_name"], f["test_nll"], f["test_bpd"],
                                              f["steps"])],
        "",
        "## Samples",
        "",
        "![samples](samples.png)",
        "",
        f"{f['samples']} samples drawn with the cache in {f['grid_s']:.1f} s"
        + (" (row k: digit class k)." if f["conditional"] else "."),
        "",
        "## Sampling speed",
        "",
        "| sampler | samples | time (s) | per sample (s) |",
        "|---|---|---|---|",
        f"| cache (`model.sample(n)`) | {f['timed']} | {_seconds(f['cached_s'])} | "
        f"{f['cached_s'] / f['timed']:.3f} |",
        f"| plain loop (`model.sample(n, cache=False)`) | {f['timed']} | "
        f"{_seconds(f['plain_s'])} | "
        f"{f['plain_s'] / f['timed']:.3f} |",
        "",
        f"Speed-up of the cache: **{f['speedup']:.1f}x**, the same samples "
        f"({'identical' if f['agree'] else 'NOT identical'}) for the same uniforms.",
        "",
        "## Training",
        "",
    ]
    if f["plotted"]:
        lines += ["![loss](loss.png)", ""]
    lines += ["| step | training NLL | test NLL (nats) | bits/dim |", "|---|---|---|---|"]
    for r in f["metrics"]:
        train = "" if r["train_loss"] is None else f"{r['train_loss']:.2f}"
        lines.append(f"| {r['step']} | {train} | {r['test_nll']:.2f} | {r['test_bpd']:.4f} |")
    text = "\n".join(lines) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(model: str = DEFAULT, *, steps: int | None = None, seed: int = 0,
        out: str | os.PathLike = "artrt-demo", device: str | None = None,
        overrides: tuple[str, ...] | None = None, samples: int = 64,
        timed: int | None = None) -> dict[str, Any]:
    """Train ``model`` on binarized MNIST-5k with its :data:`DEMOS` budget (``steps``,
    ``overrides`` replace the budget's), write samples.png, loss.png and report.md into
    ``out``, print the figures and return them (a dict: test_nll, test_bpd, cached_s,
    plain_s, speedup, agree, train_s, ...). Arguments are checked before any work
    (ValueError)."""
    from artrt.models import MODELS
    from artrt.train import SAMPLES_NAME, load_checkpoint, resolve_device, sample_grid, train

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    budget = DEMOS[model]
    steps = budget.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be an int >= 1, got {steps!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    timed = budget.timed if timed is None else timed
    if isinstance(timed, bool) or not isinstance(timed, int) or timed < 1:
        raise ValueError(f"timed must be an int >= 1, got {timed!r}")
    overrides = budget.overrides if overrides is None else tuple(overrides)
    device = resolve_device(device)
    out = Path(out)
    runs_on = _what_runs(device)
    print(f"\n{runs_on}")
    print(f"training {model} on {DATA} for {steps} steps (batch {budget.batch_size}, Adam "
          f"lr {budget.lr:g}" + (f", weights averaged with decay {budget.ema:g}" if budget.ema
                                 else "")
          + f", {', '.join(overrides) or 'default config'}) into {out}/")
    start = time.perf_counter()
    result = train(model, DATA, steps=steps, batch_size=budget.batch_size, lr=budget.lr,
                   ema=budget.ema, device=device,
                   out=out, eval_every=min(budget.eval_every, steps), seed=seed,
                   overrides=list(overrides), samples=0, progress=True, overwrite=True)
    train_s = time.perf_counter() - start
    net, _ = load_checkpoint(out / "ckpt.pt", device)
    net.eval()
    conditional = net.config.num_classes > 0
    print(f"test nll {result['test_nll']:.2f} nats per image, {result['test_bpd']:.4f} "
          f"bits/dim after {result['step']} steps ({train_s:.0f} s)"
          + (", given the digit's class" if conditional else ""))
    print(f"next to {TABLE_TITLE}:")
    for m, n, b, budget_, mine in _table_rows(type(net).__name__, result["test_nll"],
                                               result["test_bpd"], result["step"]):
        print(f"  {'->' if mine else '  '} {m:32s} {n:7.2f} nats  {b:.4f} bits/dim  {budget_}")

    start = time.perf_counter()
    grid = sample_grid(net, samples, out / SAMPLES_NAME, seed=seed, progress=_terminal())
    grid_s = time.perf_counter() - start
    print(f"{len(grid)} samples with the cache in {grid_s:.1f} s"
          + (", one row per class" if conditional else "") + f": {out / SAMPLES_NAME}")

    t, agree = _timed_sampling(net, timed, seed)
    speedup = t["plain"] / t["cached"]
    print(f"sampling {timed} at once: cache {_seconds(t['cached'])} s, plain loop "
          f"{_seconds(t['plain'])} s: "
          f"the cache is {speedup:.1f}x faster"
          + ("" if agree else " (WARNING: the two samplers disagree)"))

    rows = _read_metrics(out / "metrics.jsonl")
    plotted = _plot(rows, out / "loss.png", f"{model} on binarized MNIST-5k")
    facts = {
        "model": model, "class_name": type(net).__name__, "runs_on": runs_on,
        "artrt": _version(), "torch": torch.__version__,
        "steps": result["step"], "batch_size": budget.batch_size, "lr": budget.lr,
        "ema": budget.ema,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in net.parameters()), "train_s": train_s,
        "test_nll": result["test_nll"], "test_bpd": result["test_bpd"],
        "samples": len(grid), "grid_s": grid_s, "conditional": conditional, "timed": timed,
        "cached_s": t["cached"], "plain_s": t["plain"], "speedup": speedup,
        "agree": agree, "metrics": rows, "plotted": plotted,
    }
    _report(out / "report.md", facts)
    print(f"report: {out / 'report.md'}" + (f", {out / 'loss.png'}" if plotted else
                                             " (no loss.png: matplotlib is missing; "
                                             "pip install 'artrt[data]')"))
    return facts


def _version() -> str:
    import artrt

    return artrt.__version__


__all__ = ["DEFAULT", "DEMOS", "Demo", "run"]
