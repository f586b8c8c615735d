"""The CPU benchmark's smoke pass runs every row and writes its result files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_cpu_smoke(tmp_path):
    from bench.cpu import FAMILIES

    r = subprocess.run([sys.executable, "-m", "bench.cpu", "--smoke", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (result,) = tmp_path.glob("cpu-*-smoke.json")
    data = json.loads(result.read_text())
    assert data["smoke"] is True and data["environment"]["threads"] == "1"
    rows = data["rows"]
    assert {row["family"] for row in rows} == set(FAMILIES)
    for row in rows:
        assert row["artrt_ms"] > 0 and row["plain_ms"] > 0, row
        assert row["ratio"] == row["artrt_ms"] / row["plain_ms"], row
        assert row["max_err"] < 1e-4, row  # artrt and plain compute the same thing
    backends = {row["op"]: row["backend"] for row in rows}
    for op in ("causal_attention", "attention_decode", "gated_tanh", "gated_sigmoid"):
        assert backends[op] == "cpu", (op, backends[op])
    assert result.with_suffix(".md").read_text().count("\n|") == len(rows) + 2  # + head
