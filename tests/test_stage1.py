"""Stage 1: the SpeUAE model and its accelerate trainer (tiny data, a few steps each)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from uldm import CameraResponse
from uldm.models import SpeUAE, spaae
from uldm.models.speuae import PointwiseMLP
from uldm.stages.train_speuae import SpeUAEConfig, train
from uldm.training import ConfigError, checkpoints_in, load_config

REPO = Path(__file__).resolve().parent.parent
SMALL = {"encoder_channels": 16, "decoder_channels": 16, "num_layers": 2}


# ------------------------------------------------------------------------------------------------- model
def test_decode_renders_back_to_rgb_exactly_for_any_code():
    model = SpeUAE(**SMALL)
    rgb = torch.rand(2, 3, 9, 7)
    code = torch.rand(2, 3, 9, 7) * 2 - 1
    hsi = model.decode(code, rgb)
    assert hsi.shape == (2, 31, 9, 7)
    assert (model.split.render(hsi, dim=1) - rgb).abs().max() < 2e-6


def test_code_is_bounded_and_image_sized():
    model = SpeUAE(**SMALL)
    code = model.encode(torch.rand(1, 31, 13, 11) * 3)
    assert code.shape == (1, 3, 13, 11) and code.abs().max() <= 1


def test_save_load_round_trip_is_identical_and_keeps_the_camera(tmp_path):
    camera = CameraResponse.from_preset("canon-5d-mark-ii")
    model = SpeUAE.for_camera(camera, **SMALL)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").exists()
    loaded = SpeUAE.from_pretrained(tmp_path / "m")
    assert loaded.camera == camera
    hsi = torch.rand(1, 31, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(hsi)[0], loaded(hsi)[0])


def test_small_context_variant_sees_neighbours_and_keeps_rgb_exact(tmp_path):
    torch.manual_seed(0)
    model = SpeUAE(**SMALL, context=3)
    with torch.no_grad():
        for parameter in model.parameters():  # leave the zero start, so the MLP branches matter
            parameter.add_(0.1 * torch.randn_like(parameter))
    hsi = torch.rand(1, 31, 12, 10)
    rgb = model.split.render(hsi, dim=1)
    with torch.no_grad():
        code = model.encode(hsi, rgb)
        changed = hsi.clone()
        changed[:, :, 5, 5] = torch.rand(31)
        neighbour_code = model.encode(changed, model.split.render(changed, dim=1))
        assert (neighbour_code - code)[0, :, 5, 6].abs().max() > 0  # a 3 x 3 neighbour's spectrum counts
        assert torch.equal((neighbour_code - code)[0, :, 5, 8], torch.zeros(3))  # two pixels away it does not
        assert (model.split.render(model.decode(code, rgb), dim=1) - rgb).abs().max() < 2e-6
        assert torch.allclose(model(hsi)[0], model.decode(code, rgb))
        model.save_pretrained(tmp_path / "ctx")
        assert torch.equal(SpeUAE.from_pretrained(tmp_path / "ctx")(hsi)[0], model(hsi)[0])
    with torch.enable_grad():  # training path (no chunking) gives the same answer
        assert torch.allclose(model.encode(hsi, rgb), code, atol=1e-6)
    with pytest.raises(ValueError, match="odd kernel size"):
        SpeUAE(**SMALL, context=2)


def test_intensity_normalised_variant_is_scale_equivariant(tmp_path):
    torch.manual_seed(0)
    models = {flag: SpeUAE(**SMALL, normalize_intensity=flag) for flag in (False, True)}
    with torch.no_grad():
        for model in models.values():  # leave the zero start, so the MLP branches matter
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        hsi = torch.rand(1, 31, 6, 5) * 0.5 + 0.05  # every pixel well above the intensity floor
        rgb = models[True].split.render(hsi, dim=1)
        for flag, model in models.items():
            code, brighter_code = model.encode(hsi, rgb), model.encode(3 * hsi, 3 * rgb)
            recon, brighter = model.decode(code, rgb), model.decode(code, 3 * rgb)
            invariant = torch.allclose(brighter_code, code, atol=1e-5) and torch.allclose(brighter, 3 * recon, atol=1e-5)
            assert invariant == flag  # shading changes nothing but the scale, and only with the option on
            assert (model.split.render(brighter, dim=1) - 3 * rgb).abs().max() < 5e-6
        model = models[True]
        model.save_pretrained(tmp_path / "norm")
        loaded = SpeUAE.from_pretrained(tmp_path / "norm")
        assert loaded.config.normalize_intensity and torch.equal(loaded(hsi)[0], model(hsi)[0])
        dark = hsi * 1e-4  # below the floor the scale is fixed, so nothing is divided by ~0
        assert torch.isfinite(model(dark)[0]).all()
        with pytest.raises(ValueError, match="needs the pixels' RGB"):
            model.init_linear_code(torch.rand(100, 28))
        pixels = hsi.flatten(2)[0].T.double()
        model.init_linear_code(model.split.unobservable(pixels), model.split.render(pixels))
        codes = model.linear_encoder(model.split.unobservable(pixels).float() / rgb.flatten(2)[0].T.mean(1, keepdim=True)
                                     * model.config.unobservable_scale)
        assert codes.mean(0).abs().max() < 1e-4  # the PCA was fitted to the normalised parts (centred codes)


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu"])
def test_pointwise_jacobian_matches_autograd(activation):
    torch.manual_seed(0)
    mlp = PointwiseMLP(6, 5, hidden=8, layers=3, activation=activation)
    nn.init.normal_(mlp.net[-1].weight)  # the zero-initialised last layer would make every derivative 0
    x = torch.randn(7, 6)
    value, jac = mlp.value_and_jacobian(x, wrt=3)
    expected = torch.func.vmap(torch.func.jacrev(lambda pixel: mlp.net(pixel)))(x)  # 7 x 5 x 6
    torch.testing.assert_close(value, mlp.net(x))
    torch.testing.assert_close(jac, expected[..., :3].mT)


def codes_the_decoder_can_match(model: SpeUAE, smooth: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spectra decoded from known codes: the codes a perfect encoder would find, which an untrained one misses.

    `smooth` draws RGB and codes on a 3 x 3 grid and interpolates them to 8 x 8, so neighbouring pixels are alike,
    as in real images (what a block-shared Jacobian assumes); otherwise every pixel is drawn on its own.
    """
    torch.manual_seed(0)
    for parameter in model.decoder.parameters():
        parameter.data.add_(0.3 * torch.randn_like(parameter))  # a decoder that is nonlinear in the code
    size = 3 if smooth else 8
    rgb, true_code = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size) * 1.6 - 0.8
    if smooth:
        rgb, true_code = (nn.functional.interpolate(t, size=(8, 8), mode="bilinear", align_corners=True)
                          for t in (rgb, true_code))
    with torch.no_grad():
        return model.decode(true_code, rgb), rgb, true_code


