"""The ``artrt`` command.

``artrt info``  versions, GPU, and which backends are available (and why not).
``artrt demo``  checks the fused gated activation on every available backend against the
                reference, then trains a small model (a class-conditional multiscale PixelCNN)
                on binarized MNIST-5k: test NLL, samples, the sampling cache's speed-up,
                a loss curve and a report (see :mod:`artrt.demo`).
``artrt train`` trains a model of ``artrt.models`` on a bundled data set (checkpoints,
                test nll, a sample grid; see :mod:`artrt.train`); under ``torchrun`` with
                DistributedDataParallel.
``artrt sample`` draws a PNG grid of samples from a checkpoint of ``artrt train``.

Bad arguments, a bad checkpoint or an unwritable output are reported in one line on stderr
(``artrt <command>: error: ...``) with exit code 2, before any work starts where they can
be checked up front.
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


def demo(seed: int = 0, steps: int | None = None, model: str | None = None,
         out: str = "artrt-demo", device: str | None = None) -> int:
    """The kernel check (:func:`check_backends`), then :func:`artrt.demo.run`: ``model``
    (default: a class-conditional multiscale PixelCNN) trained on binarized MNIST-5k with its
    budget (``steps`` replaces the budget's), samples, the cache's speed-up, loss.png and
    report.md in ``out`` (a run already there is replaced); exit 1 on a kernel mismatch.
    ``model``, ``steps`` and ``device`` are checked first (ValueError)."""
    from artrt import demo as demo_run
    from artrt.models import MODELS
    from artrt.train import RUN_FILES, resolve_device

    model = demo_run.DEFAULT if model is None else model
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    resolve_device(device)
    if check_backends(seed):
        return 1
    if any(os.path.exists(os.path.join(out, name)) for name in RUN_FILES):
        print(f"\nreplacing the run in {out}/")
    demo_run.run(model, steps=steps, seed=seed, out=out, device=device)
    return 0


def check_backends(seed: int = 0) -> int:
    """Gated tanh on every available backend vs the reference; 1 on a mismatch."""
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


def _add_train(sub: argparse._SubParsersAction) -> None:
    from artrt.models import MODELS

    p = sub.add_parser("train", help="train a model on a bundled data set",
                       description="Train a model; under torchrun, one process per device.")
    p.add_argument("--model", required=True, help=f"one of {', '.join(sorted(MODELS))}")
    p.add_argument("--data", required=True,
                   help="mnist5k-binary, digits8x8, photos32 or membrane-mulaw")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps (1000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch, split between processes (64; on --resume: the saved)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-3)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="evaluate, sample and save a moving average of the weights with this "
                   "decay, e.g. 0.995 (0: none, the default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default="run", help="folder for ckpt.pt, metrics.jsonl, "
                   "samples.png (run)")
    p.add_argument("--eval-every", type=int, default=200, help="test nll every N steps (200)")
    p.add_argument("--seed", type=int, default=None, help="init and data order seed (0)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/ckpt.pt (same seed, batch size, lr, ema and --set)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (without it, or --resume, refused)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a model config field, e.g. --set channels=32 (repeatable)")
    p.add_argument("--samples", type=int, default=64, help="samples in samples.png (0: none)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none either when stderr is not a terminal)")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="a PNG grid of samples from a checkpoint")
    p.add_argument("--ckpt", required=True, help="a ckpt.pt written by artrt train")
    p.add_argument("-n", type=int, default=64,
                   help="samples (64); class-conditional: rounded up to a multiple of the "
                        "classes, one row per class")
    p.add_argument("--out", default="grid.png", help="PNG file (grid.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--progress", action="store_true", help="a progress bar over positions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="artrt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU and available backends")
    p_demo = sub.add_parser("demo", help="the gated op on every backend vs the reference, "
                            "then a small model trained on real data: test nll, samples, "
                            "sampling speed, loss curve and report")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the model's demo budget)")
    p_demo.add_argument("--model", default=None,
                        help="model to train (multiscale, class-conditional)")
    p_demo.add_argument("--out", default="artrt-demo", help="output folder (artrt-demo)")
    p_demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if "
                        "available)")
    _add_train(sub)
    _add_sample(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    from artrt import train as training

    try:
        if args.command == "demo":
            return demo(args.seed, args.steps, args.model, args.out, args.device)
        if args.command == "train":
            result = training.train(
                args.model, args.data, steps=args.steps, batch_size=args.batch_size,
                lr=args.lr, device=args.device, out=args.out, eval_every=args.eval_every,
                seed=args.seed, resume=args.resume, overrides=args.overrides,
                samples=args.samples, progress=not args.no_progress, overwrite=args.overwrite,
                ema=args.ema)
            if int(os.environ.get("RANK", 0)) == 0:
                print(f"step {result['step']}: test nll {result['test_nll']:.4f} nats, "
                      f"{result['test_bpd']:.4f} bits/dim; checkpoint {result['ckpt']}")
            return 0
        x = training.sample(args.ckpt, args.n, args.out, seed=args.seed, device=args.device,
                            progress=args.progress)
        print(f"wrote {args.out}: {x.shape[0]} samples of shape {tuple(x.shape[1:])}")
        return 0
    except (ValueError, KeyError, OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"artrt {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
