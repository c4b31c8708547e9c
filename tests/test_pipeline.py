"""SpectralReconstructionPipeline: outputs, determinism, inputs, save/load and hub push/pull (tiny, untrained)."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from uldm import SpectralReconstructionPipeline
from uldm.images import ImageError, save_png16


@pytest.fixture
def rgb():
    yy, xx = np.mgrid[0:24, 0:20] / 24.0
    return np.stack([0.2 + 0.5 * yy, 0.3 + 0.4 * xx, 0.6 - 0.3 * yy], axis=-1).astype(np.float32)


def run(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("input_space", "linear")
    return pipe(image, generator=torch.Generator().manual_seed(seed), show_progress_bar=False, **kwargs)


def test_output_shapes_and_exact_rgb_consistency(tiny_pipeline, rgb):
    out = run(tiny_pipeline, rgb, ensemble_size=3)
    assert out.spectra.shape == (1, 24, 20, 31) and out.uncertainty.shape == (1, 24, 20, 31)
    assert out.code.shape == (1, 24, 20, 3) and out.wavelengths.shape == (31,)
    assert out.rgb_error.shape == (1,) and out.rgb_error[0] < 1e-5
    rendered = tiny_pipeline.camera.render(out.spectra[0].astype(np.float64))
    assert np.abs(rendered - rgb).max() < 1e-5
    assert out.uncertainty.max() > 0


def test_spectra_are_physical_by_default_and_raw_on_request(tiny_pipeline, rgb, check_physical_by_default):
    check_physical_by_default(lambda image, **kwargs: run(tiny_pipeline, image, output_type="pt", **kwargs), rgb,
                              tiny_pipeline.camera)
    assert run(tiny_pipeline, rgb).out_of_gamut.shape == (1, 24, 20)  # "np": an array of the image's size


def test_single_member_has_zero_uncertainty_and_pt_layout(tiny_pipeline, rgb):
    out = run(tiny_pipeline, rgb, ensemble_size=1, output_type="pt")
    assert out.spectra.shape == (1, 31, 24, 20)
    assert torch.count_nonzero(out.uncertainty) == 0


def test_one_step_works_and_starts_at_the_last_timestep(tiny_pipeline, rgb):
    out = run(tiny_pipeline, rgb, num_inference_steps=1)
    assert np.isfinite(out.spectra).all()
    assert tiny_pipeline.scheduler.timesteps.tolist() == [999]


def test_fixed_generator_is_deterministic_and_seeds_differ(tiny_pipeline, rgb):
    a, b, c = run(tiny_pipeline, rgb, seed=1), run(tiny_pipeline, rgb, seed=1), run(tiny_pipeline, rgb, seed=2)
    np.testing.assert_array_equal(a.spectra, b.spectra)
    assert not np.array_equal(a.spectra, c.spectra)


def test_batch_of_three_equals_three_single_calls(tiny_pipeline, rgb):
    images = [rgb, rgb[::-1].copy(), rgb * 0.5]
    generator = torch.Generator().manual_seed(3)
    batch = tiny_pipeline(images, generator=generator, batch_size=3, input_space="linear", show_progress_bar=False)
    generator = torch.Generator().manual_seed(3)
    singles = [tiny_pipeline(img, generator=generator, input_space="linear", show_progress_bar=False).spectra[0]
               for img in images]
    for got, expected in zip(batch.spectra, singles):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_processing_resolution_keeps_the_input_size_and_exactness(tiny_pipeline, rgb):
    out = run(tiny_pipeline, rgb, processing_resolution=16)
    assert out.spectra.shape == (1, 24, 20, 31) and out.rgb_error[0] < 1e-5
    small = run(tiny_pipeline, rgb, processing_resolution=16, match_input_resolution=False)
    assert small.spectra.shape[1:3] == (16, 13)


def test_clamping_is_an_option_whose_cost_is_reported(tiny_pipeline, rgb):
    out = run(tiny_pipeline, rgb, clamp=True)
    assert out.spectra.min() >= 0 and out.spectra.max() <= 1
    assert np.isfinite(out.rgb_error).all()


def test_srgb_input_is_linearised(tiny_pipeline, rgb):
    from uldm.images import linear_to_srgb

    linear = run(tiny_pipeline, rgb)
    encoded = run(tiny_pipeline, linear_to_srgb(rgb), input_space="srgb")
    np.testing.assert_allclose(encoded.spectra, linear.spectra, atol=2e-3)


def test_accepts_pil_tensors_paths_and_16_bit_png(tiny_pipeline, rgb, tmp_path):
    path = save_png16(tmp_path / "x.png", rgb)
    from_path = run(tiny_pipeline, str(path))
    from_tensor = run(tiny_pipeline, torch.from_numpy(rgb).permute(2, 0, 1))
    np.testing.assert_allclose(from_path.spectra, from_tensor.spectra, atol=1e-3)
    rgba = Image.fromarray(np.concatenate([(rgb * 255).astype(np.uint8), np.full((24, 20, 1), 255, np.uint8)], -1))
    assert run(tiny_pipeline, rgba).spectra.shape == (1, 24, 20, 31)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((24, 20), np.float32), "greyscale"),
    (np.full((24, 20, 3), np.nan, np.float32), "NaN"),
    (np.zeros((24, 20, 3), np.int64), "unsupported pixel type"),
])
def test_bad_images_are_rejected_clearly(tiny_pipeline, bad, message):
    with pytest.raises(ImageError, match=message):
        run(tiny_pipeline, bad)


def test_bad_arguments_are_rejected_clearly(tiny_pipeline, rgb):
    with pytest.raises(ValueError, match="ensemble_size"):
        run(tiny_pipeline, rgb, ensemble_size=0)
    with pytest.raises(ValueError, match="same size"):
        run(tiny_pipeline, [rgb, rgb[:10]])
    with pytest.raises(ValueError, match="input_space"):
        run(tiny_pipeline, rgb, input_space="adobe")


def test_save_load_round_trip_gives_identical_spectra(tiny_pipeline, rgb, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "speuae" / "diffusion_pytorch_model.safetensors").exists()
    assert not (tmp_path / "pipe" / "text_encoder").exists()  # no CLIP at inference
    loaded = SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe")
    np.testing.assert_array_equal(run(loaded, rgb).spectra, run(tiny_pipeline, rgb).spectra)


def test_bf16_keeps_the_rgb_exact(tiny_pipeline, rgb, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    with warnings.catch_warnings(record=True) as caught:  # the older name is accepted without diffusers' warning
        warnings.simplefilter("always")
        half = SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe", torch_dtype=torch.bfloat16)
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
    assert half.unet.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not both"):
        SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16,
                                                       torch_dtype=torch.bfloat16)
    out = run(half, rgb)
    assert out.rgb_error[0] < 1e-5  # the spectra are composed in float32 with float64 bases


def test_fp16_variant_saves_beside_fp32_and_loads_by_name(tiny_pipeline, rgb, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    tiny_pipeline.to(torch.float16).save_pretrained(tmp_path / "pipe", variant="fp16")
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    half = SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe", variant="fp16", dtype=torch.float16)
    full = SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe")
    assert half.unet.dtype == torch.float16 and full.unet.dtype == torch.float32
    for name, tensor in half.unet.state_dict().items():  # the fp16 files hold the fp16-rounded fp32 weights
        torch.testing.assert_close(tensor, full.unet.state_dict()[name].half(), rtol=0, atol=0, msg=name)
    assert run(half.to(torch.float32), rgb).rgb_error[0] < 1e-5


def test_push_and_pull_over_http(tiny_pipeline, rgb, hub_server, tmp_path):
    from huggingface_hub import HfApi

    url = tiny_pipeline.push_to_hub("testorg/tiny-uldm", metrics={"psnr": 1.0})
    assert "testorg/tiny-uldm" in url
    files = {s.rfilename for s in HfApi().model_info("testorg/tiny-uldm").siblings}
    assert {"model_index.json", "README.md", "speuae/config.json", "unet/diffusion_pytorch_model.safetensors"} <= files
    pulled = SpectralReconstructionPipeline.from_pretrained("testorg/tiny-uldm", cache_dir=str(tmp_path / "empty-cache"))
    np.testing.assert_array_equal(run(pulled, rgb).spectra, run(tiny_pipeline, rgb).spectra)


def test_pull_from_an_unreachable_hub_is_a_clear_error(unreachable_hub, tmp_path):
    from uldm.hub import HubError

    cache = tmp_path / "cache"
    with pytest.raises(HubError, match="cannot reach the model hub"):
        SpectralReconstructionPipeline.from_pretrained("testorg/anything", cache_dir=str(cache))
    assert not list(cache.rglob("*.incomplete"))


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_reconstruct_and_evaluate_with_a_pipeline_checkpoint(tiny_pipeline, rgb, tmp_path, tiny_cave_root, capsys):
    import json

    from uldm.cli import main
    from uldm.io import load_cube_attrs

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    save_png16(tmp_path / "in" / "a.png", rgb)
    assert main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "pipe"),
                 "--steps", "1", "--ensemble", "2", "--input-space", "linear"]) == 0
    import h5py

    with h5py.File(tmp_path / "out" / "a.h5") as f:
        assert f["cube"].shape == (24, 20, 31) and f["uncertainty"].shape == (24, 20, 31)
        assert f["uncertainty"][()].max() > 0
    assert load_cube_attrs(tmp_path / "out" / "a.h5")["ensemble"] == 2
    assert main(["evaluate", "--data", str(tiny_cave_root), "--split", "all", "--checkpoint", str(tmp_path / "pipe"),
                 "--steps", "1", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["per_scene"]) == 3 and report["mean"]["rgb_error"] < 1e-5


def test_cli_dtype_and_device_set_the_models_precision_and_place(tiny_pipeline, rgb, tmp_path, loaded_reconstructors):
    from uldm.cli import main

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    save_png16(tmp_path / "in" / "a.png", rgb)
    assert main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "pipe"),
                 "--input-space", "linear", "--dtype", "bf16", "--device", "cpu"]) == 0
    pipe = loaded_reconstructors[0].pipeline
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    row = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"][0]
    assert row["status"] == "done" and row["rgb_error"] < 1e-5  # composed in float32 whatever the networks' dtype
    with pytest.raises(SystemExit):
        main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--dtype", "int8"])


def test_cli_push_and_pull(tiny_pipeline, tmp_path, hub_server, capsys):
    from uldm.cli import main

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    assert main(["push", str(tmp_path / "pipe"), "testorg/cli-uldm"]) == 0
    assert main(["pull", "testorg/cli-uldm", "-o", str(tmp_path / "pulled")]) == 0
    assert (tmp_path / "pulled" / "model_index.json").read_text() == (tmp_path / "pipe" / "model_index.json").read_text()
    assert main(["push", str(tmp_path), "testorg/x"]) == 2  # not a pipeline folder
    assert "model_index.json" in capsys.readouterr().err


def test_inference_speed_benchmark_times_counts_and_profiles(tiny_pipeline, tmp_path, load_benchmark, capsys):
    module = load_benchmark("inference_speed")
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    module.main(["--model", f"saved={tmp_path / 'pipe'}", "--model", "random=scaffold:tiny:kl", "--resolution", "16",
                 "--batch-size", "1", "2", "--repeats", "2", "--channels-last", "--profile", "--peak-tflops", "2",
                 "--json", str(tmp_path / "speed.json")])
    data = json.loads((tmp_path / "speed.json").read_text())
    side = data["side_by_side"]["16"]
    assert side["saved"]["ratio_to_first"] == 1.0 and len(side["random"]["all_seconds"]) == 2
    assert side["random"]["ratio_to_first"] == pytest.approx(side["random"]["seconds"] / side["saved"]["seconds"])
    rows = data["configurations"]
    assert [(row["model"], row["variant"]) for row in rows] == [("saved", "eager"), ("saved", "channels_last"),
                                                                ("random", "eager"), ("random", "channels_last")]
    for row in rows:
        assert set(row["throughput"]) == {"1", "2"} and min(row["throughput"].values()) > 0
        assert row["gflops_per_image"] > 0 and row["ms_per_image_batch1"] > 0
        assert row["achieved_tflops"] == pytest.approx(row["gflops_per_image"] * max(row["throughput"].values()) / 1e3)
        assert row["peak_share"] == pytest.approx(row["achieved_tflops"] / 2)
    assert rows[0]["gflops_by_module"] and rows[0]["gflops_per_image"] == rows[1]["gflops_per_image"]
    profile = data["profiles"]["saved@16"]
    assert {"input (PNG read)", "VAE encode", "UNet", "VAE decode", "SpeUAE and prior", "composition",
            "output (HDF5 write)"} <= set(profile)
    assert profile["total"] == pytest.approx(sum(v for k, v in profile.items() if k != "total"))
    assert all(seconds >= 0 for seconds in profile.values())
    assert "profile: saved, 16 x 16" in capsys.readouterr().out


def test_a_failing_configuration_is_a_row_and_the_benchmark_goes_on(tiny_pipeline, tmp_path, load_benchmark,
                                                                      monkeypatch):
    module = load_benchmark("inference_speed")
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    measure, calls = module.measure_configuration, []

    def fails_first(*args, **kwargs):  # as a compiler error or running out of memory would
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory\ntraceback lines")
        return measure(*args, **kwargs)

    monkeypatch.setattr(module, "measure_configuration", fails_first)
    assert module.main(["--model", f"saved={tmp_path / 'pipe'}", "--resolution", "16", "--batch-size", "1",
                        "--repeats", "1", "--channels-last", "--json", str(tmp_path / "speed.json")]) == 0
    first, second = json.loads((tmp_path / "speed.json").read_text())["configurations"]
    assert first["error"] == "RuntimeError: out of memory" and first["variant"] == "eager"
    assert second["variant"] == "channels_last" and second["throughput"]["1"] > 0


def test_the_profile_timer_charges_nested_calls_to_the_inner_label(load_benchmark):
    module = load_benchmark("inference_speed")
    now = [0.0]

    class Work:
        def outer(self):
            now[0] += 1
            self.inner()
            now[0] += 2

        def inner(self):
            now[0] += 10

    work = Work()
    timer = module.ComponentTimer(torch.device("cpu"), clock=lambda: now[0])
    timer.wrap(work, "inner", "inner")
    timer.wrap(work, "outer", "outer")
    work.outer()
    work.inner()
    assert timer.seconds == {"outer": 3.0, "inner": 20.0}
    timer.restore()
    assert not vars(work)  # the class's methods show again


def test_ensemble_statistics_are_the_population_mean_and_std():
    from uldm.pipelines.common import ensemble_statistics

    samples = torch.randn(6, 5, 7, 4)[..., 1:3]  # 2 images x 3 members, strided as the composition hands them over
    mean, std = ensemble_statistics(samples, 2, 3)
    grouped = samples.reshape(2, 3, 5, 7, 2)
    torch.testing.assert_close(mean, grouped.mean(dim=1))
    torch.testing.assert_close(std, grouped.std(dim=1, unbiased=False))
    single_mean, single_std = ensemble_statistics(samples, 6, 1)
    assert torch.equal(single_mean, samples) and not single_std.any()


def test_the_schedule_stays_on_the_cpu_and_the_network_gets_a_device_copy():
    """DDIM's step compares and indexes with its timestep: on a GPU tensor each step would wait for the GPU."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from uldm.pipelines.common import sampling_timesteps

    for scheduler in (DDIMScheduler(timestep_spacing="trailing"), EulerDiscreteScheduler()):
        pairs = sampling_timesteps(scheduler, 4, torch.device("meta"))
        assert [int(t) for t, _ in pairs] == scheduler.timesteps.tolist() and len(pairs) == 4
        assert all(t.device.type == "cpu" and on_device.device.type == "meta" for t, on_device in pairs)