def test_gauss_newton_steps_find_the_codes_the_one_pass_encoder_misses(tmp_path):
    model = SpeUAE(**SMALL, refine_steps=3).eval()
    hsi, rgb, true_code = codes_the_decoder_can_match(model)
    with torch.no_grad():
        one_pass, refined = model.encode(hsi, rgb, refine_steps=0), model.encode(hsi, rgb)
    error = lambda code: (model.decode(code, rgb) - hsi).pow(2).mean().item()
    assert error(refined) < 1e-4 * error(one_pass)
    torch.testing.assert_close(refined, true_code, atol=1e-3, rtol=0)
    assert refined.abs().max() <= 1
    assert (model.split.render(model.decode(refined, rgb), dim=1) - rgb).abs().max() < 1e-5
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as in mixed-precision stage 2
        half = model.encode(hsi, rgb)
    assert half.dtype == torch.bfloat16 and (half.float() - true_code).abs().max() < 0.05
    # the setting is saved with the model; forward (what training fits) stays one pass
    model.save_pretrained(tmp_path / "refined")
    loaded = SpeUAE.from_pretrained(tmp_path / "refined")
    assert loaded.config.refine_steps == 3 and torch.equal(loaded.encode(hsi, rgb), refined)
    torch.testing.assert_close(model(hsi, rgb)[1], one_pass)
    with pytest.raises(ValueError, match="refine_steps"):
        SpeUAE(context=3, refine_steps=1)


