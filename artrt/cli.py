"""The ``artrt`` command.

``artrt info``  versions, GPU, and which backends are available (and why not).
``artrt demo``  runs the fused gated activation on every available backend against the
                reference, forward and backward, and prints the largest differences.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

import artrt
from artrt import backends


def _versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    ext, why = backends.load_extension()
    if ext is None:
        ext_line = why
    else:
        count, message = ext.device_count()
        v = ext.runtime_version()
        ext_line = (f"built (CUDA runtime {v // 1000}.{v % 1000 // 10}); "
                    f"devices: {count} ({message})")
    gpu = "none (torch.cuda.is_available() is False)"
    if torch.cuda.is_available():
        gpu = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}"
                        for i in range(torch.cuda.device_count()))
    return {
        "artrt": artrt.__version__,
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        "triton": triton_version,
        "artrt._C": ext_line,
        "GPU": gpu,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "unset"),
        "ARTRT_BACKEND": os.environ.get("ARTRT_BACKEND", "unset"),
    }


def info() -> int:
    """Print versions and the backend table."""
    for key, value in _versions().items():
        print(f"{key:17s} {value}")
    print("\nbackends (device: backend: available, or why not)")
    table = backends.status()
    if "cuda" not in table:
        print("  cuda: every backend: no CUDA device")
    for device, row in table.items():
        for name, why in row.items():
            print(f"  {device}: {name:9s} : {'available' if why is None else why}")
    return 0


def demo(seed: int = 0) -> int:
    """Gated tanh on every available backend vs the reference; exit 1 on a mismatch."""
    gen = torch.Generator().manual_seed(seed)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failed = False
    print("gated_tanh(x, cond) with x (4, 16, 9, 7), cond (4, 16, 1, 1), float32")
    for device in devices:
        x = torch.randn(4, 16, 9, 7, generator=gen).to(device).requires_grad_()
        cond = torch.randn(4, 16, 1, 1, generator=gen).to(device).requires_grad_()
        grad = torch.randn(4, 8, 9, 7, generator=gen).to(device)
        want = artrt.gated_tanh_ref(x, cond)
        want_dx, want_dc = torch.autograd.grad(want, (x, cond), grad)
        for name in backends.BACKENDS:
            why = backends.unavailable_reason(name, device, x.dtype)
            if why is not None:
                print(f"  {device:4s} {name:9s} skipped: {why}")
                continue
            got = artrt.gated_tanh(x, cond, backend=name)
            dx, dc = torch.autograd.grad(got, (x, cond), grad)
            errs = [(a - b).abs().max().item() for a, b in
                    ((got, want), (dx, want_dx), (dc, want_dc))]
            ok = max(errs) < 1e-4
            failed |= not ok
            print(f"  {device:4s} {name:9s} max |diff| out {errs[0]:.1e}  dx {errs[1]:.1e}  "
                  f"dcond {errs[2]:.1e}  {'ok' if ok else 'MISMATCH'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="artrt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU and available backends")
    p_demo = sub.add_parser("demo", help="the gated op on every backend vs the reference")
    p_demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return demo(args.seed)


if __name__ == "__main__":
    sys.exit(main())
