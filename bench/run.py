"""Run artrt's benchmarks side by side with their baselines and write the results.

    python -m bench.run                 # every benchmark, on the GPU when there is one
    python -m bench.run --only gated    # one family
    python -m bench.run --smoke         # tiny shapes, one call each (what CI runs on CPU)

Results go to ``bench/results/<family>-<device>.json`` and ``.md`` (``--out`` to change):
device, driver, torch/triton versions and date, then per shape and implementation the
median time, achieved GB/s and its percentage of the measured copy bandwidth, and the
speed-up of artrt over each baseline.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from bench import attention, causal_conv1d, common, dmol, gated, masked_conv, patch, sampling

FAMILIES = {
    "attention": attention,
    "causal_conv1d": causal_conv1d,
    "dmol": dmol,
    "gated": gated,
    "masked_conv": masked_conv,
    "patch": patch,
    "sampling": sampling,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append",
                        help="run only this family (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one call each; implied when there is no GPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke = args.smoke or device == "cpu"
    env = common.environment(device)
    copy_gbs = common.copy_bandwidth_gbs(device, smoke)
    env["copy_bandwidth_gbs"] = f"{copy_gbs:.0f}"
    print(", ".join(f"{k} {v}" for k, v in env.items()) + (" [smoke]" if smoke else ""))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower() or device
    for name in args.only or sorted(FAMILIES):
        family = FAMILIES[name]
        rows = family.run(device, smoke, copy_gbs)
        table = common.markdown_table(rows, family.COLUMNS)
        targets = family.summary(rows)
        if targets:
            table += "\n\nTargets:\n" + "\n".join(f"- {line}" for line in targets)
        stem = f"{name}-{slug}" + ("-smoke" if smoke else "")
        paths = common.write_results(args.out, stem, env, {"smoke": smoke, "rows": rows}, table)
        print(f"\n## {name}\n\n{table}\n\nwrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
