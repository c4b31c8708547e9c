"""MST++ (the regression peer): the network against the paper's size and cost, its pipeline, its trainer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uldm import CameraResponse, MSTPlusPlus, MSTPlusPlusPipeline
from uldm.training import ConfigError, checkpoints_in, load_config

PAPER_PARAMETERS = 1.62e6
PAPER_GMACS_256 = 23.05  # "23.05 GFLOPs" at 256 x 256 in the paper: multiply-accumulates, as thop counts them


def tiny_net(seed: int = 0) -> MSTPlusPlus:
    torch.manual_seed(seed)
    return MSTPlusPlus(channels=31, stages=1).eval()


# ------------------------------------------------------------------------------------------------ network
def test_the_paper_sized_network_has_the_papers_parameter_count():
    parameters = sum(p.numel() for p in MSTPlusPlus().parameters())
    assert abs(parameters - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.02


def test_the_paper_sized_network_has_the_papers_cost_at_256():
    """thop (the paper's counter) within 2% of 23.05 G; torch's FlopCounterMode, which counts only matmuls and
    convolutions, pinned too (it is what the benchmarks report, 2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    net, image = MSTPlusPlus().eval(), torch.rand(1, 3, 256, 256)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(image)
    assert counter.get_total_flops() / 2e9 == pytest.approx(22.19, abs=0.01)
    thop = pytest.importorskip("thop")
    macs, _ = thop.profile(net, inputs=(image,), verbose=False)
    assert abs(macs / 1e9 - PAPER_GMACS_256) / PAPER_GMACS_256 < 0.02


@pytest.mark.parametrize("size", [(17, 23), (8, 8), (33, 40)])
def test_any_size_in_any_size_out(size):
    with torch.no_grad():
        out = tiny_net()(torch.rand(2, 3, *size))
    assert out.shape == (2, 31, *size) and torch.isfinite(out).all()


def test_attention_is_over_channels_so_it_is_linear_in_the_pixel_count():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(side):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            tiny_net()(torch.rand(1, 3, side, side))
        return counter.get_total_flops()

    assert flops(64) == pytest.approx(4 * flops(32), rel=1e-6)


def test_blocks_must_match_the_levels():
    with pytest.raises(ValueError, match="one count per level"):
        MSTPlusPlus(levels=2, blocks=(1, 1))


# ----------------------------------------------------------------------------------------------- pipeline
@pytest.fixture
def pipeline() -> MSTPlusPlusPipeline:
    return MSTPlusPlusPipeline.for_camera(tiny_net(), CameraResponse.from_preset("nikon5100"))


def test_the_pipeline_has_the_uldm_outputs_and_projects_on_request(pipeline):
    rgb = np.random.default_rng(0).random((12, 20, 3)).astype(np.float32)
    free = pipeline(rgb, input_space="linear", physical=False, show_progress_bar=False)
    assert free.spectra.shape == (1, 12, 20, 31) and free.code is None and not free.uncertainty.any()
    projected = pipeline(rgb, input_space="linear", rgb_consistent=True, physical=False, show_progress_bar=False)
    assert projected.rgb_error.max() < 1e-5 < free.rgb_error.max()
    with pytest.raises(ValueError, match="regression network"):
        pipeline(rgb, input_space="linear", ensemble_size=3)


def test_spectra_are_physical_by_default_and_raw_on_request(pipeline, check_physical_by_default):
    rgb = np.random.default_rng(1).uniform(0.2, 0.6, (12, 20, 3)).astype(np.float32)
    check_physical_by_default(lambda image, **kwargs: pipeline(image, input_space="linear", output_type="pt",
                                                               show_progress_bar=False, **kwargs), rgb, pipeline.camera)


def test_save_load_and_every_uldm_loader(pipeline, tmp_path):
    from uldm.checkpoints import load_reconstructor

    pipeline.save_pretrained(tmp_path / "mstpp")
    rgb = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    loaded = MSTPlusPlusPipeline.from_pretrained(tmp_path / "mstpp")
    np.testing.assert_array_equal(loaded(rgb, input_space="linear", show_progress_bar=False).spectra,
                                  pipeline(rgb, input_space="linear", show_progress_bar=False).spectra)
    model = load_reconstructor(tmp_path / "mstpp")
    assert model.camera.name == "Nikon 5100 (NPL)" and model(rgb).shape == (8, 8, 31)


# ------------------------------------------------------------------------------------------------ trainer
def write_config(tmp_path: Path, data_root: Path, **overrides) -> Path:
    values = {"output_dir": str(tmp_path / "run"), "data_root": str(data_root), "train_scenes": ["balloons_ms", "cd_ms"],
              "val_scenes": ["watercolors_ms"], "patch_size": 8, "patches_per_scene": 4, "train_batch_size": 2,
              "max_train_steps": 6, "checkpointing_steps": 3, "checkpoints_total_limit": 5, "validation_steps": 6,
              "stages": 1, "learning_rate": 3e-3, "use_ema": True, "ema_decay": 0.9, "report_to": None, **overrides}
    path = tmp_path / "mstpp.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_training_lowers_the_loss_saves_a_pipeline_and_resumes_exactly(tmp_path, tiny_cave_root):
    from uldm.stages.train_mstpp import MSTPPConfig, train
    from uldm.training import read_metrics

    config = load_config(MSTPPConfig, write_config(tmp_path, tiny_cave_root, max_train_steps=30, checkpointing_steps=15,
                                                   validation_steps=30))
    uninterrupted = {k: v.clone() for k, v in train(config).net.state_dict().items()}
    run = Path(config.output_dir)
    losses = [row["train/loss"] for row in read_metrics(run)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert (run / "pipeline" / "model_index.json").exists() and "val/psnr" in read_metrics(run)[-1]
    assert [p.name for p in checkpoints_in(run)] == ["checkpoint-15", "checkpoint-30"]
    shutil.rmtree(run / "checkpoint-30")
    resumed = train(config, resume_from="latest").net.state_dict()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_bad_configs_fail_before_any_data_is_read(tmp_path, tiny_cave_root):
    from uldm.stages.train_mstpp import MSTPPConfig

    with pytest.raises(ConfigError, match="loss must be one of"):
        load_config(MSTPPConfig, write_config(tmp_path, tiny_cave_root, loss="mse"))
    with pytest.raises(ConfigError, match="patch_size must be a multiple of 8"):
        load_config(MSTPPConfig, write_config(tmp_path, tiny_cave_root, patch_size=12))
    with pytest.raises(ConfigError, match="one count per level"):
        load_config(MSTPPConfig, write_config(tmp_path, tiny_cave_root, blocks=[1, 1]))


def test_the_peers_benchmark_scores_every_model_beside_the_baseline(pipeline, tmp_path, tiny_cave_root, load_benchmark):
    import json

    run = tmp_path / "run"
    pipeline.save_pretrained(run / "pipeline")
    (run / "logs").mkdir()
    (run / "logs" / "run_summary.json").write_text(json.dumps([{"from_step": 0, "to_step": 10, "samples": 80,
                                                                "seconds": 60.0, "device": "CPU, 2 threads"}]))
    peers = load_benchmark("peers")
    assert peers.main(["--std", f"mstpp={run / 'pipeline'}", "--data", str(tiny_cave_root), "--cost-size", "32",
                       "--json", str(tmp_path / "peers.json")]) == 0
    result = json.loads((tmp_path / "peers.json").read_text())
    rows = result["splits"]["std"]["rows"]
    assert result["splits"]["std"]["val_scenes"] == ["balloons_ms"] and set(rows) == {"mstpp", "root-polynomial baseline"}
    assert rows["mstpp"]["steps"] == 10 and rows["mstpp"]["seconds"] == 60.0 and rows["mstpp"]["samples"] == 80
    assert result["costs"]["mstpp"]["parameters"] == sum(p.numel() for p in pipeline.net.parameters())
    assert result["costs"]["root-polynomial baseline"]["parameters"] == 7 * 31
