"""Reading and writing spectral cubes: HDF5 (with provenance), .npz, .npy, MATLAB v7.3 .mat and ENVI (.hdr + .img).

Cubes are H x W x B float32 with their wavelengths (float64, nm). Every write is atomic: data go to a temporary
file in the destination folder that replaces the destination only once complete, so an interrupted run never
leaves a truncated cube behind (nor clobbers an older one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .spectral import DEFAULT_GRID, SpectralGrid, SpectralGridError

PathLike = Union[str, os.PathLike]

FORMAT_NAME = "uldm-cube"
FORMAT_VERSION = 1
HDF5_SUFFIXES = (".h5", ".hdf5")
MAT_SUFFIX, ENVI_SUFFIX = ".mat", ".hdr"
SUFFIXES = (*HDF5_SUFFIXES, ".npz", ".npy", MAT_SUFFIX, ENVI_SUFFIX)
# the 128-byte header MATLAB puts in the 512-byte user block of a v7.3 file (text, subsystem offset, version, "IM")
MAT_V73_HEADER = (b"MATLAB 7.3 MAT-file, Platform: uldm, Created by: uldm, HDF5 schema 1.00 .".ljust(116, b" ")
                  + b"\x00" * 8 + b"\x00\x02" + b"IM")
# Attributes save_cube writes itself; user attrs may not overwrite them.
_RESERVED_ATTRS = frozenset(
    {"format", "format_version", "uldm_version", "created", "camera_name", "camera_response", "camera_wavelengths"}
)


class CubeFileError(ValueError):
    """A cube file is unreadable, malformed, or a cube cannot be written in the requested format."""


# ------------------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_write(path: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path (not yet created) next to `path`; on success it becomes `path`, on error it is removed.

    The temporary name keeps the suffix of `path` (writers that pick a format by extension still work) and
    starts with a dot. Parent folders are created. The data are flushed to disk before the rename. With
    `overwrite=False` the file is linked into place only if `path` does not exist, even when another process
    writes it meanwhile (FileExistsError then, and that other file stays).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and refuses an existing file
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_tree(folder: PathLike) -> None:
    """Flush every file below `folder`, and the folders themselves, to disk: what a rename makes visible must
    survive a power loss whole."""
    folder = Path(folder)
    for path in [*sorted(folder.rglob("*")), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder path (not yet created) beside `path`; on success it takes the place of `path` (an
    older folder there is removed only after the swap), on error it is removed: readers never see half a folder."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(f".tmp-{path.name}"), path.with_name(f".old-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def save_json(data: Any, path: PathLike) -> Path:
    """Write `data` as indented JSON, atomically (numpy and torch scalars are written as floats)."""
    path = Path(path)
    text = json.dumps(data, indent=2, default=float)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ saving
def _as_numpy(cube: Any) -> np.ndarray:
    if hasattr(cube, "detach"):  # a torch tensor, without importing torch here
        cube = cube.detach().cpu().numpy()
    return np.asarray(cube)


def _validated_cube(cube: Any, wavelengths: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    cube = _as_numpy(cube)
    wl = np.asarray(wavelengths, dtype=np.float64)
    if cube.ndim != 3:
        raise CubeFileError(f"a cube must be 3-D (H x W x B), got shape {cube.shape}")
    if wl.ndim != 1 or wl.size != cube.shape[-1]:
        raise CubeFileError(f"the cube has {cube.shape[-1]} bands but {wl.size} wavelengths were given")
    if not np.all(np.isfinite(wl)):
        raise CubeFileError("wavelengths contain NaN or infinite values")
    if cube.dtype.kind not in "fiub":
        raise CubeFileError(f"a cube must be numeric, got dtype {cube.dtype}")
    cube = cube.astype(np.float32, copy=False)
    bad = int(np.size(cube) - np.count_nonzero(np.isfinite(cube)))
    if bad:
        raise CubeFileError(f"the cube contains {bad} NaN or infinite values; refusing to save it")
    return cube, wl


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CubeFileError(f"{path}: unknown cube format {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    return suffix


def _attr_value(key: str, value: Any) -> Any:
    """Something h5py can store: paths become strings, nested structures JSON text."""
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return np.asarray(value, dtype=np.float64)
    try:
        return json.dumps(value)
    except TypeError as exc:
        raise CubeFileError(f"attribute {key!r}: cannot store a {type(value).__name__} ({exc})") from exc


def _provenance(camera: Any, attrs: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    from . import __version__

    out: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "uldm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if camera is not None:
        out["camera_name"] = camera.name
        out["camera_response"] = np.asarray(camera.matrix, dtype=np.float64)
        out["camera_wavelengths"] = camera.grid.as_array()
    for key, value in (attrs or {}).items():
        if key in _RESERVED_ATTRS:
            raise CubeFileError(f"attribute {key!r} is written by save_cube itself; choose another name")
        if value is not None:
            out[str(key)] = _attr_value(key, value)
    return out


def save_cube(
    path: PathLike,
    cube: Any,
    wavelengths: Sequence[float],
    *,
    camera: Any = None,
    attrs: Optional[Mapping[str, Any]] = None,
    uncertainty: Any = None,
    overwrite: bool = True,
) -> Path:
    """Write an H x W x B cube (as float32) atomically; the format follows the suffix. With `overwrite=False` an
    existing file is never replaced (FileExistsError). A full disk or an unwritable folder is a CubeFileError
    naming the file, and leaves nothing behind.

    `uncertainty` (same shape: per-pixel, per-band spread of an ensemble) is stored beside the cube in .h5/.npz.

    .h5/.hdf5: datasets `cube` (gzip 4) and `wavelengths`, plus attributes: format, format_version,
    uldm_version, created (UTC), camera_name/camera_response/camera_wavelengths when a `CameraResponse` is
    given, and `attrs` (provenance such as source image, checkpoint, steps; None values are skipped).
    .npz: arrays `cube` and `wavelengths`. .npy: the cube alone (camera and attrs are not stored).
    .mat: MATLAB v7.3 (HDF5 behind MATLAB's 512-byte header, so h5py and MATLAB's `load` both read it): `cube`
    (H x W x B as MATLAB sees it, single), `bands` (1 x B wavelengths) and `uncertainty` if given, as ARAD-1K's.
    .hdr: ENVI, the header (samples, lines, bands, float32 band-sequential, wavelengths in nm) beside the raw
    data in `<name>.img`; the data file is written first, so a header never points at missing data.
    """
    path = Path(path)
    suffix = _suffix(path)
    cube, wl = _validated_cube(cube, wavelengths)
    extra = {}
    if uncertainty is not None:
        extra["uncertainty"], _ = _validated_cube(uncertainty, wavelengths)
        if extra["uncertainty"].shape != cube.shape:
            raise CubeFileError(f"uncertainty shape {extra['uncertainty'].shape} differs from the cube's {cube.shape}")
    try:
        with atomic_write(path, overwrite=overwrite) as tmp:
            if suffix in HDF5_SUFFIXES:
                image = _hdf5_image(cube, wl, _provenance(camera, attrs), extra)
                with open(tmp, "wb") as handle:
                    handle.write(image)
            elif suffix == MAT_SUFFIX:
                image = _mat_v73_image(cube, wl, extra)
                with open(tmp, "wb") as handle:
                    handle.write(image)
            elif suffix == ENVI_SUFFIX:
                _write_envi(path, tmp, cube, wl, overwrite)
            elif suffix == ".npz":
                with open(tmp, "wb") as handle:
                    np.savez(handle, cube=cube, wavelengths=wl, **extra)
            else:
                with open(tmp, "wb") as handle:
                    np.save(handle, cube)
    except FileExistsError:
        raise
    except OSError as exc:
        raise CubeFileError(f"{path}: cannot write the cube ({exc.strerror or exc})") from exc
    return path


@contextlib.contextmanager
def _hdf5_in_memory(userblock_size: int = 0) -> Iterator[tuple[Any, io.BytesIO]]:
    """(h5py File, its bytes): an HDF5 file built in memory, so libhdf5 never writes to disk itself (a failed write
    inside it, on a full disk, can crash the process) and a full disk is an ordinary Python OSError when the bytes
    are written. One copy of the (compressed) file is held, in the BytesIO: `buffer.getbuffer()` writes it out."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=userblock_size) as f:
        yield f, buffer


