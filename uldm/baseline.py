"""Classical baseline: per-pixel root-polynomial regression RGB -> spectra (degree 2 by default).

Root-polynomial terms (Finlayson et al. 2015) are the k-th roots of the degree-k monomials of (r, g, b) that are not
powers of lower ones: degree 2 gives (r, g, b, √rg, √gb, √rb), degree 3 adds seven cube roots, degree 4 nine fourth
roots. Every term scales with exposure, so the fit is exposure-invariant up to the constant term appended last. A
least-squares fit on training pixels gives the reference every learned model here is compared with (METHOD.md
section 6: degree 2). Terms and their order are colour-science's `polynomial_expansion_Finlayson2015` (a test
checks it); they are computed here in torch as well, so R2H-Diff's regression skip and the ULDM's code prior
differentiate through the very features of this baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .camera import CameraResponse
from .degradation import Degradation

if TYPE_CHECKING:
    import torch

BAND_PIXELS = 1 << 18  # pixels whose features are computed at once when predicting
# exponents (a, b, c) of r^a g^b b^c, by degree k (the term is the monomial's k-th root), in colour-science's order
ROOT_POLYNOMIAL_EXPONENTS = {
    1: ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    2: ((1, 1, 0), (0, 1, 1), (1, 0, 1)),
    3: ((1, 2, 0), (0, 1, 2), (1, 0, 2), (2, 1, 0), (0, 2, 1), (2, 0, 1), (1, 1, 1)),
    4: ((3, 1, 0), (3, 0, 1), (1, 3, 0), (0, 3, 1), (1, 0, 3), (0, 1, 3), (2, 1, 1), (1, 2, 1), (1, 1, 2)),
}
DEGREES = tuple(ROOT_POLYNOMIAL_EXPONENTS)  # (1, 2, 3, 4)
ROOTS = {1: "{}", 2: "sqrt({})", 3: "cbrt({})", 4: "root4({})"}


def check_degree(degree: int) -> None:
    if degree not in DEGREES:
        raise ValueError(f"root-polynomial degree must be 1, 2, 3 or 4, got {degree}")


def feature_names(degree: int = 2) -> tuple[str, ...]:
    """Names of the features of `degree` (1 to 4), constant last: ("r", "g", "b", "sqrt(rg)", ..., "1")."""
    check_degree(degree)
    terms = (ROOTS[k].format("".join(channel * power for channel, power in zip("rgb", exponents)))
             for k in range(1, degree + 1) for exponents in ROOT_POLYNOMIAL_EXPONENTS[k])
    return (*terms, "1")


FEATURE_NAMES = feature_names(2)


def degree_of(num_features: int) -> int:
    """The degree whose features number `num_features` (4, 7, 14 or 23): a weight matrix tells its own degree."""
    for degree in DEGREES:
        if len(feature_names(degree)) == num_features:
            return degree
    raise ValueError(f"{num_features} rows match no root-polynomial degree (4, 7, 14 or 23 rows for degrees 1-4)")


def root_polynomial_features(rgb: Union[np.ndarray, "torch.Tensor"], degree: int = 2) -> Union[np.ndarray, "torch.Tensor"]:
    """(..., 3) linear RGB -> (..., F) root-polynomial features of `degree` (negative values clipped to 0).

    NumPy in, float64 NumPy out; a torch tensor in, a tensor of its dtype out (differentiable where RGB > 0).
    """
    import torch

    check_degree(degree)
    if not isinstance(rgb, torch.Tensor):
        return root_polynomial_features(torch.from_numpy(np.asarray(rgb, dtype=np.float64)), degree).numpy()
    channels = rgb.clamp_min(0.0).unbind(-1)
    terms = []
    for k in range(1, degree + 1):
        for exponents in ROOT_POLYNOMIAL_EXPONENTS[k]:
            monomial = torch.ones_like(channels[0])
            for channel, power in zip(channels, exponents):
                monomial = monomial * channel ** power if power else monomial
            terms.append(monomial if k == 1 else monomial.pow(1.0 / k))
    return torch.stack([*terms, torch.ones_like(channels[0])], dim=-1)


def fit_root_polynomial(rgb: np.ndarray, targets: np.ndarray, degree: int = 2) -> np.ndarray:
    """Least-squares weights (F x C) from the features of `rgb` (P x 3) to `targets` (P x C): the baseline's fit,
    also the start of R2H-Diff's regression skip (whose targets live in the network's space)."""
    features = root_polynomial_features(np.asarray(rgb).reshape(-1, 3), degree)
    if np.linalg.matrix_rank(features) < features.shape[1]:
        import warnings

        warnings.warn(f"the root-polynomial fit of degree {degree} has {features.shape[1]} features but its "
                      f"{len(features)} pixels determine only {np.linalg.matrix_rank(features)} of them: the weights "
                      "are underdetermined (fit on more, and more varied, pixels)", stacklevel=2)
    weights, *_ = np.linalg.lstsq(features, np.asarray(targets, dtype=np.float64).reshape(len(features), -1), rcond=None)
    return weights


def scene_pixels(
    scenes: Sequence[Union[str, Path]],
    camera: CameraResponse,
    degradation: Optional[Degradation] = None,
    format: Optional[str] = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb P x 3, spectra P x B) of every pixel of the scenes, RGB rendered with `camera` (then degraded, scene i
    with seed `seed + i`): the training set of a per-pixel regression."""
    rgbs, cubes = [], []
    for _, rgb, cube in rendered_scenes(scenes, camera, degradation, format, seed):
        rgbs.append(rgb.reshape(-1, 3))
        cubes.append(cube.reshape(-1, camera.num_bands))
    if not rgbs:
        raise ValueError("no training scenes given")
    return np.concatenate(rgbs), np.concatenate(cubes)