def test_processing_resolution_shrinks_large_images_and_never_enlarges_small_ones(tiny_pipeline, rgb):
    from uldm.pipelines.common import resize_longer_side

    image = torch.rand(1, 3, 30, 40)
    assert resize_longer_side(image, 20).shape[-2:] == (15, 20)
    assert resize_longer_side(image, 64) is image and resize_longer_side(image, 0) is image
    native, capped = run(tiny_pipeline, rgb), run(tiny_pipeline, rgb, processing_resolution=4 * max(rgb.shape[:2]))
    np.testing.assert_array_equal(native.spectra, capped.spectra)


def test_set_progress_bar_config_is_respected_and_a_call_flag_lasts_one_call(tiny_pipeline, rgb, capsys):
    tiny_pipeline.set_progress_bar_config(disable=True)
    tiny_pipeline(rgb, input_space="linear")
    assert "ULDM" not in capsys.readouterr().err  # the user's setting wins over the default (shown)
    tiny_pipeline(rgb, input_space="linear", show_progress_bar=True)
    assert "ULDM" in capsys.readouterr().err
    assert tiny_pipeline._progress_bar_config == {"disable": True}  # the call's flag did not stick
    tiny_pipeline.set_progress_bar_config(desc="mine")
    tiny_pipeline(rgb, input_space="linear")
    assert "mine" in capsys.readouterr().err


