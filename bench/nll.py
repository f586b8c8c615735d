"""Test NLL of every model of :mod:`artrt.models` on binarized MNIST-5k after the same fixed
training budget: the README's model table.

    python -m bench.nll                          # every model, one after the other
    python -m bench.nll --models made pixelcnn   # a subset (results add up in one folder)
    python -m bench.nll --table                  # print the markdown table of what is there

The budget is the same for every model: ``--steps`` Adam steps (lr 1e-3) at ``--batch-size``
on the training split, seed 0, the model's default config, unconditional (``num_classes=0``:
the papers' numbers are unconditional). Each model's result (test NLL in nats per image and
bits/dim, the wall time of its training, parameters, device, threads, versions) is written to
``bench/results/nll-<data>-<device>/<model>.json`` as soon as it is done, so runs on several
processes add up; ``--table`` writes ``nll-<data>-<device>.md`` from those files.

Wall time on a CPU depends on what else runs on the machine: read it as an indication.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import environment, markdown_table

COLUMNS = [("model", "model"), ("params", "parameters"), ("steps", "steps"),
           ("batch_size", "batch"), ("test_nll", "test NLL (nats)"), ("test_bpd", "bits/dim"),
           ("train_s", "train time (s)"), ("s_per_step", "s/step"), ("device", "device"),
           ("threads", "threads")]


def run_model(name: str, data: str, steps: int, batch_size: int, device: str,
              threads: int) -> dict:
    """Train ``name`` for the budget and return its result row."""
    from artrt.train import load_checkpoint, train

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(name, data, steps=steps, batch_size=batch_size, lr=1e-3, device=device,
                       out=tmp, eval_every=steps, seed=0, overrides=["num_classes=0"],
                       samples=0, progress=False)
        seconds = time.perf_counter() - start
        model, _ = load_checkpoint(result["ckpt"])
        params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "steps": steps, "batch_size": batch_size,
            "test_nll": f"{result['test_nll']:.2f}", "test_bpd": f"{result['test_bpd']:.4f}",
            "train_s": round(seconds, 1), "s_per_step": round(seconds / max(steps, 1), 3),
            "device": device, "threads": threads}


def table(folder: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    rows.sort(key=lambda r: float(r["result"]["test_nll"]))
    env = rows[0]["environment"] if rows else {}
    head = ", ".join(f"{k} {v}" for k, v in env.items())
    return f"{head}\n\n{markdown_table([r['result'] for r in rows], COLUMNS)}\n"


def main(argv: list[str] | None = None) -> int:
    from artrt.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--data", default="mnist5k-binary")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--table", action="store_true", help="only write the markdown table")
    args = parser.parse_args(argv)
    folder = args.out / f"nll-{args.data}-{args.device.split(':')[0]}"
    if not args.table:
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            row = run_model(name, args.data, args.steps, args.batch_size, args.device,
                            args.threads)
            record = {"environment": environment(args.device), "result": row}
            tmp = folder / f".{name}.json.tmp"
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(folder / f"{name}.json")
            print(json.dumps(row), flush=True)
    md = table(folder)
    (folder.parent / f"{folder.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
