"""Cubes streamed into their files band of rows by band of rows (`uldm.io.open_cube_writer`): the same files as
the in-memory writes, nothing corrupt after an error or a kill, in-memory formats bounded. Memory boundedness
itself is measured by benchmarks/large_images.py, not here."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, child_process, wait_for_file
from uldm.cli import main
from uldm.io import (CubeFileError, CubeWriter, is_temporary_file, load_cube, load_cube_attrs, load_out_of_gamut,
                     mat_file_version, open_cube_writer, save_cube)

BASELINE = REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz"
WL = np.arange(400, 701, 10)
STREAMED = ["scene.h5", "scene.mat", "scene.hdr"]  # .mat: v7.3 when streamed


@pytest.fixture
def rgb() -> np.ndarray:
    """37 x 20 linear RGB with a pure-green corner (out of the Nikon 5100's gamut): 37 rows are two whole HDF5
    chunks of 16 rows and a partial one."""
    y, x = np.mgrid[0:37, 0:20] / 40
    image = np.stack([0.2 + 0.5 * y, 0.3 + 0.4 * x, 0.6 - 0.3 * x * y], axis=-1).astype(np.float32)
    image[:3, :4] = (0.0, 1.0, 0.0)
    return image


def _streamed(pipeline, rgb: np.ndarray, path: Path, rows_per_band: int, **call) -> Path:
    """The pipeline's output for `rgb` streamed into `path` (a .mat as v7.3), composed `rows_per_band` rows at a
    time."""
    pipeline.compose_spectra = functools.partial(type(pipeline).compose_spectra, pipeline,
                                                 tile_pixels=rows_per_band * rgb.shape[1])
    version = "7.3" if path.suffix == ".mat" else None
    with open_cube_writer(path, *rgb.shape[:2], WL, attrs={"source": "x.png"}, mat_version=version) as writer:
        def write(rows, spectra, uncertainty, out_of_gamut):
            writer.write(spectra[0], uncertainty[0], None if out_of_gamut is None else out_of_gamut[0])

        out = pipeline(rgb, input_space="linear", show_progress_bar=False, band_sink=write, **call)
    assert out.spectra.shape == (1, 0, rgb.shape[1], 31) and out.rgb_error.shape == (1,)  # the rows went to the file
    return path


@pytest.mark.parametrize("name", STREAMED)
def test_a_pipeline_streamed_into_a_file_equals_its_in_memory_output_saved(tiny_pipeline, rgb, tmp_path, name):
    import torch

    call = {"ensemble_size": 2, "generator": torch.Generator().manual_seed(0)}
    out = tiny_pipeline(rgb, input_space="linear", show_progress_bar=False, **call)
    saved = save_cube(tmp_path / "memory" / name, out.spectra[0], WL, uncertainty=out.uncertainty[0],
                      out_of_gamut=out.out_of_gamut[0], mat_version="7.3" if name.endswith(".mat") else None)
    call["generator"] = torch.Generator().manual_seed(0)
    streamed = _streamed(tiny_pipeline, rgb, tmp_path / "streamed" / name, rows_per_band=3, **call)
    cube, wavelengths = load_cube(streamed)
    np.testing.assert_array_equal(cube, out.spectra[0])
    np.testing.assert_array_equal(cube, load_cube(saved)[0])
    np.testing.assert_array_equal(wavelengths, WL)
    np.testing.assert_array_equal(load_out_of_gamut(streamed), out.out_of_gamut[0])
    assert out.out_of_gamut[0, :3, :4].all()  # the green corner: the mask holds something to compare
    if name.endswith(".hdr"):
        np.testing.assert_array_equal(load_cube(tmp_path / "streamed" / "scene_uncertainty.hdr")[0], out.uncertainty[0])
        assert sorted(p.name for p in streamed.parent.iterdir()) == sorted(p.name for p in saved.parent.iterdir())
    else:
        import h5py

        with h5py.File(streamed, "r") as f:
            uncertainty = f["uncertainty"][()]
        np.testing.assert_array_equal(uncertainty.T if name.endswith(".mat") else uncertainty, out.uncertainty[0])
        assert out.uncertainty[0].max() > 0
    if name.endswith(".mat"):
        assert mat_file_version(streamed) == "7.3"
    if name.endswith(".h5"):
        assert load_cube_attrs(streamed)["source"] == "x.png"


def test_the_zero_uncertainty_of_one_member_takes_no_space_and_reads_back_as_zeros(tiny_pipeline, rgb, tmp_path):
    import h5py

    path = _streamed(tiny_pipeline, rgb, tmp_path / "one.h5", rows_per_band=5, ensemble_size=1)
    with h5py.File(path, "r") as f:
        assert f["uncertainty"].id.get_storage_size() == 0 < f["cube"].id.get_storage_size()
        assert f["uncertainty"].shape == (37, 20, 31) and not f["uncertainty"][()].any()


@pytest.mark.parametrize("output_format,name", [("h5", "scene.h5"), ("mat", "scene.mat"), ("envi", "scene.hdr"),
                                                ("npz", "scene.npz")])
def test_the_command_streams_the_baseline_into_each_format_as_predict_would_save_it(rgb, tmp_path, output_format,
                                                                                     name):
    from uldm.baseline import RootPolynomialRegression
    from uldm.images import load_linear_rgb, save_png16

    photo = save_png16(tmp_path / "scene.png", rgb)
    assert main(["reconstruct", str(photo), "-o", str(tmp_path / "out"), "--checkpoint", str(BASELINE),
                 "--input-space", "linear", "--output-format", output_format]) == 0
    expected = RootPolynomialRegression.load(BASELINE).predict(load_linear_rgb(photo, "linear"))
    np.testing.assert_array_equal(load_cube(tmp_path / "out" / name)[0], expected.spectra)
    np.testing.assert_array_equal(load_out_of_gamut(tmp_path / "out" / name), expected.out_of_gamut)
    assert not [p for p in (tmp_path / "out").iterdir() if is_temporary_file(p)]


def test_the_command_streams_the_uldm_with_its_previews(tiny_pipeline, rgb, tmp_path, monkeypatch):
    import uldm.cli
    from uldm.checkpoints import PipelineReconstructor
    from uldm.images import load_linear_rgb, save_png16
    from uldm.visualize import cube_to_srgb

    reconstructor = PipelineReconstructor(tiny_pipeline, ensemble=2)
    monkeypatch.setattr(uldm.cli, "model_from_args", lambda args: reconstructor)
    photo = save_png16(tmp_path / "scene.png", rgb)
    assert main(["reconstruct", str(photo), "-o", str(tmp_path / "out"), "--input-space", "linear", "--preview"]) == 0
    cube = load_cube(tmp_path / "out" / "scene.h5")[0]
    np.testing.assert_array_equal(cube, reconstructor.predict(load_linear_rgb(photo, "linear")).spectra)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "scene_preview.png")), cube_to_srgb(cube, WL))
    assert Image.open(tmp_path / "out" / "scene_spectra.png").size[0] > 0


def test_an_error_or_missing_rows_leave_no_file(tmp_path):
    rows = np.full((4, 5, 31), 0.5, np.float32)
    with pytest.raises(RuntimeError, match="the model failed"):
        with open_cube_writer(tmp_path / "a.h5", 8, 5, WL) as writer:
            writer.write(rows)
            raise RuntimeError("the model failed")
    with pytest.raises(CubeFileError, match="4 of the cube's 8 rows were written"):
        with open_cube_writer(tmp_path / "b.hdr", 8, 5, WL) as writer:
            writer.write(rows, rows)
    with pytest.raises(CubeFileError, match="every band of rows must hold the same arrays"):
        with open_cube_writer(tmp_path / "c.mat", 8, 5, WL, mat_version="7.3") as writer:
            writer.write(rows, rows)
            writer.write(rows)
    with pytest.raises(CubeFileError, match="NaN"):
        with open_cube_writer(tmp_path / "d.h5", 4, 5, WL) as writer:
            writer.write(np.full_like(rows, np.nan))
    assert list(tmp_path.iterdir()) == []


def test_in_memory_formats_are_built_below_the_limit_and_refused_above_it_before_any_work(tmp_path):
    rows = np.random.default_rng(0).random((6, 5, 31)).astype(np.float32)
    with open_cube_writer(tmp_path / "small.npz", 6, 5, WL, max_in_memory_bytes=rows.nbytes) as writer:
        writer.write(rows[:4], out_of_gamut=np.ones((4, 5), bool))
        writer.write(rows[4:], out_of_gamut=np.zeros((2, 5), bool))
    np.testing.assert_array_equal(load_cube(tmp_path / "small.npz")[0], rows)
    assert load_out_of_gamut(tmp_path / "small.npz").sum() == 20
    with open_cube_writer(tmp_path / "small.mat", 6, 5, WL, max_in_memory_bytes=rows.nbytes) as writer:
        writer.write(rows)
    assert mat_file_version(tmp_path / "small.mat") == "5"
    for name, version in (("large.npz", None), ("large.mat", "5")):
        with pytest.raises(CubeFileError, match=rf"{name}: .* too large .*Write HDF5 \(--output-format h5\)"):
            open_cube_writer(tmp_path / name, 6, 5, WL, mat_version=version,
                             max_in_memory_bytes=rows.nbytes - 1).__enter__()
    with open_cube_writer(tmp_path / "large.mat", 6, 5, WL, max_in_memory_bytes=rows.nbytes - 1) as writer:
        writer.write(rows)  # no version asked: v7.3, which streams
    assert mat_file_version(tmp_path / "large.mat") == "7.3"
    np.testing.assert_array_equal(load_cube(tmp_path / "large.mat")[0], rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.mat", "small.mat", "small.npz"]


def _hangs_while_streaming(argv, ready: Path) -> None:
    """The command in a child process, which hangs after its writer was handed the first rows."""
    real_write = CubeWriter.write

    def write(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        ready.touch()
        time.sleep(600)

    CubeWriter.write = write
    main(argv)


def test_a_kill_while_streaming_an_envi_cube_leaves_only_temporary_files_the_next_run_removes(rgb, tmp_path):
    from uldm.images import save_png16

    photo, out = save_png16(tmp_path / "scene.png", rgb), tmp_path / "out"
    argv = ["reconstruct", str(photo), "-o", str(out), "--checkpoint", str(BASELINE), "--output-format", "envi"]
    ready = tmp_path / "streaming"
    with child_process(_hangs_while_streaming, argv, ready) as child:
        streamed = wait_for_file(ready, child)
        if streamed:
            time.sleep(0.2)  # the writer's thread writes the band meanwhile
    assert streamed, "the run never streamed a band of rows"
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") or p.name.endswith((".img", ".hdr")))
    assert left and all(is_temporary_file(out / name) for name in left)  # no header, no data file in place
    assert any(name.endswith(".tmp.img") for name in left)

    assert main(argv) == 0
    assert not [p for p in out.iterdir() if is_temporary_file(p)]
    assert sorted(p.name for p in out.glob("[!.]*")) == ["manifest.json", "scene.hdr", "scene.img",
                                                       "scene_out_of_gamut.hdr", "scene_out_of_gamut.img"]
    assert load_cube(out / "scene.hdr")[0].shape == (37, 20, 31)


def test_streamed_bands_leave_a_thread_to_the_writer_and_equal_the_in_memory_rows(tiny_pipeline, rgb):
    import torch

    threads, decode = [], tiny_pipeline.speuae.decode_unobservable
    tiny_pipeline.speuae.decode_unobservable = lambda *a: threads.append(torch.get_num_threads()) or decode(*a)
    call = {"input_space": "linear", "show_progress_bar": False}
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the diffusion's rounding depends on the threads: both runs on 2
    try:
        whole = tiny_pipeline(rgb, generator=torch.Generator().manual_seed(0), **call)
        kept = {}
        tiny_pipeline.compose_spectra = functools.partial(type(tiny_pipeline).compose_spectra, tiny_pipeline,
                                                          tile_pixels=2 * rgb.shape[1])
        out = tiny_pipeline(rgb, generator=torch.Generator().manual_seed(0), **call,
                            band_sink=lambda rows, spectra, *_: kept.setdefault(rows.start, spectra.clone()))
        assert torch.get_num_threads() == 2  # restored after the bands
    finally:
        torch.set_num_threads(saved)
    assert threads == [2] + [1] * 19  # in memory on both threads; streamed, one band of 2 rows at a time on one
    assert list(kept) == list(range(0, 37, 2)) and out.spectra.shape[1] == 0
    np.testing.assert_array_equal(np.concatenate([kept[top][0].numpy() for top in kept]), whole.spectra[0])