def _hdf5_image(cube: np.ndarray, wavelengths: np.ndarray, attrs: dict[str, Any],
                extra: Mapping[str, np.ndarray]) -> memoryview:
    """The bytes of the HDF5 file (`_hdf5_in_memory`)."""
    with _hdf5_in_memory() as (f, buffer):
        f.create_dataset("cube", data=cube, compression="gzip", compression_opts=4, shuffle=True)
        f.create_dataset("wavelengths", data=wavelengths)
        for name, data in extra.items():
            f.create_dataset(name, data=data, compression="gzip", compression_opts=4, shuffle=True)
        for key, value in attrs.items():
            try:
                f.attrs[key] = value
            except (TypeError, ValueError) as exc:
                raise CubeFileError(f"attribute {key!r}: HDF5 cannot store {value!r} ({exc})") from exc
    return buffer.getbuffer()


def _mat_v73_image(cube: np.ndarray, wavelengths: np.ndarray, extra: Mapping[str, np.ndarray]) -> memoryview:
    """A MATLAB v7.3 file in memory: MATLAB stores arrays column-major, so an H x W x B array is B x W x H in HDF5
    (written a band at a time: no transposed copy of the cube); MATLAB's header fills the 512-byte user block."""
    with _hdf5_in_memory(userblock_size=512) as (f, buffer):
        for name, data in {"cube": cube, **extra}.items():
            height, width, bands = data.shape
            dataset = f.create_dataset(name, shape=(bands, width, height), dtype=np.float32,
                                       chunks=(1, min(width, 256), min(height, 256)),
                                       compression="gzip", compression_opts=4, shuffle=True)
            for band in range(bands):
                dataset[band] = data[..., band].T
            dataset.attrs["MATLAB_class"] = np.bytes_("single")
        bands_dataset = f.create_dataset("bands", data=wavelengths.reshape(1, -1).T.copy())  # 1 x B in MATLAB
        bands_dataset.attrs["MATLAB_class"] = np.bytes_("double")
    image = buffer.getbuffer()
    image[:512] = MAT_V73_HEADER.ljust(512, b"\x00")
    return image