def test_block_gauss_newton_shares_one_jacobian_per_block_and_keeps_each_pixels_residual(tmp_path):
    torch.manual_seed(0)  # the weights, so the test does not depend on which tests ran before it
    exact = SpeUAE(**SMALL, refine_steps=1).eval()
    blocked = SpeUAE(**SMALL, refine_steps=1, refine_block=4).eval()
    hsi, rgb, _ = codes_the_decoder_can_match(exact, smooth=True)  # (makes exact's decoder nonlinear first)
    blocked.load_state_dict(exact.state_dict())
    with torch.no_grad():
        # pixels equal within every 4 x 4 block: the block's mean is each pixel, so the step is the exact one
        flat_hsi, flat_rgb = (nn.functional.interpolate(t[:, :, ::4, ::4], scale_factor=4) for t in (hsi, rgb))
        torch.testing.assert_close(blocked.encode(flat_hsi, flat_rgb), exact.encode(flat_hsi, flat_rgb),
                                   atol=1e-5, rtol=0)
        # varied pixels, any size (7 x 8 is not a multiple of 4): one step removes nearly all the one-pass error,
        # as an exact step does (< 1 % left), and repeated steps converge (the shared Jacobian only slows them)
        hsi, rgb = hsi[:, :, :7, :], rgb[:, :, :7, :]
        one_pass, refined, refined_3 = (blocked.encode(hsi, rgb, refine_steps=steps) for steps in (0, 1, 3))
    assert refined.shape == one_pass.shape == (1, 3, 7, 8) and refined.abs().max() <= 1
    error = lambda code: (blocked.decode(code, rgb) - hsi).pow(2).mean().item()
    assert error(refined) < 0.05 * error(one_pass)
    assert error(refined_3) < 0.01 * error(refined)
    # each pixel's own residual counts: changing one pixel's spectrum moves its code, not the block's others
    changed = hsi.clone()
    changed[:, :, 0, 0] *= 1.5
    with torch.no_grad():
        moved = (blocked.encode(changed, rgb) - refined).abs().amax(dim=1)[0]
    neighbours = moved[:4, :4].flatten()[1:]  # the rest of its block: only the shared Jacobian changed for them
    assert moved[0, 0] > 1e-3 and moved[0, 0] > 10 * neighbours.max(), (moved[0, 0], neighbours.max())
    blocked.save_pretrained(tmp_path / "blocked")
    assert SpeUAE.from_pretrained(tmp_path / "blocked").config.refine_block == 4
    with pytest.raises(ValueError, match="refine_block"):
        SpeUAE(refine_block=0)


@pytest.mark.parametrize("refine_block", [1, 4])
def test_a_bf16_speuae_refines_its_codes_with_float32_solves(refine_block):
    """A pipeline loaded in bf16 holds a bf16 SpeUAE: its Gauss-Newton solves (no half kernels) run in float32."""
    model = SpeUAE(**SMALL, refine_steps=2, refine_block=refine_block).eval()
    hsi, rgb, _ = codes_the_decoder_can_match(model, smooth=True)
    with torch.no_grad():
        full = model.encode(hsi, rgb)
        half = model.to(torch.bfloat16).encode(hsi.bfloat16(), rgb.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0)


def test_the_benchmark_scores_refined_encoding(load_benchmark):
    model = SpeUAE(**SMALL).eval()
    hsi, _, _ = codes_the_decoder_can_match(model)
    cube = hsi[0].permute(1, 2, 0).numpy()
    bench = load_benchmark("speuae_roundtrip")
    plain, refined = bench.speuae_model(model, 0)(cube), bench.speuae_model(model, 2)(cube)
    assert ((refined - cube) ** 2).mean() < 0.01 * ((plain - cube) ** 2).mean()


