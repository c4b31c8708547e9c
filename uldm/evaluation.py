"""One evaluation loop for every model: render RGB from ground truth, reconstruct, score, optionally save.

A model is anything callable as `reconstruct(rgb: H x W x 3 float32) -> H x W x B`, so the baseline, the
ULDM pipeline and R2H-Diff are scored by the same code and the same metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from .camera import CameraResponse
from .degradation import Degradation

Reconstruct = Callable[[np.ndarray], np.ndarray]
ROW_KEYS = ("mrae", "rmse", "psnr", "sam", "rgb_error")  # the accuracy columns of a comparison row


@dataclass
class EvaluationResult:
    """Per-scene metrics (MRAE, RMSE, PSNR, SAM, seconds, RGB re-projection error) and their mean over the scenes
    that were scored; `failures` names the scenes that could not be (with why)."""

    per_scene: dict[str, dict[str, float]]
    settings: dict = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        from .metrics import mean_metrics

        return mean_metrics(list(self.per_scene.values()))

    def row(self, keys: Sequence[str] = ROW_KEYS, per_scene: Optional[str] = None) -> dict[str, float]:
        """One row of a table comparing models: the mean of `keys`, then, if `per_scene` names a metric, its value
        for every scene as "<metric> <scene>" (e.g. "psnr balloons_ms")."""
        mean = self.mean
        row = {key: mean[key] for key in keys}
        if per_scene is not None:
            row.update({f"{per_scene} {scene}": metrics[per_scene] for scene, metrics in self.per_scene.items()})
        return row

    def table(self) -> str:
        from .metrics import format_table

        return format_table(self.per_scene)

    def to_dict(self) -> dict:
        scored = {"settings": self.settings, "per_scene": self.per_scene,
                  "mean": self.mean if self.per_scene else {}}
        return {**scored, "failures": self.failures} if self.failures else scored

    def save_json(self, path: Union[str, Path]) -> Path:
        from .io import save_json

        return save_json(self.to_dict(), path)


def evaluate(
    reconstruct: Reconstruct,
    scenes: Sequence[Union[str, Path]],
    camera: CameraResponse,
    *,
    format: Optional[str] = None,
    degradation: Optional[Degradation] = None,
    crop: int = 0,
    seed: int = 0,
    save_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    keep_going: bool = False,
) -> EvaluationResult:
    """Score `reconstruct` on ground-truth scenes whose RGB is rendered with `camera` (then degraded). With
    `keep_going`, a scene that cannot be read or reconstructed is recorded in `failures` and the others are scored."""
    per_scene: dict[str, dict[str, float]] = {}
    failures: dict[str, str] = {}
    for index, path in enumerate(tqdm(scenes, desc="evaluate", disable=not progress)):
        try:
            per_scene.update(_score_scene(reconstruct, path, index, camera, format, degradation, crop, seed, save_dir))
        except Exception as exc:  # with keep_going, one unreadable scene does not cost the others
            if not keep_going:
                raise
            failures[str(path)] = f"{type(exc).__name__}: {exc}"
    settings = {"camera": camera.name, "crop": crop, "degradation": (degradation or Degradation()).to_config(),
                "scenes": len(per_scene)}
    return EvaluationResult(per_scene=per_scene, settings=settings, failures=failures)


def _score_scene(reconstruct: Reconstruct, path, index: int, camera: CameraResponse, format: Optional[str],
                 degradation: Optional[Degradation], crop: int, seed: int,
                 save_dir: Optional[Union[str, Path]]) -> dict[str, dict[str, float]]:
    """{scene name: its metrics}, the reconstruction saved if asked."""
    from .data import read_scene
    from .io import save_cube
    from .metrics import evaluate_cube

    scene = read_scene(path, format=format, grid=camera.grid)
    # what a camera records lies in [0, 1]: the sRGB observer's negative lobes render some saturated spectra below 0
    # (its linear sRGB is out of gamut there), and a photograph clips them; the flagged pixels show in rgb_error
    clean_rgb = np.clip(camera.render(scene.cube), 0.0, 1.0)
    rgb = clean_rgb if degradation is None or degradation.is_identity else degradation(clean_rgb, seed=seed + index)
    start = time.perf_counter()
    prediction = np.asarray(reconstruct(rgb), dtype=np.float32)
    seconds = time.perf_counter() - start
    row = evaluate_cube(prediction, scene.cube, crop=crop)
    row["seconds"] = seconds
    row["rgb_error"] = camera.render_error(prediction, rgb)
    if save_dir is not None:
        save_cube(Path(save_dir) / f"{scene.name}.h5", prediction, camera.grid.as_array(), camera=camera,
                  attrs={"source": str(path)})
    return {scene.name: row}