def envi_data_path(header: Path) -> Path:
    return header.with_suffix(".img")


def _write_envi(header: Path, tmp_header: Path, cube: np.ndarray, wavelengths: np.ndarray, overwrite: bool) -> None:
    """The raw band-sequential float32 data (atomically, first), then the header into `tmp_header`."""
    height, width, bands = cube.shape
    with atomic_write(envi_data_path(header), overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            for band in range(bands):  # one band at a time: no second copy of the cube
                handle.write(np.ascontiguousarray(cube[..., band], dtype="<f4").tobytes())
    text = ["ENVI", "description = {uldm spectral cube}", f"samples = {width}", f"lines = {height}",
            f"bands = {bands}", "header offset = 0", "file type = ENVI Standard", "data type = 4", "interleave = bsq",
            "byte order = 0", "wavelength units = Nanometers",
            "wavelength = {" + ", ".join(f"{w:g}" for w in wavelengths) + "}"]
    with open(tmp_header, "w") as handle:
        handle.write("\n".join(text) + "\n")


def _read_envi(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """An ENVI cube written as `save_cube` writes one (float32 or float64, BSQ / BIL / BIP, little or big endian)."""
    import re

    text = path.read_text(errors="replace")
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r"^([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)$", text, re.M)}
    try:
        lines, samples, bands = (int(fields[k]) for k in ("lines", "samples", "bands"))
        dtype = {"4": "f4", "5": "f8"}[fields.get("data type", "4")]
    except (KeyError, ValueError) as exc:
        raise CubeFileError(f"{path}: not an ENVI header uldm reads (float32/64 data, samples/lines/bands): {exc}") from exc
    dtype = (">" if fields.get("byte order", "0") == "1" else "<") + dtype
    data_path = envi_data_path(path)
    try:
        flat = np.fromfile(data_path, dtype=dtype, offset=int(fields.get("header offset", "0")))
    except OSError as exc:
        raise CubeFileError(f"{path}: cannot read its data file {data_path} ({exc.strerror or exc})") from exc
    if flat.size != lines * samples * bands:
        raise CubeFileError(f"{data_path}: {flat.size} values, the header says {lines} x {samples} x {bands}")
    order = {"bsq": (bands, lines, samples), "bil": (lines, bands, samples), "bip": (lines, samples, bands)}
    interleave = fields.get("interleave", "bsq").lower()
    cube = flat.reshape(order[interleave])
    cube = {"bsq": cube.transpose(1, 2, 0), "bil": cube.transpose(0, 2, 1), "bip": cube}[interleave]
    wl = fields.get("wavelength")
    wavelengths = np.array([float(v) for v in wl.strip("{}").split(",")]) if wl else None
    return cube, wavelengths