def test_fitted_vae_latents_carry_the_code_better(load_benchmark, tiny_vae_dir):
    from diffusers import AutoencoderKL

    model = SpeUAE(**SMALL).eval()
    hsi, rgb, _ = codes_the_decoder_can_match(model)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval().requires_grad_(False)
    bench = load_benchmark("speuae_roundtrip")
    with torch.no_grad():
        code = model.encode(hsi, rgb)
        latent = spaae.encode(vae, code)
    fitted = bench.fit_latent(vae, latent, code, steps=100)
    with torch.no_grad():
        error = lambda z: (spaae.decode(vae, z) - code).pow(2).mean().item()
        assert error(fitted) < 0.5 * error(latent)
    cube = hsi[0].permute(1, 2, 0).numpy()  # and the row built on it scores spectra that still render to the RGB
    spectra = torch.from_numpy(bench.spaae_model(model, vae, fit_steps=5)(cube))
    assert (model.split.render(spectra, dim=-1) - rgb[0].permute(1, 2, 0)).abs().max() < 1e-5


def test_the_benchmark_scores_the_vae_carrying_the_residual_from_a_prior(load_benchmark, tiny_vae_dir):
    from diffusers import AutoencoderKL

    from uldm.baseline import RootPolynomialRegression
    from uldm.models.code_prior import RootPolynomialPrior, prior_code

    model = SpeUAE(**SMALL).eval()
    hsi, rgb, _ = codes_the_decoder_can_match(model)
    cube = hsi[0].permute(1, 2, 0).numpy()
    prior = RootPolynomialPrior.from_regression(
        RootPolynomialRegression.fit(rgb[0].permute(1, 2, 0).reshape(-1, 3).numpy(), cube.reshape(-1, 31), model.camera))
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval().requires_grad_(False)  # untrained: a poor carrier
    bench = load_benchmark("speuae_roundtrip")
    alone, plain = bench.prior_model(model, prior)(cube), bench.spaae_model(model, vae)(cube)
    with torch.no_grad():
        expected = model.decode(prior_code(prior, model, rgb), rgb)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(alone, expected, atol=1e-6)
    anchored = bench.spaae_model(model, vae, prior=prior, scale=100.0)(cube)
    distance = lambda spectra: np.abs(spectra - alone).max()
    assert distance(anchored) < 0.05 * distance(plain)  # what the VAE does to the residual is divided by the scale


def test_wrong_band_count_is_rejected():
    with pytest.raises(ValueError, match="N x 31 x H x W"):
        SpeUAE(**SMALL).encode(torch.rand(1, 30, 4, 4))


# ----------------------------------------------------------------------------------------------- trainer
def write_config(tmp_path: Path, data_root: Path, **overrides) -> Path:
    config = {
        "output_dir": str(tmp_path / "run"), "data_root": str(data_root), "data_format": "cave",
        "train_scenes": ["balloons_ms", "cd_ms"], "val_scenes": ["watercolors_ms"],
        "patch_size": 8, "patches_per_scene": 4, "train_batch_size": 2, "max_train_steps": 6,
        "checkpointing_steps": 3, "validation_steps": 6, "checkpoints_total_limit": 5, "report_to": None,
        "learning_rate": 3e-3, **SMALL, **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_model_ema_averages_swaps_in_and_restores():
    from uldm.training import ModelEMA

    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.5, device=torch.device("cpu"))
    for value, steps in ((0.0, 3), (1.0, 5)):  # weights at 0 for 3 steps, then at 1 for 5
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
        for _ in range(steps):
            ema.step()
    with ema.swapped_into(model):
        averaged = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(v, torch.ones_like(v)) for v in model.state_dict().values())  # own weights back
    for value in averaged.values():  # the average lags behind the jump to 1: strictly between the two
        assert ((value > 0.5) & (value < 1)).all()
    half = ModelEMA(torch.nn.Linear(3, 2).to(torch.bfloat16), decay=0.5, device=torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in half.average.shadow_params)  # the average stays in float32



