"""Classical baseline: per-pixel root-polynomial regression RGB -> spectra (degree 2).

Features (r, g, b, √rg, √gb, √rb, 1) are exposure-invariant up to the constant term, and a least-squares
fit on training pixels gives the reference every learned model here is compared with (METHOD.md section 6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .camera import CameraResponse
from .degradation import Degradation

FEATURE_NAMES = ("r", "g", "b", "sqrt(rg)", "sqrt(gb)", "sqrt(rb)", "1")


def root_polynomial_features(rgb: Union[np.ndarray, "torch.Tensor"]) -> Union[np.ndarray, "torch.Tensor"]:
    """(..., 3) linear RGB -> (..., 7) degree-2 root-polynomial features (negative values clipped to 0).

    NumPy in, float64 NumPy out; a torch tensor in, a tensor of its dtype out (differentiable where RGB > 0),
    so the R2H-Diff network's regression skip uses the very features of this baseline.
    """
    import torch

    if isinstance(rgb, torch.Tensor):
        rgb = rgb.clamp_min(0.0)
        r, g, b = rgb.unbind(-1)
        return torch.stack([r, g, b, (r * g).sqrt(), (g * b).sqrt(), (r * b).sqrt(), torch.ones_like(r)], dim=-1)
    return root_polynomial_features(torch.from_numpy(np.asarray(rgb, dtype=np.float64))).numpy()


def fit_root_polynomial(rgb: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least-squares weights (7 x C) from the features of `rgb` (P x 3) to `targets` (P x C): the baseline's fit,
    also the start of R2H-Diff's regression skip (whose targets live in the network's space)."""
    features = root_polynomial_features(np.asarray(rgb).reshape(-1, 3))
    weights, *_ = np.linalg.lstsq(features, np.asarray(targets, dtype=np.float64).reshape(len(features), -1), rcond=None)
    return weights


class RootPolynomialRegression:
    """Linear map from root-polynomial features to B bands. Call it on an H x W x 3 image."""

    def __init__(self, weights: np.ndarray, camera: CameraResponse) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(FEATURE_NAMES), camera.num_bands):
            raise ValueError(f"weights must be {len(FEATURE_NAMES)} x {camera.num_bands}, got {weights.shape}")
        self.weights = weights
        self.camera = camera

    @classmethod
    def fit(cls, rgb: np.ndarray, spectra: np.ndarray, camera: CameraResponse) -> "RootPolynomialRegression":
        """Least squares on pixels: rgb (N, 3), spectra (N, B)."""
        return cls(fit_root_polynomial(rgb, spectra.reshape(-1, camera.num_bands)), camera)

    @classmethod
    def fit_scenes(
        cls,
        scenes: Sequence[Union[str, Path]],
        camera: CameraResponse,
        degradation: Optional[Degradation] = None,
        format: Optional[str] = None,
        seed: int = 0,
    ) -> "RootPolynomialRegression":
        """Fit on every pixel of the given scenes, RGB rendered with `camera` (and degraded if asked)."""
        from .data import read_scene

        rgbs, cubes = [], []
        for index, path in enumerate(scenes):
            cube = read_scene(path, format=format, grid=camera.grid).cube
            rgb = camera.render(cube)
            if degradation is not None and not degradation.is_identity:
                rgb = degradation(rgb, seed=seed + index)
            rgbs.append(rgb.reshape(-1, 3))
            cubes.append(cube.reshape(-1, camera.num_bands))
        if not rgbs:
            raise ValueError("no training scenes given")
        return cls.fit(np.concatenate(rgbs), np.concatenate(cubes), camera)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 linear RGB -> H x W x B float32 spectra."""
        if rgb.shape[-1] != 3:
            raise ValueError(f"expected ... x 3 RGB, got shape {rgb.shape}")
        return (root_polynomial_features(rgb) @ self.weights).astype(np.float32)

    def save(self, path: Union[str, Path]) -> Path:
        """Weights and camera in one .npz, written atomically."""
        import json

        from .io import atomic_write

        path = Path(path)
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, weights=self.weights, camera=json.dumps(self.camera.to_config()),
                         features=np.array(FEATURE_NAMES))
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "RootPolynomialRegression":
        import json

        try:
            with np.load(path, allow_pickle=False) as data:
                weights, camera = data["weights"], CameraResponse.from_config(json.loads(str(data["camera"])))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a root-polynomial baseline file ({exc})") from exc
        return cls(weights, camera)
