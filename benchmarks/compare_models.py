"""Compare any checkpoints on the CAVE val split: accuracy, RGB consistency, size, FLOPs and CPU time, one table.

    python benchmarks/compare_models.py checkpoints/baseline-rootpoly-nikon5100.npz runs/uldm-cave/pipeline \\
        runs/r2hdiff-cave/pipeline [--steps 5] [--ensemble 1] [--rgb-consistent] [--json compare.json]

Each checkpoint is loaded with `uldm.checkpoints.load_reconstructor` (a baseline .npz, any uldm pipeline folder
or hub id) and scored with `uldm.evaluation.evaluate`, the code behind `uldm evaluate`: RGB rendered from the
ground truth with the model's own camera, linear, noise-free; MRAE (eps 1e-3), RMSE, PSNR, SAM (degrees) as
means over the scenes; "max RGB err" is the largest per-scene max |Φŝ − c|. `--rgb-consistent` evaluates every
R2H-Diff pipeline twice, as trained and projected onto Φŝ = c, so the projection's effect is measured (both raw,
without the default physical projection of `uldm.feasibility`; every other row has it).

What the cost columns count (all at one 256 x 256 image, batch 1, on this machine's CPU threads; `--cost-size`
changes the size, e.g. for a quick check):
- params: the parameters of every nn.Module component of a pipeline (ULDM: UNet, whole VAE, whole SpeUAE,
  prompt embedding, code prior if any; R2H-Diff: the network), or the 7 x 31 regression weights of the baseline.
- GFLOP/step: one forward of the denoiser (ULDM: the UNet on 256/f x 256/f latents, f the SpaAE's downsampling
  (8 for SD's VAE and TAESD); R2H-Diff: the network on
  the 256 x 256 cube), measured as FlopCounterMode(pipeline with 2 steps) − FlopCounterMode(pipeline with 1 step).
- GFLOP/image: FlopCounterMode over the whole pipeline call at the chosen steps and ensemble size, so everything
  that runs is counted: ULDM = VAE encoder (RGB condition, once per image) + steps x UNet + VAE decoder +
  SpeUAE decoder (both per member) + the code prior and SpeUAE encoder (once per image, if a prior);
  R2H-Diff = steps x network (+ the 3 x 31 projection matmuls if on). The JSON also holds it by module
  (`gflops_by_module`: UNet2DConditionModel, EncoderTiny / DecoderTiny or Encoder / Decoder, PointwiseMLP, ...).
  The baseline's is counted by hand in the same convention: its 7 x 31 matmul, 2 x 7 x 31 per pixel.
- FlopCounterMode counts a multiply-add as 2 FLOPs and only matmuls and convolutions (not activations,
  softmax or norms); papers in this field quote multiply-accumulates (fvcore): divide by 2 to compare.
- s/image: wall time of one reconstruction at 256 x 256 (after a 1-step warm-up run).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from uldm.checkpoints import PipelineReconstructor, load_reconstructor
from uldm.data import cave_split, default_cave_root, list_scenes
from uldm.evaluation import evaluate
from uldm.io import save_json

COST_SIZE = 256
COLUMNS = (  # (key, header, format)
    ("psnr", "PSNR", "{:.2f}"), ("sam", "SAM", "{:.2f}"), ("mrae", "MRAE", "{:.4f}"), ("rmse", "RMSE", "{:.4f}"),
    ("max_rgb_error", "max RGB err", "{:.1e}"), ("parameters", "params", "{:,}"),
    ("gflops_per_step", "GFLOP/step", "{:.2f}"), ("gflops_per_image", "GFLOP/image", "{:.2f}"),
    ("seconds_per_image", "s/image", "{:.2f}"),
)


# -------------------------------------------------------------------------------------------------- models
def model_label(spec: str) -> str:
    """A short name: the file or folder name, with the run folder for `<run>/pipeline`."""
    path = Path(spec)
    return f"{path.parent.name}/{path.name}" if path.name == "pipeline" and path.parent.name else path.name or spec


def is_r2hdiff(model: Any) -> bool:
    return isinstance(model, PipelineReconstructor) and "project_rgb" in model.pipeline.config


@contextlib.contextmanager
def projection(model: Any, enabled: Optional[bool]) -> Iterator[None]:
    """Run an R2H-Diff pipeline with `project_rgb` set to `enabled` (None: as saved) and without the physical
    projection (which would make both variants RGB-consistent), restoring both after."""
    if enabled is None or not is_r2hdiff(model):
        yield
        return
    pipeline = model.pipeline
    saved, physical = pipeline.config.project_rgb, model.physical
    pipeline.register_to_config(project_rgb=enabled)
    model.physical = False
    try:
        yield
    finally:
        pipeline.register_to_config(project_rgb=saved)
        model.physical = physical


def variants(spec: str, model: Any, both_projections: bool) -> list[tuple[str, Optional[bool]]]:
    """(label, project_rgb) rows for one checkpoint: two for R2H-Diff under --rgb-consistent, else one."""
    label = model_label(spec)
    if both_projections and is_r2hdiff(model):
        return [(f"{label} (free)", False), (f"{label} (+RGB proj.)", True)]
    return [(label, None)]


# ---------------------------------------------------------------------------------------------------- costs
def count_parameters(model: Any) -> Optional[int]:
    if isinstance(model, PipelineReconstructor):
        modules = [c for c in model.pipeline.components.values() if isinstance(c, torch.nn.Module)]
        return sum(p.numel() for module in modules for p in module.parameters())
    weights = getattr(model, "weights", None)
    return int(np.asarray(weights).size) if weights is not None else None


def cost_image(size: int = COST_SIZE) -> np.ndarray:
    """A fixed, smooth test image (content does not change FLOPs or time, only its size does)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([0.2 + 0.6 * yy, 0.3 + 0.5 * xx, 0.7 - 0.4 * yy * xx], axis=-1).astype(np.float32)


