"""Cube files: round trips, provenance, resampling on load, clear errors, atomic writes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

import uldm
from uldm import CameraResponse, DEFAULT_GRID, SpectralGrid, SpectralGridError
from uldm.io import CubeFileError, atomic_write, load_cube, load_cube_attrs, save_cube, save_json

WL = DEFAULT_GRID.as_array()


@pytest.fixture
def cube() -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.random((5, 4, 31)).astype(np.float32)
    data[0, 0, 0] = 1.25  # out of range values are kept as stored
    return data


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", ["scene.h5", "scene.hdf5", "scene.npz", "scene.npy"])
def test_round_trip_is_exact(tmp_path, cube, name):
    path = save_cube(tmp_path / name, cube, WL)
    assert path == tmp_path / name
    loaded, wl = load_cube(path)
    assert loaded.dtype == np.float32 and wl.dtype == np.float64
    assert np.array_equal(loaded, cube)
    assert np.array_equal(wl, WL)
    assert leftovers(tmp_path) == [name]  # no temporary file left behind


def test_float64_and_torch_input_are_stored_as_float32(tmp_path, cube):
    torch = pytest.importorskip("torch")
    save_cube(tmp_path / "a.npz", torch.tensor(cube, dtype=torch.float64), WL)
    loaded, _ = load_cube(tmp_path / "a.npz")
    assert loaded.dtype == np.float32 and np.array_equal(loaded, cube)


def test_hdf5_layout_and_provenance(tmp_path, cube):
    path = tmp_path / "out" / "scene.h5"  # parent folders are created
    save_cube(path, cube, WL, attrs={"source": Path("in/scene.png"), "steps": 20, "checkpoint": "ckpt/last", "skip": None})
    with h5py.File(path, "r") as f:
        assert f["cube"].dtype == np.float32 and f["cube"].shape == (5, 4, 31)
        assert f["cube"].compression == "gzip"
        assert f["wavelengths"].dtype == np.float64
    attrs = load_cube_attrs(path)
    assert attrs["format"] == "uldm-cube" and attrs["format_version"] == 1
    assert attrs["uldm_version"] == uldm.__version__
    assert datetime.fromisoformat(attrs["created"]).utcoffset().total_seconds() == 0
    assert attrs["source"] == "in/scene.png" and attrs["steps"] == 20 and attrs["checkpoint"] == "ckpt/last"
    assert "skip" not in attrs
    assert "camera_name" not in attrs


def test_camera_is_stored_in_hdf5(tmp_path, cube):
    matrix = np.stack([np.linspace(0, 1, 31), np.hanning(31), np.linspace(1, 0, 31)])
    camera = CameraResponse(name="test camera", matrix=matrix)
    save_cube(tmp_path / "scene.h5", cube, WL, camera=camera)
    attrs = load_cube_attrs(tmp_path / "scene.h5")
    assert attrs["camera_name"] == camera.name
    assert np.array_equal(attrs["camera_response"], camera.matrix)
    assert np.array_equal(attrs["camera_wavelengths"], WL)


def test_attrs_are_empty_for_numpy_formats(tmp_path, cube):
    save_cube(tmp_path / "a.npz", cube, WL, attrs={"steps": 3})
    save_cube(tmp_path / "a.npy", cube, WL)
    assert load_cube_attrs(tmp_path / "a.npz") == {}
    assert load_cube_attrs(tmp_path / "a.npy") == {}


def test_reserved_attribute_names_are_refused(tmp_path, cube):
    with pytest.raises(CubeFileError, match="'format'"):
        save_cube(tmp_path / "a.h5", cube, WL, attrs={"format": "mine"})
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------- resampling
def test_load_resamples_onto_a_grid(tmp_path):
    fine = SpectralGrid.uniform(400, 700, 5)
    # a linear ramp in wavelength survives linear interpolation exactly
    ramp = ((fine.as_array() - 400) / 300).astype(np.float32)
    save_cube(tmp_path / "fine.npz", np.broadcast_to(ramp, (2, 3, fine.num_bands)), fine.wavelengths)
    loaded, wl = load_cube(tmp_path / "fine.npz", grid=DEFAULT_GRID)
    assert loaded.shape == (2, 3, 31) and loaded.dtype == np.float32
    assert np.array_equal(wl, WL)
    np.testing.assert_allclose(loaded[1, 2], (WL - 400) / 300, atol=1e-6)


def test_load_with_the_files_own_grid_is_unchanged(tmp_path, cube):
    save_cube(tmp_path / "a.h5", cube, WL)
    loaded, _ = load_cube(tmp_path / "a.h5", grid=DEFAULT_GRID)
    assert np.array_equal(loaded, cube)


def test_grid_not_covered_names_the_file(tmp_path):
    narrow = SpectralGrid.uniform(450, 650, 10)
    save_cube(tmp_path / "narrow.h5", np.zeros((2, 2, narrow.num_bands)), narrow.wavelengths)
    with pytest.raises(SpectralGridError, match="narrow.h5"):
        load_cube(tmp_path / "narrow.h5", grid=DEFAULT_GRID)


def test_npy_needs_31_bands(tmp_path):
    np.save(tmp_path / "odd.npy", np.zeros((2, 2, 16), dtype=np.float32))
    with pytest.raises(CubeFileError, match=r"odd.npy.*16 bands.*\.npz or \.h5"):
        load_cube(tmp_path / "odd.npy")


# ------------------------------------------------------------------------------------------ load errors
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        load_cube(tmp_path / "nothing.h5")


def test_corrupt_hdf5(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"this is not an HDF5 file at all" * 10)
    with pytest.raises(CubeFileError, match="x.h5.*not a readable HDF5"):
        load_cube(tmp_path / "x.h5")
    with pytest.raises(CubeFileError, match="x.h5"):
        load_cube_attrs(tmp_path / "x.h5")


def test_corrupt_npz_and_npy(tmp_path):
    for name in ("x.npz", "x.npy"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(CubeFileError, match=name):
            load_cube(tmp_path / name)


def test_missing_cube_key_lists_the_keys(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["rad"] = np.zeros((2, 2, 31))
        f["bands"] = WL
    with pytest.raises(CubeFileError, match=r"other.h5.*no 'cube'.*\['bands', 'rad'\]"):
        load_cube(tmp_path / "other.h5")
    np.savez(tmp_path / "other.npz", data=np.zeros((2, 2, 31)))
    with pytest.raises(CubeFileError, match=r"other.npz.*\['data'\]"):
        load_cube(tmp_path / "other.npz")


def test_nan_and_wrong_ndim_in_a_file(tmp_path):
    bad = np.zeros((2, 2, 31), dtype=np.float32)
    bad[1, 1, 3] = np.nan
    np.savez(tmp_path / "nan.npz", cube=bad, wavelengths=WL)
    with pytest.raises(CubeFileError, match="nan.npz.*1 NaN"):
        load_cube(tmp_path / "nan.npz")
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["cube"] = np.zeros((4, 31))
    with pytest.raises(CubeFileError, match=r"flat.h5.*3-D.*\(4, 31\)"):
        load_cube(tmp_path / "flat.h5")


def test_band_count_must_match_stored_wavelengths(tmp_path):
    np.savez(tmp_path / "a.npz", cube=np.zeros((2, 2, 31)), wavelengths=WL[:30])
    with pytest.raises(CubeFileError, match="31 bands.*30 wavelengths"):
        load_cube(tmp_path / "a.npz")


def test_unknown_suffix(tmp_path, cube):
    with pytest.raises(CubeFileError, match=r"\.xyz"):
        save_cube(tmp_path / "a.xyz", cube, WL)


# ------------------------------------------------------------------------------------------ save errors
def test_save_validates_the_cube(tmp_path, cube):
    with pytest.raises(CubeFileError, match="3-D"):
        save_cube(tmp_path / "a.h5", cube[0], WL)
    with pytest.raises(CubeFileError, match="31 bands but 30 wavelengths"):
        save_cube(tmp_path / "a.h5", cube, WL[:30])
    bad = cube.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(CubeFileError, match="1 NaN or infinite"):
        save_cube(tmp_path / "a.h5", bad, WL)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- atomicity
class Boom(RuntimeError):
    pass


def test_failed_hdf5_write_leaves_no_file_and_keeps_the_old_one(tmp_path, cube, monkeypatch):
    path = tmp_path / "scene.h5"
    save_cube(path, cube, WL)
    before = path.read_bytes()

    real_create = h5py.Group.create_dataset

    def failing_create(self, name, *args, **kwargs):
        if name == "wavelengths":  # the cube is already half-way into the file
            raise Boom("disk full")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(Boom):
        save_cube(path, np.zeros_like(cube), WL)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["scene.h5"]

    with pytest.raises(Boom):
        save_cube(tmp_path / "new.h5", cube, WL)
    assert leftovers(tmp_path) == ["scene.h5"]


@pytest.mark.parametrize("name, writer", [("scene.npy", "save"), ("scene.npz", "savez")])
def test_failed_numpy_write_leaves_no_file(tmp_path, cube, monkeypatch, name, writer):
    path = tmp_path / name
    save_cube(path, cube, WL)
    before = path.read_bytes()

    def failing_write(handle, *args, **kwargs):
        handle.write(b"partial data")
        raise Boom("interrupted")

    monkeypatch.setattr(np, writer, failing_write)
    with pytest.raises(Boom):
        save_cube(path, np.zeros_like(cube), WL)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == [name]


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_write(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".txt" and tmp != target
            tmp.write_text("half")
            raise Boom
    assert target.read_text() == "old" and leftovers(tmp_path) == ["notes.txt"]
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and leftovers(tmp_path) == ["notes.txt"]


def test_atomic_write_without_writing_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_write(tmp_path / "empty.bin"):
            pass
    assert leftovers(tmp_path) == []


def test_save_json_writes_numbers_and_keeps_the_old_file_on_bad_data(tmp_path):
    target = tmp_path / "sub" / "rows.json"
    assert save_json({"psnr": np.float32(33.5), "n": 4}, target) == target  # parent folders are made
    assert json.loads(target.read_text()) == {"psnr": 33.5, "n": 4}
    with pytest.raises(TypeError):
        save_json({"psnr": object()}, target)  # not serialisable: fails before anything is written
    assert json.loads(target.read_text()) == {"psnr": 33.5, "n": 4} and leftovers(target.parent) == ["rows.json"]


def test_lazy_exports():
    assert uldm.save_cube is save_cube and uldm.load_cube is load_cube
    from uldm.metrics import evaluate_cube

    assert uldm.evaluate_cube is evaluate_cube


def test_uncertainty_is_stored_beside_the_cube(tmp_path):
    import h5py

    cube = np.random.default_rng(0).random((4, 5, 31)).astype(np.float32)
    save_cube(tmp_path / "u.h5", cube, DEFAULT_GRID.as_array(), uncertainty=cube / 10)
    with h5py.File(tmp_path / "u.h5") as f:
        np.testing.assert_allclose(f["uncertainty"][()], cube / 10)
    with pytest.raises(CubeFileError, match="uncertainty shape"):
        save_cube(tmp_path / "v.h5", cube, DEFAULT_GRID.as_array(), uncertainty=cube[:2])


def test_matlab_v73_cubes_are_hdf5_behind_the_mat_header_in_matlab_order(tmp_path):
    import h5py

    from uldm.data.readers import read_arad

    rng = np.random.default_rng(0)
    cube, wavelengths = rng.random((5, 7, 31)).astype(np.float32), np.arange(400, 701, 10)
    path = save_cube(tmp_path / "scene.mat", cube, wavelengths, uncertainty=cube / 10, mat_version="7.3")
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file" and path.read_bytes()[126:128] == b"IM"
    with h5py.File(path, "r") as handle:
        assert handle["cube"].shape == (31, 7, 5)  # MATLAB's column-major H x W x B
        assert handle["cube"].attrs["MATLAB_class"] == b"single"
    loaded, wl = load_cube(path)
    np.testing.assert_array_equal(loaded, cube)
    np.testing.assert_array_equal(wl, wavelengths)
    np.testing.assert_array_equal(read_arad(path).cube, np.clip(cube, 0, 1))  # the ARAD reader reads it too


def test_envi_cubes_are_a_header_and_band_sequential_float32(tmp_path):
    rng = np.random.default_rng(1)
    cube, wavelengths = rng.random((4, 6, 31)).astype(np.float32), np.arange(400, 701, 10)
    header = save_cube(tmp_path / "scene.hdr", cube, wavelengths)
    text = header.read_text()
    assert text.startswith("ENVI\n") and "samples = 6" in text and "lines = 4" in text and "interleave = bsq" in text
    raw = np.fromfile(tmp_path / "scene.img", dtype="<f4")
    np.testing.assert_array_equal(raw[:24], cube[..., 0].ravel())  # band 0 first, row by row
    loaded, wl = load_cube(header)
    np.testing.assert_array_equal(loaded, cube)
    np.testing.assert_array_equal(wl, wavelengths)
    with pytest.raises(FileExistsError):
        save_cube(header, cube, wavelengths, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.hdr", "scene.img"]


@pytest.mark.parametrize("name,options", [("scene.h5", {}), ("scene.npz", {}), ("scene.mat", {}),
                                          ("scene.mat", {"mat_version": "7.3"}), ("scene.hdr", {})])
def test_the_out_of_gamut_mask_travels_with_the_cube(tmp_path, name, options):
    from uldm.io import load_out_of_gamut

    rng = np.random.default_rng(2)
    cube, mask = rng.random((5, 7, 31)).astype(np.float32), rng.random((5, 7)) > 0.6
    path = save_cube(tmp_path / name, cube, np.arange(400, 701, 10), out_of_gamut=mask, **options)
    np.testing.assert_array_equal(load_out_of_gamut(path), mask)
    np.testing.assert_array_equal(load_cube(path)[0], cube)
    assert load_out_of_gamut(save_cube(tmp_path / f"plain-{name}", cube, np.arange(400, 701, 10), **options)) is None
    with pytest.raises(CubeFileError, match="out_of_gamut shape"):
        save_cube(tmp_path / name, cube, np.arange(400, 701, 10), out_of_gamut=mask.T)
