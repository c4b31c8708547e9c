"""Every output format read back with the readers the community uses: SPy for ENVI, scipy.io for MAT v5, h5py (and
mat73, as MATLAB sees the arrays) for HDF5 and MAT v7.3: values, wavelengths, units and the ensemble's uncertainty."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import h5py
import mat73
import numpy as np
import pytest
import scipy.io
from PIL import Image
from spectral.io import envi

from uldm import DEFAULT_GRID, CameraResponse, __version__
from uldm.cli import main
from uldm.io import CubeFileError, envi_companion_path, load_cube, mat_file_version, save_cube

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz"
WL = DEFAULT_GRID.as_array()
CAMERA = CameraResponse.from_preset("nikon5100")
PROVENANCE = {"checkpoint": "checkpoints/uldm-cave", "source": "photo.png", "steps": 1, "ensemble": 2}


@pytest.fixture
def cube() -> np.ndarray:
    return np.random.default_rng(0).random((5, 7, 31)).astype(np.float32)


@pytest.fixture
def spread() -> np.ndarray:
    return (np.random.default_rng(1).random((5, 7, 31)) / 10).astype(np.float32)


# ------------------------------------------------------------------------------------------------- HDF5
def test_hdf5_read_with_h5py_has_the_cube_the_uncertainty_and_wavelengths_in_nm(tmp_path, cube, spread):
    path = save_cube(tmp_path / "scene.h5", cube, WL, camera=CAMERA, attrs=PROVENANCE, uncertainty=spread)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["cube"][()], cube)
        np.testing.assert_array_equal(f["uncertainty"][()], spread)
        np.testing.assert_array_equal(f["wavelengths"][()], WL)
        assert f["wavelengths"].attrs["units"] == "nm"
        assert f.attrs["camera_name"] == CAMERA.name and f.attrs["checkpoint"] == "checkpoints/uldm-cave"


# -------------------------------------------------------------------------------------------------- MAT
def test_mat_v5_is_the_default_and_scipy_reads_it_as_matlab_sees_it(tmp_path, cube, spread):
    path = save_cube(tmp_path / "scene.mat", cube, WL, uncertainty=spread)
    header = path.read_bytes()[:128]
    assert mat_file_version(path) == "5" and header.startswith(b"MATLAB 5.0 MAT-file")
    assert f"uldm {__version__}".encode() in header
    data = scipy.io.loadmat(path)
    assert data["cube"].dtype == np.float32 and data["cube"].shape == (5, 7, 31)  # H x W x B in MATLAB too
    np.testing.assert_array_equal(data["cube"], cube)
    np.testing.assert_array_equal(data["uncertainty"], spread)
    np.testing.assert_array_equal(data["bands"], WL.reshape(1, -1))  # 1 x B, nm, as ARAD-1K's
    loaded, wavelengths = load_cube(path)
    np.testing.assert_array_equal(loaded, cube)
    np.testing.assert_array_equal(wavelengths, WL)


def test_mat_v73_is_read_by_h5py_and_mat73_as_matlab_sees_it(tmp_path, cube, spread):
    path = save_cube(tmp_path / "scene.mat", cube, WL, uncertainty=spread, mat_version="7.3")
    assert mat_file_version(path) == "7.3" and path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with pytest.raises(NotImplementedError, match="v7.3"):  # scipy recognises the version from the header
        scipy.io.loadmat(path)
    data = mat73.loadmat(str(path))
    np.testing.assert_array_equal(data["cube"], cube)
    np.testing.assert_array_equal(data["uncertainty"], spread)
    np.testing.assert_array_equal(np.ravel(data["bands"]), WL)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["cube"][()].T, cube)  # column-major on disk
    np.testing.assert_array_equal(load_cube(path)[0], cube)


def test_the_mat_version_follows_the_size_unless_asked(tmp_path, cube, monkeypatch):
    import uldm.io

    monkeypatch.setattr(uldm.io, "MAT_V5_MAX_BYTES", cube.nbytes - 1)  # this cube now stands for one over 2 GB
    assert mat_file_version(save_cube(tmp_path / "large.mat", cube, WL)) == "7.3"
    with pytest.raises(CubeFileError, match="large5.mat.*does not fit MAT v5.*7.3"):
        save_cube(tmp_path / "large5.mat", cube, WL, mat_version="5")
    with pytest.raises(CubeFileError, match="unknown MAT version '6'"):
        save_cube(tmp_path / "six.mat", cube, WL, mat_version="6")
    with pytest.raises(CubeFileError, match=r"scene.h5: mat_version applies to \.mat"):
        save_cube(tmp_path / "scene.h5", cube, WL, mat_version="5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.mat"]


# ------------------------------------------------------------------------------------------------- ENVI
def test_envi_read_with_spy_has_bands_display_bands_provenance_and_the_uncertainty_beside(tmp_path, cube, spread):
    header = save_cube(tmp_path / "scene.hdr", cube, WL, camera=CAMERA, attrs=PROVENANCE, uncertainty=spread)
    image = envi.open(str(header))
    np.testing.assert_array_equal(np.asarray(image.load()), cube)
    np.testing.assert_array_equal(image.bands.centers, WL)
    assert image.bands.band_unit == "Nanometers" and image.bands.bandwidths == [10.0] * 31
    assert image.metadata["band names"] == [f"{w:g} nm" for w in WL]
    assert [WL[int(b) - 1] for b in image.metadata["default bands"]] == [650, 550, 450]  # 1-based, as ENVI counts
    description = image.metadata["description"]
    for text in (f"uldm_version: {__version__}", f"camera_name: {CAMERA.name}", "checkpoint: checkpoints/uldm-cave",
                 "source: photo.png", "uncertainty in scene_uncertainty.hdr"):
        assert text in description
    assert datetime.fromisoformat(re.search(r"created: ([^;]+)", description)[1]).utcoffset().total_seconds() == 0

    beside = envi.open(str(envi_companion_path(header, "uncertainty")))
    np.testing.assert_array_equal(np.asarray(beside.load()), spread)
    np.testing.assert_array_equal(beside.bands.centers, WL)
    assert "standard deviation" in beside.metadata["description"] and "scene.hdr" in beside.metadata["description"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scene.hdr", "scene.img", "scene_uncertainty.hdr", "scene_uncertainty.img"]


def test_envi_fwhm_follows_the_band_spacing_and_display_bands_the_nearest_bands(tmp_path):
    wavelengths = np.array([450.0, 500.0, 550.0, 650.0])
    header = save_cube(tmp_path / "four.hdr", np.ones((2, 3, 4), np.float32), wavelengths)
    image = envi.open(str(header))
    assert image.bands.bandwidths == [50.0, 50.0, 75.0, 100.0]
    assert image.metadata["default bands"] == ["4", "3", "1"]
    assert "uncertainty" not in image.metadata["description"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "four.hdr", "four.img"]


# ----------------------------------------------------------------------------------------------- the CLI
def _photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "photo.png")
    return folder / "photo.png"


@pytest.mark.usefixtures("single_thread")
def test_reconstruct_with_an_ensemble_writes_the_uncertainty_beside_an_envi_cube(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    assert main(["reconstruct", str(_photo(tmp_path / "in")), "-o", str(out), "--checkpoint", str(tmp_path / "pipe"),
                 "--steps", "1", "--ensemble", "2", "--output-format", "envi"]) == 0
    spread = np.asarray(envi.open(str(out / "photo_uncertainty.hdr")).load())
    assert spread.shape == (16, 16, 31) and spread.max() > 0
    row = json.loads((out / "manifest.json").read_text())["images"][0]
    assert row["status"] == "done" and row["uncertainty_file"] == str(out / "photo_uncertainty.hdr")


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_reconstruct_writes_the_mat_version_asked_for(tmp_path, version):
    out = tmp_path / "out"
    assert main(["reconstruct", str(_photo(tmp_path)), "-o", str(out), "--checkpoint", str(BASELINE),
                 "--output-format", "mat", "--mat-version", version]) == 0
    assert mat_file_version(out / "photo.mat") == version and load_cube(out / "photo.mat")[0].shape == (16, 16, 31)


def test_a_mat_version_without_mat_output_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import uldm.cli

    monkeypatch.setattr(uldm.cli, "model_from_args", lambda args: pytest.fail("the model was loaded"))
    assert main(["reconstruct", str(_photo(tmp_path)), "-o", str(tmp_path / "out"), "--checkpoint", str(BASELINE),
                 "--mat-version", "5"]) == 2
    assert "--mat-version 5 applies to --output-format mat only" in capsys.readouterr().err
