"""Camera spectral responses Φ (3 x B): what an RGB sensor sees of a spectrum.

Presets come from colour-science's measured data; any camera can be loaded from a CSV of
(wavelength, r, g, b). Responses are resampled to the spectral grid and, by default, normalised so that
a flat unit spectrum renders to (1, 1, 1) (METHOD.md section 1), which keeps the linear RGB of reflectances in
[0, 1] for a camera whose response is non-negative.

The sensor presets (Nikon 5100, ...) give a camera's raw linear RGB. The sRGB observer (`SRGB_OBSERVER`) is what
an ordinary photograph's values are once the sRGB curve is undone: the CIE 1931 colour matching functions under
D65, mapped to linear sRGB. The sRGB primaries are not spectral colours, so each of its rows dips below zero at
some wavelengths (a reflectance can render slightly outside [0, 1]); the three rows are still independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .spectral import DEFAULT_GRID, SpectralGrid, SpectralGridError, read_spectral_csv

ArrayLike = Union[np.ndarray, torch.Tensor]


class CameraError(ValueError):
    """Unknown preset, unreadable CSV, or a response that does not cover the spectral grid."""


def _colour_camera(key: str) -> tuple[np.ndarray, np.ndarray]:
    import colour

    data = colour.MSDS_CAMERA_SENSITIVITIES[key]
    return np.asarray(data.wavelengths, dtype=np.float64), np.asarray(data.values, dtype=np.float64)


def _colour_cmfs(key: str) -> tuple[np.ndarray, np.ndarray]:
    import colour

    data = colour.MSDS_CMFS[key]
    return np.asarray(data.wavelengths, dtype=np.float64), np.asarray(data.values, dtype=np.float64)


# XYZ -> linear sRGB of IEC 61966-2-1:1999 (its D65 white maps to about (1, 1, 1)).
XYZ_TO_LINEAR_SRGB = np.array([[3.2406, -1.5372, -0.4986],
                               [-0.9689, 1.8758, 0.0415],
                               [0.0557, -0.2040, 1.0570]])


def _srgb_observer() -> tuple[np.ndarray, np.ndarray]:
    """The CIE 1931 2° colour matching functions weighted by D65's spectral power, then mapped to linear sRGB:
    the linear sRGB values of a reflectance lit by D65 (the rows' scale is set by the normalisation)."""
    import colour

    wavelengths, cmfs = _colour_cmfs("CIE 1931 2 Degree Standard Observer")
    d65 = colour.SDS_ILLUMINANTS["D65"]
    lit = (wavelengths >= d65.wavelengths[0]) & (wavelengths <= d65.wavelengths[-1])  # D65 is tabulated to 780 nm
    power = np.interp(wavelengths[lit], d65.wavelengths, d65.values)
    return wavelengths[lit], (cmfs[lit] * power[:, None]) @ XYZ_TO_LINEAR_SRGB.T


def _colour_package_csv(relative: str) -> tuple[np.ndarray, np.ndarray]:
    import colour.characterisation.datasets as datasets

    return _read_response_csv(Path(datasets.__file__).parent / relative)


# The camera of ordinary (display-referred, sRGB-encoded) photographs: see the module's docstring.
SRGB_OBSERVER = "sRGB observer (CIE 1931 2 Degree, D65)"
# Canonical name -> loader returning (wavelengths, values[N, 3]). All data ship inside colour-science.
_PRESETS = {
    "Nikon 5100 (NPL)": lambda: _colour_camera("Nikon 5100 (NPL)"),
    "Sigma SDMerill (NPL)": lambda: _colour_camera("Sigma SDMerill (NPL)"),
    "Canon EOS 5D Mark II": lambda: _colour_package_csv("rawtoaces/CANON_EOS_5DMark_II_RGB_Sensitivities.csv"),
    "CIE 1931 2 Degree Standard Observer": lambda: _colour_cmfs("CIE 1931 2 Degree Standard Observer"),
    SRGB_OBSERVER: _srgb_observer,
}
# Short names people type on the command line.
_ALIASES = {
    "nikon5100": "Nikon 5100 (NPL)",
    "nikon-5100": "Nikon 5100 (NPL)",
    "sigma-sd-merrill": "Sigma SDMerill (NPL)",
    "canon5dmkii": "Canon EOS 5D Mark II",
    "canon-5d-mark-ii": "Canon EOS 5D Mark II",
    "cie1931": "CIE 1931 2 Degree Standard Observer",
    "cie-1931-2": "CIE 1931 2 Degree Standard Observer",
    "srgb": SRGB_OBSERVER,
    "srgb-observer": SRGB_OBSERVER,
}


def available_cameras() -> list[str]:
    """Canonical preset names (aliases in `_ALIASES` are accepted too)."""
    return list(_PRESETS)


def _read_response_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    wavelengths, values = read_spectral_csv(path, ("wavelength", "r", "g", "b"), CameraError)
    if not np.all(np.isfinite(values)):
        raise CameraError(f"{path}: the response contains NaN or infinite values")
    return wavelengths, values


@dataclass(frozen=True)
class CameraResponse:
    """A 3 x B spectral response on a spectral grid. `render` maps spectra to linear RGB."""

    name: str
    matrix: np.ndarray  # (3, B) float64
    grid: SpectralGrid = field(default=DEFAULT_GRID)

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=np.float64)
        if matrix.shape != (3, self.grid.num_bands):
            raise CameraError(
                f"camera {self.name!r}: response must be 3 x {self.grid.num_bands} for {self.grid}, got {matrix.shape}"
            )
        if not np.all(np.isfinite(matrix)):
            raise CameraError(f"camera {self.name!r}: response contains NaN or infinite values")
        if np.linalg.matrix_rank(matrix) < 3:
            raise CameraError(f"camera {self.name!r}: the three channels are linearly dependent (rank < 3)")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_samples(
        cls,
        name: str,
        wavelengths: np.ndarray,
        values: np.ndarray,
        grid: SpectralGrid = DEFAULT_GRID,
        normalize: bool = True,
    ) -> "CameraResponse":
        """From curves sampled at `wavelengths` (values: N x 3), resampled to `grid`."""
        values = np.asarray(values, dtype=np.float64)
        try:
            matrix = grid.resample(values, wavelengths, axis=0).T
        except SpectralGridError as exc:
            raise CameraError(f"camera {name!r} does not cover the spectral grid: {exc}") from exc
        if normalize:
            sums = matrix.sum(axis=1, keepdims=True)
            if np.any(sums <= 0):
                raise CameraError(f"camera {name!r}: a channel has no positive response on {grid}")
            matrix = matrix / sums
        return cls(name=name, matrix=matrix, grid=grid)

    @classmethod
    def from_preset(cls, name: str, grid: SpectralGrid = DEFAULT_GRID, normalize: bool = True) -> "CameraResponse":
        """A camera from colour-science's data, by canonical name or alias (see `available_cameras`)."""
        canonical = _ALIASES.get(name.lower(), name)
        if canonical not in _PRESETS:
            raise CameraError(
                f"unknown camera preset {name!r}; choose one of {available_cameras()} "
                f"(aliases: {sorted(_ALIASES)}) or give a CSV file"
            )
        wavelengths, values = _PRESETS[canonical]()
        return cls.from_samples(canonical, wavelengths, values, grid=grid, normalize=normalize)

    @classmethod
    def from_csv(cls, path: Union[str, Path], grid: SpectralGrid = DEFAULT_GRID, normalize: bool = True) -> "CameraResponse":
        """A camera from a CSV with columns wavelength (nm), r, g, b; a header line is optional."""
        wavelengths, values = _read_response_csv(Path(path))
        return cls.from_samples(Path(path).stem, wavelengths, values, grid=grid, normalize=normalize)

    @classmethod
    def load(cls, spec: Union[str, Path, "CameraResponse"], grid: SpectralGrid = DEFAULT_GRID) -> "CameraResponse":
        """Whatever a user or config names: a CameraResponse, a preset name/alias, or a CSV path."""
        if isinstance(spec, CameraResponse):
            return spec
        if str(spec).lower().endswith(".csv"):
            return cls.from_csv(spec, grid=grid)
        return cls.from_preset(str(spec), grid=grid)

    # ------------------------------------------------------------------------------------------ serialisation
    def to_config(self) -> dict[str, Any]:
        """Plain-JSON description stored in model configs: the exact matrix and its wavelengths."""
        return {"name": self.name, "wavelengths": list(self.grid.wavelengths), "matrix": self.matrix.tolist()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CameraResponse":
        missing = {"name", "wavelengths", "matrix"} - set(config)
        if missing:
            raise CameraError(f"camera config is missing keys {sorted(missing)}")
        return cls(name=config["name"], matrix=np.asarray(config["matrix"]), grid=SpectralGrid(tuple(config["wavelengths"])))

    # ------------------------------------------------------------------------------------------------ use
    @property
    def num_bands(self) -> int:
        return self.grid.num_bands

    def tensor(self, dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None) -> torch.Tensor:
        return torch.tensor(self.matrix.tolist(), dtype=dtype, device=device)

    def render(self, spectra: ArrayLike, channel_axis: int = -1) -> ArrayLike:
        """Linear RGB c = Φ s along `channel_axis` (B in, 3 out); NumPy in, NumPy out; torch in, torch out."""
        if spectra.shape[channel_axis] != self.num_bands:
            raise CameraError(
                f"camera {self.name!r} expects {self.num_bands} bands along axis {channel_axis}, "
                f"got shape {tuple(spectra.shape)}"
            )
        if isinstance(spectra, torch.Tensor):
            phi = self.tensor(dtype=spectra.dtype, device=spectra.device)
            return torch.movedim(torch.movedim(spectra, channel_axis, -1) @ phi.T, -1, channel_axis)
        spectra = np.asarray(spectra)
        out_dtype = spectra.dtype if spectra.dtype.kind == "f" else np.float32
        rgb = np.moveaxis(spectra, channel_axis, -1) @ self.matrix.T.astype(out_dtype)
        return np.moveaxis(rgb, -1, channel_axis)

    def render_error(self, spectra: np.ndarray, rgb: np.ndarray, rows: int = 256) -> float:
        """max |Φŝ − c| of H x W x B spectra against H x W x 3 linear RGB, in float64, `rows` rows at a time (a
        12-megapixel cube in float64 at once would take 3 GB)."""
        worst = 0.0
        for top in range(0, len(spectra), rows):
            band = np.asarray(spectra[top:top + rows], dtype=np.float64)
            worst = max(worst, float(np.abs(self.render(band) - rgb[top:top + rows]).max(initial=0.0)))
        return worst

    def __repr__(self) -> str:
        return f"CameraResponse({self.name!r}, {self.grid})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CameraResponse)
            and self.grid == other.grid
            and np.array_equal(self.matrix, other.matrix)
        )

    __hash__ = None  # type: ignore[assignment]
