"""Leave-scenes-out cross-validation over the 25 CAVE scenes: the basis of every design decision.

    python benchmarks/crossval.py --recipe regression scene-mixture scene-mixture-nocontext
    python benchmarks/crossval.py --recipe uldm-c --train        # trains the missing folds' pipelines first

Five folds of five scenes (stages/configs/splits/cv5_fold{k}_{train,val}.txt, written before any run). Every model
is refitted or retrained per fold on that fold's 20 training scenes, every stage included; each of the 25 scenes
is scored once, by the model of the fold that never saw it (Nikon 5100, rows normalised, clean linear RGB, the
whole 256 x 256 scene). Resumable at the fold: a finished fold's scores are kept in
benchmarks/results/crossval/<recipe>/fold<k>.json (and a trained fold's pipeline in runs/crossval/<recipe>/fold<k>),
so a stopped run continues where it stopped. The summary benchmarks/results/crossval_<recipe>.json holds the
per-scene PSNR/SAM/MRAE/RMSE, their mean over the 25 scenes, the paired PSNR difference to the regression on every
scene, the number of scenes won, and each fold's budget.

Recipes (`RECIPES`): fitted here in seconds (the regression; the scene mixture prior with and without its
context path, composed to render to the input RGB exactly), or pipelines trained per fold by a script (`--train`)
and scored from their folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from uldm.baseline import RootPolynomialRegression  # noqa: E402
from uldm.camera import CameraResponse  # noqa: E402
from uldm.data import default_cave_root, list_scenes  # noqa: E402
from uldm.data.splits import read_split_file, select_scenes  # noqa: E402
from uldm.evaluation import evaluate  # noqa: E402
from uldm.io import save_json  # noqa: E402
from uldm.metrics import mean_metrics  # noqa: E402

FOLDS = 5
SPLITS = REPO / "stages" / "configs" / "splits"
RESULTS = REPO / "benchmarks" / "results"
CAMERA = "nikon5100"
METRICS = ("psnr", "sam", "mrae", "rmse", "rgb_error")
REFERENCE = "regression"


def fold_scenes(root: Path, fold: int) -> tuple[list[Path], list[Path]]:
    """(training scenes, val scenes) of `fold`, from its split files."""
    scenes = list_scenes(root, "cave")
    return tuple(select_scenes(scenes, read_split_file(SPLITS / f"cv5_fold{fold}_{part}.txt"))
                 for part in ("train", "val"))


# ------------------------------------------------------------------------------------------------ recipes
def fit_regression(train: list[Path], camera: CameraResponse, fold: int) -> tuple[Callable, dict]:
    return RootPolynomialRegression.fit_scenes(train, camera, format="cave"), {"fit": "least squares, all pixels"}


def scene_mixture(use_context: bool, penalties: Optional[Sequence[float]] = None) -> Callable:
    def fit(train: list[Path], camera: CameraResponse, fold: int) -> tuple[Callable, dict]:
        from uldm.nullspace import ObservableSplit
        from uldm.scene_prior_fit import fit_scene_mixture_prior, scene_data

        scenes = scene_data(train, camera, format="cave")
        options = {} if penalties is None else {"penalties": penalties}
        prior, record = fit_scene_mixture_prior(scenes, camera, use_context=use_context, **options)
        split = ObservableSplit(camera)

        def reconstruct(rgb: np.ndarray) -> np.ndarray:
            image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
            with torch.no_grad():
                spectra = split.compose(image.double(), split.unobservable(prior(image).double(), dim=1), dim=1)
            return spectra[0].permute(1, 2, 0).float().numpy()

        return reconstruct, record

    return fit


def runs_folder() -> Path:
    """Where trained fold pipelines are kept: $ULDM_RUNS (e.g. a folder outside the checkout, to keep them between
    clones), else runs/ in the repository."""
    import os

    return Path(os.environ.get("ULDM_RUNS", REPO / "runs")) / "crossval"


def trained_pipeline(command: str, pipeline: str) -> Callable:
    """A recipe whose fold models are pipelines trained by `command` into `pipeline` (both formatted with `fold`
    and `root`, the folder of every recipe's runs: recipes that share stages share their folders)."""
    def fit(train: list[Path], camera: CameraResponse, fold: int, *, recipe: str, train_missing: bool) -> tuple[Callable, dict]:
        from uldm.checkpoints import load_reconstructor
        from uldm.training import read_budget

        root = runs_folder()
        folder = Path(pipeline.format(fold=fold, root=root))
        if not folder.exists():
            if not train_missing:
                raise FileNotFoundError(f"{folder} does not exist: run with --train to train fold {fold}")
            subprocess.run(["bash", "-c", command.format(fold=fold, root=root)], cwd=REPO, check=True)
        runs = sorted(folder.parent.parent.glob("*/logs/run_summary.json")) + sorted(root.glob("shared/*/logs/run_summary.json"))
        budgets = {str(p.parent.parent.relative_to(root)): read_budget(p.parent.parent) for p in runs}
        return load_reconstructor(folder), {"pipeline": str(folder), "budgets": budgets}

    fit.trained = True
    return fit


# every CAVE stage of a ULDM on the fold's training scenes, at the cheaper cross-validation recipe; the UNet's RGB
# pre-training (no CAVE data) shared by the folds
ULDM_FOLD = ("bash scripts/train_uldm_cave.sh --arm c --split cv{fold} --recipe crossval --runs {root}/uldm-c "
             "--pretrained-runs {root}/shared")

RECIPES: dict[str, Callable] = {
    "regression": fit_regression,
    "scene-mixture": scene_mixture(use_context=True),
    "scene-mixture-nocontext": scene_mixture(use_context=False),
    "scene-mixture-sharp": scene_mixture(use_context=True, penalties=(0.0,)),
    "scene-mixture-nocontext-sharp": scene_mixture(use_context=False, penalties=(0.0,)),
    "uldm-c": trained_pipeline(ULDM_FOLD, "{root}/uldm-c/cave-cv{fold}/c-seed0/pipeline"),
    "uldm-scene-mixture": trained_pipeline(ULDM_FOLD + " --code-prior scene_mixture",
                                           "{root}/uldm-c/cave-cv{fold}/c-seed0-scene_mixture/pipeline"),
}
DESCRIPTIONS = {
    "regression": "root-polynomial regression (degree 2 + constant), least squares on the fold's 20 scenes",
    "scene-mixture": "scene mixture prior: 20 per-scene regressions + the global one, mixed per pixel by a gate "
                     "with context (palette around the pixel and of the image), fitted leave-scene-out with an L2 "
                     "penalty chosen by an inner cross-validation over the fold's training scenes; exact in RGB",
    "scene-mixture-sharp": "the scene mixture prior with an unpenalised gate (the design's first run)",
    "scene-mixture-nocontext-sharp": "the scene mixture prior without its context path, unpenalised gate",
    "scene-mixture-nocontext": "scene mixture prior without its context path (the gate sees the pixel's colour "
                               "alone); exact in RGB",
    "uldm-c": "ULDM arm c (pretrained SpaAE adapted, UNet pre-trained on photographs, root-polynomial code prior), "
              "every CAVE stage retrained per fold at the cross-validation recipe (scripts/train_uldm_cave.sh "
              "--recipe crossval: SpeUAE 4000 steps, RGB pre-training 500, SpaAE adaptation 100, stage 2 300)",
    "uldm-scene-mixture": "ULDM arm c with the scene mixture as its code prior (the same SpeUAE, SpaAE and "
                          "pre-trained UNet as uldm-c per fold; stage 2 at the same recipe, each training patch's "
                          "own scene left out of the bank)",
}


# ---------------------------------------------------------------------------------------------- running
def run_fold(recipe: str, fold: int, root: Path, camera: CameraResponse, train_missing: bool) -> dict:
    """Fit `recipe` on the fold's training scenes and score its val scenes (kept in a per-fold JSON)."""
    train, val = fold_scenes(root, fold)
    fit = RECIPES[recipe]
    start = time.perf_counter()
    if getattr(fit, "trained", False):
        model, record = fit(train, camera, fold, recipe=recipe, train_missing=train_missing)
    else:
        model, record = fit(train, camera, fold)
    fit_seconds = time.perf_counter() - start
    result = evaluate(model, val, camera, format="cave", progress=False)
    return {"fold": fold, "train": [p.name for p in train], "val": [p.name for p in val],
            "per_scene": result.per_scene, "fit_seconds": round(fit_seconds, 1), "record": record}


def summarise(recipe: str, folds: list[dict], reference: Optional[list[dict]]) -> dict:
    """The 25 scenes' scores, their mean, and the paired PSNR difference to the reference recipe per scene."""
    per_scene = {name: row for fold in folds for name, row in fold["per_scene"].items()}
    summary = {"recipe": recipe, "description": DESCRIPTIONS.get(recipe, recipe), "camera": CAMERA,
               "protocol": f"{FOLDS}-fold leave-scenes-out cross-validation over {len(per_scene)} CAVE scenes "
                           "(stages/configs/splits/cv5_fold*), each scene scored once by the fold model that never saw it",
               "scenes": len(per_scene), "mean": mean_metrics(list(per_scene.values())),
               "per_scene": per_scene,
               "folds": [{key: fold[key] for key in ("fold", "val", "fit_seconds", "record")} for fold in folds]}
    if reference is not None and recipe != REFERENCE:
        base = {name: row for fold in reference for name, row in fold["per_scene"].items()}
        diffs = {name: per_scene[name]["psnr"] - base[name]["psnr"] for name in per_scene if name in base}
        summary["vs_regression"] = {
            "psnr_difference_per_scene": diffs,
            "mean_psnr_difference": float(np.mean(list(diffs.values()))),
            "scenes_won": sum(d > 0 for d in diffs.values()),
            "worst_psnr_difference": min(diffs.values()),
        }
    return summary


def fold_results(recipe: str, root: Path, camera: CameraResponse, folds: Sequence[int], force: bool,
                 train_missing: bool) -> list[dict]:
    out = RESULTS / "crossval" / recipe
    results = []
    for fold in folds:
        path = out / f"fold{fold}.json"
        if path.exists() and not force:
            import json

            results.append(json.loads(path.read_text()))
            print(f"{recipe} fold {fold}: kept {path.relative_to(REPO)}")
            continue
        result = run_fold(recipe, fold, root, camera, train_missing)
        save_json(result, path)
        mean = mean_metrics(list(result["per_scene"].values()))
        print(f"{recipe} fold {fold}: {mean['psnr']:.2f} dB over {result['val']} ({result['fit_seconds']} s to fit)")
        results.append(result)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", default=["regression"], choices=sorted(RECIPES))
    parser.add_argument("--folds", nargs="+", type=int, default=list(range(FOLDS)))
    parser.add_argument("--data", type=Path, default=None, help="CAVE root (default: the shared data folder)")
    parser.add_argument("--train", action="store_true", help="train the missing folds of pipeline recipes")
    parser.add_argument("--force", action="store_true", help="recompute folds that have results")
    args = parser.parse_args(argv)
    root = args.data or default_cave_root()
    if root is None:
        parser.error("no CAVE data found: give --data")
    camera = CameraResponse.from_preset(CAMERA)
    torch.manual_seed(0)
    reference = fold_results(REFERENCE, root, camera, args.folds, False, False)
    for recipe in args.recipe:
        folds = fold_results(recipe, root, camera, args.folds, args.force and recipe != REFERENCE, args.train)
        if len(folds) < FOLDS:
            continue  # a partial run: the summary needs every fold
        summary = summarise(recipe, folds, reference)
        save_json(summary, RESULTS / f"crossval_{recipe}.json")
        line = f"{recipe}: {summary['mean']['psnr']:.2f} dB mean over {summary['scenes']} scenes"
        if "vs_regression" in summary:
            versus = summary["vs_regression"]
            line += (f", {versus['mean_psnr_difference']:+.2f} dB vs the regression, {versus['scenes_won']} scenes "
                     f"won, worst {versus['worst_psnr_difference']:+.2f} dB")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