def test_model_ema_is_a_model_folder_that_continues_exactly(tmp_path):
    from uldm.training import ModelEMA

    torch.manual_seed(0)
    model = SpeUAE(**SMALL)
    ema = ModelEMA(model, decay=0.9, device=torch.device("cpu"))
    for _ in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1)
        ema.step()
    ema.save_pretrained(tmp_path / "speuae_ema", model)  # what a checkpoint carries
    saved = SpeUAE.from_pretrained(tmp_path / "speuae_ema")  # a model folder like any other
    copy = ModelEMA(SpeUAE(**SMALL), decay=0.9, device=torch.device("cpu"))
    copy.load_pretrained(tmp_path / "speuae_ema", model)
    assert copy.average.optimization_step == ema.average.optimization_step == 3
    for a, b, c in zip(saved.parameters(), ema.average.shadow_params, copy.average.shadow_params):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_mixed_patches_are_convex_mixtures_with_consistent_rgb():
    from uldm.data.augment import mix_patches

    torch.manual_seed(0)
    split = SpeUAE(**SMALL).split
    hsi = torch.rand(64, 31, 4, 4)
    rgb = split.render(hsi, dim=1)
    assert all(torch.equal(a, b) for a, b in zip(mix_patches(hsi, rgb, 0.0), (hsi, rgb)))
    mixed, mixed_rgb = mix_patches(hsi, rgb, 0.5)
    changed = (mixed != hsi).flatten(1).any(1)
    assert 16 < changed.sum() < 48  # about half the patches
    assert torch.allclose(split.render(mixed, dim=1), mixed_rgb, atol=1e-6)  # the RGB is the mixture's rendering
    for i in torch.nonzero(changed).flatten().tolist():  # each changed patch lies between itself and one other
        weights = [((mixed[i] - hsi[i]) / (hsi[j] - hsi[i])).flatten() for j in range(64) if j != i]
        assert any(float(w.std()) < 1e-4 and 0 < float(w.mean()) < 1 for w in weights)


def test_tilted_spectra_are_smooth_gains_of_mean_one():
    from uldm.data.augment import tilt_spectra

    torch.manual_seed(0)
    hsi = torch.rand(8, 31, 3, 3) + 0.1
    assert torch.equal(tilt_spectra(hsi, 0.0), hsi)
    gain = tilt_spectra(hsi, 0.5) / hsi
    assert torch.allclose(gain, gain[:, :, :1, :1].expand_as(gain))  # one gain curve per patch
    curve = gain[:, :, 0, 0]
    torch.testing.assert_close(curve.mean(dim=1), torch.ones(8))  # brightness kept on average
    slopes = curve.log().diff(dim=1)  # log-linear across the bands: a tilt, not a reshuffle
    torch.testing.assert_close(slopes, slopes[:, :1].expand_as(slopes), atol=1e-5, rtol=0)
    assert slopes[:, 0].abs().min() > 0 and slopes[:, 0].std() > 0  # tilted, by different amounts


def test_exposure_gains_scale_spectra_and_rgb_together():
    from uldm.data.augment import scale_patches

    torch.manual_seed(0)
    hsi, rgb = torch.rand(16, 31, 4, 4) + 0.1, torch.rand(16, 3, 4, 4) + 0.1
    assert all(torch.equal(a, b) for a, b in zip(scale_patches(hsi, rgb, 0.0), (hsi, rgb)))
    scaled, scaled_rgb = scale_patches(hsi, rgb, 0.5)
    gain = scaled / hsi
    assert torch.allclose(gain, gain[:, :1, :1, :1].expand_as(gain))  # one gain per patch, all bands and pixels
    torch.testing.assert_close(scaled_rgb / rgb, gain[:, :3])  # the RGB gets the same gain
    log_gain = gain[:, 0, 0, 0].log()
    assert log_gain.std() > 0.2 and (log_gain > 0).any() and (log_gain < 0).any()  # brighter and darker


