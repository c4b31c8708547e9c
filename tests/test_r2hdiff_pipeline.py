"""R2HDiffPipeline and its trainer: outputs, determinism, RGB projection, save/load, hub, CLI, resume (tiny, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uldm import CameraResponse, R2HDiffPipeline
from uldm.models.r2hdiff import R2HDiffNet, make_r2hdiff_scheduler

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "block_channels": [8, 16],
    "rgb_feature_channels": [4, 8],
    "layers_per_level": [1, 1],
    "attention_heads": [1, 2],
    "time_embed_dim": 16,
}


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_network(seed: int = 0) -> R2HDiffNet:
    """A tiny R2HDiffNet with every parameter moved off its initial value: the zero-initialised residual scalars
    would otherwise leave most layers unused, and an untrained-but-busy network shows noise dependence clearly."""
    torch.manual_seed(seed)
    net = R2HDiffNet(**TINY)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return net.eval()


@pytest.fixture
def tiny_r2h_pipeline() -> R2HDiffPipeline:
    return R2HDiffPipeline.for_camera(tiny_network(), make_r2hdiff_scheduler(), CameraResponse.from_preset("nikon5100"))


@pytest.fixture
def rgb() -> np.ndarray:
    yy, xx = np.mgrid[0:24, 0:20] / 24.0
    return np.stack([0.2 + 0.5 * yy, 0.3 + 0.4 * xx, 0.6 - 0.3 * yy], axis=-1).astype(np.float32)


def run(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("input_space", "linear")
    return pipe(image, generator=torch.Generator().manual_seed(seed), show_progress_bar=False, **kwargs)


# ----------------------------------------------------------------------------------------------- outputs
def test_outputs_have_the_common_layout_and_no_code(tiny_r2h_pipeline, rgb):
    out = run(tiny_r2h_pipeline, rgb, ensemble_size=3)
    assert out.spectra.shape == (1, 24, 20, 31) and out.uncertainty.shape == (1, 24, 20, 31)
    assert out.code is None and out.wavelengths.shape == (31,) and out.wavelengths[0] == 400
    assert out.rgb_error.shape == (1,) and np.isfinite(out.spectra).all()
    assert out.uncertainty.min() >= 0 and out.uncertainty.max() > 0


def test_spectra_are_physical_by_default_and_raw_on_request(tiny_r2h_pipeline, rgb, check_physical_by_default):
    check_physical_by_default(lambda image, **kwargs: run(tiny_r2h_pipeline, image, output_type="pt", ensemble_size=2,
                                                          **kwargs), rgb, tiny_r2h_pipeline.camera)


def test_one_member_has_zero_uncertainty_and_pt_layout(tiny_r2h_pipeline, rgb):
    out = run(tiny_r2h_pipeline, rgb, ensemble_size=1, output_type="pt")
    assert out.spectra.shape == (1, 31, 24, 20)
    assert torch.count_nonzero(out.uncertainty) == 0


def test_other_schedulers_run_and_the_network_sees_unit_scale_inputs(tiny_r2h_pipeline, rgb):
    """The scheduler conventions of the ULDM pipeline hold here too: UniPC (whose step takes no generator), DDPM
    (which draws noise from the caller's generator) and Euler (whose samples the network must see scaled back)."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    config = tiny_r2h_pipeline.scheduler.config
    for cls in (UniPCMultistepScheduler, DDPMScheduler):
        tiny_r2h_pipeline.scheduler = cls.from_config(config)
        first, again = run(tiny_r2h_pipeline, rgb), run(tiny_r2h_pipeline, rgb)
        assert np.isfinite(first.spectra).all(), cls.__name__
        np.testing.assert_array_equal(first.spectra, again.spectra)  # the seed decides the noise
    tiny_r2h_pipeline.scheduler = EulerDiscreteScheduler.from_config(config)
    spreads = []
    hook = tiny_r2h_pipeline.net.register_forward_pre_hook(lambda module, args: spreads.append(float(args[0].std())))
    run(tiny_r2h_pipeline, rgb)
    hook.remove()
    assert len(spreads) == 5 and max(spreads) < 2.0, spreads


def test_five_trailing_ddim_steps_by_default(tiny_r2h_pipeline, rgb):
    assert tiny_r2h_pipeline.config.default_denoising_steps == 5
    run(tiny_r2h_pipeline, rgb)
    assert tiny_r2h_pipeline.scheduler.timesteps.tolist() == [999, 799, 599, 399, 199]
    assert tiny_r2h_pipeline.scheduler.config.prediction_type == "sample"


def test_fixed_generator_is_deterministic_and_seeds_differ(tiny_r2h_pipeline, rgb):
    a, b, c = (run(tiny_r2h_pipeline, rgb, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.spectra, b.spectra)
    assert not np.array_equal(a.spectra, c.spectra)


def test_batch_of_three_equals_three_single_calls(tiny_r2h_pipeline, rgb):
    images = [rgb, rgb[::-1].copy(), rgb * 0.5]
    generator = torch.Generator().manual_seed(3)
    batch = tiny_r2h_pipeline(images, generator=generator, batch_size=3, ensemble_size=2, input_space="linear",
                              show_progress_bar=False)
    generator = torch.Generator().manual_seed(3)
    singles = [tiny_r2h_pipeline(img, generator=generator, ensemble_size=2, input_space="linear",
                                 show_progress_bar=False) for img in images]
    for index, single in enumerate(singles):
        np.testing.assert_allclose(batch.spectra[index], single.spectra[0], atol=1e-5)
        np.testing.assert_allclose(batch.uncertainty[index], single.uncertainty[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ RGB projection
def test_rgb_consistent_projection_is_exact_and_keeps_the_unobservable_part(tiny_r2h_pipeline, rgb):
    free = run(tiny_r2h_pipeline, rgb, output_type="pt", physical=False)
    projected = run(tiny_r2h_pipeline, rgb, output_type="pt", rgb_consistent=True, physical=False)
    assert free.rgb_error[0] > 1e-3  # an untrained network does not match the colour by itself
    assert projected.rgb_error[0] < 1e-5
    camera = tiny_r2h_pipeline.camera
    rendered = camera.render(projected.spectra[0].double(), channel_axis=0)
    torch.testing.assert_close(rendered, torch.from_numpy(rgb).permute(2, 0, 1).double(), atol=1e-5, rtol=0)
    split = tiny_r2h_pipeline.split  # only the part the camera sees changes: Nᵀŝ is the network's
    torch.testing.assert_close(split.unobservable(projected.spectra, dim=1), split.unobservable(free.spectra, dim=1),
                               atol=1e-5, rtol=0)


def test_project_rgb_config_is_the_default_of_rgb_consistent(tiny_r2h_pipeline, rgb, tmp_path):
    tiny_r2h_pipeline.register_to_config(project_rgb=True)
    assert run(tiny_r2h_pipeline, rgb, physical=False).rgb_error[0] < 1e-5
    assert run(tiny_r2h_pipeline, rgb, rgb_consistent=False, physical=False).rgb_error[0] > 1e-3
    tiny_r2h_pipeline.save_pretrained(tmp_path / "pipe")
    assert R2HDiffPipeline.from_pretrained(tmp_path / "pipe").config.project_rgb is True


def test_processing_resolution_resizes_and_projection_uses_the_full_rgb(tiny_r2h_pipeline, rgb):
    out = run(tiny_r2h_pipeline, rgb, processing_resolution=12, rgb_consistent=True)
    assert out.spectra.shape == (1, 24, 20, 31) and out.rgb_error[0] < 1e-5
    small = run(tiny_r2h_pipeline, rgb, processing_resolution=12, match_input_resolution=False)
    assert small.spectra.shape[1:3] == (12, 10)


def test_mismatched_components_are_rejected_clearly():
    camera = CameraResponse.from_preset("nikon5100")
    with pytest.raises(ValueError, match="31 bands, the network 16"):
        R2HDiffPipeline.for_camera(R2HDiffNet(**{**TINY, "spectral_channels": 16}), make_r2hdiff_scheduler(), camera)
    with pytest.raises(ValueError, match="prediction_type"):
        R2HDiffPipeline.for_camera(R2HDiffNet(**TINY), make_r2hdiff_scheduler(prediction_type="v_prediction"), camera)


def test_bad_arguments_are_rejected_clearly(tiny_r2h_pipeline, rgb):
    with pytest.raises(ValueError, match="ensemble_size"):
        run(tiny_r2h_pipeline, rgb, ensemble_size=0)
    with pytest.raises(ValueError, match="same size"):
        run(tiny_r2h_pipeline, [rgb, rgb[:10]])


# ----------------------------------------------------------------------------------------- save and load
def test_save_load_round_trip_gives_identical_spectra(tiny_r2h_pipeline, rgb, tmp_path):
    from uldm.checkpoints import load_pipeline

    tiny_r2h_pipeline.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["net"][1] == "R2HDiffNet" and index["camera_name"] == "Nikon 5100 (NPL)"
    loaded = load_pipeline(tmp_path / "pipe")  # the class comes from model_index.json, as in the CLI
    assert isinstance(loaded, R2HDiffPipeline) and loaded.camera == tiny_r2h_pipeline.camera
    np.testing.assert_array_equal(run(loaded, rgb, ensemble_size=2).spectra,
                                  run(tiny_r2h_pipeline, rgb, ensemble_size=2).spectra)


def test_push_and_pull_over_http(tiny_r2h_pipeline, rgb, hub_server, tmp_path):
    from huggingface_hub import HfApi

    url = tiny_r2h_pipeline.push_to_hub("testorg/tiny-r2h", metrics={"psnr": 1.0})
    assert "testorg/tiny-r2h" in url
    files = {s.rfilename for s in HfApi().model_info("testorg/tiny-r2h").siblings}
    assert {"model_index.json", "README.md", "net/config.json", "scheduler/scheduler_config.json"} <= files
    pulled = R2HDiffPipeline.from_pretrained("testorg/tiny-r2h", cache_dir=str(tmp_path / "empty-cache"))
    np.testing.assert_array_equal(run(pulled, rgb).spectra, run(tiny_r2h_pipeline, rgb).spectra)


def test_cli_reconstruct_and_evaluate_with_an_r2hdiff_checkpoint(tiny_r2h_pipeline, rgb, tmp_path, tiny_cave_root):
    import h5py

    from uldm.cli import main
    from uldm.images import save_png16

    tiny_r2h_pipeline.save_pretrained(tmp_path / "pipe")
    save_png16(tmp_path / "in" / "a.png", rgb)
    assert main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "pipe"),
                 "--steps", "2", "--ensemble", "2", "--input-space", "linear"]) == 0
    with h5py.File(tmp_path / "out" / "a.h5") as f:
        assert f["cube"].shape == (24, 20, 31) and f["uncertainty"][()].max() > 0
    assert main(["evaluate", "--data", str(tiny_cave_root), "--split", "all", "--checkpoint", str(tmp_path / "pipe"),
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["per_scene"]) == 3 and np.isfinite(report["mean"]["psnr"])


# ------------------------------------------------------------------------------------------------ trainer
def write_config(tmp_path: Path, data_root: Path, **overrides) -> Path:
    config = {
        "output_dir": str(tmp_path / "run"), "data_root": str(data_root), "data_format": "cave",
        "train_scenes": ["balloons_ms", "cd_ms"], "val_scenes": ["watercolors_ms"],
        "patch_size": 16, "patches_per_scene": 4, "train_batch_size": 2, "max_train_steps": 4,
        "checkpointing_steps": 2, "validation_steps": 4, "validation_inference_steps": 2,
        "checkpoints_total_limit": 5, "report_to": None, "learning_rate": 1e-3, **TINY, **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_trainer_saves_a_loadable_pipeline_and_resume_continues_exactly(tmp_path, tiny_cave_root, rgb):
    from uldm.stages.train_r2hdiff import R2HDiffConfig, train
    from uldm.training import checkpoints_in, load_config

    # batch augmentation on: its random draws must be replayed exactly on resume too
    config = load_config(R2HDiffConfig, write_config(tmp_path, tiny_cave_root, mix_probability=0.5, tilt_std=0.3))
    uninterrupted = {k: v.clone() for k, v in train(config).net.state_dict().items()}
    output_dir = Path(config.output_dir)
    assert [p.name for p in checkpoints_in(output_dir)] == ["checkpoint-2", "checkpoint-4"]
    loaded = R2HDiffPipeline.from_pretrained(output_dir / "pipeline")
    assert loaded.config.default_denoising_steps == 5 and "R2H-Diff" in (output_dir / "pipeline" / "README.md").read_text()
    for name, tensor in loaded.net.state_dict().items():
        torch.testing.assert_close(tensor, uninterrupted[name], rtol=0, atol=0, msg=name)
    assert run(loaded, rgb).spectra.shape == (1, 24, 20, 31)

    shutil.rmtree(output_dir / "checkpoint-4")
    shutil.rmtree(output_dir / "pipeline")
    resumed = train(config, resume_from="latest").net.state_dict()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_trainer_starts_the_regression_skip_at_the_baseline_fit(tmp_path, tiny_cave_root):
    from uldm.baseline import RootPolynomialRegression
    from uldm.stages.train_r2hdiff import R2HDiffConfig, train
    from uldm.training import load_config

    config = load_config(R2HDiffConfig, write_config(tmp_path, tiny_cave_root, regression_skip=True, max_train_steps=1,
                                                     validation_steps=1, learning_rate=1e-5))
    net = train(config).net
    assert net.config.regression_skip
    # the patches are the whole 16 x 16 scenes (flipped), so the fit is the baseline's on the train scenes, in the
    # network's space 2s - 1; one step at lr 1e-5 barely moves it. Compared on predictions: tiny scenes leave the
    # least-squares weights themselves non-unique.
    from uldm.data import read_scene

    camera = config.camera_response()
    scenes = [tiny_cave_root / name for name in ("balloons_ms", "cd_ms", "watercolors_ms")]
    baseline = RootPolynomialRegression.fit_scenes(scenes[:2], camera, format="cave")
    for path in scenes:
        rgb = camera.render(read_scene(path, format="cave", grid=camera.grid).cube)
        with torch.no_grad():
            estimate = net.regression_estimate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
        expected = torch.from_numpy(2 * baseline(rgb) - 1).permute(2, 0, 1)[None]
        torch.testing.assert_close(estimate, expected, atol=2e-3, rtol=0, msg=path.name)


@pytest.mark.slow
def test_frozen_regression_stays_at_its_least_squares_fit(tmp_path, tiny_cave_root):
    from uldm.stages.train_r2hdiff import R2HDiffConfig, train
    from uldm.training import ConfigError, load_config

    weights = {}
    for frozen in (True, False):
        (tmp_path / str(frozen)).mkdir()
        config = load_config(R2HDiffConfig, write_config(tmp_path / str(frozen), tiny_cave_root, regression_skip=True,
                                                         freeze_regression=frozen, max_train_steps=3,
                                                         validation_steps=3, learning_rate=1e-2))
        weights[frozen] = train(config).net.regression.weight.detach()
    from uldm.pipelines.pipeline_r2hdiff import to_model_space
    from uldm.stages.train_r2hdiff import build_network
    from uldm.training import build_train_loader, sample_pixels

    start = config  # the same data, so the same pixels and the same least-squares fit

    net = build_network(start, start.camera_response())
    rgb, hsi = sample_pixels(build_train_loader(start, start.camera_response())[0], start.regression_init_pixels)
    net.init_regression(rgb, to_model_space(hsi))
    assert torch.equal(weights[True], net.regression.weight)  # three steps at lr 1e-2 left it untouched
    assert (weights[False] - net.regression.weight).abs().max() > 1e-3  # ... which do move a trained one
    with pytest.raises(ConfigError, match="needs regression_skip"):
        load_config(R2HDiffConfig, write_config(tmp_path, tiny_cave_root, freeze_regression=True))


def test_bad_network_shape_is_a_clear_config_error(tmp_path, tiny_cave_root, capsys):
    from uldm.stages.train_r2hdiff import main

    path = write_config(tmp_path, tiny_cave_root, attention_heads=[1, 3])
    assert main(["--config", str(path)]) == 2
    assert "divisible by heads" in capsys.readouterr().err


def test_shipped_config_is_valid():
    from uldm.stages.train_r2hdiff import R2HDiffConfig
    from uldm.training import load_config

    config = load_config(R2HDiffConfig, REPO / "stages" / "configs" / "r2hdiff_cave.yaml")
    assert config.default_denoising_steps == 5 and config.gradient_weight == 1.0


# ---------------------------------------------------------------------------------------------- benchmark
def test_compare_models_prints_one_table_and_measures_the_projection(tiny_r2h_pipeline, tmp_path, tiny_cave_root,
                                                                      load_benchmark, capsys):
    compare_models = load_benchmark("compare_models")
    tiny_r2h_pipeline.save_pretrained(tmp_path / "r2h" / "pipeline")
    baseline = REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz"
    assert compare_models.main([str(baseline), str(tmp_path / "r2h" / "pipeline"), "--data", str(tiny_cave_root),
                                "--split", "all", "--rgb-consistent", "--cost-size", "32",
                                "--json", str(tmp_path / "c.json")]) == 0
    table = capsys.readouterr().out
    assert "GFLOP/step" in table and "r2h/pipeline (+RGB proj.)" in table
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    free, projected = rows["r2h/pipeline (free)"], rows["r2h/pipeline (+RGB proj.)"]
    assert projected["max_rgb_error"] < 1e-5 < free["max_rgb_error"]
    assert free["parameters"] == sum(p.numel() for p in tiny_r2h_pipeline.net.parameters())
    assert rows["baseline-rootpoly-nikon5100.npz"]["parameters"] == 7 * 31
    from uldm.models.r2hdiff import count_flops  # the per-step difference is exactly one network forward

    assert free["gflops_per_step"] * 1e9 == pytest.approx(count_flops(tiny_r2h_pipeline.net, size=32))
    assert free["gflops_per_image"] == pytest.approx(5 * free["gflops_per_step"], rel=0.01)  # + rendering for rgb_error


def test_compare_models_costs_only_scores_no_scene(tiny_r2h_pipeline, tmp_path, load_benchmark, monkeypatch):
    compare_models = load_benchmark("compare_models")
    tiny_r2h_pipeline.save_pretrained(tmp_path / "r2h" / "pipeline")
    monkeypatch.setattr(compare_models, "evaluate", lambda *a, **k: pytest.fail("a scene was scored"))
    assert compare_models.main([str(tmp_path / "r2h" / "pipeline"), "--data", str(tmp_path / "no-data"),
                                "--costs-only", "--cost-size", "32", "--json", str(tmp_path / "c.json")]) == 0
    row = json.loads((tmp_path / "c.json").read_text())["rows"]["r2h/pipeline"]
    assert row["seconds_per_image"] > 0 and row["gflops_per_image"] > 0 and "psnr" not in row


def test_compare_models_scores_each_cave_split(tiny_cave_root, load_benchmark):
    from uldm.data import cave_split

    scenes_for, split = load_benchmark("compare_models").scenes_for, cave_split(tiny_cave_root)
    assert scenes_for(tiny_cave_root, "train") == split["train"] and scenes_for(tiny_cave_root, "val") == split["val"]
    assert sorted(scenes_for(tiny_cave_root, "all")) == sorted(split["train"] + split["val"])
    with pytest.raises(SystemExit, match="CAVE data not found"):
        scenes_for(tiny_cave_root / "missing", "train")
