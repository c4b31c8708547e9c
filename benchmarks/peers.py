"""Every model beside its peers, on the same scenes of both CAVE splits, with what each costs and cost to train.

    python benchmarks/peers.py \\
        --std uldm=runs/cave-std/c-seed0/pipeline r2hdiff=runs/r2hdiff-cave/pipeline mstpp=runs/mstpp-cave/pipeline \\
        --b uldm=runs/cave-b/c-seed0/pipeline r2hdiff=runs/r2hdiff-b/pipeline mstpp=runs/mstpp-b/pipeline \\
        --json benchmarks/results/peers.json

Each split's models must have been trained on that split's training scenes (the standard split: the shipped
checkpoints' runs; split B: stages/configs/splits/cave_b_*.txt); the root-polynomial baseline is fitted here on
each split's training scenes. Per model and split: PSNR, SAM, MRAE, RMSE and the largest RGB error on the val
scenes (linear, noise-free RGB), scored once; parameters, GFLOP per 256 x 256 image (FlopCounterMode, a
multiply-add is 2) and CPU seconds per 256 x 256 image at each model's defaults; and the training budget of its
run (steps, samples, wall-clock, device, from <run>/logs/run_summary.json, resumed calls summed).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from uldm.baseline import RootPolynomialRegression
from uldm.camera import CameraResponse
from uldm.checkpoints import load_reconstructor
from uldm.data import default_cave_root
from uldm.evaluation import evaluate
from uldm.io import save_json
from uldm.training import read_budget

HERE = Path(__file__).resolve().parent


def _benchmark(name: str):
    """A sibling benchmark script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_models(items: Sequence[str]) -> dict[str, str]:
    models = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: model {item!r} must look like name=pipeline_folder")
        models[name] = path
    return models


def score(model, scenes: list[Path]) -> dict[str, float]:
    result = evaluate(model, scenes, model.camera, format="cave", progress=False)
    return {**{k: result.mean[k] for k in ("psnr", "sam", "mrae", "rmse")},
            "max_rgb_error": max(row["rgb_error"] for row in result.per_scene.values()),
            "per_scene_psnr": {name: row["psnr"] for name, row in result.per_scene.items()}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--std", nargs="+", default=[], metavar="NAME=PIPELINE", help="models trained on the standard split")
    parser.add_argument("--b", nargs="+", default=[], metavar="NAME=PIPELINE", help="the same models trained on split B")
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--cost-size", type=int, default=256)
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    if args.data is None or not Path(args.data).is_dir():
        parser.error(f"CAVE data not found at {args.data} (give --data or set $ULDM_CAVE_ROOT)")
    split_scenes = _benchmark("pretraining_ablation").split_scenes
    compare = _benchmark("compare_models")
    results: dict[str, Any] = {"splits": {}, "costs": {}}
    for split, specs in (("std", parse_models(args.std)), ("b", parse_models(args.b))):
        if not specs:
            continue
        scenes = split_scenes(args.data, split)
        rows = {}
        for name, path in specs.items():
            model = load_reconstructor(path)
            rows[name] = {**score(model, scenes["val"]), **read_budget(Path(path).parent), "pipeline": path}
            if name not in results["costs"]:
                results["costs"][name] = compare.measure_costs(model, None, None, args.cost_size)
            print(f"done: {split} {name}", file=sys.stderr)
        baseline = RootPolynomialRegression.fit_scenes(scenes["train"], CameraResponse.from_preset("nikon5100"),
                                                       format="cave")
        rows["root-polynomial baseline"] = score(baseline, scenes["val"])
        results["costs"].setdefault("root-polynomial baseline", compare.measure_costs(baseline, None, None,
                                                                                     args.cost_size))
        results["splits"][split] = {"val_scenes": [p.name for p in scenes["val"]], "rows": rows}
    for split, result in results["splits"].items():
        print(f"\nsplit {split}: val = {', '.join(result['val_scenes'])}")
        for name, row in result["rows"].items():
            cost = results["costs"][name]
            budget = (f"{row['steps']} steps, {row['seconds'] / 60:.1f} min on {row['device']}" if "steps" in row else "-")
            print(f"  {name:26s} {row['psnr']:6.2f} dB  SAM {row['sam']:5.2f}  MRAE {row['mrae']:.4f}  "
                  f"RMSE {row['rmse']:.4f}  params {cost['parameters']:>10,}  GFLOP {cost['gflops_per_image']:8.2f}  "
                  f"{cost['seconds_per_image']:.2f} s  trained: {budget}")
    if args.json is not None:
        save_json(results, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
