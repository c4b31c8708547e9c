"""Validation of a diffusion pipeline on whole scenes, computed exactly as `uldm evaluate` computes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch


@torch.no_grad()
def validate_pipeline(pipeline, scenes: Sequence[Path], *, data_format: str, num_inference_steps: Optional[int] = None,
                      trackers: Sequence[Any] = (), step: int = 0, seed: int = 0) -> dict[str, float]:
    """Score a diffusion pipeline on whole validation scenes; returns {"val/<metric>": mean}.

    Every trainer validates through this, so its numbers are computed exactly as `uldm evaluate` computes them:
    the pipeline is wrapped as a `PipelineReconstructor` (linear RGB in, its default ensemble and projection,
    noise from `seed`) and scored by `uldm.evaluation.evaluate` (RGB rendered with the pipeline's camera; MRAE,
    RMSE, PSNR, SAM, RGB error, seconds). A true-colour preview of the first scene, ground truth beside
    reconstruction, goes to every tracker that takes images.
    """
    from ..checkpoints import PipelineReconstructor
    from ..data import read_scene
    from ..evaluation import evaluate
    from ..visualize import cube_to_srgb

    camera = pipeline.camera
    reconstructor = PipelineReconstructor(pipeline, steps=num_inference_steps, seed=seed)
    first: list[np.ndarray] = []

    def reconstruct(rgb: np.ndarray) -> np.ndarray:
        cube = reconstructor(rgb)
        if not first:
            first.append(cube)
        return cube

    result = evaluate(reconstruct, scenes, camera, format=data_format, seed=seed, progress=False)
    if trackers and first:
        wavelengths = camera.grid.as_array()
        truth = read_scene(scenes[0], format=data_format, grid=camera.grid).cube
        preview = np.concatenate([cube_to_srgb(truth, wavelengths), cube_to_srgb(first[0], wavelengths)], axis=1)
        log_images(trackers, "val/ground_truth|reconstruction", preview[None], step)
    return {f"val/{k}": v for k, v in result.mean.items()}


def log_images(trackers: Sequence[Any], tag: str, images: np.ndarray, step: int) -> None:
    """N x H x W x 3 images to every tracker that takes images (tensorboard, wandb, ...), each in the form it wants."""
    for tracker in trackers:
        if not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":
            tracker.log_images({tag: images}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({tag: list(images)}, step=step)


