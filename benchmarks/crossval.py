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
import json
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
def fit_regression(train: list[Path], camera: CameraResponse, fold: int, kept: Optional[dict] = None) -> tuple[Callable, dict]:
    return RootPolynomialRegression.fit_scenes(train, camera, format="cave"), {"fit": "least squares, all pixels"}


class PriorReconstructor:
    """A spectral prior (N x 3 x H x W RGB -> spectra) as a reconstructor: its spectra made physical
    (`uldm.feasibility`, as every pipeline's are by default) or, with `physical` False, only exact in RGB."""

    def __init__(self, prior, camera: CameraResponse) -> None:
        from uldm.nullspace import ObservableSplit

        self.prior, self.camera, self.split, self.physical = prior, camera, ObservableSplit(camera), True

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from uldm.feasibility import project_feasible

        image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            estimate = self.prior(image).double()
            if self.physical:
                spectra = project_feasible(estimate, image.double(), self.camera, dim=1)[0]
            else:
                spectra = self.split.compose(image.double(), self.split.unobservable(estimate, dim=1), dim=1)
        return spectra[0].permute(1, 2, 0).float().numpy()


def scene_mixture(use_context: bool, penalties: Optional[Sequence[float]] = None) -> Callable:
    def fit(train: list[Path], camera: CameraResponse, fold: int, kept: Optional[dict] = None) -> tuple[Callable, dict]:
        """The fold's prior; with `kept` (the record of an earlier fit of this fold), its bank is fitted again
        (deterministic, seconds) and its gate taken from the record instead of being searched for again."""
        from uldm.scene_prior_fit import fit_scene_mixture_prior, scene_data

        scenes = scene_data(train, camera, format="cave")
        options = {} if penalties is None else {"penalties": penalties}
        if kept is not None:
            options["gate"] = list(kept["gate"].values())
        prior, record = fit_scene_mixture_prior(scenes, camera, use_context=use_context, **options)
        if kept is not None:
            record = {**kept, "gate_from_record": True}
        return PriorReconstructor(prior, camera), record

    return fit


def runs_folder() -> Path:
    """Where trained fold pipelines are kept: $ULDM_RUNS (e.g. a folder outside the checkout, to keep them between
    clones), else runs/ in the repository."""
    import os

    return Path(os.environ.get("ULDM_RUNS", REPO / "runs")) / "crossval"


def trained_pipeline(command: str, pipeline: str) -> Callable:
    """A recipe whose fold models are pipelines trained by `command` into `pipeline` (both formatted with `fold`
    and `root`, the folder of every recipe's runs: recipes that share stages share their folders)."""
    def fit(train: list[Path], camera: CameraResponse, fold: int, kept: Optional[dict] = None, *, recipe: str,
            train_missing: bool) -> tuple[Callable, dict]:
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


class CodePriorReconstructor:
    """A ULDM pipeline's code prior alone: the prior's code through the pipeline's SpeUAE and composition, with no
    generated residual (the decoded residual image is zero), physical or not as the pipeline's output."""

    def __init__(self, pipeline) -> None:
        self.pipeline, self.camera, self.physical = pipeline, pipeline.camera, True

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            spectra = self.pipeline.compose_spectra(torch.zeros_like(image), image, ensemble=1, channels_last=True,
                                                    physical=self.physical)[0]
        return spectra.permute(0, 2, 3, 1)[0].numpy()


def prior_alone(pipeline_recipe: str) -> Callable:
    """A recipe scoring the code prior of another recipe's fold pipelines alone: the prior's code through the same
    SpeUAE and exact composition, with no generated residual (the diffusion's share is the difference)."""
    def fit(train: list[Path], camera: CameraResponse, fold: int, kept: Optional[dict] = None, *, recipe: str,
            train_missing: bool) -> tuple[Callable, dict]:
        from uldm.checkpoints import load_pipeline

        source = RECIPES[pipeline_recipe]
        _, record = source(train, camera, fold, recipe=pipeline_recipe, train_missing=False)
        pipeline = load_pipeline(record["pipeline"])
        if pipeline.code_prior is None:
            raise ValueError(f"{record['pipeline']} has no code prior to score alone")
        return CodePriorReconstructor(pipeline), {**record, "scored": "the code prior alone (no generated residual)"}

    fit.trained = True
    return fit


