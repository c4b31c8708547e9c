"""Reading and writing spectral cubes: HDF5 (with provenance), .npz, .npy, MATLAB .mat (v5, or v7.3 for cubes of
2 GB and more) and ENVI (.hdr + .img).

Cubes are H x W x B float32 with their wavelengths (float64, nm). Every write is atomic: data go to a temporary
file in the destination folder that replaces the destination only once complete, so an interrupted run never
leaves a truncated cube behind (nor clobbers an older one). HDF5, MAT v7.3 and ENVI files are written band of
rows by band of rows (`open_cube_writer`), so a pipeline can stream a cube of any size into its file without
holding it; `save_cube` writes through the same writers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .spectral import DEFAULT_GRID, DISPLAY_RGB_NM, SpectralGrid, SpectralGridError, nearest_bands

PathLike = Union[str, os.PathLike]

FORMAT_NAME = "uldm-cube"
FORMAT_VERSION = 1
HDF5_SUFFIXES = (".h5", ".hdf5")
MAT_SUFFIX, ENVI_SUFFIX = ".mat", ".hdr"
SUFFIXES = (*HDF5_SUFFIXES, ".npz", ".npy", MAT_SUFFIX, ENVI_SUFFIX)
# the 128-byte header MATLAB puts in the 512-byte user block of a v7.3 file (text, subsystem offset, version, "IM")
MAT_V73_HEADER = (b"MATLAB 7.3 MAT-file, Platform: uldm, Created by: uldm, HDF5 schema 1.00 .".ljust(116, b" ")
                  + b"\x00" * 8 + b"\x00\x02" + b"IM")
# MAT v5 stores sizes in 32 bits: MATLAB refuses v5 variables of 2 GB or more, so larger cubes need v7.3.
MAT_VERSIONS = ("5", "7.3")
MAT_V5_MAX_BYTES = 2**31 - 1
WAVELENGTH_UNITS = "nm"
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
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")  # see TEMPORARY_NAME
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


# What `atomic_write` names its temporary files: ".<name>.<12 hex digits>.tmp<suffix of name>".
TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp(\.[^.]*)?")


def is_temporary_file(path: PathLike) -> bool:
    """Whether `path` is named as `atomic_write`'s temporary files are: what an interrupted write leaves behind."""
    return TEMPORARY_NAME.fullmatch(Path(path).name) is not None


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


def _validated_wavelengths(wavelengths: Sequence[float], bands: int) -> np.ndarray:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size != bands:
        raise CubeFileError(f"the cube has {bands} bands but {wl.size} wavelengths were given")
    if not np.all(np.isfinite(wl)):
        raise CubeFileError("wavelengths contain NaN or infinite values")
    return wl


def _finite_float32(cube: np.ndarray, what: str = "the cube") -> np.ndarray:
    if cube.dtype.kind not in "fiub":
        raise CubeFileError(f"a cube must be numeric, got dtype {cube.dtype}")
    cube = cube.astype(np.float32, copy=False)
    bad = int(np.size(cube) - np.count_nonzero(np.isfinite(cube)))
    if bad:
        raise CubeFileError(f"{what} contains {bad} NaN or infinite values; refusing to save it")
    return cube