def rendered_scenes(
    scenes: Sequence[Union[str, Path]],
    camera: CameraResponse,
    degradation: Optional[Degradation] = None,
    format: Optional[str] = None,
    seed: int = 0,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB H x W x 3, spectra H x W x B) of each scene, RGB rendered with `camera` (then degraded, scene i
    with seed `seed + i`): what every model fitted on whole scenes sees of them."""
    from .data import read_scene

    for index, path in enumerate(scenes):
        scene = read_scene(path, format=format, grid=camera.grid)
        rgb = camera.render(scene.cube)
        if degradation is not None and not degradation.is_identity:
            rgb = degradation(rgb, seed=seed + index)
        yield scene.name, rgb, scene.cube


class RootPolynomialRegression:
    """Linear map from root-polynomial features to B bands. Call it on an H x W x 3 image. The degree is read from
    the weights' rows (7 for degree 2), so files saved before degrees existed load unchanged. Its spectra are made
    physical (`uldm.feasibility`: exact in RGB, non-negative, at most 1 where the RGB allows it) unless `physical`
    is False, which gives the regression's raw output."""

    def __init__(self, weights: np.ndarray, camera: CameraResponse, physical: bool = True) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != camera.num_bands:
            raise ValueError(f"weights must be F x {camera.num_bands} (F features), got {weights.shape}")
        self.degree = degree_of(weights.shape[0])
        self.weights = weights
        self.camera = camera
        self.physical = physical

    @classmethod
    def fit(cls, rgb: np.ndarray, spectra: np.ndarray, camera: CameraResponse, degree: int = 2) -> "RootPolynomialRegression":
        """Least squares on pixels: rgb (N, 3), spectra (N, B)."""
        return cls(fit_root_polynomial(rgb, spectra.reshape(-1, camera.num_bands), degree), camera)

    @classmethod
    def fit_scenes(
        cls,
        scenes: Sequence[Union[str, Path]],
        camera: CameraResponse,
        degradation: Optional[Degradation] = None,
        format: Optional[str] = None,
        seed: int = 0,
        degree: int = 2,
    ) -> "RootPolynomialRegression":
        """Fit on every pixel of the given scenes, RGB rendered with `camera` (and degraded if asked)."""
        return cls.fit(*scene_pixels(scenes, camera, degradation, format, seed), camera, degree)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 linear RGB -> H x W x B float32 spectra."""
        return self.predict(rgb).spectra

    def predict(self, rgb: np.ndarray):
        """H x W x 3 linear RGB (or any ... x 3) -> its `uldm.checkpoints.Reconstruction`: float32 spectra, no
        uncertainty, and the out-of-gamut mask (None when not `physical`)."""
        from .checkpoints import Reconstruction

        if rgb.shape[-1] != 3:
            raise ValueError(f"expected ... x 3 RGB, got shape {rgb.shape}")
        image = rgb if rgb.ndim == 3 else rgb.reshape(-1, 1, 3)
        out = np.empty((*image.shape[:2], self.weights.shape[1]), dtype=np.float32)
        mask = np.zeros(image.shape[:2], dtype=bool)

        def keep(rows: slice, spectra: np.ndarray, _: None, flags: Optional[np.ndarray]) -> None:
            out[rows] = spectra
            if flags is not None:
                mask[rows] = flags

        self.stream(image, keep)
        shape = rgb.shape[:-1]
        return Reconstruction(out.reshape(*shape, -1), None, mask.reshape(shape) if self.physical else None)

    def stream(self, rgb: np.ndarray, sink: Callable[[slice, np.ndarray, None, Optional[np.ndarray]], None]) -> None:
        """`predict` of an H x W x 3 image a band of whole rows (about BAND_PIXELS pixels: float64 features of a
        whole photo are GBs) at a time, each handed to `sink(rows, spectra, None, out_of_gamut)` (the mask None
        when not `physical`), top to bottom, and none kept: `uldm reconstruct` writes them into the cube's file."""
        import torch

        from .feasibility import project_feasible

        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected H x W x 3 RGB, got shape {rgb.shape}")
        rows = max(1, BAND_PIXELS // max(1, rgb.shape[1]))
        for top in range(0, rgb.shape[0], rows):
            band = rgb[top:top + rows]
            pixels = band.reshape(-1, 3)
            spectra, mask = root_polynomial_features(pixels, self.degree) @ self.weights, None
            if self.physical:
                projected, flags = project_feasible(
                    torch.from_numpy(spectra), torch.from_numpy(np.asarray(pixels, dtype=np.float64)), self.camera)
                spectra, mask = projected.numpy(), flags.numpy().reshape(band.shape[:2])
            sink(slice(top, top + len(band)), spectra.astype(np.float32).reshape(*band.shape[:2], -1), None, mask)

    def save(self, path: Union[str, Path]) -> Path:
        """Weights and camera in one .npz, written atomically."""
        import json

        from .io import atomic_write

        path = Path(path)
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, weights=self.weights, camera=json.dumps(self.camera.to_config()),
                         features=np.array(feature_names(self.degree)))
        return path

    @classmethod
    def load(cls, path: Union[str, Path], physical: bool = True) -> "RootPolynomialRegression":
        import json

        try:
            with np.load(path, allow_pickle=False) as data:
                weights, camera = data["weights"], CameraResponse.from_config(json.loads(str(data["camera"])))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a root-polynomial baseline file ({exc})") from exc
        return cls(weights, camera, physical)