# every CAVE stage of a ULDM on the fold's training scenes, at the cheaper cross-validation recipe; the UNet's RGB
# pre-training (no CAVE data; arm c only) shared by the folds. Arms and priors of one fold share the stages before
# stage 2 (the fold's SpeUAE and SpaAE adaptation).
ULDM_FOLD = ("bash scripts/train_uldm_cave.sh --arm {arm} --split cv{{fold}} --recipe crossval --runs {{root}}/uldm "
             "--pretrained-runs {{root}}/shared")
ULDM_PIPELINE = "{{root}}/uldm/cave-cv{{fold}}/{arm}-seed{seed}{suffix}/pipeline"


def uldm_recipe(arm: str, code_prior: str = "", seed: int = 0, inner: bool = False) -> Callable:
    """The ULDM of `arm` per fold (stage 2 seeded with `seed`); `inner`: trained on the fold's inner split instead
    (15 of its training scenes, stages/configs/splits/cv5_fold{k}_inner_*.txt), for checks that must not see 5 of them."""
    suffix = f"-{code_prior}" if code_prior else ""
    command = ULDM_FOLD.format(arm=arm) + (f" --code-prior {code_prior}" if code_prior else "") + f" --seed {seed}"
    pipeline = ULDM_PIPELINE.format(arm=arm, seed=seed, suffix=suffix)
    if inner:
        command, pipeline = (text.replace("cv{fold}", "cv{fold}i") for text in (command, pipeline))
    return trained_pipeline(command, pipeline)


RESIDUAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def inner_scenes(train: list[Path], fold: int) -> list[Path]:
    """The 5 training scenes of `fold` that its inner models never see."""
    return select_scenes(train, read_split_file(SPLITS / f"cv5_fold{fold}_inner_val.txt"))


def weighted_residual(pipeline_recipe: str, inner_recipe: str, weights: Sequence[float] = RESIDUAL_WEIGHTS) -> Callable:
    """A recipe that weights the generated residual of `pipeline_recipe`'s fold pipeline (`code_residual_weight`:
    0 the prior alone, 1 as trained) by what transfers to scenes a model has not seen: the same recipe trained on the
    fold's inner split (`inner_recipe`) scores its 5 held-out training scenes at each weight, and the best mean PSNR
    (physical spectra; ties to the smaller weight) sets the weight. Nothing of the fold's val scenes is seen."""
    def fit(train: list[Path], camera: CameraResponse, fold: int, kept: Optional[dict] = None, *, recipe: str,
            train_missing: bool) -> tuple[Callable, dict]:
        if kept is not None and "inner_psnr" in kept:
            inner, inner_budgets = kept["inner_psnr"], kept.get("inner_budgets", {})
        else:
            held_out = inner_scenes(train, fold)
            model, inner_record = RECIPES[inner_recipe](train, camera, fold, recipe=inner_recipe,
                                                        train_missing=train_missing)
            inner, inner_budgets = {}, inner_record.get("budgets", {})
            for weight in weights:
                model.pipeline.register_to_config(code_residual_weight=weight)
                scores = evaluate(model, held_out, camera, format="cave", progress=False).per_scene
                inner[f"{weight:g}"] = float(np.mean([row["psnr"] for row in scores.values()]))
        weight = float(max(inner, key=lambda w: (round(inner[w], 6), -float(w))))
        model, record = RECIPES[pipeline_recipe](train, camera, fold, recipe=pipeline_recipe, train_missing=train_missing)
        model.pipeline.register_to_config(code_residual_weight=weight)
        budgets = {**record.get("budgets", {}), **inner_budgets}  # the fold's training and its inner models'
        return model, {**record, "budgets": budgets, "inner_budgets": inner_budgets, "inner_psnr": inner,
                       "code_residual_weight": weight}

    fit.trained = True
    return fit


# a peer trained from scratch on the fold's training scenes with its shipped config, at fewer steps
PEER_FOLD = ("python stages/train_{peer}.py --config stages/configs/{peer}_cave.yaml --set output_dir={{root}}/{peer}/cv{{fold}} "
             "--set train_scenes=stages/configs/splits/cv5_fold{{fold}}_train.txt "
             "--set val_scenes=stages/configs/splits/cv5_fold{{fold}}_val.txt --set max_train_steps=500 "
             "--set validation_steps=500 --set checkpointing_steps=250 --resume_from_checkpoint latest")

