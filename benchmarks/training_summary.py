"""Summarise a training run from its own logs: budget, training loss at the start and end, every validation.

    python benchmarks/training_summary.py runs/rgb-pretrain --json benchmarks/results/rgb_pretrain_cpu.json

Reads <run>/logs/metrics.jsonl (one line per step, written by every stage) and <run>/logs/run_summary.json (steps,
samples, seconds and device of each call; resumed calls are summed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from uldm.io import save_json
from uldm.training import read_budget, read_metrics


def summarise(run: Path, window: int = 50) -> dict[str, Any]:
    rows = read_metrics(run)
    if not rows:
        raise SystemExit(f"error: {run}/logs/metrics.jsonl: no logged steps")
    budget = read_budget(run)
    loss = np.array([row["train/loss"] for row in rows])
    validations = [{"step": row["step"], **{k: v for k, v in row.items() if k.startswith("val/")}}
                   for row in rows if any(k.startswith("val/") for k in row)]
    return {"run": str(run), "steps": rows[-1]["step"], "samples": budget.get("samples"),
            "seconds": budget.get("seconds"), "device": budget.get("device"), "window": window,
            "train_loss_first": float(loss[:window].mean()), "train_loss_last": float(loss[-window:].mean()),
            "validations": validations, "calls": budget.get("calls")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run's output_dir")
    parser.add_argument("--window", type=int, default=50, help="steps averaged for the first / last training loss")
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    summary = summarise(args.run, args.window)
    print(f"{summary['run']}: {summary['steps']} steps, {summary['samples']} samples, {summary['seconds']} s on "
          f"{summary['device']}; training loss {summary['train_loss_first']:.4f} -> {summary['train_loss_last']:.4f}")
    for row in summary["validations"]:
        print(f"  step {row['step']}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
    if args.json is not None:
        save_json(summary, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
