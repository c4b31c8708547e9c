"""Readers for the hyperspectral datasets users have (METHOD.md section 5), each giving a `Scene` on one grid.

- CAVE: a folder of one greyscale PNG per band, 400-700 nm every 10 nm (`read_cave`).
- ARAD-1K / NTIRE 2022: a MATLAB v7.3 (HDF5) `.mat` whose `cube` is stored transposed (`read_arad`).
- Our own cubes (.h5/.hdf5/.npz/.npy), through `uldm.io.load_cube` (`read_uldm_cube`).

Every reader brings the scene onto the requested `SpectralGrid` (linear resampling, never extrapolation) and
returns reflectance in [0, 1] as float32 H x W x B, so training and evaluation code never sees a dataset's quirks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..spectral import DEFAULT_GRID, SpectralGrid, SpectralGridError

PathLike = Union[str, Path]

CAVE_WAVELENGTHS = np.arange(400.0, 701.0, 10.0)
"""CAVE bands `_01` ... `_31` are 400, 410, ..., 700 nm."""

CUBE_SUFFIXES = (".h5", ".hdf5", ".npz", ".npy")
"""Files `read_uldm_cube` reads (our own format, see `uldm.io`)."""

FORMATS = ("cave", "arad", "h5")

_RANGE_TOLERANCE = 1e-3
"""Values of our own cubes this far outside [0, 1] are clipped with a warning; closer ones silently."""


class DatasetError(ValueError):
    """A scene that cannot be read or brought onto the spectral grid; the message names the file."""


@dataclass(eq=False)
class Scene:
    """One hyperspectral scene: reflectance `cube` (H x W x B float32 in [0, 1]) at `wavelengths` (nm)."""

    name: str
    cube: np.ndarray
    wavelengths: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.cube.shape)  # type: ignore[return-value]

    @property
    def num_bands(self) -> int:
        return self.cube.shape[-1]

    def __repr__(self) -> str:
        wl = self.wavelengths
        return f"Scene({self.name!r}, {self.cube.shape}, {wl[0]:g}-{wl[-1]:g} nm, from {self.source!r})"


# ---------------------------------------------------------------------------------------------- shared steps
def _require_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")


def _reject_nan(cube: np.ndarray, source: Path) -> np.ndarray:
    """NaN would silently poison every loss and metric downstream, so a scene holding any is refused."""
    if np.isnan(cube).any():
        raise DatasetError(f"{source}: the cube contains NaN values ({int(np.isnan(cube).sum())} of {cube.size})")
    return cube


def _on_grid(name: str, cube: np.ndarray, wavelengths: np.ndarray, source: Path, grid: SpectralGrid) -> Scene:
    """Reject NaN, resample onto `grid`, and package: the last step of every reader."""
    if cube.ndim != 3 or 0 in cube.shape:
        raise DatasetError(f"{source}: expected a non-empty H x W x B cube, got shape {cube.shape}")
    _reject_nan(cube, source)
    try:
        cube = grid.resample(cube, wavelengths, axis=-1)
    except SpectralGridError as exc:
        raise DatasetError(f"{source}: cannot bring the scene onto {grid}: {exc}") from exc
    return Scene(
        name=name,
        cube=np.ascontiguousarray(cube, dtype=np.float32),
        wavelengths=grid.as_array(),
        source=str(source),
    )


# ------------------------------------------------------------------------------------------------------ CAVE
def _cave_band_folder(folder: Path) -> Path:
    """CAVE nests `<scene>_ms/<scene>_ms/`; accept the outer or the inner folder."""
    inner = folder / folder.name
    return inner if inner.is_dir() else folder


def _png_band(path: Path) -> np.ndarray:
    """One greyscale band as float32 in [0, 1], whatever bit depth and channel count the PNG has.

    16-bit greyscale PNGs come back from PIL as mode 'I;16' (uint16) or, in older Pillow, 'I' (int32) and are
    divided by 65535. 8-bit images (CAVE's `watercolors_ms` is 8-bit RGBA) are divided by 255, which equals
    the README's "scale by 257, then divide by 65535"; of several channels only the first is the band.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGB")
            mode = image.mode
            pixels = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable PNG ({exc})") from exc
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    if pixels.dtype == np.uint8:
        scale = 255.0
    elif pixels.dtype.kind in "ui" and mode.startswith("I"):
        scale = 65535.0
    elif pixels.dtype == np.bool_:
        scale = 1.0
    else:
        raise DatasetError(f"{path}: unsupported PNG pixel type {pixels.dtype} (mode {mode!r})")
    return pixels.astype(np.float32) / np.float32(scale)


def read_cave(folder: PathLike, grid: SpectralGrid = DEFAULT_GRID) -> Scene:
    """A CAVE scene from `<scene>_ms` (or the nested `<scene>_ms/<scene>_ms`): bands `<scene>_ms_01.png` ...
    `_31.png` at 400-700 nm. The sRGB `*_RGB.bmp` beside them is ignored."""
    folder = Path(folder)
    _require_exists(folder, "CAVE scene folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: a CAVE scene is a folder of PNG bands, not a file")
    bands_dir = _cave_band_folder(folder)
    name = folder.name
    bands = []
    for k, wavelength in enumerate(CAVE_WAVELENGTHS, start=1):
        path = bands_dir / f"{name}_{k:02d}.png"
        if not path.is_file():
            raise DatasetError(
                f"{folder}: band {k} ({wavelength:g} nm) is missing: expected file {path.name} in {bands_dir}"
            )
        band = _png_band(path)
        if bands and band.shape != bands[0].shape:
            raise DatasetError(
                f"{folder}: band {k} ({path.name}) is {band.shape[0]}x{band.shape[1]} "
                f"but band 1 is {bands[0].shape[0]}x{bands[0].shape[1]}"
            )
        bands.append(band)
    return _on_grid(name, np.stack(bands, axis=-1), CAVE_WAVELENGTHS, folder, grid)


# ------------------------------------------------------------------------------------------------------ ARAD
def _open_mat_v73(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(
            f"{path}: not a MATLAB v7.3 file (HDF5 cannot open it: {exc}); "
            "re-save it in MATLAB with save(..., '-v7.3') or convert it to .h5"
        ) from exc


def read_arad(path: PathLike, grid: SpectralGrid = DEFAULT_GRID) -> Scene:
    """An ARAD-1K / NTIRE 2022 scene: a MATLAB v7.3 `.mat` with datasets `cube` and `bands`.

    Values are clipped to [0, 1]: ARAD cubes slightly exceed 1 in places, and the rest of the library
    (rendering, metrics with peak 1) assumes values in [0, 1].
    """
    path = Path(path)
    _require_exists(path, "ARAD scene file")
    cube, wavelengths = read_mat_v73_cube(path)
    cube = np.clip(cube, 0.0, 1.0)  # clipping keeps NaN, which _on_grid rejects
    return _on_grid(path.stem, cube, wavelengths, path, grid)


def read_mat_v73_cube(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x B float32 as stored, wavelengths) of a MATLAB v7.3 `.mat` holding `cube` and `bands`. MATLAB writes
    arrays column-major, so `cube` is B x W x H on disk and is transposed here."""
    with _open_mat_v73(path) as handle:
        if "cube" not in handle:
            raise DatasetError(f"{path}: no 'cube' dataset in this .mat (it holds {sorted(handle.keys())})")
        if "bands" not in handle:
            raise DatasetError(
                f"{path}: no 'bands' dataset with the wavelengths in this .mat (it holds {sorted(handle.keys())})"
            )
        stored = np.asarray(handle["cube"], dtype=np.float32)
        wavelengths = np.asarray(handle["bands"], dtype=np.float64).ravel()
    if stored.ndim != 3:
        raise DatasetError(f"{path}: 'cube' must be 3-D (bands x width x height on disk), got shape {stored.shape}")
    if stored.shape[0] != wavelengths.size:
        raise DatasetError(
            f"{path}: 'cube' has shape {stored.shape} on disk but 'bands' lists {wavelengths.size} wavelengths; "
            "expected bands first (MATLAB's H x W x B stored transposed)"
        )
    return np.transpose(stored, (2, 1, 0)), wavelengths


# --------------------------------------------------------------------------------------------- our own cubes
def read_uldm_cube(path: PathLike, grid: SpectralGrid = DEFAULT_GRID) -> Scene:
    """A cube in our own format (.h5/.hdf5/.npz/.npy, see `uldm.io.load_cube`).

    Values outside [0, 1] are clipped; when they stray further than 1e-3 a warning names the file and the
    range found, since that usually means the cube is not reflectance (e.g. 0-255 or radiance).
    """
    from ..io import load_cube

    path = Path(path)
    _require_exists(path, "cube file")
    try:
        cube, wavelengths = load_cube(path, grid=grid)
    except ValueError as exc:  # uldm.io's CubeFileError and SpectralGridError; they already name the file
        message = str(exc)
        raise DatasetError(message if path.name in message else f"{path}: {message}") from exc
    cube = _reject_nan(np.asarray(cube, dtype=np.float32), path)
    low, high = float(cube.min()), float(cube.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        warnings.warn(f"{path}: values span [{low:g}, {high:g}], outside reflectance [0, 1]; clipped", stacklevel=2)
    return _on_grid(path.stem, np.clip(cube, 0.0, 1.0), np.asarray(wavelengths, dtype=np.float64), path, grid)


# ------------------------------------------------------------------------------------------------- dispatch
_READERS: dict[str, Callable[..., Scene]] = {"cave": read_cave, "arad": read_arad, "h5": read_uldm_cube}


def detect_format(path: PathLike) -> str:
    """'cave' for a folder, 'arad' for `.mat`, 'h5' for our own cube files."""
    path = Path(path)
    if path.is_dir():
        return "cave"
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "arad"
    if suffix in CUBE_SUFFIXES:
        return "h5"
    raise DatasetError(
        f"{path}: cannot tell the dataset format from the name; expected a CAVE folder, a .mat (ARAD) or one of "
        f"{', '.join(CUBE_SUFFIXES)}, or pass format= one of {FORMATS}"
    )


def _check_format(format: str) -> str:
    if format not in _READERS:
        raise DatasetError(f"unknown dataset format {format!r}; choose one of {FORMATS}")
    return format


def read_scene(path: PathLike, format: Optional[str] = None, grid: SpectralGrid = DEFAULT_GRID) -> Scene:
    """Read any supported scene; `format` ('cave', 'arad', 'h5') overrides detection from the path."""
    path = Path(path)
    _require_exists(path, "scene")
    fmt = _check_format(format) if format is not None else detect_format(path)
    return _READERS[fmt](path, grid=grid)


def _scene_candidates(root: Path, format: str) -> list[Path]:
    if format == "cave":
        return [p for p in root.iterdir() if p.is_dir() and p.name.endswith("_ms")]
    suffixes = (".mat",) if format == "arad" else CUBE_SUFFIXES
    return [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes]


def list_scenes(root: PathLike, format: Optional[str] = None) -> list[Path]:
    """All scenes directly under a dataset root, sorted: CAVE `*_ms` folders, ARAD `*.mat`, or our cube files.

    Without `format`, the one format that has scenes under `root` is used (an error if several do).
    """
    root = Path(root)
    _require_exists(root, "dataset root")
    if not root.is_dir():
        raise DatasetError(f"{root}: a dataset root must be a folder")
    if format is not None:
        found = sorted(_scene_candidates(root, _check_format(format)))
        if not found:
            raise DatasetError(f"{root}: no {format} scenes found ({_format_hint(format)})")
        return found
    by_format = {fmt: sorted(_scene_candidates(root, fmt)) for fmt in FORMATS}
    present = [fmt for fmt, paths in by_format.items() if paths]
    if not present:
        hints = "; ".join(f"{fmt}: {_format_hint(fmt)}" for fmt in FORMATS)
        raise DatasetError(f"{root}: no scenes found ({hints})")
    if len(present) > 1:
        raise DatasetError(f"{root}: holds scenes of several formats {present}; pass format= one of them")
    return by_format[present[0]]


def _format_hint(format: str) -> str:
    return {
        "cave": "expected folders named '<scene>_ms'",
        "arad": "expected '*.mat' files",
        "h5": f"expected files ending in {', '.join(CUBE_SUFFIXES)}",
    }[format]


def scene_name(path: PathLike) -> str:
    """The name a scene goes by: the folder name for CAVE, the file stem otherwise."""
    path = Path(path)
    return path.name if path.is_dir() or not path.suffix else path.stem