RECIPES: dict[str, Callable] = {
    "regression": fit_regression,
    "scene-mixture": scene_mixture(use_context=True),
    "scene-mixture-nocontext": scene_mixture(use_context=False),
    "scene-mixture-sharp": scene_mixture(use_context=True, penalties=(0.0,)),
    "scene-mixture-nocontext-sharp": scene_mixture(use_context=False, penalties=(0.0,)),
    "uldm-c": uldm_recipe("c"),
    "uldm-b": uldm_recipe("b"),
    "uldm-scene-mixture": uldm_recipe("b", "scene_mixture"),
    "uldm-scene-mixture-seed1": uldm_recipe("b", "scene_mixture", seed=1),
    "uldm-scene-mixture-inner": uldm_recipe("b", "scene_mixture", inner=True),
    "uldm-scene-mixture-weighted": weighted_residual("uldm-scene-mixture", "uldm-scene-mixture-inner"),
    "mstpp": trained_pipeline(PEER_FOLD.format(peer="mstpp"), "{root}/mstpp/cv{fold}/pipeline"),
    "r2hdiff": trained_pipeline(PEER_FOLD.format(peer="r2hdiff"), "{root}/r2hdiff/cv{fold}/pipeline"),
    "uldm-c-prior-only": prior_alone("uldm-c"),
    "uldm-b-prior-only": prior_alone("uldm-b"),
    "uldm-scene-mixture-prior-only": prior_alone("uldm-scene-mixture"),
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
              "--recipe crossval: SpeUAE 4000 steps, RGB pre-training 500 on one cached epoch, SpaAE adaptation 100, "
              "stage 2 300)",
    "uldm-b": "ULDM arm b (pretrained SpaAE adapted, UNet from its random start, root-polynomial code prior), "
              "every CAVE stage retrained per fold at the cross-validation recipe (as uldm-c without the RGB "
              "pre-training, whose gain the pretraining ablation did not separate from b)",
    "uldm-scene-mixture": "ULDM arm b with the scene mixture as its code prior (the same SpeUAE, SpaAE and UNet "
                          "start as uldm-b per fold; stage 2 at the same recipe, each training patch's own scene left "
                          "out of the bank)",
    "uldm-b-prior-only": "uldm-b's code prior (the regression) alone, through its fold's SpeUAE: no generated residual",
    "uldm-scene-mixture-seed1": "uldm-scene-mixture with stage 2 seeded 1 instead of 0 (the same stages before it): "
                                "the seed spread",
    "uldm-scene-mixture-weighted": "uldm-scene-mixture's fold pipelines with the generated residual weighted "
                                   "(0, 0.25, ..., 1) by an inner check: the same recipe trained on 15 of the fold's "
                                   "training scenes, scored on the other 5",
    "mstpp": "MST++ from scratch per fold (stages/configs/mstpp_cave.yaml at 500 steps)",
    "r2hdiff": "R2H-Diff from scratch per fold (stages/configs/r2hdiff_cave.yaml at 500 steps)",
    "uldm-c-prior-only": "uldm-c's code prior (the regression) alone, through its fold's SpeUAE: no generated residual",
    "uldm-scene-mixture-prior-only": "uldm-scene-mixture's code prior alone, through its fold's SpeUAE: no generated "
                                     "residual",
}


# the paired comparisons the docs show, each shown once both recipes have every fold: (recipe, the recipe it is
# compared with, what their difference measures)
COMPARISONS = (
    ("scene-mixture-sharp", "scene-mixture-nocontext-sharp", "the scene mixture's context path (unpenalised gate)"),
    ("scene-mixture", "scene-mixture-nocontext", "the scene mixture's context path (penalised gate)"),
    ("uldm-c", "uldm-b", "the UNet's RGB pre-training on photographs (arm c against arm b)"),
    ("uldm-scene-mixture", "uldm-b", "the scene mixture as the ULDM's code prior, in place of the regression"),
    ("uldm-scene-mixture", "uldm-c", "the new design against the current recipe (arm c)"),
    ("uldm-scene-mixture", "uldm-scene-mixture-prior-only", "the diffusion's share, over the scene mixture prior"),
    ("uldm-b", "uldm-b-prior-only", "the diffusion's share, over the regression prior"),
    ("uldm-scene-mixture-seed1", "uldm-scene-mixture", "stage 2's seed (1 against 0): the seed spread"),
    ("uldm-scene-mixture-weighted", "uldm-scene-mixture", "the residual weighted by the inner check, against as trained"),
    ("uldm-scene-mixture-weighted", "uldm-scene-mixture-prior-only", "the weighted residual against the prior alone"),
    ("uldm-scene-mixture-weighted", "uldm-b", "the weighted design against arm b (regression prior, as trained)"),
    ("uldm-scene-mixture-weighted", "uldm-c", "the weighted design against the current recipe (arm c)"),
    ("uldm-scene-mixture-weighted", "mstpp", "the weighted design against MST++"),
    ("uldm-scene-mixture-weighted", "r2hdiff", "the weighted design against R2H-Diff"),
    ("uldm-scene-mixture", "mstpp", "the new design against MST++"),
    ("uldm-scene-mixture", "r2hdiff", "the new design against R2H-Diff"),
)