def _validated_cube(cube: Any, wavelengths: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    cube = _as_numpy(cube)
    if cube.ndim != 3:
        raise CubeFileError(f"a cube must be 3-D (H x W x B), got shape {cube.shape}")
    wl = _validated_wavelengths(wavelengths, cube.shape[-1])
    return _finite_float32(cube), wl


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


def _camera_arrays(camera: Any) -> dict[str, np.ndarray]:
    """The camera as arrays, for the formats that hold arrays rather than attributes (.npz, .mat), under the names
    of the HDF5 attributes: its name, its 3 x B response and their wavelengths (nm); {} without a camera."""
    if camera is None:
        return {}
    return {"camera_name": np.str_(camera.name), "camera_response": np.asarray(camera.matrix, dtype=np.float64),
            "camera_wavelengths": camera.grid.as_array()}


def save_cube(
    path: PathLike,
    cube: Any,
    wavelengths: Sequence[float],
    *,
    camera: Any = None,
    attrs: Optional[Mapping[str, Any]] = None,
    uncertainty: Any = None,
    out_of_gamut: Any = None,
    overwrite: bool = True,
    mat_version: Optional[str] = None,
) -> Path:
    """Write an H x W x B cube (as float32) atomically; the format follows the suffix. With `overwrite=False` an
    existing file is never replaced (FileExistsError). A full disk or an unwritable folder is a CubeFileError
    naming the file, and leaves nothing behind.

    `uncertainty` (same shape: per-pixel, per-band spread of an ensemble) is stored beside the cube in .h5/.npz/.mat,
    and as a second ENVI file beside an ENVI cube. `out_of_gamut` (H x W, the pipelines' mask of the pixels whose RGB
    no physical spectrum renders to) is stored the same way as `out_of_gamut`, uint8 (1: out of gamut), and read
    back by `load_out_of_gamut`.

    .h5/.hdf5: datasets `cube` (gzip 4) and `wavelengths` (attribute units = "nm"), plus attributes: format,
    format_version, uldm_version, created (UTC), camera_name/camera_response/camera_wavelengths when a
    `CameraResponse` is given, and `attrs` (provenance such as source image, checkpoint, steps; None values are
    skipped).
    .npz: arrays `cube` and `wavelengths`, and with a camera `camera_name` (a string), `camera_response` (3 x B) and
    `camera_wavelengths` (B). .npy: the cube alone (camera and attrs are not stored).
    .mat: `cube` (H x W x B as MATLAB sees it, single), `bands` (1 x B wavelengths, nm) and `uncertainty` if given,
    as ARAD-1K's, and with a camera `camera_name` (char), `camera_response` (3 x B double) and `camera_wavelengths`
    (1 x B); `mat_version` "5" (what `scipy.io.loadmat` reads; variables under 2 GB) or "7.3" (HDF5 behind MATLAB's
    512-byte header: h5py and MATLAB's `load` read it), by default 5 when the cube fits it. The file's header says
    which (`mat_file_version`).
    .hdr: ENVI, the header (samples, lines, bands, float32 band-sequential, wavelengths and fwhm in nm, band names,
    default bands nearest 650/550/450 nm, a description with the provenance and the camera's name) beside the raw
    data in `<name>.img`; the uncertainty goes to `<name>_uncertainty.hdr/.img` (`envi_companion_path`), which the
    cube's description names. Data files are written first and the cube's header last, so a header never points at
    missing data. No `data ignore value` is written: every pixel of a cube holds a value (NaN is refused).
    .h5, MAT v7.3 and ENVI go through `open_cube_writer`, the file a pipeline streams its rows into.
    """
    path = Path(path)
    suffix = _suffix(path)
    cube, wl = _validated_cube(cube, wavelengths)
    extra = {}
    if uncertainty is not None:
        extra["uncertainty"], _ = _validated_cube(uncertainty, wavelengths)
        if extra["uncertainty"].shape != cube.shape:
            raise CubeFileError(f"uncertainty shape {extra['uncertainty'].shape} differs from the cube's {cube.shape}")
    if out_of_gamut is not None:
        extra["out_of_gamut"] = _as_numpy(out_of_gamut).astype(np.uint8)
        if extra["out_of_gamut"].shape != cube.shape[:2]:
            raise CubeFileError(f"out_of_gamut shape {extra['out_of_gamut'].shape} differs from the cube's pixels "
                                f"{cube.shape[:2]}")
    largest = max(array.nbytes for array in [cube, *extra.values()])
    version = _mat_version_for(largest, mat_version, path, suffix)
    if suffix in STREAMED_SUFFIXES and version != "5":  # the writer a pipeline streams its rows into
        with open_cube_writer(path, *cube.shape[:2], wl, camera=camera, attrs=attrs, overwrite=overwrite,
                              mat_version=version) as writer:
            for rows in row_bands(*cube.shape):
                writer.write(cube[rows], *(extra[name][rows] if name in extra else None for name in BESIDE_CUBE))
        return path
    with _write_errors(path), atomic_write(path, overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        if suffix == MAT_SUFFIX:
            _write_mat_v5(handle, cube, wl, extra, _camera_arrays(camera))
        elif suffix == ".npz":
            np.savez(handle, cube=cube, wavelengths=wl, **extra, **_camera_arrays(camera))
        else:
            np.save(handle, cube)
    return path


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """OSErrors of writing `path` (a full disk, an unwritable folder) as a CubeFileError naming it; an existing file
    that `overwrite=False` keeps stays a FileExistsError."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as exc:
        raise CubeFileError(f"{path}: cannot write the cube ({exc.strerror or exc})") from exc


def _mat_version_for(largest: int, requested: Optional[str], path: Path, suffix: str,
                     v5_limit: Optional[int] = None) -> Optional[str]:
    """The MAT version a .mat file whose largest array takes `largest` bytes gets (None for other formats):
    `requested`, else v5 when that array is at most `v5_limit` bytes (default: what v5 holds), else v7.3."""
    if suffix != MAT_SUFFIX:
        if requested is not None:
            raise CubeFileError(f"{path}: mat_version applies to {MAT_SUFFIX} files only")
        return None
    if requested is None:
        return "5" if largest <= min(MAT_V5_MAX_BYTES, v5_limit or MAT_V5_MAX_BYTES) else "7.3"
    requested = str(requested)
    if requested not in MAT_VERSIONS:
        raise CubeFileError(f"{path}: unknown MAT version {requested!r}; use one of {', '.join(MAT_VERSIONS)}")
    if requested == "5" and largest > MAT_V5_MAX_BYTES:
        raise CubeFileError(f"{path}: a {largest / 2**30:.1f} GiB array does not fit MAT v5 (variables under 2 GB); "
                            "use MAT version 7.3")
    return requested


# ------------------------------------------------------------------------------------- streamed writing
BESIDE_CUBE = ("uncertainty", "out_of_gamut")  # what a file may hold beside the cube, as `CubeWriter.write` takes it
STREAMED_SUFFIXES = (*HDF5_SUFFIXES, MAT_SUFFIX, ENVI_SUFFIX)  # .mat: v7.3 (HDF5) only
# .npz, .npy and MAT v5 cannot be written a band of rows at a time: `open_cube_writer` builds them in memory up to
# this many bytes per array (a 4-megapixel cube of 31 float32 bands) and refuses larger ones.
IN_MEMORY_MAX_BYTES = 1 << 29
CHUNK_ROWS, CHUNK_COLUMNS, MASK_CHUNK_COLUMNS = 16, 256, 4096  # HDF5 chunks: 16 rows x 256 columns x every band
BAND_BYTES = 1 << 25  # `save_cube` hands its writer bands of about 32 MB


def row_bands(height: int, width: int, bands: int = 1, band_bytes: int = BAND_BYTES) -> list[slice]:
    """Slices of rows, top to bottom, each about `band_bytes` of an H x W x `bands` float32 array."""
    rows = max(1, band_bytes // max(1, width * bands * 4))
    return [slice(top, min(height, top + rows)) for top in range(0, height, rows)]


class CubeWriter:
    """The rows of an H x W x B cube, band of rows by band of rows, top to bottom, into the file `open_cube_writer`
    opened: the cube is never held whole. `write` checks a band and queues it for the writer's thread, which writes
    it (compressing HDF5 chunks) while the caller computes the next band; at most two bands wait in the queue.
    Subclasses (one per kind of file) implement `_write_band`, `_finish` and `_release`."""

    def __init__(self, path: Path, height: int, width: int, wavelengths: np.ndarray) -> None:
        self.path, self.height, self.width, self.wavelengths = path, height, width, wavelengths
        self.rows_written = 0  # rows queued so far
        self.stored: Optional[tuple[str, ...]] = None  # the arrays of every band ("cube", ...), as the first had
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread: Optional[threading.Thread] = None
        self._failure: Optional[BaseException] = None

    def write(self, spectra: Any, uncertainty: Any = None, out_of_gamut: Any = None) -> None:
        """The next rows: spectra (rows x W x B), their uncertainty (the same shape) and out-of-gamut mask (rows x
        W), each None when the file does not store it (the first band decides for all). They are written later, by
        the writer's thread: the arrays must not change after this call."""
        band = self._checked({"cube": spectra, "uncertainty": uncertainty, "out_of_gamut": out_of_gamut})
        if self._failure is not None:
            raise self._failure
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_queued, name=f"write {self.path.name}", daemon=True)
            self._thread.start()
        self._queue.put((self.rows_written, band))
        self.rows_written += len(band["cube"])

    def _checked(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        names = tuple(name for name, array in arrays.items() if array is not None)
        self.stored = names if self.stored is None else self.stored
        if names != self.stored:
            raise CubeFileError(f"{self.path}: every band of rows must hold the same arrays: the first held "
                                f"{', '.join(self.stored)}, this one {', '.join(names)}")
        cube = _as_numpy(arrays["cube"])
        if cube.ndim != 3 or cube.shape[1:] != (self.width, self.wavelengths.size):
            raise CubeFileError(f"{self.path}: a band of rows must be rows x {self.width} x {self.wavelengths.size}, "
                                f"got shape {cube.shape}")
        if self.rows_written + len(cube) > self.height:
            raise CubeFileError(f"{self.path}: {self.rows_written + len(cube)} rows given, the cube has {self.height}")
        band = {"cube": _finite_float32(cube)}
        for name in names[1:]:
            array = _as_numpy(arrays[name])
            if array.shape != (cube.shape if name == "uncertainty" else cube.shape[:2]):
                raise CubeFileError(f"{self.path}: {name} rows of shape {array.shape} beside cube rows {cube.shape}")
            band[name] = _finite_float32(array, f"the {name}") if name == "uncertainty" else array.astype(np.uint8)
        return band

    def _write_queued(self) -> None:
        """The writer's thread: each queued band in turn until None; after a failure the rest are dropped, and
        `write` or `close` raise it in the caller's thread."""
        while (item := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    with _write_errors(self.path):
                        self._write_band(*item)
                except BaseException as exc:
                    self._failure = exc

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Write what is queued and complete the file; a CubeFileError if rows are missing."""
        self._stop()
        if self._failure is not None:
            raise self._failure
        if self.rows_written != self.height:
            raise CubeFileError(f"{self.path}: {self.rows_written} of the cube's {self.height} rows were written")
        self._finish()

    def abort(self) -> None:
        """Stop writing and close the files, incomplete: `open_cube_writer` removes them."""
        self._stop()
        self._release()

    def _write_band(self, top: int, band: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class _DroppableFile:
    """A file for libhdf5 whose writes can be dropped: an aborted HDF5 file then closes without error (nothing
    more is written) before it is removed."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.dropping = handle, False

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes if self.dropping else self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


class _Hdf5Writer(CubeWriter):
    """.h5 as `save_cube` describes it, or with `matlab` MAT v7.3: MATLAB stores arrays column-major, so an
    H x W x B array is B x W x H in HDF5 (each band of rows written transposed), and MATLAB's header fills the
    512-byte user block. libhdf5 writes through a Python file object, so a full disk is an ordinary OSError.
    Rows go to HDF5 in whole chunks of CHUNK_ROWS rows (the rest waits for the next band), so each chunk is
    compressed once; chunks of zeros are not written at all, and read back as HDF5's fill value, 0 (the
    uncertainty of a single-member ensemble costs neither time nor space)."""

    def __init__(self, path: Path, tmp: Path, height: int, width: int, wavelengths: np.ndarray,
                 provenance: Mapping[str, Any], camera: Mapping[str, np.ndarray], matlab: bool) -> None:
        import h5py

        super().__init__(path, height, width, wavelengths)
        self.matlab = matlab
        self._datasets: dict[str, Any] = {}
        self._pending: list[dict[str, np.ndarray]] = []  # rows short of a whole chunk, first row a chunk's first
        self._handle, self._file = _DroppableFile(open(tmp, "w+b")), None
        try:
            self._file = h5py.File(self._handle, "w", userblock_size=512 if matlab else 0)
            if matlab:
                self._write_matlab_metadata(camera)
            else:
                self._write_metadata(provenance)
        except BaseException:
            self._release()
            raise

    def _write_metadata(self, provenance: Mapping[str, Any]) -> None:
        self._file.create_dataset("wavelengths", data=self.wavelengths).attrs["units"] = WAVELENGTH_UNITS
        for key, value in provenance.items():
            try:
                self._file.attrs[key] = value
            except (TypeError, ValueError) as exc:
                raise CubeFileError(f"attribute {key!r}: HDF5 cannot store {value!r} ({exc})") from exc

    def _write_matlab_metadata(self, camera: Mapping[str, np.ndarray]) -> None:
        """`bands` (1 x B in MATLAB) and the camera (`_camera_arrays`): the name as MATLAB's char (UTF-16 codes),
        the response and its wavelengths as double."""
        bands = self._file.create_dataset("bands", data=self.wavelengths.reshape(1, -1).T.copy())
        bands.attrs["MATLAB_class"] = np.bytes_("double")
        for name, value in camera.items():
            if value.dtype.kind == "U":  # a 1 x N char array in MATLAB
                codes = np.frombuffer(str(value).encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
                dataset = self._file.create_dataset(name, data=codes)
                dataset.attrs["MATLAB_class"] = np.bytes_("char")
                dataset.attrs["MATLAB_int_decode"] = np.int32(2)
            else:  # the response (3 x B) and its wavelengths (1 x B) in MATLAB
                dataset = self._file.create_dataset(name, data=np.atleast_2d(value).T.copy())
                dataset.attrs["MATLAB_class"] = np.bytes_("double")

    def _create(self, band: Mapping[str, np.ndarray]) -> None:
        for name, rows in band.items():
            mask = rows.ndim == 2  # a per-pixel mask, H x W uint8
            shape = (self.height, self.width, *rows.shape[2:])
            chunks = (min(self.height, CHUNK_ROWS), min(self.width, MASK_CHUNK_COLUMNS if mask else CHUNK_COLUMNS),
                      *rows.shape[2:])
            if self.matlab:
                shape, chunks = shape[::-1], chunks[::-1]
            dataset = self._file.create_dataset(name, shape=shape, dtype=rows.dtype, chunks=chunks,
                                                compression="gzip", compression_opts=4, shuffle=not mask)
            if self.matlab:
                dataset.attrs["MATLAB_class"] = np.bytes_("uint8" if mask else "single")
            self._datasets[name] = dataset

    def _write_band(self, top: int, band: dict[str, np.ndarray]) -> None:
        if not self._datasets:
            self._create(band)
        self._pending.append(band)
        rows = sum(len(pending["cube"]) for pending in self._pending)
        end = top + len(band["cube"])
        ready = rows if end == self.height else rows - rows % CHUNK_ROWS
        if not ready:
            return
        joined = {name: np.concatenate([pending[name] for pending in self._pending]) if len(self._pending) > 1
                  else array for name, array in band.items()}
        start = end - rows
        for name, data in joined.items():
            block = data[:ready]
            if not block.any():  # whole chunks of zeros stay unwritten: HDF5 reads them as 0
                continue
            if self.matlab:
                self._datasets[name][..., start:start + ready] = block.T
            else:
                self._datasets[name][start:start + ready] = block
        self._pending = [] if ready == rows else [{name: data[ready:] for name, data in joined.items()}]

    def _finish(self) -> None:
        self._file.close()
        if self.matlab:
            self._handle.seek(0)
            self._handle.write(MAT_V73_HEADER.ljust(512, b"\x00"))
        self._handle.close()

    def _release(self) -> None:
        self._handle.dropping = True
        if self._file is not None:
            self._file.close()
        self._handle.close()


class _InMemoryWriter(CubeWriter):
    """.npz, .npy and MAT v5, which cannot be written a band at a time: the rows are gathered (zeros left to
    pages never touched) and `save(cube, uncertainty=..., out_of_gamut=...)` writes the file after the last."""

    def __init__(self, path: Path, height: int, width: int, wavelengths: np.ndarray,
                 save: Callable[..., Path]) -> None:
        super().__init__(path, height, width, wavelengths)
        self._save, self._arrays = save, {}

    def _write_band(self, top: int, band: dict[str, np.ndarray]) -> None:
        for name, rows in band.items():
            if name not in self._arrays:
                self._arrays[name] = np.zeros((self.height, *rows.shape[1:]), rows.dtype)  # mapped lazily
            if rows.any():
                self._arrays[name][top:top + len(rows)] = rows

    def _finish(self) -> None:
        arrays, self._arrays = self._arrays, {}
        self._save(arrays.pop("cube"), **arrays)

    def _release(self) -> None:
        self._arrays = {}


@contextlib.contextmanager
def open_cube_writer(
    path: PathLike,
    height: int,
    width: int,
    wavelengths: Sequence[float],
    *,
    camera: Any = None,
    attrs: Optional[Mapping[str, Any]] = None,
    overwrite: bool = True,
    mat_version: Optional[str] = None,
    max_in_memory_bytes: int = IN_MEMORY_MAX_BYTES,
) -> Iterator[CubeWriter]:
    """A `CubeWriter` for an H x W cube on `wavelengths` at `path`, in the format and layout `save_cube` writes
    (its suffix, camera, attrs, overwrite and mat_version as there). Once the block ends with every row written,
    the file is complete and in place; an error, or rows missing, leaves nothing behind; a killed process leaves
    only temporary files (`is_temporary_file`), which the next `uldm reconstruct` into that folder removes.

    HDF5, MAT v7.3 and ENVI are written as the rows come: memory stays bounded at any size. .npz, .npy and MAT v5
    cannot be, so they are built in memory up to `max_in_memory_bytes` per array and refused above it (before any
    work, naming the formats that stream); `mat_version=None` takes v5 within that bound, else v7.3.
    """
    path = Path(path)
    suffix = _suffix(path)
    wl = _validated_wavelengths(wavelengths, np.size(wavelengths))
    cube_bytes = height * width * wl.size * 4
    version = _mat_version_for(cube_bytes, mat_version, path, suffix, v5_limit=max_in_memory_bytes)
    streamed = suffix in STREAMED_SUFFIXES and version != "5"
    if not streamed and cube_bytes > max_in_memory_bytes:
        kind = "MAT v5" if suffix == MAT_SUFFIX else suffix
        raise CubeFileError(
            f"{path}: a {height} x {width} x {wl.size} cube ({cube_bytes / 2**30:.2f} GiB) is too large for {kind}: "
            f"{kind} files cannot be written a band of rows at a time, so they are built in memory, up to "
            f"{max_in_memory_bytes / 2**20:.0f} MiB per array. Write HDF5 (--output-format h5), MAT v7.3 "
            "(--mat-version 7.3) or ENVI (--output-format envi), which are written as the rows come")
    with contextlib.ExitStack() as files:  # temporary files, put in place (or removed on an error) when it closes
        with _write_errors(path):
            if not streamed:
                save = functools.partial(save_cube, path, wavelengths=wl, camera=camera, attrs=attrs,
                                         overwrite=overwrite, mat_version=version)
                writer: CubeWriter = _InMemoryWriter(path, height, width, wl, save)
            elif suffix == ENVI_SUFFIX:
                writer = _EnviWriter(path, files.enter_context(atomic_write(path, overwrite=overwrite)), files,
                                     height, width, wl, _provenance(camera, attrs), overwrite)
            else:
                writer = _Hdf5Writer(path, files.enter_context(atomic_write(path, overwrite=overwrite)), height,
                                     width, wl, _provenance(camera, attrs), _camera_arrays(camera),
                                     matlab=suffix == MAT_SUFFIX)
        try:
            yield writer
            with _write_errors(path):
                writer.close()
        except BaseException:
            writer.abort()
            raise
        with _write_errors(path):
            files.close()  # fsync and rename, the cube's own file last


def _write_mat_v5(handle: Any, cube: np.ndarray, wavelengths: np.ndarray, extra: Mapping[str, np.ndarray],
                  camera: Mapping[str, np.ndarray]) -> None:
    """A MATLAB v5 file (`scipy.io.savemat`, uncompressed as v5 is), its header text naming uldm and the time;
    `camera` (`_camera_arrays`): the name as char, the response 3 x B and its wavelengths 1 x B."""
    from scipy.io import savemat

    from . import __version__

    camera = {name: str(value) if value.dtype.kind == "U" else np.atleast_2d(value) for name, value in camera.items()}
    savemat(handle, {"cube": cube, "bands": wavelengths.reshape(1, -1), **extra, **camera}, format="5",
            do_compression=False)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = f"MATLAB 5.0 MAT-file, Platform: uldm {__version__}, Created on: {created}".encode()
    handle.seek(0)
    handle.write(text[:116].ljust(116, b" "))  # the header's text field; version and byte order follow it


def mat_file_version(path: PathLike) -> str:
    """The MAT-file version a .mat file's own 128-byte header states: "5" (v5 / v7, scipy.io.loadmat reads it)
    or "7.3" (HDF5: h5py reads it)."""
    from scipy.io.matlab import MatReadError, matfile_version

    try:
        major, _ = matfile_version(os.fspath(path))
    except (MatReadError, ValueError, OSError) as exc:
        raise CubeFileError(f"{path}: not a MATLAB .mat file ({exc})") from exc
    if major not in (1, 2):
        raise CubeFileError(f"{path}: a MATLAB v4 file; uldm reads MAT v5 and v7.3")
    return "5" if major == 1 else "7.3"


def envi_data_path(header: Path) -> Path:
    return header.with_suffix(".img")


def envi_companion_path(header: PathLike, name: str) -> Path:
    """The ENVI header of an array stored beside an ENVI cube: `scene_uncertainty.hdr` beside `scene.hdr`."""
    header = Path(header)
    return header.with_name(f"{header.stem}_{name}{ENVI_SUFFIX}")


_ENVI_MEANING = {"uncertainty": "per-pixel, per-band standard deviation of the ensemble's members",
                 "out_of_gamut": "1 where no physical spectrum renders to the pixel's RGB: its spectrum has the least "
                                 "RGB change instead"}


def _envi_description(what: str, provenance: Mapping[str, Any]) -> str:
    """ENVI's `description`: what the file holds, then the provenance that is text or a number (model, camera,
    uldm version, time, ...) as `key: value`; braces would end the field, so they become parentheses."""
    items = [f"{key}: {value}" for key, value in provenance.items()
             if isinstance(value, (str, int, float, np.generic)) and key not in ("format", "format_version")]
    text = "; ".join([what, *items])
    return " ".join(text.replace("{", "(").replace("}", ")").split())


def _envi_list(values: Sequence[Any]) -> str:
    return "{" + ", ".join(map(str, values)) + "}"


def _envi_band_fields(wavelengths: np.ndarray) -> list[str]:
    """Wavelengths, fwhm (the band spacing: 10 nm on the 31-band grid), band names and the default bands: the
    1-based numbers (as ENVI and GDAL count) of the bands nearest 650, 550 and 450 nm, shown as R, G, B."""
    fields = ["wavelength units = Nanometers", "wavelength = " + _envi_list(f"{w:g}" for w in wavelengths)]
    if wavelengths.size > 1:
        fields.append("fwhm = " + _envi_list(f"{w:g}" for w in np.abs(np.gradient(wavelengths))))
    fields.append("band names = " + _envi_list(f"{w:g} nm" for w in wavelengths))
    shown = [0] if wavelengths.size == 1 else nearest_bands(wavelengths, DISPLAY_RGB_NM)
    fields.append("default bands = " + _envi_list(index + 1 for index in shown))
    return fields


def _envi_header_text(description: str, width: int, height: int, bands: int, mask: bool,
                      wavelengths: np.ndarray) -> str:
    """An ENVI header of band-sequential data: float32, or for an H x W mask one band of bytes (data type 1)
    without wavelengths."""
    text = ["ENVI", f"description = {{{description}}}", f"samples = {width}", f"lines = {height}",
            f"bands = {bands}", "header offset = 0", "file type = ENVI Standard", f"data type = {1 if mask else 4}",
            "interleave = bsq", "byte order = 0", *([] if mask else _envi_band_fields(wavelengths))]
    return "\n".join(text) + "\n"


class _EnviWriter(CubeWriter):
    """ENVI: each array in raw band-sequential data of its own (`<name>.img`; the others beside it, each with its
    header, `envi_companion_path`). A data file is sized first and each band of rows written at its offsets in
    every band plane (planes of zeros are skipped: the file reads 0 there); the headers come last, the cube's
    naming the others. The temporary files sit in `files`, which puts every data file in place before its
    header, and the cube's header last, so a header never points at missing data."""

    def __init__(self, header: Path, tmp_header: Path, files: contextlib.ExitStack, height: int, width: int,
                 wavelengths: np.ndarray, provenance: Mapping[str, Any], overwrite: bool) -> None:
        super().__init__(header, height, width, wavelengths)
        self._files, self._provenance, self._overwrite = files, provenance, overwrite
        self._headers = {"cube": (header, tmp_header)}  # name -> (header, its temporary file)
        self._handles: dict[str, Any] = {}  # name -> its open temporary data file
        self._bands: dict[str, int] = {}  # name -> its band planes
        self._masks: set[str] = set()  # the H x W masks: one plane of bytes

    def _open(self, name: str, rows: np.ndarray) -> None:
        if name != "cube":
            header = envi_companion_path(self.path, name)
            self._headers[name] = (header, self._files.enter_context(atomic_write(header, self._overwrite)))
        data = self._files.enter_context(atomic_write(envi_data_path(self._headers[name][0]), self._overwrite))
        self._handles[name] = open(data, "w+b")
        self._bands[name] = rows.shape[2] if rows.ndim == 3 else 1
        if rows.ndim == 2:
            self._masks.add(name)
        self._handles[name].truncate(self.height * self.width * self._bands[name] * rows.itemsize)  # reads as 0

    def _write_band(self, top: int, band: dict[str, np.ndarray]) -> None:
        for name, rows in band.items():
            if name not in self._handles:
                self._open(name, rows)
            planes = rows.reshape(*rows.shape[:2], self._bands[name])
            for index in range(planes.shape[2]):
                plane = planes[..., index]
                if plane.any():
                    self._handles[name].seek((index * self.height + top) * self.width * plane.itemsize)
                    little_endian = plane.dtype.newbyteorder("<")
                    self._handles[name].write(np.ascontiguousarray(plane, dtype=little_endian))

    def _finish(self) -> None:
        self._release()
        beside = "".join(f"; {name} in {header.name}" for name, (header, _) in self._headers.items()
                         if name != "cube")
        for name, (header, tmp) in self._headers.items():
            meaning = f" ({_ENVI_MEANING[name]})" if name in _ENVI_MEANING else ""
            what = (f"uldm spectral cube{beside}" if name == "cube"
                    else f"uldm {name} of the cube {self.path.name}{meaning}")
            text = _envi_header_text(_envi_description(what, self._provenance), self.width, self.height,
                                     self._bands[name], name in self._masks, self.wavelengths)
            with open(tmp, "w") as handle:
                handle.write(text)

    def _release(self) -> None:
        for handle in self._handles.values():
            handle.close()


def _read_envi(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """An ENVI cube written as `save_cube` writes one (float32 or float64, BSQ / BIL / BIP, little or big endian)."""
    import re

    text = path.read_text(errors="replace")
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r"^([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)$", text, re.M)}
    try:
        lines, samples, bands = (int(fields[k]) for k in ("lines", "samples", "bands"))
        dtype = {"1": "u1", "4": "f4", "5": "f8"}[fields.get("data type", "4")]  # 1: a mask (out_of_gamut)
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
    """A MATLAB cube (`cube`, `bands`) of either version `save_cube` writes (ARAD-1K's are v7.3)."""
    if mat_file_version(path) == "7.3":
        from .data.readers import read_mat_v73_cube

        return read_mat_v73_cube(path)
    from scipy.io import loadmat

    try:
        data = loadmat(path, variable_names=["cube", "bands"])
    except (ValueError, OSError) as exc:
        raise CubeFileError(f"{path}: not a readable MAT v5 file ({exc})") from exc
    if "cube" not in data:
        raise CubeFileError(f"{path}: no 'cube' variable in this .mat")
    return data["cube"], (data["bands"].ravel() if "bands" in data else None)


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
    """The attributes (provenance, camera) of an HDF5 cube; an empty dict for the other formats, which store no
    attributes (.npz and .mat hold the camera as arrays, `camera_name` ..., and ENVI in its description)."""
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



def load_out_of_gamut(path: PathLike) -> Optional[np.ndarray]:
    """The H x W bool out-of-gamut mask `save_cube` stored with a cube (for an ENVI cube, in its
    `<name>_out_of_gamut` file), or None when the file has none (a raw reconstruction, a .npy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cube file not found: {path}")
    suffix, name = _suffix(path), "out_of_gamut"
    try:
        if suffix == ENVI_SUFFIX:
            companion = envi_companion_path(path, name)
            return _read_envi(companion)[0][..., 0].astype(bool) if companion.is_file() else None
        if suffix in HDF5_SUFFIXES or (suffix == MAT_SUFFIX and mat_file_version(path) == "7.3"):
            import h5py

            with h5py.File(path, "r") as f:
                mask = f[name][()] if name in f else None
            return None if mask is None else (mask.T if suffix == MAT_SUFFIX else mask).astype(bool)
        if suffix == MAT_SUFFIX:
            from scipy.io import loadmat, whosmat

            if name not in {entry[0] for entry in whosmat(path)}:
                return None
            return loadmat(path, variable_names=[name])[name].astype(bool)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return data[name].astype(bool) if name in data.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise CubeFileError(f"{path}: cannot read its out-of-gamut mask ({exc})") from exc
    return None  # a .npy holds the cube alone
