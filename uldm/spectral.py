"""Spectral grids: which wavelengths the bands of a cube stand for, and resampling between grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


class SpectralGridError(ValueError):
    """A cube or a response curve cannot be brought onto the requested grid."""


@dataclass(frozen=True)
class SpectralGrid:
    """Band centres in nanometres, ascending. The project's default is 31 bands, 400-700 nm every 10 nm."""

    wavelengths: tuple[float, ...]

    def __post_init__(self) -> None:
        wl = np.asarray(self.wavelengths, dtype=np.float64)
        if wl.ndim != 1 or wl.size < 4:
            raise SpectralGridError(f"a spectral grid needs at least 4 wavelengths, got {wl.size}")
        if not np.all(np.diff(wl) > 0):
            raise SpectralGridError("spectral grid wavelengths must be strictly ascending")
        object.__setattr__(self, "wavelengths", tuple(float(w) for w in wl))

    @classmethod
    def uniform(cls, start: float = 400.0, stop: float = 700.0, step: float = 10.0) -> "SpectralGrid":
        count = int(round((stop - start) / step)) + 1
        return cls(tuple(np.linspace(start, stop, count)))

    @property
    def num_bands(self) -> int:
        return len(self.wavelengths)

    def as_array(self) -> np.ndarray:
        return np.asarray(self.wavelengths, dtype=np.float64)

    def matches(self, wavelengths: Sequence[float], tol: float = 0.5) -> bool:
        other = np.asarray(wavelengths, dtype=np.float64).ravel()
        return other.shape == (self.num_bands,) and bool(np.all(np.abs(other - self.as_array()) <= tol))

    def resample(self, values: np.ndarray, wavelengths: Sequence[float], axis: int = -1) -> np.ndarray:
        """Linearly interpolate `values` sampled at `wavelengths` (along `axis`) onto this grid.

        Refuses to extrapolate: a source that does not cover the grid raises `SpectralGridError`.
        """
        src = np.asarray(wavelengths, dtype=np.float64).ravel()
        values = np.asarray(values)
        if values.shape[axis] != src.size:
            raise SpectralGridError(
                f"{values.shape[axis]} samples along axis {axis} but {src.size} wavelengths given"
            )
        if self.matches(src):
            return values
        order = np.argsort(src)
        src, values = src[order], np.take(values, order, axis=axis)
        dst = self.as_array()
        if dst[0] < src[0] - 0.5 or dst[-1] > src[-1] + 0.5:
            raise SpectralGridError(
                f"data covers {src[0]:g}-{src[-1]:g} nm but the grid needs {dst[0]:g}-{dst[-1]:g} nm; "
                "refusing to extrapolate"
            )
        weights = interpolation_matrix(src, dst)
        out_dtype = values.dtype if values.dtype.kind == "f" else np.float32
        out = np.moveaxis(values, axis, -1).astype(np.float64) @ weights.T
        return np.moveaxis(out.astype(out_dtype), -1, axis)

    def __repr__(self) -> str:
        wl = self.as_array()
        return f"SpectralGrid({self.num_bands} bands, {wl[0]:g}-{wl[-1]:g} nm)"


def interpolation_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (len(dst), len(src)) matrix of linear interpolation, so resampling a whole cube is one matmul."""
    eye = np.eye(src.size)
    return np.stack([np.interp(dst, src, eye[j]) for j in range(src.size)], axis=1)


DEFAULT_GRID = SpectralGrid.uniform(400.0, 700.0, 10.0)
# The wavelengths a three-band display shows as red, green and blue (false-colour previews, ENVI's default bands).
DISPLAY_RGB_NM = (650.0, 550.0, 450.0)


def nearest_bands(wavelengths: Sequence[float], targets: Sequence[float]) -> list[int]:
    """The index (0-based) of the band nearest each target wavelength."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    return [int(np.argmin(np.abs(wl - float(target)))) for target in targets]


def read_spectral_csv(path, columns: Sequence[str], error: type = SpectralGridError) -> tuple[np.ndarray, np.ndarray]:
    """A CSV table of `columns` (the first is wavelength in nm; a header line and `#` comments are optional).

    Returns (wavelengths, values of the other columns as N x (len(columns) - 1)); problems raise `error` with the
    file named. Camera responses and illuminant SPDs both come in this form.
    """
    import csv

    layout = ", ".join(columns)
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].lstrip().startswith("#")]
    except OSError as exc:
        raise error(f"cannot read CSV {path}: {exc}") from exc
    if rows and not _is_number(rows[0][0]):
        rows = rows[1:]  # header line
    try:
        table = np.asarray([[float(v) for v in row[:len(columns)]] for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise error(f"{path}: every row must be '{layout}' numbers ({exc})") from exc
    if table.ndim != 2 or table.shape[1] != len(columns) or len(table) < 2:
        raise error(f"{path}: expected at least two rows of '{layout}', got shape {table.shape}")
    if not np.all(np.isfinite(table[:, 0])):
        raise error(f"{path}: wavelengths contain NaN or infinite values")
    return table[:, 0], table[:, 1:]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