# ---------------------------------------------------------------------------------------------- running
def run_fold(recipe: str, fold: int, root: Path, camera: CameraResponse, train_missing: bool,
             kept: Optional[dict] = None) -> dict:
    """Fit `recipe` on the fold's training scenes (or rebuild the model an earlier run kept: `kept` is its fold
    record) and score its val scenes twice: `per_scene` with the spectra made physical (every pipeline's default,
    `uldm.feasibility`) and `per_scene_raw` with the model's own estimate."""
    train, val = fold_scenes(root, fold)
    fit = RECIPES[recipe]
    start = time.perf_counter()
    if getattr(fit, "trained", False):
        model, record = fit(train, camera, fold, kept, recipe=recipe, train_missing=train_missing)
    else:
        model, record = fit(train, camera, fold, kept)
    fit_seconds = time.perf_counter() - start if kept is None else kept["fit_seconds"]
    scores = {}
    for physical in (True, False):
        model.physical = physical
        scores[physical] = evaluate(model, val, camera, format="cave", progress=False).per_scene
    return {"fold": fold, "train": [p.name for p in train], "val": [p.name for p in val], "per_scene": scores[True],
            "per_scene_raw": scores[False], "fit_seconds": round(fit_seconds, 1), "record": record}


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two flat tensors (ties broken by order: continuous values have none)."""
    ranks = [torch.empty_like(v).scatter_(0, v.argsort(), torch.arange(len(v), dtype=v.dtype)) for v in (x, y)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def uncertainty_calibration(recipe: str, root: Path, camera: CameraResponse, ensemble: int) -> dict:
    """How well the ensemble spread predicts the error, per pixel: Spearman's correlation between the spread (mean
    over bands of the members' standard deviation) and the error (RMSE over bands of the ensemble mean), per scene
    and pooled over the 25 scenes, each scene reconstructed by the fold pipeline that never saw it. A fold whose
    trained pipeline is no longer there (its scores kept from an earlier run) is left out and named in `missing`."""
    from uldm.data import read_scene

    per_scene, spreads, errors, missing = {}, [], [], []
    for fold in range(FOLDS):
        train, val = fold_scenes(root, fold)
        try:
            model, _ = RECIPES[recipe](train, camera, fold, recipe=recipe, train_missing=False)
        except FileNotFoundError as error:
            print(f"{recipe} fold {fold}: left out of the uncertainty ({error})")
            missing.append(fold)
            continue
        model.ensemble = ensemble
        for path in val:
            scene = read_scene(path, format="cave", grid=camera.grid)
            prediction = model.predict(camera.render(scene.cube))
            spread = torch.from_numpy(np.asarray(prediction[1], np.float64)).mean(-1).flatten()
            error = torch.from_numpy((np.asarray(prediction[0], np.float64) - scene.cube) ** 2).mean(-1).sqrt().flatten()
            per_scene[scene.name] = spearman(spread, error)
            spreads.append(spread)
            errors.append(error)
    return {"ensemble_size": ensemble, "scenes": len(per_scene), "missing_folds": missing,
            "spearman_per_scene": per_scene,
            "mean_spearman": float(np.mean(list(per_scene.values()))),
            "pooled_spearman": spearman(torch.cat(spreads), torch.cat(errors))}


def summarise(recipe: str, folds: list[dict], reference: Optional[list[dict]]) -> dict:
    """The 25 scenes' scores, their mean, and the paired PSNR difference to the reference recipe per scene."""
    per_scene = {name: row for fold in folds for name, row in fold["per_scene"].items()}
    summary = {"recipe": recipe, "description": DESCRIPTIONS.get(recipe, recipe), "camera": CAMERA,
               "protocol": f"{FOLDS}-fold leave-scenes-out cross-validation over {len(per_scene)} CAVE scenes "
                           "(stages/configs/splits/cv5_fold*), each scene scored once by the fold model that never saw "
                           "it; `per_scene`/`mean`: spectra made physical (the default output), `*_raw`: the model's "
                           "own estimate",
               "scenes": len(per_scene), "mean": mean_metrics(list(per_scene.values())),
               "per_scene": per_scene,
               "folds": [{key: fold[key] for key in ("fold", "val", "fit_seconds", "record")} for fold in folds]}
    raw = {name: row for fold in folds for name, row in fold["per_scene_raw"].items()}
    summary["mean_raw"] = mean_metrics(list(raw.values()))
    summary["per_scene_raw"] = raw
    summary["physical_vs_raw"] = paired_psnr(per_scene, raw, "scenes_better")
    if reference is not None and recipe != REFERENCE:
        base = {name: row for fold in reference for name, row in fold["per_scene"].items()}
        summary["vs_regression"] = paired_psnr(per_scene, base, "scenes_won")
    return summary


