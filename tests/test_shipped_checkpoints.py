"""The checkpoints shipped in checkpoints/ load and reconstruct the bundled sample through `uldm evaluate`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uldm import CameraResponse, ObservableSplit
from uldm.cli import main
from uldm.io import load_cube
from uldm.metrics import psnr

REPO = Path(__file__).resolve().parent.parent
SAMPLE_TRUTH = REPO / "samples" / "colorchecker_truth.h5"


def observable_part_psnr(camera: CameraResponse) -> float:
    """PSNR of Φ⁺c alone (nothing guessed for the unobservable part): what any trained model must beat."""
    truth, _ = load_cube(SAMPLE_TRUTH)
    split = ObservableSplit(camera)
    rgb = split.render(torch.from_numpy(truth).double())
    return psnr(split.observable(rgb).numpy(), truth)


@pytest.mark.parametrize("checkpoint", ["uldm-cave", "r2hdiff-cave", "mstpp-cave", "baseline-rootpoly-nikon5100.npz"])
def test_the_shipped_checkpoints_reconstruct_the_bundled_sample(checkpoint, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["evaluate", "--data", str(SAMPLE_TRUTH), "--format", "h5", "--checkpoint",
                 str(REPO / "checkpoints" / checkpoint), "--json", str(report), "--save-dir", str(tmp_path)]) == 0
    data = json.loads(report.read_text())
    assert list(data["per_scene"]) == ["colorchecker_truth"] and "colorchecker_truth" in capsys.readouterr().out
    cube, wavelengths = load_cube(tmp_path / "colorchecker_truth.h5")
    assert cube.shape == (190, 282, 31) and wavelengths[0] == 400 and wavelengths[-1] == 700
    assert data["mean"]["psnr"] > observable_part_psnr(CameraResponse.from_preset("nikon5100"))
    if checkpoint not in ("r2hdiff-cave", "mstpp-cave"):  # the peers are RGB-exact only with rgb_consistent=True
        assert data["mean"]["rgb_error"] < 1e-6


def test_the_shipped_uldm_in_bf16_stays_exact_in_rgb_and_near_its_fp32_quality():
    """bf16 end to end except the composition (float32); the SpeUAE's solves run in float32 (they raised before)."""
    from uldm.checkpoints import load_pipeline

    truth, _ = load_cube(SAMPLE_TRUTH)
    full = load_pipeline(REPO / "checkpoints" / "uldm-cave")
    rgb = full.camera.render(truth).astype(np.float32)

    def run(pipeline):
        return pipeline(rgb, input_space="linear", generator=torch.Generator().manual_seed(0), show_progress_bar=False)

    fp32, bf16 = run(full), run(load_pipeline(REPO / "checkpoints" / "uldm-cave", dtype=torch.bfloat16))
    assert np.isfinite(bf16.spectra).all() and bf16.rgb_error.max() < 1e-5
    assert psnr(bf16.spectra[0], truth) > psnr(fp32.spectra[0], truth) - 0.5


def test_evaluating_one_scene_file_needs_its_format(tmp_path, capsys):
    assert main(["evaluate", "--data", str(SAMPLE_TRUTH), "--checkpoint",
                 str(REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz")]) == 2
    assert "colorchecker_truth.h5: a CAVE scene is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("checkpoint", ["uldm-cave", "r2hdiff-cave", "mstpp-cave"])
def test_the_shipped_pipelines_load_through_diffusers_generic_entry_point(checkpoint):
    """Their code files are uldm's one-line re-exports (so uldm's own loader trusts them), and diffusers' generic
    `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` builds the same pipeline class."""
    from diffusers import DiffusionPipeline

    from uldm.pipelines.remote_code import holds_only_uldm_reexports

    folder = REPO / "checkpoints" / checkpoint
    pipeline = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert holds_only_uldm_reexports(folder, type(pipeline))
    assert type(pipeline).__module__.startswith("uldm.pipelines.")
