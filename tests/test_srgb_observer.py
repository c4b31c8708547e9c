"""A model for sRGB photographs: the sRGB-observer camera preset, the warning when the input space and a model's
camera disagree, the camera in every output file, `uldm info`, the default checkpoint per input space, and the
training and shipping scripts' --camera."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from uldm import DEFAULT_GRID, CameraResponse
from uldm.camera import SRGB_OBSERVER
from uldm.pipelines.common import CameraMismatchWarning

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz"
SAMPLE = REPO / "samples" / "colorchecker.png"
NIKON = CameraResponse.from_preset("nikon5100")
SRGB = CameraResponse.from_preset("srgb")
WL = DEFAULT_GRID.as_array()

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------ camera
@pytest.mark.parametrize("name", ["srgb", "srgb-observer", "SRGB", SRGB_OBSERVER])
def test_the_srgb_observer_is_a_normalised_full_rank_preset(name):
    camera = CameraResponse.from_preset(name)
    assert camera.name == SRGB_OBSERVER and camera.matrix.shape == (3, 31)
    np.testing.assert_allclose(camera.render(np.ones(31)), np.ones(3), atol=1e-12)  # a flat spectrum is white
    assert np.linalg.matrix_rank(camera.matrix) == 3
    assert camera.matrix.min() < 0  # sRGB's primaries are not spectral colours: every row has a negative lobe


def test_the_srgb_observer_renders_as_colour_sciences_colorimetry_does():
    """Independently: colour-science integrates each spectrum against the CIE 1931 functions under D65 (both on the
    10 nm grid) and converts XYZ to linear sRGB; normalised by the flat spectrum's, as the preset is."""
    import colour

    shape = colour.SpectralShape(400, 700, 10)
    cmfs = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"].copy().align(shape)
    d65 = colour.SDS_ILLUMINANTS["D65"].copy().align(shape)

    def linear_srgb(spectrum):
        sd = colour.SpectralDistribution(dict(zip(WL, spectrum)))
        xyz = colour.sd_to_XYZ(sd, cmfs, d65, method="Integration") / 100
        return colour.XYZ_to_sRGB(xyz, apply_cctf_encoding=False)

    spectra = np.random.default_rng(0).random((6, 31))
    spectra[0] = np.where(WL < 500, 1.0, 0.0)  # a blue-ish step and a single band: the lobes show
    spectra[1] = np.eye(31)[20]
    expected = np.stack([linear_srgb(s) for s in spectra]) / linear_srgb(np.ones(31))
    np.testing.assert_allclose(SRGB.render(spectra), expected, atol=1e-12)