def paired_psnr(scores: dict, base: dict, count_name: str) -> dict:
    """The paired PSNR difference of `scores` to `base`, scene by scene: each, their mean, how many are better
    (`count_name`), how many worse, and the worst."""
    diffs = {name: scores[name]["psnr"] - base[name]["psnr"] for name in scores if name in base}
    return {"psnr_difference_per_scene": diffs, "mean_psnr_difference": float(np.mean(list(diffs.values()))),
            count_name: sum(d > 0 for d in diffs.values()), "scenes_worse": sum(d < 0 for d in diffs.values()),
            "worst_psnr_difference": min(diffs.values())}


def fold_results(recipe: str, root: Path, camera: CameraResponse, folds: Sequence[int], force: bool,
                 train_missing: bool) -> list[dict]:
    out = RESULTS / "crossval" / recipe
    results = []
    for fold in folds:
        path = out / f"fold{fold}.json"
        kept = json.loads(path.read_text()) if path.exists() and not force else None
        if kept is not None and "per_scene_raw" in kept:
            results.append(kept)
            print(f"{recipe} fold {fold}: kept {path.relative_to(REPO)}")
            continue
        # a fold scored before both scorings existed is scored again from its kept model
        result = run_fold(recipe, fold, root, camera, train_missing,
                          None if kept is None else {**kept["record"], "fit_seconds": kept["fit_seconds"]})
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
    parser.add_argument("--uncertainty", type=int, default=0, metavar="E",
                        help="for pipeline recipes: also score how well an ensemble of E predicts its error")
    args = parser.parse_args(argv)
    root = args.data or default_cave_root()
    if root is None:
        parser.error("no CAVE data found: give --data")
    camera = CameraResponse.from_preset(CAMERA)
    torch.manual_seed(0)
    reference = fold_results(REFERENCE, root, camera, args.folds, False, False)
    for recipe in dict.fromkeys([REFERENCE, *args.recipe]):  # the reference's summary first, each recipe once
        folds = reference if recipe == REFERENCE else fold_results(recipe, root, camera, args.folds, args.force,
                                                                   args.train)
        if len(folds) < FOLDS:
            continue  # a partial run: the summary needs every fold
        summary = summarise(recipe, folds, reference)
        path = RESULTS / f"crossval_{recipe}.json"
        if args.uncertainty and getattr(RECIPES[recipe], "trained", False):
            summary["uncertainty"] = uncertainty_calibration(recipe, root, camera, args.uncertainty)
            print(f"{recipe}: spread-error Spearman {summary['uncertainty']['mean_spearman']:.3f} mean over scenes")
        elif path.exists() and "uncertainty" in json.loads(path.read_text()):  # kept from the run that measured it
            summary["uncertainty"] = json.loads(path.read_text())["uncertainty"]
        save_json(summary, path)
        line = f"{recipe}: {summary['mean']['psnr']:.2f} dB mean over {summary['scenes']} scenes"
        if "vs_regression" in summary:
            versus = summary["vs_regression"]
            line += (f", {versus['mean_psnr_difference']:+.2f} dB vs the regression, {versus['scenes_won']} scenes "
                     f"won, worst {versus['worst_psnr_difference']:+.2f} dB")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