def test_one_cpu_thread_under_accelerate_launch_is_warned_about(monkeypatch, caplog):
    from types import SimpleNamespace

    from uldm.training import warn_if_one_cpu_thread

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    lone_cpu_process = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    for threads, warned in ((1, True), (4, False)):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        caplog.clear()
        warn_if_one_cpu_thread(lone_cpu_process)
        assert ("--num_cpu_threads_per_process 4" in caplog.text) == warned


def test_accelerate_launch_cpu_with_several_processes_is_warned_about(caplog):
    from types import SimpleNamespace

    from uldm.training.runtime import requested_processes, warn_if_launch_asked_for_more_processes

    launch = ["/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "stages/train_speuae.py"]
    assert requested_processes(launch) == 2
    assert requested_processes(["accelerate", "launch", "--num-processes=3", "x.py"]) == 3
    assert requested_processes(["python", "stages/train_speuae.py", "--num_processes", "2"]) == 1  # not a launcher
    one = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    warn_if_launch_asked_for_more_processes(one, launch)
    assert "asked for 2 processes but started 1" in caplog.text and "--multi_gpu --num_processes 2" in caplog.text
    caplog.clear()
    warn_if_launch_asked_for_more_processes(SimpleNamespace(device=torch.device("cpu"), num_processes=2), launch)
    assert caplog.text == ""


@pytest.mark.slow
def test_accelerate_launch_cpu_really_starts_one_process_and_the_warning_says_so(tmp_path):
    """The real launcher: `accelerate launch --cpu --num_processes 2` runs the script once; the warning fires."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text("from accelerate import Accelerator\n"
                      "from uldm.training.runtime import warn_if_launch_asked_for_more_processes\n"
                      "accelerator = Accelerator(cpu=True)\n"
                      "print('process', accelerator.process_index, 'of', accelerator.num_processes)\n"
                      "warn_if_launch_asked_for_more_processes(accelerator)\n")
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("process 0 of 1") == 1
    assert "asked for 2 processes but started 1" in result.stderr


def test_bad_ema_and_augmentation_settings_are_refused(tmp_path, tiny_cave_root):
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, use_ema=True, ema_decay=1.5))
    with pytest.raises(ConfigError, match="use one or the other"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, tilt_std=0.3, degradation={"bit_depth": 8}))
    with pytest.raises(ConfigError, match="mix_probability"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, mix_probability=2))
    with pytest.raises(ConfigError, match="gain_std"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, gain_std=-0.1))
    with pytest.raises(ConfigError, match="refine_block"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, refine_block=0))


def final_weights(output_dir: Path) -> dict:
    return SpeUAE.from_pretrained(output_dir / "speuae").state_dict()


@pytest.mark.slow
def test_training_lowers_the_loss_and_saves_a_loadable_model(tmp_path, tiny_cave_root):
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, max_train_steps=30,
                                                      checkpointing_steps=30, validation_steps=30))
    untrained = SpeUAE.for_camera(config.camera_response(), **SMALL)
    trained = train(config)
    from uldm.data import read_scene

    cube = torch.from_numpy(read_scene(tiny_cave_root / "balloons_ms").cube).permute(2, 0, 1)[None]
    with torch.no_grad():
        before = (untrained(cube)[0] - cube).abs().mean()
        after = (trained(cube)[0] - cube).abs().mean()
    assert after < before
    assert (Path(config.output_dir) / "speuae" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "ema-and-augmentation"])
def test_resume_continues_exactly_where_it_stopped(tmp_path, tiny_cave_root, extras):
    options = ({"use_ema": True, "ema_decay": 0.9, "mix_probability": 0.5, "tilt_std": 0.3, "gain_std": 0.3}
               if extras else {})
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, **options))
    train(config)
    output_dir = Path(config.output_dir)
    uninterrupted = final_weights(output_dir)
    assert [p.name for p in checkpoints_in(output_dir)] == ["checkpoint-3", "checkpoint-6"]
    # pretend the run died after step 3: drop everything written later, then resume
    import shutil

    shutil.rmtree(output_dir / "checkpoint-6")
    shutil.rmtree(output_dir / "speuae")
    train(config, resume_from="latest")
    resumed = final_weights(output_dir)
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before_it(tmp_path, tiny_cave_root, caplog):
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root))
    train(config)
    output_dir = Path(config.output_dir)
    uninterrupted = final_weights(output_dir)
    damaged = output_dir / "checkpoint-6" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a truncated file, as a full disk or a crash leaves it
    import shutil

    shutil.rmtree(output_dir / "speuae")
    train(config, resume_from="latest")
    assert "cannot resume from" in caplog.text and "checkpoint-6" in caplog.text
    for name, tensor in final_weights(output_dir).items():  # resumed at step 3, trained to 6 again
        torch.testing.assert_close(tensor, uninterrupted[name], rtol=0, atol=1e-6, msg=name)


def test_checkpoint_limit_and_interrupted_save_keep_the_last_checkpoint(tmp_path, tiny_cave_root, monkeypatch):
    from accelerate import Accelerator

    from uldm.training import save_checkpoint

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    out = tmp_path / "run"
    for step in (1, 2, 3):
        save_checkpoint(accelerator, out, step, limit=2)
    assert [p.name for p in checkpoints_in(out)] == ["checkpoint-2", "checkpoint-3"]

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, out, 4, limit=2)
    assert [p.name for p in checkpoints_in(out)] == ["checkpoint-2", "checkpoint-3"]
    assert (out / "checkpoint-3" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_process_run_leaves_identical_weights_on_both_ranks(tmp_path, tiny_cave_root):
    config = write_config(tmp_path, tiny_cave_root, max_train_steps=4, checkpointing_steps=4, validation_steps=4)
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
               str(REPO / "tests" / "helpers" / "train_and_dump.py"), "speuae", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MULTI_CPU" in result.stdout  # really one process group, not two independent runs
    out = tmp_path / "run"
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    start = SpeUAE.for_camera(CameraResponse.from_preset("nikon5100"), **SMALL).state_dict()
    assert any(not torch.equal(rank0[k], start[k]) for k in start if k in rank0)  # it did train


@pytest.mark.slow
def test_vae_loss_term_trains_through_a_tiny_frozen_vae(tmp_path, tiny_cave_root, tiny_vae_dir):
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, vae_path=str(tiny_vae_dir),
                                                      max_train_steps=2, checkpointing_steps=2, validation_steps=2))
    model = train(config)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_vae_loss_term_trains_through_a_frozen_tiny_autoencoder(tmp_path, tiny_cave_root):
    from diffusers import AutoencoderTiny

    from conftest import TINY_TAESD_CONFIG
    from uldm.training import read_metrics

    torch.manual_seed(0)
    AutoencoderTiny(**TINY_TAESD_CONFIG).save_pretrained(tmp_path / "tae")
    before = AutoencoderTiny.from_pretrained(tmp_path / "tae").state_dict()
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, vae_path=str(tmp_path / "tae"),
                                                      patch_size=16, max_train_steps=2, checkpointing_steps=2,
                                                      validation_steps=2))
    train(config)
    rows = read_metrics(Path(config.output_dir))
    assert [row["step"] for row in rows] == [1, 2] and all(np.isfinite(row["train/loss_through_vae"]) for row in rows)
    after = AutoencoderTiny.from_pretrained(tmp_path / "tae").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the SpaAE stays frozen


def test_a_vae_path_that_is_not_a_spaae_is_a_config_error(tmp_path, tiny_cave_root, tiny_speuae_dir):
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, vae_path=str(tiny_speuae_dir),
                                                      patch_size=16))
    with pytest.raises(ConfigError, match=r"vae_path: .*_class_name 'SpeUAE' is not a SpaAE"):
        train(config)


# ------------------------------------------------------------------------------------------------ config
def test_unknown_camera_fails_with_the_valid_names(tmp_path, tiny_cave_root):
    with pytest.raises(ConfigError, match="config.yaml.*unknown camera preset 'leica'.*Nikon 5100"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, camera="leica"))


def test_unknown_and_missing_keys_name_the_file(tmp_path, tiny_cave_root):
    with pytest.raises(ConfigError, match="config.yaml: unknown keys \\['hiden_channels'\\]"):
        load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root, hiden_channels=3))
    path = tmp_path / "empty.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="empty.yaml: missing required keys \\['output_dir'\\]"):
        load_config(SpeUAEConfig, path)


def test_values_take_their_fields_types_or_fail_naming_the_key(tmp_path, tiny_cave_root):
    # YAML 1.1 reads 1e-4 as a string: the float field takes it as the number meant
    config = load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root),
                         ["learning_rate=1e-4", "max_train_steps=2e3", "checkpoints_total_limit=null", "use_ema=true"])
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.max_train_steps == 2000 and isinstance(config.max_train_steps, int)
    assert config.checkpoints_total_limit is None and config.use_ema is True
    for override, message in [("learning_rate=fast", "learning_rate must be a float, got 'fast'"),
                              ("max_train_steps=2.5", "max_train_steps must be an int, got 2.5"),
                              ("train_batch_size=true", "train_batch_size must be an int, got True"),
                              ("use_ema=1", "use_ema must be a bool, got 1"),
                              ("seed=null", "seed must be an int, got None")]:
        with pytest.raises(ConfigError, match=f"config.yaml: {re.escape(message)}"):
            load_config(SpeUAEConfig, write_config(tmp_path, tiny_cave_root), [override])


def test_data_with_the_wrong_band_count_fails_before_training(tmp_path):
    import numpy as np

    root = tmp_path / "cubes"
    root.mkdir()
    for name in ("a", "b"):
        np.save(root / f"{name}.npy", np.random.default_rng(0).random((16, 16, 30)).astype(np.float32))
    config = load_config(SpeUAEConfig, write_config(tmp_path, root, data_format="h5", train_scenes="all",
                                                      val_scenes=["a"]))
    with pytest.raises(ValueError, match="a.npy.*30"):
        train(config)


@pytest.mark.parametrize("name", ["speuae_cave.yaml", "speuae_cave_context.yaml", "speuae_cave_fast.yaml"])
def test_the_shipped_cave_configs_are_valid(name):
    config = load_config(SpeUAEConfig, REPO / "stages" / "configs" / name)
    assert config.camera_response().name == "Nikon 5100 (NPL)"
    SpeUAE(encoder_channels=config.encoder_channels, decoder_channels=config.decoder_channels,
           num_layers=config.num_layers, activation=config.activation, context=config.context)


def test_the_round_trip_benchmark_writes_every_row_as_json(tmp_path, tiny_cave_root, tiny_speuae_dir, tiny_tae_sd_dir,
                                                          load_benchmark, monkeypatch):
    import json

    bench = load_benchmark("speuae_roundtrip")
    monkeypatch.setattr(bench, "time_model", lambda *args, **kwargs: (0.0, 0.0))  # timing is not what is tested here
    monkeypatch.setattr(sys, "argv", ["speuae_roundtrip.py", "--speuae", str(tiny_speuae_dir), "--data",
                                      str(tiny_cave_root), "--vae", str(tiny_tae_sd_dir), "--json",
                                      str(tmp_path / "rt.json")])
    bench.main()
    result = json.loads((tmp_path / "rt.json").read_text())
    assert result["split"] == "val" and result["scenes"] == ["balloons_ms"] and result["vae"] == str(tiny_tae_sd_dir)
    assert "SpeUAE + SpaAE (VAE round trip)" in result["mean"]
    for name, mean in result["mean"].items():
        assert mean["psnr"] == pytest.approx(result["per_scene"][name]["balloons_ms"]["psnr"])