def pipeline_flops(model: PipelineReconstructor, rgb: np.ndarray, steps: int, ensemble: int,
                   by_module: Optional[dict[str, float]] = None, physical: Optional[bool] = None) -> int:
    """FlopCounterMode total of one pipeline call (matmuls and convolutions, multiply-add = 2), with the physical
    projection as the model runs it unless `physical` says otherwise; with `by_module`, also fills it with the
    GFLOP of each top-level module class that ran (UNet, SpaAE encoder and decoder, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.pipeline(rgb, num_inference_steps=steps, ensemble_size=ensemble, input_space="linear",
                       physical=model.physical if physical is None else physical,
                       generator=torch.Generator().manual_seed(0), show_progress_bar=False)
    if by_module is not None:
        by_module.update({name: sum(counts.values()) / 1e9 for name, counts in counter.get_flop_counts().items()
                          if name != "Global" and "." not in name})
    return int(counter.get_total_flops())


def measure_costs(model: Any, steps: Optional[int], ensemble: Optional[int], size: int = COST_SIZE) -> dict[str, Any]:
    """Parameters, GFLOPs per denoising step and per image, seconds per image, at size x size."""
    rgb = cost_image(size)
    row: dict[str, Any] = {"parameters": count_parameters(model)}
    if isinstance(model, PipelineReconstructor):
        config = model.pipeline.config
        steps = steps or config.get("default_denoising_steps", 1)  # a regression network (MST++) has one pass
        ensemble = ensemble or config.get("default_ensemble_size", 1)
        if "default_denoising_steps" in config:
            # the projection's Newton iterations differ from one result to the next: one step is counted without it
            one = pipeline_flops(model, rgb, 1, 1, physical=False)
            row["gflops_per_step"] = (pipeline_flops(model, rgb, 2, 1, physical=False) - one) / 1e9
        row["gflops_by_module"] = {}
        row["gflops_per_image"] = pipeline_flops(model, rgb, steps, ensemble, row["gflops_by_module"]) / 1e9
        row.update(steps=steps, ensemble=ensemble)
        model.pipeline(rgb, num_inference_steps=1, input_space="linear", show_progress_bar=False)  # warm-up
    else:
        weights = getattr(model, "weights", None)
        if weights is not None:  # a per-pixel linear map: 2 FLOPs per multiply-add, as FlopCounterMode counts
            row["gflops_per_image"] = 2 * np.asarray(weights).size * size * size / 1e9
        model(rgb)  # warm-up
    start = time.perf_counter()
    model(rgb)
    row["seconds_per_image"] = time.perf_counter() - start
    return row


# ------------------------------------------------------------------------------------------------- table
def format_rows(rows: dict[str, dict[str, Any]]) -> str:
    """One line per model; '-' where a column does not apply."""
    header = ["model", *(title for _, title, _ in COLUMNS)]
    lines = [header]
    for name, row in rows.items():
        cells = [name]
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    render = [("  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]))
              for line in lines]
    return "\n".join([render[0], "-" * len(render[0]), *render[1:]])


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="baseline .npz, pipeline folders or hub ids")
    parser.add_argument("--data", type=Path, default=default_cave_root(), help="CAVE root (default: ../shared/data/cave)")
    parser.add_argument("--split", choices=["val", "train", "all"], default="val",
                        help="CAVE val split (default), train split (how well the training scenes were learnt) or all scenes")
    parser.add_argument("--steps", type=int, help="denoising steps (default: each pipeline's)")
    parser.add_argument("--ensemble", type=int, help="samples per image (default: each pipeline's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--rgb-consistent", action="store_true",
                        help="evaluate R2H-Diff pipelines both without and with the projection onto Φŝ = c")
    parser.add_argument("--cost-size", type=int, default=COST_SIZE,
                        help=f"image size for the FLOP and time columns (default: {COST_SIZE}, the papers' convention)")
    parser.add_argument("--costs-only", action="store_true",
                        help="only the cost columns (parameters, GFLOP, seconds): no scene is scored")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the rows (and per-scene metrics) as JSON")
    return parser.parse_args(argv)


def scenes_for(root: Optional[Path], split: str) -> list[Path]:
    if root is None or not Path(root).is_dir():
        raise SystemExit(f"error: CAVE data not found at {root} (give --data or set $ULDM_CAVE_ROOT)")
    return list_scenes(root, "cave") if split == "all" else cave_split(root)[split]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    scenes = [] if args.costs_only else scenes_for(args.data, args.split)
    rows: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    for spec in args.checkpoints:
        model = load_reconstructor(spec, steps=args.steps, ensemble=args.ensemble, seed=args.seed)
        for label, project in variants(spec, model, args.rgb_consistent):
            with projection(model, project):
                costs = measure_costs(model, args.steps, args.ensemble, args.cost_size)
                rows[label] = {**costs, "checkpoint": spec, "rgb_projection": project}
                if scenes:
                    result = evaluate(model, scenes, model.camera, progress=False)
                    rows[label].update({k: result.mean[k] for k in ("psnr", "sam", "mrae", "rmse")},
                                       max_rgb_error=max(row["rgb_error"] for row in result.per_scene.values()))
                    details[label] = result.to_dict()
            print(f"done: {label}", file=sys.stderr)
    scored = "no scenes scored" if args.costs_only else f"CAVE {args.split} split ({len(scenes)} scenes, linear noise-free RGB)"
    print(f"{scored}; costs at {args.cost_size}x{args.cost_size}, {torch.get_num_threads()} CPU threads")
    print(format_rows(rows))
    if args.json is not None:
        save_json({"rows": rows, "evaluations": details}, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
