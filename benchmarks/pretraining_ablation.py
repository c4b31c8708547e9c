"""The RGB-pretraining ablation, scored on two CAVE splits: does starting from pretrained RGB models help?

    python benchmarks/pretraining_ablation.py --runs runs --json benchmarks/results/pretraining_ablation.json
    python benchmarks/pretraining_ablation.py --runs runs --splits std --camera srgb --json runs/cave-std-srgb/scores.json

Reads the stage-2 pipelines that `scripts/train_uldm_cave.sh` writes, `<runs>/cave-<split>/<arm>-seed<N>/pipeline`
(`<runs>/cave-<split>-<camera>/...` for `--camera` other than nikon5100; their RGB is rendered with that camera)
(arms a: nothing pretrained, b: pretrained SpaAE, c: pretrained SpaAE + RGB-pretrained UNet), for the standard
split ("std": val = balloons, face, jelly_beans, stuffed_toys) and split B (stages/configs/splits/cave_b_*.txt),
and scores each on its split's val scenes, beside the root-polynomial baseline fitted on that split's training
scenes: PSNR, SAM, MRAE, RMSE per scene and mean. Then, per split, the paired differences per scene between arms
(same seed) and the run-to-run spread between seeds of one arm; a difference counts only if its sign holds on both
splits and it exceeds that spread. The budget of every run (steps, samples, seconds, device) comes from its
logs/run_summary.json. Every figure is from this run of the script; nothing is typed in.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from uldm.baseline import RootPolynomialRegression
from uldm.checkpoints import load_reconstructor
from uldm.camera import CameraResponse
from uldm.data import cave_split, cave_split_from_files, default_cave_root
from uldm.evaluation import evaluate
from uldm.io import save_json
from uldm.training import read_budget

REPO = Path(__file__).resolve().parents[1]
SPLIT_FILES = {"b": (REPO / "stages/configs/splits/cave_b_train.txt", REPO / "stages/configs/splits/cave_b_val.txt")}
ARMS = {"a": "nothing pretrained (random UNet, random-weight TAESD3-architecture SpaAE trained on CAVE)",
        "b": "pretrained SpaAE (TAESD3, adapted) + random UNet",
        "c": "pretrained SpaAE (TAESD3, adapted) + RGB-pretrained UNet"}
METRICS = ("psnr", "sam", "mrae", "rmse")
RUN_PATTERN = re.compile(r"^(?P<arm>[a-z])-seed(?P<seed>\d+)$")
DEFAULT_CAMERA = "nikon5100"  # scripts/train_uldm_cave.sh's default --camera


def split_scenes(root: Path, split: str) -> dict[str, list[Path]]:
    if split == "std":
        return cave_split(root)
    return cave_split_from_files(root, *SPLIT_FILES[split])


def split_folder(runs: Path, split: str, camera: str = DEFAULT_CAMERA) -> Path:
    """Where scripts/train_uldm_cave.sh writes a split's runs: cave-<split>, or cave-<split>-<camera> for a camera
    other than the Nikon 5100 (its --camera)."""
    return runs / (f"cave-{split}" if camera == DEFAULT_CAMERA else f"cave-{split}-{camera}")


def find_runs(runs: Path, split: str, camera: str = DEFAULT_CAMERA) -> dict[tuple[str, int], Path]:
    """{(arm, seed): pipeline folder} of the finished stage-2 runs of a split."""
    found = {}
    for folder in sorted(split_folder(runs, split, camera).glob("*-seed*")):
        match = RUN_PATTERN.match(folder.name)
        if match and (folder / "pipeline" / "model_index.json").exists():
            found[(match["arm"], int(match["seed"]))] = folder / "pipeline"
    return found


def paired(per_scene: dict[str, dict[str, dict[str, float]]], first: str, second: str) -> dict[str, Any]:
    """first - second, per scene and mean, for every metric (PSNR up is better; SAM, MRAE, RMSE down)."""
    scenes = list(per_scene[first])
    out = {metric: {scene: per_scene[first][scene][metric] - per_scene[second][scene][metric] for scene in scenes}
           for metric in METRICS}
    return {metric: {"per_scene": values, "mean": float(np.mean(list(values.values())))}
            for metric, values in out.items()}


def score_split(root: Path, runs: Path, split: str, camera: str = DEFAULT_CAMERA) -> dict[str, Any]:
    scenes = split_scenes(root, split)
    found = find_runs(runs, split, camera)
    entries = {f"{arm} seed {seed}": (load_reconstructor(path), {"pipeline": str(path), **read_budget(path.parent)})
               for (arm, seed), path in sorted(found.items())}
    response = next(iter(entries.values()))[0].camera if entries else CameraResponse.from_preset(camera)
    baseline = RootPolynomialRegression.fit_scenes(scenes["train"], response, format="cave")
    entries = {"root-polynomial baseline (fitted on this split's train)": (baseline, {}), **entries}
    rows: dict[str, dict[str, Any]] = {}
    per_scene: dict[str, dict[str, dict[str, float]]] = {}
    for label, (model, info) in entries.items():
        result = evaluate(model, scenes["val"], model.camera, format="cave", progress=False)
        per_scene[label] = result.per_scene
        rows[label] = {**{k: result.mean[k] for k in METRICS},
                       "max_rgb_error": max(r["rgb_error"] for r in result.per_scene.values()), **info}
        print(f"done: {split} {label}", file=sys.stderr)
    arms = sorted({arm for arm, _ in found})
    comparisons = {}
    for first, second in (("c", "a"), ("b", "a"), ("c", "b")):
        if first in arms and second in arms:
            comparisons[f"{first} - {second}"] = paired(per_scene, f"{first} seed 0", f"{second} seed 0")
    comparisons.update({f"{arm} seed {seed} - {arm} seed 0": paired(per_scene, f"{arm} seed {seed}", f"{arm} seed 0")
                        for arm, seed in found if seed != 0 and (arm, 0) in found})
    baseline_label = next(iter(rows))
    for arm in arms:
        comparisons[f"{arm} - baseline"] = paired(per_scene, f"{arm} seed 0", baseline_label)
    return {"val_scenes": [p.name for p in scenes["val"]], "train_scenes": len(scenes["train"]), "rows": rows,
            "per_scene": per_scene, "paired": comparisons, "pipelines_scored": len(found)}


def verdict(results: dict[str, dict[str, Any]], comparison: str) -> dict[str, Any]:
    """Whether `comparison` (e.g. "c - a") has one sign on every split and exceeds the seed spread measured there."""
    means = {split: r["paired"][comparison]["psnr"]["mean"] for split, r in results.items()
             if comparison in r["paired"]}
    spreads = [abs(r["paired"][key]["psnr"]["mean"]) for r in results.values() for key in r["paired"]
               if " seed " in key and key.endswith("seed 0")]
    spread = max(spreads) if spreads else None
    same_sign = len(means) == len(results) and (all(v > 0 for v in means.values()) or all(v < 0 for v in means.values()))
    counts = same_sign and spread is not None and all(abs(v) > spread for v in means.values())
    return {"psnr_mean_difference": means, "seed_spread_psnr": spread, "same_sign_on_every_split": same_sign,
            "counts": counts}


def print_split(split: str, result: dict[str, Any]) -> None:
    print(f"\nSplit {split}: val = {', '.join(result['val_scenes'])} ({result['pipelines_scored']} pipelines "
          f"scored on it by this run, one evaluation each)")
    scenes = result["val_scenes"]
    header = f"{'model':58s} {'PSNR':>6s} {'SAM':>6s} {'MRAE':>7s} {'RMSE':>7s}  " + "  ".join(f"{s[:10]:>10s}" for s in scenes)
    print(header + "\n" + "-" * len(header))
    for label, row in result["rows"].items():
        cells = "  ".join(f"{result['per_scene'][label][s]['psnr']:10.2f}" for s in scenes)
        print(f"{label:58s} {row['psnr']:6.2f} {row['sam']:6.2f} {row['mrae']:7.4f} {row['rmse']:7.4f}  {cells}")
    print("paired PSNR differences (dB), per scene and mean:")
    for name, diff in result["paired"].items():
        cells = "  ".join(f"{diff['psnr']['per_scene'][s]:+10.2f}" for s in scenes)
        print(f"  {name:56s} {diff['psnr']['mean']:+6.2f} {diff['sam']['mean']:+6.2f} {diff['mrae']['mean']:+7.4f} "
              f"{diff['rmse']['mean']:+7.4f}  {cells}")
    for label, row in result["rows"].items():
        if "steps" in row:
            print(f"  budget {label}: {row['steps']} steps, {row['samples']} samples, {row['seconds']:.0f} s, "
                  f"{row['device']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the --runs folder of scripts/train_uldm_cave.sh")
    parser.add_argument("--data", type=Path, default=default_cave_root(), help="CAVE root (default: ../shared/data/cave)")
    parser.add_argument("--splits", nargs="+", default=["std", "b"], choices=["std", *SPLIT_FILES])
    parser.add_argument("--camera", default=DEFAULT_CAMERA,
                        help="the --camera the runs were trained for (default nikon5100: <runs>/cave-<split>; "
                             "another: <runs>/cave-<split>-<camera>)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    if args.data is None or not Path(args.data).is_dir():
        parser.error(f"CAVE data not found at {args.data} (give --data or set $ULDM_CAVE_ROOT)")
    results = {split: score_split(args.data, args.runs, split, args.camera) for split in args.splits}
    for split, result in results.items():
        print_split(split, result)
    verdicts = {name: verdict(results, name) for name in ("c - a", "b - a", "c - b")
                if all(name in r["paired"] for r in results.values())}
    print("\nverdicts (a PSNR difference counts if its sign holds on every split and exceeds the seed spread):")
    for name, v in verdicts.items():
        means = ", ".join(f"{split} {value:+.2f}" for split, value in v["psnr_mean_difference"].items())
        spread = "not measured" if v["seed_spread_psnr"] is None else f"{v['seed_spread_psnr']:.2f} dB"
        print(f"  {name}: {means} dB; seed spread {spread}; counts: {v['counts']}")
    if args.json is not None:
        save_json({"arms": ARMS, "splits": results, "verdicts": verdicts}, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
