"""Project-level checks: the README's examples run, the CLI works, the benchmark runner's
smoke pass runs, and the code is ruff clean."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README))))
def test_readme_python_examples(index):
    block = re.findall(r"```python\n(.*?)```", README, re.S)[index]
    exec(compile(block, f"README.md python block {index}", "exec"), {})


def test_readme_commands_exist():
    assert 'pip install -e ".[test,data]" && pytest -n auto' in README
    assert 'pip install -e ".[data]" && artrt info && artrt demo' in README


def test_readme_nll_table_matches_results():
    """The README's model table is the one in bench/results (python -m bench.nll), and MADE,
    PixelCNN and Gated PixelCNN rank there as in their papers."""
    from artrt.models import MODELS

    folder = ROOT / "bench" / "results" / "nll-mnist5k-binary-cpu"
    results = {p.stem: json.loads(p.read_text())["result"] for p in folder.glob("*.json")}
    assert set(results) == set(MODELS)
    for name, r in results.items():
        cls = MODELS[name][0].__name__
        row = re.search(rf"^\| `{cls}` \| ([0-9,]+) \| ([0-9.]+) \| ([0-9.]+) \|", README, re.M)
        assert row, cls
        assert (int(row[1].replace(",", "")), row[2], row[3]) == (
            r["params"], r["test_nll"], r["test_bpd"]), cls
        assert (r["steps"], r["batch_size"]) == (300, 32)
    nll = {name: float(r["test_nll"]) for name, r in results.items()}
    assert nll["gated_pixelcnn"] < nll["pixelcnn"] < nll["made"]
    # the copy that artrt demo prints next to its own result, best first
    from artrt.demo import TABLE_300

    want = sorted(((MODELS[name][0].__name__, float(r["test_nll"]), float(r["test_bpd"]))
                   for name, r in results.items()), key=lambda row: row[1])
    assert list(TABLE_300) == want


def test_cli_info():
    r = _run("-m", "artrt", "info")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "cpu: reference : available" in r.stdout


def test_cli_demo(tmp_path):
    """The kernel check, then a short training run: a test nll and a PNG of samples (the
    whole demo, shortened, is tests/test_cli.py::test_demo_end_to_end)."""
    r = _run("-m", "artrt", "demo", "--model", "made", "--steps", "30", "--out",
             str(tmp_path / "demo"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reference" in r.stdout and "MISMATCH" not in r.stdout
    nll = float(re.search(r"test nll ([0-9.]+) nats", r.stdout).group(1))
    assert 0 < nll < 784 * 0.7  # below a fair coin per pixel after 30 steps
    png = (tmp_path / "demo" / "samples.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_bench_smoke(tmp_path):
    from bench.run import FAMILIES

    r = _run("-m", "bench.run", "--smoke", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    for family in FAMILIES:
        (result,) = tmp_path.glob(f"{family}-*.json")
        data = json.loads(result.read_text())
        assert data["smoke"] is True and data["environment"]["torch"]
        rows = data["rows"]
        impls = {row["impl"] for row in rows}
        assert any(i.startswith("artrt") for i in impls), (family, impls)
        assert len(impls) > 1, (family, impls)  # at least one baseline beside artrt
        errs = [row["max_err"] for row in rows if row.get("max_err") is not None]
        assert errs and max(errs) < 1e-3, (family, max(errs or [None]))


def test_ruff_clean():
    r = _run("-m", "ruff", "check", str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth, except under ``if TYPE_CHECKING:``."""
    import ast

    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


# What each layer of the package must never import (ARCHITECTURE.md: arrows point down).
_ABOVE = {
    "kernels": ("artrt.ops", "artrt.nn", "artrt.sampling", "artrt.models", "artrt.patch",
                "artrt.integrations", "artrt.train", "artrt.cli", "artrt.data"),
    "artrt/ops": ("artrt.nn", "artrt.sampling", "artrt.models", "artrt.patch",
                  "artrt.integrations", "artrt.train", "artrt.cli", "artrt.data"),
    "artrt/nn": ("artrt.sampling", "artrt.models", "artrt.patch", "artrt.integrations",
                 "artrt.train", "artrt.cli", "artrt.data"),
    "artrt/sampling": ("artrt.models", "artrt.patch", "artrt.integrations", "artrt.train",
                       "artrt.cli", "artrt.data"),
    # artrt.data (the bundled data sets) needs numpy, the [data] extra: the models take
    # their input mapping from artrt.levels
    "artrt/models": ("artrt.patch", "artrt.integrations", "artrt.train", "artrt.cli",
                     "artrt.data"),
}


def test_import_without_numpy():
    """numpy comes with the [data] extra only: artrt, its models, samplers and command line
    import without it (``artrt info`` is the README's first command after install)."""
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import artrt, artrt.models, artrt.sampling, artrt.nn, artrt.cli, artrt.train")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, env={k: v for k, v in os.environ.items()
                                      if k != "TRITON_INTERPRET"})
    assert r.returncode == 0, r.stderr[-2000:]


def test_imports_point_down():
    bad = []
    for folder, above in _ABOVE.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module in _imports(path):
                if module.startswith(above):
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)