def test_reflectances_seen_by_the_srgb_observer_project_in_gamut_and_exact():
    """The physical projection handles a response with negative entries: the RGB of reflectances is in gamut."""
    from uldm.feasibility import project_feasible

    truth = torch.rand(64, 31, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rgb = SRGB.render(truth)
    estimate = truth + 0.3 * torch.randn(64, 31, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spectra, out_of_gamut = project_feasible(estimate, rgb, SRGB)
    assert not out_of_gamut.any()
    assert (spectra >= 0).all() and (spectra <= 1 + 1e-9).all()
    assert (SRGB.render(spectra) - rgb).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------ warning
def tiny_family(family: str, camera: CameraResponse, tiny_sd_dir: Path):
    """An untrained pipeline of `family` for `camera`."""
    if family == "mstpp":
        from uldm import MSTPlusPlus, MSTPlusPlusPipeline

        return MSTPlusPlusPipeline.for_camera(MSTPlusPlus(channels=31, stages=1).eval(), camera)
    if family == "r2hdiff":
        from uldm import R2HDiffNet, R2HDiffPipeline
        from uldm.models.r2hdiff import make_r2hdiff_scheduler

        net = R2HDiffNet(block_channels=[8, 16], rgb_feature_channels=[4, 8], layers_per_level=[1, 1],
                         attention_heads=[1, 2], time_embed_dim=16).eval()
        return R2HDiffPipeline.for_camera(net, make_r2hdiff_scheduler(), camera)
    from uldm.models import SpeUAE
    from uldm.models.sd_adapter import load_stable_diffusion
    from uldm.stages.train_uldm import build_pipeline

    torch.manual_seed(0)
    parts = load_stable_diffusion(str(tiny_sd_dir))
    speuae = SpeUAE.for_camera(camera, encoder_channels=16, decoder_channels=16, num_layers=2)
    return build_pipeline(parts.unet.eval(), parts.vae, parts.noise_scheduler, speuae, parts.empty_prompt,
                          default_denoising_steps=1)


def mismatch_warnings(pipe, input_space: str, calls: int = 1) -> list[str]:
    image = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(calls):
            pipe(image, input_space=input_space, num_inference_steps=1, show_progress_bar=False)
    return [str(w.message) for w in caught if issubclass(w.category, CameraMismatchWarning)]


@pytest.mark.parametrize("family", ["uldm", "r2hdiff", "mstpp"])
def test_srgb_input_to_a_sensor_model_warns_once_per_pipeline_naming_both(family, tiny_sd_dir):
    nikon = tiny_family(family, NIKON, tiny_sd_dir)
    messages = mismatch_warnings(nikon, "srgb", calls=2)
    assert len(messages) == 1  # once per pipeline object, not at every call
    assert "input_space='srgb'" in messages[0] and "'Nikon 5100 (NPL)'" in messages[0]
    assert "sRGB observer" in messages[0] and "input_space='linear'" in messages[0]  # what to do instead
    assert mismatch_warnings(tiny_family(family, NIKON, tiny_sd_dir), "linear") == []  # camera RGB: as declared
    assert mismatch_warnings(tiny_family(family, SRGB, tiny_sd_dir), "srgb") == []  # a model for photographs


def test_the_cli_warns_for_srgb_input_to_a_sensor_model_and_not_for_linear(tmp_path):
    from uldm.cli import main

    image = ["reconstruct", str(SAMPLE), "--checkpoint", str(BASELINE)]
    with pytest.warns(CameraMismatchWarning, match=r"Nikon 5100 \(NPL\)"):
        assert main([*image, "-o", str(tmp_path / "srgb")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", CameraMismatchWarning)
        assert main([*image, "-o", str(tmp_path / "linear"), "--input-space", "linear"]) == 0


@pytest.mark.slow
def test_the_cli_prints_the_warning_once_as_a_line_for_the_user(tmp_path):
    result = subprocess.run([sys.executable, "-m", "uldm.cli", "reconstruct", str(SAMPLE), "-o", str(tmp_path / "out"),
                             "--checkpoint", str(BASELINE)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "CameraMismatchWarning" in line]
    assert len(lines) == 1 and lines[0].startswith("uldm reconstruct: warning (CameraMismatchWarning): ")


# ---------------------------------------------------------------------------------------------- outputs
def test_every_output_format_names_the_camera(tmp_path):
    import h5py
    import mat73
    import scipy.io
    from spectral.io import envi

    from uldm.io import load_cube_attrs, save_cube

    cube = np.random.default_rng(0).random((4, 5, 31)).astype(np.float32)
    paths = {suffix: save_cube(tmp_path / f"cube{suffix}", cube, WL, camera=SRGB, **options)
             for suffix, options in ((".h5", {}), (".npz", {}), (".hdr", {}), ("_v5.mat", {"mat_version": "5"}),
                                     ("_v73.mat", {"mat_version": "7.3"}))}
    attrs = load_cube_attrs(paths[".h5"])
    assert attrs["camera_name"] == SRGB_OBSERVER and np.array_equal(attrs["camera_response"], SRGB.matrix)
    with np.load(paths[".npz"], allow_pickle=False) as data:
        assert str(data["camera_name"]) == SRGB_OBSERVER
        assert np.array_equal(data["camera_response"], SRGB.matrix)
        assert np.array_equal(data["camera_wavelengths"], WL)
    assert f"camera_name: {SRGB_OBSERVER}" in envi.open(str(paths[".hdr"])).metadata["description"]
    v5 = scipy.io.loadmat(paths["_v5.mat"])
    assert str(v5["camera_name"][0]) == SRGB_OBSERVER and np.array_equal(v5["camera_response"], SRGB.matrix)
    np.testing.assert_array_equal(v5["camera_wavelengths"], WL.reshape(1, -1))
    v73 = mat73.loadmat(str(paths["_v73.mat"]))
    assert v73["camera_name"] == SRGB_OBSERVER and np.array_equal(v73["camera_response"], SRGB.matrix)
    with h5py.File(paths["_v73.mat"], "r") as f:  # as MATLAB sees it: 1 x N char, 3 x B double
        assert f["camera_name"].attrs["MATLAB_class"] == b"char" and f["camera_response"].shape == (31, 3)


# --------------------------------------------------------------------------------------- default + info
@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A checkpoints/ folder of our own, holding the Nikon baseline as `uldm-cave` and nothing else."""
    from uldm import checkpoints

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "uldm-cave").mkdir()
    monkeypatch.setattr(checkpoints, "CHECKPOINTS_DIR", folder)
    monkeypatch.delenv("ULDM_CHECKPOINT", raising=False)
    return folder


def test_srgb_input_defaults_to_the_srgb_model_only_once_one_is_shipped(shipped):
    from uldm.checkpoints import default_checkpoint

    assert default_checkpoint("srgb") == shipped / "uldm-cave" == default_checkpoint("linear")
    (shipped / "uldm-srgb").mkdir()
    assert default_checkpoint("srgb") == shipped / "uldm-srgb"
    assert default_checkpoint("linear") == shipped / "uldm-cave"  # camera RGB and the CAVE benchmark: the Nikon's
    with pytest.raises(ValueError, match="input_space"):
        default_checkpoint("adobe")


def test_info_names_the_camera_of_the_default_models_and_of_a_checkpoint(capsys, monkeypatch):
    from uldm.cli import main

    monkeypatch.delenv("ULDM_CHECKPOINT", raising=False)

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert SRGB_OBSERVER in out  # among the presets
    shipped = REPO / "checkpoints"
    assert f"default model for --input-space srgb: {shipped / 'uldm-srgb'} (camera {SRGB_OBSERVER})" in out
    assert f"default model for --input-space linear: {shipped / 'uldm-cave'} (camera Nikon 5100 (NPL))" in out
    import uldm.checkpoints

    monkeypatch.setitem(uldm.checkpoints.DEFAULT_CHECKPOINTS, "srgb", ("uldm-cave",))  # as before uldm-srgb shipped
    assert main(["info"]) == 0
    assert "camera Nikon 5100 (NPL); sRGB photos (--input-space srgb) get a CameraMismatchWarning" in capsys.readouterr().out
    assert main(["info", "--checkpoint", str(BASELINE)]) == 0
    assert f"model: {BASELINE} (camera Nikon 5100 (NPL)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- training, shipping
def test_train_script_passes_the_camera_to_every_cave_stage_and_writes_its_own_folder(tmp_path):
    """The script run with `python` and scripts/setup.sh stubbed out: the commands it would run, in order."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "train_uldm_cave.sh"
    script.write_text((REPO / "scripts" / "train_uldm_cave.sh").read_text())
    (tmp_path / "scripts" / "setup.sh").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "commands.txt"}\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(script), "--camera", "srgb"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    commands = (tmp_path / "commands.txt").read_text().splitlines()
    cave = [c for c in commands if c.startswith(("stages/train_speuae.py", "stages/pretrain_spaae.py",
                                                 "stages/train_uldm.py"))]
    assert len(cave) == 3 and all("--set camera=srgb" in c and "runs/cave-std-srgb/" in c for c in cave)
    shared = [c for c in commands if c not in cave]  # the SD scaffold and the RGB pre-training see no spectra
    assert len(shared) == 2 and not any("camera" in c or "cave-std" in c for c in shared)
    assert "== pipeline: runs/cave-std-srgb/c-seed0/pipeline" in result.stdout
    refused = subprocess.run(["bash", str(script), "--camera", "my camera"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--camera" in refused.stderr


def test_a_model_shipped_for_the_srgb_observer_carries_it_and_becomes_the_default_for_photos(tiny_sd_dir, shipped,
                                                                                             tmp_path):
    from uldm.cli import main
    from uldm.hub import read_model_card

    pipeline = tmp_path / "runs" / "cave-std-srgb" / "c-seed0" / "pipeline"
    tiny_family("uldm", SRGB, tiny_sd_dir).save_pretrained(pipeline)
    row = {"psnr": 30.0, "sam": 10.0, "mrae": 0.3, "rmse": 0.03, "max_rgb_error": 1e-7}
    scores = {"splits": {"std": {"val_scenes": ["balloons_ms"], "rows": {
        "root-polynomial baseline (fitted on this split's train)": row, "c seed 0": {**row, "pipeline": str(pipeline)}}}},
        "verdicts": {}}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    spec = importlib.util.spec_from_file_location("ship", REPO / "scripts" / "ship_uldm_cave.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    assert ship.main([str(pipeline), str(shipped / "uldm-srgb"), "--runs", str(tmp_path / "runs"),
                      "--ablation", str(tmp_path / "scores.json")]) == 0
    card = read_model_card(shipped / "uldm-srgb")
    assert f"camera: {SRGB_OBSERVER}" in card and "for sRGB photographs" in card
    assert "train_uldm_cave.sh --arm c --camera srgb --ship" in card

    from PIL import Image

    from uldm.io import load_cube_attrs

    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    with warnings.catch_warnings():  # the default model for sRGB input is now the sRGB observer's: no warning
        warnings.simplefilter("error", CameraMismatchWarning)
        assert main(["reconstruct", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--steps", "1"]) == 0
    assert load_cube_attrs(tmp_path / "out" / "photo.h5")["camera_name"] == SRGB_OBSERVER


def test_scoring_under_the_srgb_observer_gives_models_the_clipped_rgb_a_photo_records(tmp_path):
    """A narrow-band cyan renders below 0 in linear sRGB (out of its gamut); evaluation hands models the RGB clipped
    to [0, 1], as a photograph records it (pipelines refuse float RGB outside it), and rgb_error shows the clip."""
    from uldm.evaluation import evaluate
    from uldm.io import save_cube

    cube = np.full((4, 4, 31), 0.02)
    cube[:2, :, 9] = 1.0  # 490 nm alone: linear sRGB red < 0
    assert SRGB.render(cube).min() < 0
    save_cube(tmp_path / "cyan.h5", cube, WL, camera=SRGB)
    seen = []

    def reconstruct(rgb):
        seen.append(rgb)
        return np.full(rgb.shape[:2] + (31,), 0.02)

    result = evaluate(reconstruct, [tmp_path / "cyan.h5"], SRGB, format="h5", progress=False)
    assert seen[0].min() >= 0 and seen[0].max() <= 1
    np.testing.assert_allclose(seen[0], np.clip(SRGB.render(cube), 0, 1), atol=1e-6)  # the cube is stored in float32
    assert result.per_scene["cyan"]["rgb_error"] > 0