def test_every_compatible_scheduler_runs_and_the_unet_sees_unit_scale_inputs(tiny_pipeline, rgb):
    """Schedulers that scale their input (Euler, Heun, LMS), draw noise (DDPM) or take no generator (UniPC) work."""
    from diffusers import EulerDiscreteScheduler

    config = {**tiny_pipeline.scheduler.config, "prediction_type": "sample"}
    ran = []
    for cls in tiny_pipeline.scheduler.compatibles:
        try:
            tiny_pipeline.scheduler = cls.from_config(config)
            out = run(tiny_pipeline, rgb, num_inference_steps=4)
        except ImportError:  # an optional package the scheduler needs (torchsde)
            continue
        except (NotImplementedError, ValueError) as exc:  # schedulers without x0 prediction say so
            if "sample" in str(exc):
                continue
            raise
        assert np.isfinite(out.spectra).all() and out.rgb_error.max() < 1e-5, cls.__name__
        ran.append(cls.__name__)
    assert {"DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
            "UniPCMultistepScheduler", "DPMSolverMultistepScheduler", "DEISMultistepScheduler"} <= set(ran)
    # Euler keeps its samples at the scale of its sigmas: the UNet must see them scaled back to unit variance
    tiny_pipeline.scheduler = EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    spreads = []
    channels = tiny_pipeline.unet.config.out_channels
    hook = tiny_pipeline.unet.register_forward_pre_hook(lambda module, args: spreads.append(float(args[0][:, channels:].std())))
    run(tiny_pipeline, rgb, num_inference_steps=4)
    hook.remove()
    assert len(spreads) == 4 and max(spreads) < 2.0, spreads