def _read_mat(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A MATLAB v7.3 cube (`cube`, `bands`), as `save_cube` and ARAD-1K store it."""
    from .data.readers import read_mat_v73_cube

    return read_mat_v73_cube(path)


# ----------------------------------------------------------------------------------------------- loading
def _default_wavelengths(path: Path, bands: int) -> np.ndarray:
    """Files without wavelengths: only the project's 31-band 400-700 nm grid can be assumed."""
    if bands == DEFAULT_GRID.num_bands:
        return DEFAULT_GRID.as_array()
    raise CubeFileError(
        f"{path}: the cube has {bands} bands and the file stores no wavelengths; only {DEFAULT_GRID} "
        "can be assumed. Save it as .npz or .h5 with its wavelengths"
    )


def _read_hdf5(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "cube" not in f or not isinstance(f["cube"], h5py.Dataset):
                raise CubeFileError(f"{path}: no 'cube' dataset; the file holds {sorted(f.keys())}")
            cube = f["cube"][()]
            wl = f["wavelengths"][()] if isinstance(f.get("wavelengths"), h5py.Dataset) else None
    except OSError as exc:
        raise CubeFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    return np.asarray(cube), wl


def _read_npz(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "cube" not in data.files:
                raise CubeFileError(f"{path}: no 'cube' array; the file holds {sorted(data.files)}")
            return data["cube"], (data["wavelengths"] if "wavelengths" in data.files else None)
    except CubeFileError:
        raise
    except Exception as exc:  # BadZipFile, ValueError, OSError: all mean a damaged or foreign file
        raise CubeFileError(f"{path}: not a readable .npz file ({exc})") from exc


def _read_npy(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    try:
        return np.load(path, allow_pickle=False), None
    except (ValueError, OSError, EOFError) as exc:
        raise CubeFileError(f"{path}: not a readable .npy file ({exc})") from exc


_READERS = {".h5": _read_hdf5, ".hdf5": _read_hdf5, ".npz": _read_npz, ".npy": _read_npy, MAT_SUFFIX: _read_mat,
            ENVI_SUFFIX: _read_envi}


def load_cube(path: PathLike, grid: Optional[SpectralGrid] = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a cube written by `save_cube` (or any file with the same layout): (H x W x B float32, wavelengths).

    Files without wavelengths (.npy) are taken to be on DEFAULT_GRID when they have 31 bands. With `grid`, the
    cube is resampled onto it when the file's wavelengths differ. Values are returned as stored, not clipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cube file not found: {path}")
    cube, wl = _READERS[_suffix(path)](path)
    if cube.ndim != 3:
        raise CubeFileError(f"{path}: the cube must be 3-D (H x W x B), got shape {cube.shape}")
    if cube.dtype.kind not in "fiub":
        raise CubeFileError(f"{path}: the cube must be numeric, got dtype {cube.dtype}")
    cube = cube.astype(np.float32, copy=False)
    bad = int(cube.size - np.count_nonzero(np.isfinite(cube)))
    if bad:
        raise CubeFileError(f"{path}: the cube contains {bad} NaN or infinite values")
    wl = _default_wavelengths(path, cube.shape[-1]) if wl is None else np.asarray(wl, dtype=np.float64).ravel()
    if wl.size != cube.shape[-1]:
        raise CubeFileError(f"{path}: the cube has {cube.shape[-1]} bands but the file lists {wl.size} wavelengths")
    if grid is not None and not grid.matches(wl):
        try:
            cube = grid.resample(cube, wl, axis=-1).astype(np.float32, copy=False)
        except SpectralGridError as exc:
            raise SpectralGridError(f"{path}: cannot resample the cube onto {grid}: {exc}") from exc
        wl = grid.as_array()
    return cube, wl


def _plain(value: Any) -> Any:
    """HDF5 attribute values as plain Python (numbers, str); arrays stay NumPy arrays."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_cube_attrs(path: PathLike) -> dict[str, Any]:
    """The attributes (provenance, camera) of an HDF5 cube; an empty dict for .npy/.npz, which store none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cube file not found: {path}")
    if _suffix(path) not in HDF5_SUFFIXES:
        return {}
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {key: _plain(value) for key, value in f.attrs.items()}
    except OSError as exc:
        raise CubeFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
