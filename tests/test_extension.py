"""artrt._C: built whenever nvcc is present, imports, and fails clearly without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from artrt import backends

ROOT = Path(__file__).resolve().parents[1]
HAS_NVCC = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not found: the extension is optional")
def test_extension_built_and_imports():
    ext, why = backends.load_extension()
    assert ext is not None, why
    assert ext.runtime_version() >= 12000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_extension_without_gpu_raises_clearly():
    ext, why = backends.load_extension()
    if ext is None:
        pytest.skip(why)
    count, message = ext.device_count()
    assert count == 0 and message
    args = dict(x=1, cond=0, out=1, o=1, c=1, s=1, sx_o=2, sx_c=1, sx_s=1, sc_o=0, sc_c=0,
                sc_s=0, dtype=0, act=0, device=0, stream=0)
    with pytest.raises(RuntimeError, match=r"artrt\._C\.gated_fwd: CUDA error"):
        ext.gated_fwd(**args)
    with pytest.raises(RuntimeError, match=r"artrt\._C\.gated_bwd: CUDA error"):
        ext.gated_bwd(grad_out=1, grad_x=1, **{k: v for k, v in args.items() if k != "out"})
    assert "sees no CUDA device" in backends.unavailable_reason("cuda", "cuda")


def test_extension_rejects_bad_arguments():
    ext, why = backends.load_extension()
    if ext is None:
        pytest.skip(why)
    args = dict(x=1, cond=0, out=1, o=1, c=1, s=1, sx_o=2, sx_c=1, sx_s=1, sc_o=0, sc_c=0,
                sc_s=0, dtype=0, act=0, device=0, stream=0)
    for bad, match in [(dict(dtype=5), "dtype code"), (dict(act=2), "act must be"),
                       (dict(o=-1), "non-negative"), (dict(x=0), "x is a null pointer"),
                       (dict(out=0), "out is a null pointer")]:
        with pytest.raises(ValueError, match=match):
            ext.gated_fwd(**{**args, **bad})


def _setup(env_updates: dict[str, str], tmp_path: Path, path: str | None = None,
           command: tuple[str, ...] | None = None):
    env = {**os.environ, **env_updates}
    env.pop("CUDA_HOME", None)
    env.pop("CUDA_PATH", None)
    if path is not None:
        env["PATH"] = path
    if command is None:
        command = ("build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp",
                   str(tmp_path / "tmp"))
    return subprocess.run([sys.executable, "setup.py", "-q", *command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_build_mode_validated(tmp_path):
    r = _setup({"ARTRT_CUDA_BUILD": "maybe"}, tmp_path)
    assert r.returncode != 0 and "ARTRT_CUDA_BUILD must be auto, 1 or 0" in r.stderr


def test_build_required_without_nvcc_fails_loudly(tmp_path):
    r = _setup({"ARTRT_CUDA_BUILD": "1"}, tmp_path, path="/usr/bin:/bin")
    assert r.returncode != 0
    assert "ARTRT_CUDA_BUILD=1 but nvcc was not found" in r.stderr


def test_build_auto_without_nvcc_warns_and_skips(tmp_path):
    r = _setup({"ARTRT_CUDA_BUILD": "auto"}, tmp_path, path="/usr/bin:/bin")
    assert r.returncode == 0, r.stderr
    assert "nvcc not found, installing without the CUDA extension" in r.stderr
    assert not list((tmp_path / "lib").rglob("_C*"))


def test_build_disabled(tmp_path):
    r = _setup({"ARTRT_CUDA_BUILD": "0"}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "lib").rglob("_C*"))


@pytest.mark.parametrize("mode, path", [("0", None), ("auto", "/usr/bin:/bin")],
                         ids=["disabled", "auto-without-nvcc"])
def test_editable_install_without_the_extension(mode, path, tmp_path):
    """``pip install -e .`` builds an editable wheel: without the extension it must not look
    for a ``_C`` library that was never built."""
    dist = tmp_path / "dist"
    dist.mkdir()
    r = _setup({"ARTRT_CUDA_BUILD": mode}, tmp_path, path=path,
               command=("editable_wheel", "--dist-dir", str(dist)))
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = dist.glob("artrt-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")  # pure Python: no extension declared


def test_install_requires_the_tested_torch_and_triton(tmp_path):
    """The README's range, so that ``pip install`` never pulls an untested (and, on a CPU
    machine, gigabytes of CUDA) torch."""
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "ARTRT_CUDA_BUILD": "0"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    requires = (tmp_path / "artrt.egg-info" / "requires.txt").read_text().splitlines()
    assert "torch<2.14,>=2.11" in requires
    assert any(line.startswith("triton<3.10,>=3.6") for line in requires), requires
    assert "torch 2.11 to 2.13, triton 3.6 to 3.9" in (ROOT / "README.md").read_text()
