"""Timing, device facts and result files shared by the benchmarks.

On a CUDA device every time is the median of ``triton.testing.do_bench`` (CUDA events, L2
flushed between repetitions). Without one the runner does a smoke pass: tiny shapes, one
timed call with a host clock, so CI exercises every code path; smoke numbers mean nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def time_ms(fn: Callable[[], object], smoke: bool) -> float:
    """Median time of ``fn()`` in milliseconds (one host-clock call in smoke mode)."""
    if smoke:
        fn()  # warm-up: compilation and caches stay out of the number
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def copy_bandwidth_gbs(device: str, smoke: bool) -> float:
    """Measured device-to-device copy bandwidth, bytes read plus bytes written, in GB/s."""
    numel = 1 << 16 if smoke else 1 << 28  # 1 GiB of float32 each way on a GPU
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), smoke)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: str) -> dict[str, str]:
    """Device name, driver and library versions, date: stored with every result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    on_gpu = device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name(device) if on_gpu else _cpu_name(),
        "driver": _driver_version() if on_gpu else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": triton_version,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with ``columns`` = [(key, header), ...]."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, env: dict, results: dict, table: str) -> list[Path]:
    """Write ``<name>.json`` (environment + results) and ``<name>.md`` (the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps({"environment": env, **results}, indent=2) + "\n")
    header = ", ".join(f"{k} {v}" for k, v in env.items())
    md_path.write_text(f"# {name}\n\n{header}\n\n{table}\n")
    return [json_path, md_path]


# --quick (bench.run): short repetitions, and CUDA-graph replays where an eager timing would
# measure the host (a workload shorter than GRAPH_BELOW_MS, about the time in which the host
# launches ten to twenty small kernels). Graph replays skip do_bench's L2 flush, so a small
# workload may be timed with its data in L2; the row is still what a graphed model would see.
QUICK_WARMUP_MS, QUICK_REP_MS = 5, 25
GRAPH_BELOW_MS = 0.2
quick_fallbacks: list[str] = []  # why graph timings fell back to eager (bench.run reports)


def time_ms_quick(fn: Callable[[], object], smoke: bool) -> float:
    """:func:`time_ms` with short repetitions (``--quick``); a call shorter than
    ``GRAPH_BELOW_MS`` is timed as CUDA-graph replays instead. A call that cannot be captured
    (it synchronises with the host) keeps its eager time and its reason is appended to
    ``quick_fallbacks``. In smoke mode exactly :func:`time_ms`."""
    if smoke:
        return time_ms(fn, smoke)
    import triton.testing

    ms = float(triton.testing.do_bench(fn, warmup=QUICK_WARMUP_MS, rep=QUICK_REP_MS,
                                       return_mode="median"))
    if ms >= GRAPH_BELOW_MS:
        return ms
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=QUICK_REP_MS,
                                                       return_mode="median"))
    except Exception as e:  # noqa: BLE001 - reported by the runner, the eager time is kept
        torch.cuda.synchronize()
        quick_fallbacks.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                               if str(e) else type(e).__name__)
        return ms
