"""uldm.data: dataset readers (CAVE, ARAD-1K, our own cubes), splits, and the training patch dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import uldm.data.dataset as dataset_module
from uldm.camera import CameraResponse
from uldm.data import (
    CAVE_VAL_SCENES,
    DatasetError,
    Scene,
    SpectralPatchDataset,
    cave_split,
    default_cave_root,
    list_scenes,
    read_arad,
    read_cave,
    read_scene,
    read_split_file,
    read_uldm_cube,
    select_scenes,
)
from uldm.data.readers import _png_band
from uldm.degradation import Degradation
from uldm.spectral import DEFAULT_GRID, SpectralGrid

WAVELENGTHS = np.arange(400.0, 701.0, 10.0)


@pytest.fixture
def toy_camera() -> CameraResponse:
    """Three Gaussian channels on the default grid: no colour-science import, so the tests stay fast."""
    wl = DEFAULT_GRID.as_array()
    curves = np.stack([np.exp(-0.5 * ((wl - mu) / 40.0) ** 2) for mu in (610.0, 540.0, 460.0)], axis=1)
    return CameraResponse.from_samples("toy", wl, curves)


# ------------------------------------------------------------------------------------------------------ CAVE
def test_read_cave_exact_values_band_order_and_orientation(tiny_cave_root, tiny_cave_cubes):
    scene = read_cave(tiny_cave_root / "balloons_ms")
    assert isinstance(scene, Scene)
    assert scene.name == "balloons_ms"
    assert scene.cube.shape == (16, 16, 31) and scene.cube.dtype == np.float32
    assert scene.wavelengths.dtype == np.float64
    np.testing.assert_array_equal(scene.wavelengths, WAVELENGTHS)
    np.testing.assert_array_equal(scene.cube, tiny_cave_cubes["balloons_ms"])
    # band k (1-based) holds 1000 k + 16 y + x counts
    assert scene.cube[3, 5, 6] == np.float32((1000 * 7 + 16 * 3 + 5) / 65535)
    assert np.all(np.diff(scene.cube, axis=-1) > 0)
    assert scene.source == str(tiny_cave_root / "balloons_ms")


def test_read_cave_accepts_inner_folder(tiny_cave_root, tiny_cave_cubes):
    scene = read_cave(tiny_cave_root / "cd_ms" / "cd_ms")
    assert scene.name == "cd_ms"
    np.testing.assert_array_equal(scene.cube, tiny_cave_cubes["cd_ms"])


def test_read_cave_8bit_rgba_band_uses_first_channel(tiny_cave_root, tiny_cave_cubes):
    assert Image.open(tiny_cave_root / "watercolors_ms" / "watercolors_ms" / "watercolors_ms_01.png").mode == "RGBA"
    scene = read_cave(tiny_cave_root / "watercolors_ms")
    np.testing.assert_allclose(scene.cube, tiny_cave_cubes["watercolors_ms"], rtol=0, atol=1e-7)
    # README's "scale by 257, then divide by 65535" is the same as dividing by 255
    assert scene.cube[0, 1, 0] == pytest.approx((8 + 1) * 257 / 65535, abs=1e-7)


def test_png_band_handles_int32_mode_I(tmp_path):
    """Older Pillow returns 16-bit greyscale as mode 'I' (int32): still scaled by 65535."""
    path = tmp_path / "band.tif"
    Image.fromarray(np.array([[0, 65535], [300, 40000]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    np.testing.assert_allclose(_png_band(path), np.array([[0, 1], [300 / 65535, 40000 / 65535]]), atol=1e-7)


def test_read_cave_missing_band_names_it(tiny_cave_root):
    (tiny_cave_root / "balloons_ms" / "balloons_ms" / "balloons_ms_07.png").unlink()
    with pytest.raises(DatasetError, match=r"band 7 \(460 nm\).*balloons_ms_07\.png"):
        read_cave(tiny_cave_root / "balloons_ms")


def test_read_cave_rejects_bands_of_different_sizes(tiny_cave_root):
    path = tiny_cave_root / "cd_ms" / "cd_ms" / "cd_ms_05.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(path)
    with pytest.raises(DatasetError, match=r"band 5 \(cd_ms_05\.png\) is 8x8 but band 1 is 16x16"):
        read_cave(tiny_cave_root / "cd_ms")


def test_read_cave_unreadable_png(tiny_cave_root):
    path = tiny_cave_root / "cd_ms" / "cd_ms" / "cd_ms_03.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cd_ms_03\.png: unreadable PNG"):
        read_cave(tiny_cave_root / "cd_ms")


def test_read_cave_onto_a_coarser_grid(tiny_cave_root, tiny_cave_cubes):
    grid = SpectralGrid.uniform(400.0, 700.0, 20.0)
    scene = read_cave(tiny_cave_root / "balloons_ms", grid=grid)
    np.testing.assert_array_equal(scene.wavelengths, grid.as_array())
    np.testing.assert_allclose(scene.cube, tiny_cave_cubes["balloons_ms"][..., ::2], atol=1e-6)


# ------------------------------------------------------------------------------------------------------ ARAD
def test_tiny_arad_mat_has_the_real_v73_layout(tiny_arad_mat):
    assert tiny_arad_mat.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(tiny_arad_mat, "r") as handle:
        assert handle.userblock_size == 512
        assert handle["cube"].shape == (31, 20, 12)  # B x W x H on disk
        assert handle["bands"].shape == (1, 31)


def test_read_arad_transposes_to_hwb_and_clips(tiny_arad_mat, tiny_arad_cube):
    scene = read_arad(tiny_arad_mat)
    assert scene.name == "ARAD_1K_0001"
    assert scene.cube.shape == (12, 20, 31) and scene.cube.dtype == np.float32
    np.testing.assert_array_equal(scene.wavelengths, WAVELENGTHS)
    np.testing.assert_array_equal(scene.cube, np.clip(tiny_arad_cube, 0, 1))
    assert scene.cube[0, 0, -1] == 1.0  # was 1.02 on disk
    assert scene.cube[11, 19, 0] == np.float32(11 / 1000 + 19 / 10000)


def test_read_arad_resamples_a_5nm_scene(tmp_path, mat_v73_writer):
    wl5 = np.arange(400.0, 701.0, 5.0)
    spectrum = 0.1 + 0.8 * (wl5 - 400.0) / 300.0  # linear in wavelength: resampling is exact
    cube = np.broadcast_to(spectrum, (4, 6, wl5.size)).astype(np.float32)
    scene = read_arad(mat_v73_writer(tmp_path / "fine.mat", cube, wl5))
    assert scene.cube.shape == (4, 6, 31)
    np.testing.assert_array_equal(scene.wavelengths, WAVELENGTHS)
    np.testing.assert_allclose(scene.cube, cube[..., ::2], atol=1e-6)


def test_read_arad_rejects_a_harvard_like_420_720_scene(tmp_path, mat_v73_writer):
    path = mat_v73_writer(tmp_path / "harvard_like.mat", np.full((4, 6, 31), 0.5, np.float32), WAVELENGTHS + 20)
    with pytest.raises(DatasetError, match=r"harvard_like\.mat.*420-720 nm.*refusing to extrapolate"):
        read_arad(path)


def test_read_arad_rejects_pre_v73_mat(tmp_path):
    path = tmp_path / "old.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(128, b" ") + bytes(256))
    with pytest.raises(DatasetError, match=r"old\.mat: not a MATLAB v7\.3 file.*-v7\.3"):
        read_arad(path)


def test_read_arad_missing_cube_lists_what_is_there(tmp_path):
    path = tmp_path / "no_cube.mat"
    with h5py.File(path, "w") as handle:
        handle["ref"] = np.zeros((31, 4, 4), np.float32)
    with pytest.raises(DatasetError, match=r"no_cube\.mat: no 'cube' dataset.*'ref'"):
        read_arad(path)


def test_read_arad_band_count_mismatch(tmp_path, mat_v73_writer):
    path = mat_v73_writer(tmp_path / "odd.mat", np.zeros((4, 6, 31), np.float32), WAVELENGTHS[:30])
    with pytest.raises(DatasetError, match=r"odd\.mat.*30 wavelengths"):
        read_arad(path)


def test_read_arad_rejects_nan(tmp_path, mat_v73_writer, tiny_arad_cube):
    cube = tiny_arad_cube.copy()
    cube[2, 3, 4] = np.nan
    path = mat_v73_writer(tmp_path / "holey.mat", cube, WAVELENGTHS)
    with pytest.raises(DatasetError, match=r"holey\.mat: the cube contains NaN values \(1 of"):
        read_arad(path)


# ----------------------------------------------------------------------------------------- dispatch, listing
def test_read_scene_detects_and_forces_formats(tiny_cave_root, tiny_arad_mat, tmp_path):
    assert read_scene(tiny_cave_root / "cd_ms").name == "cd_ms"
    assert read_scene(tiny_arad_mat).cube.shape == (12, 20, 31)
    renamed = shutil.copy(tiny_arad_mat, tmp_path / "scene.bin")
    with pytest.raises(DatasetError, match=r"scene\.bin: cannot tell the dataset format"):
        read_scene(renamed)
    assert read_scene(renamed, format="arad").cube.shape == (12, 20, 31)
    with pytest.raises(DatasetError, match=r"unknown dataset format 'envi'"):
        read_scene(tiny_arad_mat, format="envi")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.mat"):
        read_scene(tmp_path / "nowhere.mat")


def test_list_scenes(tiny_cave_root, tiny_arad_mat, tmp_path):
    names = [p.name for p in list_scenes(tiny_cave_root, "cave")]
    assert names == ["balloons_ms", "cd_ms", "watercolors_ms"]
    assert list_scenes(tiny_cave_root) == list_scenes(tiny_cave_root, "cave")
    assert list_scenes(tiny_arad_mat.parent, "arad") == [tiny_arad_mat]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"empty: no arad scenes found \(expected '\*\.mat' files\)"):
        list_scenes(empty, "arad")
    with pytest.raises(DatasetError, match=r"empty: no scenes found"):
        list_scenes(empty)


# ---------------------------------------------------------------------------------------------------- splits
def test_cave_split_on_tiny_root(tiny_cave_root):
    split = cave_split(tiny_cave_root)
    assert [p.name for p in split["val"]] == ["balloons_ms"]
    assert [p.name for p in split["train"]] == ["cd_ms", "watercolors_ms"]
    with pytest.raises(DatasetError, match=r"no CAVE data found.*ULDM_CAVE_ROOT"):
        cave_split(None)  # default_cave_root() when no data are found


def test_split_file_and_selection(tmp_path, tiny_cave_root):
    split_file = tmp_path / "val.txt"
    split_file.write_text("# my validation scenes\nwatercolors_ms\n\n  balloons_ms  # inline note\n")
    names = read_split_file(split_file)
    assert names == ["watercolors_ms", "balloons_ms"]
    scenes = list_scenes(tiny_cave_root, "cave")
    assert [p.name for p in select_scenes(scenes, names)] == names
    with pytest.raises(DatasetError, match=r"unknown scene names \['flowers_ms'\].*balloons_ms, cd_ms"):
        select_scenes(scenes, ["cd_ms", "flowers_ms"])


def test_a_cave_split_from_two_split_files(tmp_path, tiny_cave_root):
    from uldm.data import cave_split_from_files

    (tmp_path / "train.txt").write_text("balloons_ms\ncd_ms\n")
    (tmp_path / "val.txt").write_text("watercolors_ms\n")
    split = cave_split_from_files(tiny_cave_root, tmp_path / "train.txt", tmp_path / "val.txt")
    assert {k: [p.name for p in v] for k, v in split.items()} == {"train": ["balloons_ms", "cd_ms"],
                                                                   "val": ["watercolors_ms"]}
    with pytest.raises(DatasetError, match=r"no CAVE data found"):
        cave_split_from_files(None, tmp_path / "train.txt", tmp_path / "val.txt")


def test_select_scenes_by_file_stem_or_name(tmp_path):
    paths = [tmp_path / "ARAD_1K_0001.mat", tmp_path / "ARAD_1K_0002.mat"]
    assert select_scenes(paths, ["ARAD_1K_0002", "ARAD_1K_0001.mat"]) == paths[::-1]


def test_default_cave_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ULDM_CAVE_ROOT", str(tmp_path))
    assert default_cave_root() == tmp_path
    monkeypatch.delenv("ULDM_CAVE_ROOT")
    real = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cave"
    assert default_cave_root() == (real if real.is_dir() else None)


# ------------------------------------------------------------------------------------------------- dataset
def test_dataset_items_shapes_dtypes_ranges(tiny_cave_root, toy_camera):
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=8, patches_per_scene=2)
    assert len(ds) == 6
    item = ds[3]
    assert item["name"] == "cd_ms"
    assert item["hsi"].shape == (31, 8, 8) and item["hsi"].dtype == torch.float32
    assert item["rgb"].shape == (3, 8, 8) and item["rgb"].dtype == torch.float32
    for i in range(len(ds)):
        item = ds[i]
        assert 0.0 <= float(item["hsi"].min()) and float(item["hsi"].max()) <= 1.0
        assert 0.0 <= float(item["rgb"].min()) and float(item["rgb"].max()) <= 1.0 + 1e-6
    with pytest.raises(IndexError):
        ds[6]


def test_dataset_rgb_is_the_camera_rendering_of_hsi(tiny_arad_mat, toy_camera):
    ds = SpectralPatchDataset([tiny_arad_mat], toy_camera, patch_size=8, patches_per_scene=4)
    for i in range(len(ds)):
        item = ds[i]
        expected = toy_camera.render(item["hsi"], channel_axis=0)
        torch.testing.assert_close(item["rgb"], expected, atol=1e-6, rtol=1e-6)


def test_dataset_whole_non_square_images_keep_their_shape(tiny_arad_mat, toy_camera):
    ds = SpectralPatchDataset([tiny_arad_mat], toy_camera, patch_size=None, patches_per_scene=8)
    torch.manual_seed(0)
    assert {tuple(ds[i]["hsi"].shape) for i in range(len(ds))} == {(31, 12, 20)}


def test_dataset_is_reproducible_under_torch_seed(tiny_cave_root, toy_camera):
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=5, patches_per_scene=3, degradation=Degradation(photons=500))

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [t for i in range(len(ds)) for t in (ds[i]["hsi"], ds[i]["rgb"])]

    first, again, other = draw(0), draw(0), draw(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_dataset_set_epoch_changes_draws_reproducibly(tiny_cave_root, toy_camera):
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=5, patches_per_scene=4, seed=7)
    first = [ds[i]["hsi"] for i in range(len(ds))]
    ds.set_epoch(1)
    second = [ds[i]["hsi"] for i in range(len(ds))]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    ds.set_epoch(0)
    assert all(torch.equal(a, ds[i]["hsi"]) for i, a in enumerate(first))


def test_dataset_with_seed_gives_fixed_items(tiny_cave_root, toy_camera):
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=5, patches_per_scene=4, seed=7)
    torch.manual_seed(0)
    first = [ds[i]["hsi"] for i in range(len(ds))]
    torch.manual_seed(123)
    second = [ds[i]["hsi"] for i in range(len(ds))]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len({a.sum().item() for a in first}) > 1  # items differ from one another


def test_dataset_degradation_quantises_rgb(tiny_cave_root, toy_camera):
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=8, degradation=Degradation(bit_depth=8))
    rgb = ds[0]["rgb"]
    torch.testing.assert_close(rgb * 255, torch.round(rgb * 255), atol=1e-4, rtol=0)


def test_dataset_reads_lazily_through_an_lru_cache(tiny_cave_root, toy_camera, monkeypatch):
    reads: list[str] = []
    real_read_scene = dataset_module.read_scene

    def counting_read_scene(path, **kwargs):
        reads.append(Path(path).name)
        return real_read_scene(path, **kwargs)

    monkeypatch.setattr(dataset_module, "read_scene", counting_read_scene)
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=4, patches_per_scene=2, cache_size=1)
    assert reads == []
    for i in (0, 1, 2, 3, 4, 5, 0):
        ds[i]
    assert reads == ["balloons_ms", "cd_ms", "watercolors_ms", "balloons_ms"]
    reads.clear()
    cache_all = SpectralPatchDataset(scenes, toy_camera, patch_size=4, patches_per_scene=2, cache_size=None)
    for i in (0, 2, 4, 0, 2, 4):
        cache_all[i]
    assert reads == ["balloons_ms", "cd_ms", "watercolors_ms"]


def test_dataset_patch_larger_than_scene(tiny_arad_mat, toy_camera):
    ds = SpectralPatchDataset([tiny_arad_mat], toy_camera, patch_size=16)
    with pytest.raises(DatasetError, match=r"scene 'ARAD_1K_0001'.*12x20, smaller than patch_size=16"):
        ds[0]


def test_dataset_rejects_a_camera_on_another_grid(tiny_cave_root):
    grid = SpectralGrid.uniform(400.0, 700.0, 20.0)
    wl = grid.as_array()
    camera = CameraResponse.from_samples("coarse", wl, np.stack([wl, wl[::-1] ** 2, np.ones_like(wl)], axis=1), grid=grid)
    with pytest.raises(DatasetError, match=r"camera 'coarse' is defined on SpectralGrid\(16 bands"):
        SpectralPatchDataset(list_scenes(tiny_cave_root, "cave"), camera, grid=DEFAULT_GRID)


def test_dataset_in_dataloader_workers(tiny_cave_root, toy_camera):
    scenes = list_scenes(tiny_cave_root, "cave")
    ds = SpectralPatchDataset(scenes, toy_camera, patch_size=8, patches_per_scene=2)

    def batches(workers: int) -> list[dict]:
        torch.manual_seed(0)
        return list(DataLoader(ds, batch_size=2, num_workers=workers))

    in_workers = batches(2)
    assert len(in_workers) == 3
    assert in_workers[0]["hsi"].shape == (2, 31, 8, 8) and in_workers[0]["name"] == ["balloons_ms", "balloons_ms"]
    assert all(torch.equal(a["hsi"], b["hsi"]) for a, b in zip(in_workers, batches(2)))
    assert len(batches(0)) == 3


# ------------------------------------------------------------------------------ our own format (uldm.io)
def test_read_uldm_cube_npz_npy_and_h5(tmp_path):
    pytest.importorskip("uldm.io")
    cube = np.random.default_rng(0).uniform(0, 1, (5, 7, 31)).astype(np.float32)
    np.savez(tmp_path / "scene.npz", cube=cube, wavelengths=WAVELENGTHS)
    np.save(tmp_path / "bare.npy", cube)
    with h5py.File(tmp_path / "scene.h5", "w") as handle:
        handle["cube"], handle["wavelengths"] = cube, WAVELENGTHS
    for name in ("scene.npz", "bare.npy", "scene.h5"):
        scene = read_scene(tmp_path / name)
        assert scene.cube.shape == (5, 7, 31) and scene.cube.dtype == np.float32
        np.testing.assert_array_equal(scene.cube, cube)
        np.testing.assert_array_equal(scene.wavelengths, WAVELENGTHS)
    assert [p.name for p in list_scenes(tmp_path, "h5")] == ["bare.npy", "scene.h5", "scene.npz"]


def test_read_uldm_cube_resamples_and_rejects(tmp_path):
    pytest.importorskip("uldm.io")
    wl5 = np.arange(400.0, 701.0, 5.0)
    cube = np.broadcast_to(0.1 + 0.8 * (wl5 - 400.0) / 300.0, (3, 4, wl5.size)).astype(np.float32)
    np.savez(tmp_path / "fine.npz", cube=cube, wavelengths=wl5)
    np.testing.assert_allclose(read_uldm_cube(tmp_path / "fine.npz").cube, cube[..., ::2], atol=1e-6)

    np.savez(tmp_path / "harvard_like.npz", cube=np.full((3, 4, 31), 0.5, np.float32), wavelengths=WAVELENGTHS + 20)
    with pytest.raises(DatasetError, match=r"harvard_like\.npz.*420-720 nm"):
        read_uldm_cube(tmp_path / "harvard_like.npz")

    holey = np.full((3, 4, 31), 0.5, np.float32)
    holey[1, 1, 1] = np.nan
    np.savez(tmp_path / "holey.npz", cube=holey, wavelengths=WAVELENGTHS)
    with pytest.raises(DatasetError, match=r"holey\.npz.*NaN"):
        read_uldm_cube(tmp_path / "holey.npz")


def test_read_uldm_cube_clips_and_warns(tmp_path):
    pytest.importorskip("uldm.io")
    cube = np.full((3, 4, 31), 0.5, np.float32)
    cube[0, 0, 0], cube[0, 1, 0] = 1.2, -0.0005
    np.savez(tmp_path / "bright.npz", cube=cube, wavelengths=WAVELENGTHS)
    with pytest.warns(UserWarning, match=r"bright\.npz: values span \[-0\.0005, 1\.2\].*clipped"):
        scene = read_uldm_cube(tmp_path / "bright.npz")
    assert scene.cube.min() == 0.0 and scene.cube.max() == 1.0


# --------------------------------------------------------------------------------------------- real CAVE
def _bmp_next_to(scene_dir: Path) -> np.ndarray:
    return np.asarray(Image.open(scene_dir / scene_dir.name / f"{scene_dir.name[:-3]}_RGB.bmp").convert("RGB"), float)


@pytest.mark.real_data
def test_real_cave_listing_and_split(cave_root):
    scenes = list_scenes(cave_root, "cave")
    assert len(scenes) == 25
    split = cave_split(cave_root)
    assert (len(split["train"]), len(split["val"])) == (21, 4)
    assert {p.name for p in split["val"]} == set(CAVE_VAL_SCENES)


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["balloons_ms", "watercolors_ms"])
def test_real_cave_scene_is_plausible(cave_root, name):
    scene = read_scene(cave_root / name)
    assert scene.cube.shape == (256, 256, 31) and scene.cube.dtype == np.float32
    assert 0.0 <= scene.cube.min() and scene.cube.max() <= 1.0 and scene.cube.max() > 0.1
    bmp = _bmp_next_to(cave_root / name)
    # Orientation: brightness of the shipped sRGB image follows the cube's mean over bands.
    assert np.corrcoef(bmp.mean(-1).ravel(), scene.cube.mean(-1).ravel())[0, 1] > 0.5
    # Band order: pixels that are redder than blue in the sRGB image have more long-wave than short-wave
    # reflectance (per-pixel correlation is about 0.8 on these scenes; reversed bands would make it negative).
    eps = 1e-3
    red_vs_blue = np.log((bmp[..., 0] + 1) / (bmp[..., 2] + 1)).ravel()
    long_vs_short = np.log((scene.cube[..., -8:].mean(-1) + eps) / (scene.cube[..., :8].mean(-1) + eps)).ravel()
    assert np.corrcoef(red_vs_blue, long_vs_short)[0, 1] > 0.5


@pytest.mark.real_data
def test_real_cave_patches(cave_root, toy_camera):
    ds = SpectralPatchDataset(cave_split(cave_root)["val"], toy_camera, patch_size=64, cache_size=1)
    item = ds[len(ds) - 1]
    assert item["hsi"].shape == (31, 64, 64) and item["name"] == "stuffed_toys_ms"
