"""Run artrt's benchmarks side by side with their baselines and write the results.

    python -m bench.run                 # every benchmark, on the GPU when there is one
    python -m bench.run --only gated    # one family
    python -m bench.run --quick         # bf16 headline shapes, main baselines, short timings
    python -m bench.run --smoke         # tiny shapes, one call each (what CI runs on CPU)

Results go to ``bench/results/<family>-<device>.json`` and ``.md`` (``--out`` to change):
device, driver, torch/triton versions and date, then per shape and implementation the
median time, achieved GB/s and its percentage of the measured copy bandwidth, and the
speed-up of artrt over each baseline.

``--quick`` (a few minutes on a GPU, part of ``python -m bench.gpu_check``): each family at
its headline bf16 shapes (``QUICK``) against its main baselines: cuDNN with a masked weight
or left padding, SDPA with the flash and cuDNN backends pinned, eager PyTorch, the measured
copy bandwidth and bf16 matmul peak. torch.compile and FlexAttention baselines are left out
(each compiles for tens of seconds; their rows say so), except for ``gated`` and ``dmol``,
whose code needs its compiled baseline (it is kept, at one shape). Timings are short
(``common.time_ms_quick``: 5 ms warm-up, 25 ms of repetitions) and calls under 0.2 ms are
timed as CUDA-graph replays, so that the host's launch time is not what is measured. Every
row with a rate gets its percentage of the measured peak (``pct_peak``, ``pct_copy``).
Files are ``<family>-<device>-quick.*``; a family that raises gets its error there (``error``)
and the next family still runs. Without a GPU ``--quick`` is ``--smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

import torch

from bench import attention, causal_conv1d, common, dmol, gated, masked_conv, patch, sampling

FAMILIES = {
    "attention": attention,
    "causal_conv1d": causal_conv1d,
    "dmol": dmol,
    "gated": gated,
    "masked_conv": masked_conv,
    "patch": patch,
    "sampling": sampling,
}

_BF16 = torch.bfloat16
# --quick: per family, the module constants replaced for the run (the headline shapes, bf16
# where the family has a dtype axis) and whether its torch.compile / FlexAttention baselines
# stay (gated and dmol time theirs unguarded: kept; the others record a skipped baseline).
QUICK: dict[str, tuple[dict, bool]] = {
    "attention": ({"CAUSAL": [(64, 4096), (128, 4096)], "SMALL_D": [(16, 2048)],
                   "ORDERS": ["zigzag"], "DECODE": [(4, 32, 8, 128, 16384)]}, False),
    "causal_conv1d": ({"DTYPES": [_BF16]}, False),
    "dmol": ({"SHAPES": [(16, 3, 10, 32, 32, _BF16)]}, True),
    "gated": ({"SHAPES": [((16, 512, 16000), _BF16)]}, True),
    "masked_conv": ({"CHANNELS": (128,), "KERNELS": (3, 7), "DTYPES": (_BF16,)}, False),
    "patch": ({"FULL": [("pixelcnn", 32, 32, 192, 6, _BF16), ("gpt", 16, 1024, 512, 4, _BF16)]},
              False),
    "sampling": ({"PLAN": [(512, [1], ["plain", "artrt-cuda", "artrt-cuda-graph"]),
                           (2048, [1, 64], ["artrt-cuda-graph"])],
                  "LOWP_BATCHES": [1], "PIXELCNNPP_TARGETS": {256: 183},
                  "TRANSFORMER_BATCHES": [64]}, True),
}
QUICK_SKIP_NOTE = "skipped by --quick (torch.compile baselines compile for tens of seconds)"
# Columns --quick adds to a family's table when its rows carry a rate but not its percentage.
_PCT_COLUMNS = [("pct_peak", "% mm peak"), ("pct_copy", "% copy BW")]


def _skipped_compile(*args, **kwargs):
    """Stands in for torch.compile under --quick: the compiled function raises when called,
    which the families record as a baseline that could not run."""
    def call(*a, **k):
        raise RuntimeError(QUICK_SKIP_NOTE)
    return call


@contextlib.contextmanager
def quick_mode(name: str):
    """The family ``name`` set up for --quick: its ``QUICK`` constants, the quick timer, and
    torch.compile stubbed out unless the family keeps it; everything restored on exit."""
    family = FAMILIES[name]
    constants, keep_compile = QUICK[name]
    patches = [(family, key, value) for key, value in constants.items()]
    if hasattr(family, "time_ms"):
        patches.append((family, "time_ms", common.time_ms_quick))
    if not keep_compile:
        patches.append((torch, "compile", _skipped_compile))
    saved = []
    try:
        for obj, key, value in patches:
            if not hasattr(obj, key):
                raise AttributeError(f"--quick: {obj.__name__} has no {key} to replace")
            saved.append((obj, key, getattr(obj, key)))
            setattr(obj, key, value)
        yield
    finally:
        for obj, key, value in reversed(saved):
            setattr(obj, key, value)


def add_percentages(rows: list[dict], peak_tflops: float, copy_gbs: float) -> None:
    """Give every row with a rate its percentage of the measured peak, where the family did
    not: ``tflops`` -> ``pct_peak`` (of the bf16 matmul peak), ``gbs`` -> ``pct_copy``."""
    for row in rows:
        if row.get("tflops") is not None and row.get("pct_peak") is None:
            row["pct_peak"] = 100 * row["tflops"] / peak_tflops
        if row.get("gbs") is not None and row.get("pct_copy") is None:
            row["pct_copy"] = 100 * row["gbs"] / copy_gbs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append",
                        help="run only this family (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one call each; implied when there is no GPU")
    parser.add_argument("--quick", action="store_true",
                        help="bf16 headline shapes against the main baselines, short timings "
                             "(a few minutes on a GPU); --smoke without a GPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke = args.smoke or device == "cpu"
    quick = args.quick and not smoke
    env = common.environment(device)
    copy_gbs = common.copy_bandwidth_gbs(device, smoke)
    env["copy_bandwidth_gbs"] = f"{copy_gbs:.0f}"
    peak = None
    if quick:
        peak = attention.matmul_peak_tflops(device, smoke)
        env["matmul_peak_tflops"] = f"{peak:.0f}"
    print(", ".join(f"{k} {v}" for k, v in env.items())
          + (" [smoke]" if smoke else " [quick]" if quick else ""), flush=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower() or device
    for name in args.only or sorted(FAMILIES):
        family = FAMILIES[name]
        columns = list(family.COLUMNS)
        error = None
        if quick:
            del common.quick_fallbacks[:]
            try:
                with quick_mode(name):
                    rows = family.run(device, smoke, copy_gbs)
            except Exception as e:  # noqa: BLE001 - recorded; the next family still runs
                error, rows = f"{type(e).__name__}: {e}"[:500], []
                print(f"{name} failed: {error}", file=sys.stderr, flush=True)
            add_percentages(rows, peak, copy_gbs)
            keys = {key for row in rows for key in row}
            columns += [c for c in _PCT_COLUMNS if c[0] in keys and c not in columns]
        else:
            rows = family.run(device, smoke, copy_gbs)
        table = common.markdown_table(rows, columns)
        targets = family.summary(rows)
        if targets:
            table += "\n\nTargets:\n" + "\n".join(f"- {line}" for line in targets)
        if error:
            table += f"\n\nFAILED: {error}"
        if quick and common.quick_fallbacks:
            table += (f"\n\n{len(common.quick_fallbacks)} call(s) under "
                      f"{common.GRAPH_BELOW_MS} ms could not be captured in a CUDA graph and "
                      f"were timed eagerly; first: {common.quick_fallbacks[0]}")
        stem = f"{name}-{slug}" + ("-smoke" if smoke else "-quick" if quick else "")
        results = {"smoke": smoke, "quick": quick, "rows": rows}
        if error:
            results["error"] = error
        paths = common.write_results(args.out, stem, env, results, table)
        print(f"\n## {name}\n\n{table}\n\nwrote " + ", ".join(map(str, paths)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