def test_given_latents_and_a_step_callback(tiny_pipeline, rgb):
    seen = []

    def callback(pipe, index, t, tensors):
        seen.append((index, int(t)))
        return {"latents": tensors["latents"] * 0}  # replaces the latents

    latents = torch.randn(2, tiny_pipeline.unet.config.out_channels, *pipeline_latent_size(tiny_pipeline, rgb))
    zeroed = tiny_pipeline(rgb, input_space="linear", ensemble_size=2, latents=latents, callback_on_step_end=callback,
                           show_progress_bar=False)
    assert [index for index, _ in seen] == [0, 1, 0, 1]  # two steps for each member (batch_size 1)
    again = tiny_pipeline(rgb, input_space="linear", ensemble_size=2, latents=torch.zeros_like(latents),
                          num_inference_steps=1, show_progress_bar=False)
    assert np.isfinite(zeroed.spectra).all() and np.isfinite(again.spectra).all()
    with pytest.raises(ValueError, match="latents must have shape"):
        tiny_pipeline(rgb, input_space="linear", latents=latents[:1, :, :1], show_progress_bar=False)


def pipeline_latent_size(pipe, image):
    multiple = pipe.size_multiple
    height, width = (-(-s // multiple) * multiple // pipe.vae_scale_factor for s in image.shape[:2])
    return height, width
