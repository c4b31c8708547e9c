"""Stage 2: loading SD checkpoints, the widened UNet, and the accelerate trainer (tiny SD built on disk)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uldm.latent_cache import encoding_order
from uldm.models.sd_adapter import StableDiffusionLoadError, load_stable_diffusion, widen_conv_in
from uldm.stages.train_uldm import ULDMConfig, train
from uldm.training import ConfigError, checkpoints_in, load_config

REPO = Path(__file__).resolve().parent.parent


# -------------------------------------------------------------------------------------------- components
def test_widened_unet_reproduces_the_original_when_condition_equals_target(tiny_sd_dir):
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").eval()
    widened = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")).eval()
    assert widened.config.in_channels == 8 and widened.conv_in.in_channels == 8
    latent = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 2, original.config.cross_attention_dim)
    with torch.no_grad():
        expected = original(latent, 500, encoder_hidden_states=text).sample
        got = widened(torch.cat([latent, latent], dim=1), 500, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_saved_widened_unet_config_records_eight_inputs(tmp_path, tiny_sd_dir):
    parts = load_stable_diffusion(str(tiny_sd_dir))
    parts.unet.save_pretrained(tmp_path / "unet")
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["in_channels"] == 8


def test_empty_prompt_is_encoded_once_without_padding(tiny_sd_dir):
    parts = load_stable_diffusion(str(tiny_sd_dir))
    assert parts.empty_prompt.embedding.shape == (1, 2, 32)  # BOS + EOS, text width 32


def test_missing_folder_fails_fast(tmp_path):
    with pytest.raises(StableDiffusionLoadError, match="no such folder"):
        load_stable_diffusion(str(tmp_path / "nowhere"))


def test_non_sd_folder_names_what_is_missing(tmp_path, tiny_sd_dir):
    shutil.copytree(tiny_sd_dir / "vae", tmp_path / "not-sd" / "vae")
    with pytest.raises(StableDiffusionLoadError, match="missing \\['unet', 'scheduler', 'text_encoder', 'tokenizer'\\]"):
        load_stable_diffusion(str(tmp_path / "not-sd"))


def test_wrong_in_channels_fails_fast(tmp_path, tiny_sd_dir):
    folder = tmp_path / "inpainting-like"
    shutil.copytree(tiny_sd_dir, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["in_channels"] = 9
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(StableDiffusionLoadError, match="takes 9 input channels"):
        load_stable_diffusion(str(folder))


# ----------------------------------------------------------------------------------------------- trainer
def write_config(tmp_path: Path, tiny_sd_dir: Path, speuae_dir: Path, data_root: Path, **overrides) -> Path:
    config = {
        "output_dir": str(tmp_path / "run"), "data_root": str(data_root), "data_format": "cave",
        "pretrained_model_name_or_path": str(tiny_sd_dir), "speuae_path": str(speuae_dir),
        "train_scenes": ["balloons_ms", "cd_ms"], "val_scenes": ["watercolors_ms"],
        "patch_size": 16, "patches_per_scene": 4, "train_batch_size": 2, "max_train_steps": 4,
        "checkpointing_steps": 2, "validation_steps": 4, "validation_inference_steps": 1,
        "checkpoints_total_limit": 5, "report_to": None, "learning_rate": 1e-3, "use_ema": True, **overrides,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def spy_on_augmentation(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every (hsi, rgb) -> (hsi', rgb') that BatchAugmentation makes from now on, in order."""
    from uldm.data.augment import BatchAugmentation

    calls, original = [], BatchAugmentation.__call__

    def recording(self, hsi, rgb):
        out = original(self, hsi, rgb)
        calls.append((hsi, rgb, *out))
        return out

    monkeypatch.setattr(BatchAugmentation, "__call__", recording)
    return calls


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, monkeypatch):
    # with live batch augmentation: its random draws must be replayed on resume too
    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                                  mix_probability=0.5, tilt_std=0.3))
    augmented = spy_on_augmentation(monkeypatch)
    uninterrupted = {k: v.clone() for k, v in train(config).unet.state_dict().items()}
    assert len(augmented) == config.max_train_steps  # every training batch, live
    output_dir = Path(config.output_dir)
    assert [p.name for p in checkpoints_in(output_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert (output_dir / "pipeline" / "model_index.json").exists()
    shutil.rmtree(output_dir / "checkpoint-4")
    shutil.rmtree(output_dir / "pipeline")
    resumed = train(config, resume_from="latest").unet.state_dict()
    for name, tensor in uninterrupted.items():  # EMA weights included: they are what the pipeline keeps
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_checkpoints_hold_the_weight_average_as_a_unet_folder_like_diffusers_examples(tmp_path, tiny_sd_dir,
                                                                                     tiny_speuae_dir, tiny_cave_root):
    from diffusers import UNet2DConditionModel

    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root))
    final = train(config).unet.state_dict()  # the pipeline holds the average
    checkpoint = Path(config.output_dir) / "checkpoint-4"
    average = UNet2DConditionModel.from_pretrained(checkpoint, subfolder="unet_ema")
    for name, tensor in average.state_dict().items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=0, msg=name)
    assert not list(checkpoint.glob("custom_checkpoint_*.pkl"))  # no pickle for it


@pytest.mark.slow
def test_vae_decoder_fine_tuning_changes_only_the_decoder(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root):
    from diffusers import AutoencoderKL

    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                                    train_vae_decoder=True, vae_learning_rate=1e-2, max_train_steps=2,
                                                    checkpointing_steps=2, validation_steps=2, use_ema=False))
    pipeline = train(config)
    original = AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae").state_dict()
    tuned = pipeline.vae.state_dict()
    assert all(torch.equal(tuned[k], original[k]) for k in original if k.startswith("encoder."))
    assert any(not torch.equal(tuned[k], original[k]) for k in original if k.startswith("decoder."))


@pytest.mark.slow
@pytest.mark.real_data
def test_loss_goes_down_on_real_cave_crops(tmp_path, tiny_sd_dir, tiny_speuae_dir, cave_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config(ULDMConfig, write_config(
        tmp_path, tiny_sd_dir, tiny_speuae_dir, cave_root, train_scenes=["cd_ms", "flowers_ms", "paints_ms"],
        val_scenes=["balloons_ms"], patch_size=32, train_batch_size=4, max_train_steps=40, checkpointing_steps=40,
        validation_steps=40, report_to="tensorboard", use_ema=False, learning_rate=2e-3, lr_warmup_steps=0,
        lr_scheduler="constant"))
    train(config)
    events = EventAccumulator(str(Path(config.output_dir) / "logs" / config.tracker_project_name))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_two_process_run_leaves_identical_weights_on_both_ranks(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root):
    config = write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, max_train_steps=2,
                          checkpointing_steps=2, validation_steps=2)
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518",
               str(REPO / "tests" / "helpers" / "train_and_dump.py"), "uldm", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MULTI_CPU" in result.stdout
    out = tmp_path / "run"
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


# ------------------------------------------------------------------------------------------------ config
def test_missing_speuae_path_is_a_clear_config_error(tmp_path, tiny_sd_dir, tiny_cave_root):
    path = write_config(tmp_path, tiny_sd_dir, tmp_path / "nope", tiny_cave_root)
    config = load_config(ULDMConfig, path)
    with pytest.raises(ConfigError, match="speuae_path .*nope.*stage-1 output"):
        train(config)


def test_bad_pretrained_path_is_reported_by_the_entry_point(tmp_path, tiny_speuae_dir, tiny_cave_root, capsys):
    from uldm.stages.train_uldm import main

    path = write_config(tmp_path, tmp_path / "no-sd-here", tiny_speuae_dir, tiny_cave_root)
    assert main(["--config", str(path)]) == 2
    assert "pretrained_model_name_or_path" in capsys.readouterr().err


@pytest.mark.slow
def test_precomputed_latents_match_live_encoding_and_train(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root):
    from uldm.latent_cache import LatentCacheDataset
    from uldm.stages.train_uldm import load_components
    from uldm.training import build_train_loader

    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, use_ema=False,
                                                  max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                                                  precompute_latents=True, latent_cache_epochs=2))
    pipeline = train(config)
    cache_dir = Path(config.output_dir) / "latent_cache"
    assert sorted(p.name for p in cache_dir.glob("epoch-*.safetensors")) == ["epoch-0.safetensors", "epoch-1.safetensors"]
    assert (Path(config.output_dir) / "pipeline" / "model_index.json").exists() and pipeline.unet is not None
    # the cache holds exactly what live encoding gives for the same (epoch, item)
    parts, speuae = load_components(config)
    dataset, _, _ = build_train_loader(config, speuae.camera)
    cache = LatentCacheDataset(cache_dir, 2)
    for epoch, index in [(0, 0), (1, 5)]:
        dataset.set_epoch(epoch)
        cache.set_epoch(epoch)
        item = dataset[index]
        with torch.no_grad():
            posterior = parts.vae.encode(speuae.encode(item["hsi"][None], item["rgb"][None])).latent_dist
        scale = parts.vae.config.scaling_factor
        torch.testing.assert_close(cache[index]["mean"], posterior.mean[0] * scale, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[index]["std"], posterior.std[0] * scale, atol=1e-5, rtol=0)
    # a current cache is reused; a changed setting rebuilds it
    stamp = (cache_dir / "epoch-0.safetensors").stat().st_mtime_ns
    train(config, resume_from="latest")
    assert (cache_dir / "epoch-0.safetensors").stat().st_mtime_ns == stamp
    changed = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, use_ema=False,
                                                   max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                                                   precompute_latents=True, latent_cache_epochs=2, seed=1))
    train(changed)
    assert (cache_dir / "epoch-0.safetensors").stat().st_mtime_ns != stamp
    # so does a changed SpeUAE behind the same path: here the same weights, encoding with a Gauss-Newton step
    speuae_copy = tmp_path / "speuae-copy"
    shutil.copytree(tiny_speuae_dir, speuae_copy)
    copy_config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, speuae_copy, tiny_cave_root, use_ema=False,
                                                       max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                                                       precompute_latents=True, latent_cache_epochs=2, seed=1))
    train(copy_config)
    stamp = (cache_dir / "epoch-0.safetensors").stat().st_mtime_ns
    settings = json.loads((speuae_copy / "config.json").read_text())
    (speuae_copy / "config.json").write_text(json.dumps({**settings, "refine_steps": 1}))
    train(copy_config)
    assert (cache_dir / "epoch-0.safetensors").stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_cached_latents_are_of_augmented_patches(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, monkeypatch):
    from uldm.latent_cache import LatentCacheDataset
    from uldm.stages.train_uldm import encode_latents, load_components

    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, use_ema=False,
                                                  max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                                                  precompute_latents=True, latent_cache_epochs=1,
                                                  tilt_std=0.3, gain_std=0.2, mix_probability=1.0,
                                                  code_prior="root_polynomial"))
    augmented = spy_on_augmentation(monkeypatch)
    pipeline = train(config)
    (hsi, rgb, hsi_out, rgb_out), = augmented  # the 8 patches are one cache chunk; training reads the cache
    parts, speuae = load_components(config)
    assert (hsi_out - hsi).abs().max() > 1e-2  # tilted, mixed and scaled ...
    torch.testing.assert_close(speuae.split.render(hsi_out, dim=1), rgb_out, atol=1e-6, rtol=0)  # ... RGB to match
    with torch.no_grad():
        mean, std, condition = encode_latents(parts.vae, speuae, hsi_out, rgb_out, pipeline.code_prior,
                                              config.code_residual_scale)
    cache = LatentCacheDataset(Path(config.output_dir) / "latent_cache", 1)
    order = encoding_order(len(cache), epoch=0)  # the chunk held the items in this order; the cache, by item
    for row, index in enumerate(order.tolist()):
        torch.testing.assert_close(cache[index]["mean"], mean[row], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[index]["condition"], condition[row], atol=1e-5, rtol=0)


def test_latent_cache_chunks_mix_scenes_and_rows_stay_in_item_order(tmp_path):
    from uldm.latent_cache import LatentCacheDataset, build_latent_cache

    class TwoScenes:  # items 0-7 are scene 0's patches, 8-15 scene 1's, as the patch dataset lists them
        def set_epoch(self, epoch):
            pass

        def __len__(self):
            return 16

        def __getitem__(self, index):
            return {"hsi": torch.full((1,), float(index)), "rgb": torch.full((1,), float(index // 8))}

    chunks = []

    def encode(batch):
        chunks.append(batch["rgb"].flatten().tolist())
        return {"mean": batch["hsi"] * 2, "std": batch["hsi"] * 3, "condition": batch["rgb"]}

    build_latent_cache(tmp_path, TwoScenes(), 2, encode, {"test": 1}, batch_size=8, show_progress=False)
    assert len(chunks) == 4 and all(0.0 in chunk and 1.0 in chunk for chunk in chunks)  # each chunk: both scenes
    cache = LatentCacheDataset(tmp_path, 2)
    for epoch in (0, 1):
        cache.set_epoch(epoch)
        for index in range(16):  # row i is item i's, whatever order the chunks took
            assert cache[index]["mean"].item() == 2 * index and cache[index]["condition"].item() == index // 8
    assert encoding_order(16, 0).tolist() != encoding_order(16, 1).tolist()


def test_weights_digest_follows_every_weight():
    from uldm.latent_cache import weights_digest

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.bias[1] += 1e-6
    assert weights_digest(a) != weights_digest(b)
    full = weights_digest(a)
    assert full != weights_digest(a.to(torch.bfloat16))  # other precision, other latents


@pytest.mark.slow
def test_code_prior_is_fitted_on_the_train_split_cached_as_a_residual_and_saved(tmp_path, tiny_sd_dir, tiny_speuae_dir,
                                                                                 tiny_cave_root):
    from uldm.baseline import RootPolynomialRegression
    from uldm.latent_cache import LatentCacheDataset
    from uldm.models.code_prior import code_to_residual, prior_code
    from uldm.stages.train_uldm import load_components
    from uldm.training import build_train_loader, scene_paths

    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, use_ema=False,
                                                  max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                                                  precompute_latents=True, latent_cache_epochs=1,
                                                  code_prior="root_polynomial", code_residual_scale=2.5))
    pipeline = train(config)
    parts, speuae = load_components(config)
    regression = RootPolynomialRegression.fit_scenes(scene_paths(config, config.train_scenes), speuae.camera)
    torch.testing.assert_close(pipeline.code_prior.weights, torch.from_numpy(regression.weights).float())
    assert pipeline.config.code_residual_scale == 2.5
    # what the VAE encoded for a training patch is the scaled residual from the prior's code
    dataset, _, _ = build_train_loader(config, speuae.camera)
    dataset.set_epoch(0)
    item = dataset[3]
    hsi, rgb = item["hsi"][None], item["rgb"][None]
    with torch.no_grad():
        residual = code_to_residual(speuae.encode(hsi, rgb), prior_code(pipeline.code_prior, speuae, rgb), 2.5)
        posterior = parts.vae.encode(residual).latent_dist
    cache = LatentCacheDataset(Path(config.output_dir) / "latent_cache", 1)
    cache.set_epoch(0)
    torch.testing.assert_close(cache[3]["mean"], posterior.mean[0] * parts.vae.config.scaling_factor, atol=1e-5, rtol=0)
    # the saved pipeline keeps its prior
    from uldm import SpectralReconstructionPipeline

    loaded = SpectralReconstructionPipeline.from_pretrained(Path(config.output_dir) / "pipeline")
    assert torch.equal(loaded.code_prior.weights, pipeline.code_prior.weights)


@pytest.mark.slow
def test_a_scene_mixture_prior_is_fitted_on_the_train_split_and_leaves_each_patchs_scene_out(
        tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, monkeypatch):
    import uldm.scene_prior_fit as scene_prior_fit
    from uldm.latent_cache import LatentCacheDataset
    from uldm.models.code_prior import code_to_residual, prior_code
    from uldm.models.scene_prior import SceneMixturePrior
    from uldm.stages.train_uldm import load_components
    from uldm.training import build_train_loader

    scenes = ["balloons_ms", "cd_ms", "watercolors_ms"]  # a mixture needs 3 scenes: each is mixed from the others
    # a gate that follows each scene's palette, so that leaving a patch's own scene out changes its prior (the
    # gate fitted on three tiny scenes may trust the global fit alone)
    monkeypatch.setattr(scene_prior_fit, "fit_gate", lambda problems, mask, penalty=0.0: (
        torch.tensor([0.0, 20.0, 0.0, 0.0, 0.0], dtype=torch.float64) * mask, 0.0))
    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, use_ema=False,
                                                  max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                                                  precompute_latents=True, latent_cache_epochs=1, train_scenes=scenes,
                                                  code_prior="scene_mixture", code_residual_scale=2.5))
    pipeline = train(config)
    assert isinstance(pipeline.code_prior, SceneMixturePrior) and pipeline.code_prior.config.scene_names == scenes
    parts, speuae = load_components(config)
    dataset, _, _ = build_train_loader(config, speuae.camera)
    dataset.set_epoch(0)
    item = dataset[5]  # a patch of cd_ms (4 patches a scene)
    assert item["name"] == "cd_ms"
    hsi, rgb = item["hsi"][None], item["rgb"][None]
    prior = pipeline.code_prior
    with torch.no_grad():
        left_out = prior_code(prior.excluding(["cd_ms"]), speuae, rgb)
        full_bank = prior_code(prior, speuae, rgb)
        posterior = parts.vae.encode(code_to_residual(speuae.encode(hsi, rgb), left_out, 2.5)).latent_dist
    assert (left_out - full_bank).abs().max() > 1e-4  # leaving the scene's own expert out changes its prior
    cache = LatentCacheDataset(Path(config.output_dir) / "latent_cache", 1)
    cache.set_epoch(0)
    torch.testing.assert_close(cache[5]["mean"], posterior.mean[0] * parts.vae.config.scaling_factor, atol=1e-5, rtol=0)
    from uldm import SpectralReconstructionPipeline

    loaded = SpectralReconstructionPipeline.from_pretrained(Path(config.output_dir) / "pipeline")
    assert torch.equal(loaded.code_prior.expert_weights, prior.expert_weights)


@pytest.mark.slow
def test_training_goes_on_from_a_trained_uldm_pipeline(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root):
    from uldm.stages.train_uldm import load_components

    first = load_config(ULDMConfig, write_config(tmp_path / "a", tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                                 use_ema=False, max_train_steps=2, checkpointing_steps=2,
                                                 validation_steps=2))
    trained = train(first)
    folder = Path(first.output_dir) / "pipeline"
    second = load_config(ULDMConfig, write_config(tmp_path / "b", folder, tiny_speuae_dir, tiny_cave_root,
                                                  use_ema=False, max_train_steps=2, checkpointing_steps=2,
                                                  validation_steps=2, code_prior="root_polynomial",
                                                  code_prior_degree=3))
    parts, _ = load_components(second)  # the trained UNet as it was: not widened again
    assert parts.unet.config.in_channels == trained.unet.config.in_channels
    for name, tensor in trained.unet.state_dict().items():
        assert torch.equal(parts.unet.state_dict()[name], tensor), name
    assert torch.equal(parts.empty_prompt.embedding, trained.prompt_embedding.embedding)
    assert parts.noise_scheduler.config.prediction_type == trained.scheduler.config.prediction_type
    assert train(second).code_prior.config.degree == 3


def test_refused_stage_2_combinations(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root):
    with pytest.raises(ConfigError, match="precompute_latents cannot be combined"):
        load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                             precompute_latents=True, train_vae_decoder=True))
    with pytest.raises(ConfigError, match="code_prior must be one of"):
        load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, code_prior="mlp"))
    with pytest.raises(ConfigError, match="code_residual_scale must be > 0"):
        load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                             code_prior="root_polynomial", code_residual_scale=0))
    with pytest.raises(ConfigError, match="code_prior_degree must be 1, 2, 3 or 4"):
        load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                             code_prior="root_polynomial", code_prior_degree=5))
    with pytest.raises(ConfigError, match="min_train_timestep must be >= 0"):
        load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                             min_train_timestep=-1))


def test_min_train_timestep_restricts_the_noise_levels_trained(tiny_sd_dir):
    from uldm.training import denoising_loss

    parts = load_stable_diffusion(str(tiny_sd_dir))  # conv_in already widened for [RGB, code] latents
    unet = parts.unet
    seen = []
    unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    channels = parts.vae.config.latent_channels
    latents, condition = torch.randn(16, channels, 8, 8), torch.randn(16, channels, 8, 8)
    denoising_loss(unet, parts.noise_scheduler, latents, condition, parts.empty_prompt.embedding, min_timestep=999)
    denoising_loss(unet, parts.noise_scheduler, latents, condition, parts.empty_prompt.embedding)
    assert seen[0].tolist() == [999] * 16  # only the step a 1-step pipeline runs
    assert len(set(seen[1].tolist())) > 8  # all noise levels by default
    with pytest.raises(ConfigError, match="below the scheduler's 1000"):
        denoising_loss(unet, parts.noise_scheduler, latents, condition, parts.empty_prompt.embedding, min_timestep=1000)


@pytest.mark.slow
def test_bf16_accumulation_checkpointing_and_push_to_hub(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, hub_server):
    from huggingface_hub import HfApi

    config = load_config(ULDMConfig, write_config(
        tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, mixed_precision="bf16", gradient_accumulation_steps=2,
        gradient_checkpointing=True, max_train_steps=2, checkpointing_steps=2, validation_steps=2, use_ema=False,
        push_to_hub=True, hub_model_id="testorg/uldm-from-training"))
    pipeline = train(config)
    assert pipeline.unet.dtype == torch.float32  # fp32 master weights saved, whatever the autocast dtype
    files = {s.rfilename for s in HfApi().model_info("testorg/uldm-from-training").siblings}
    assert {"model_index.json", "README.md", "unet/diffusion_pytorch_model.safetensors"} <= files


# --------------------------------------------------------------------------------------------- benchmarks
def test_base_scaffold_with_eight_latent_channels_loads_as_stable_diffusion(tmp_path):
    from uldm.sd_scaffold import write_small_sd

    parts = load_stable_diffusion(str(write_small_sd(tmp_path / "base", size="base")))
    assert parts.vae.config.latent_channels == 8
    assert parts.unet.config.in_channels == 16 and parts.unet.config.out_channels == 8  # widened: [RGB, noisy]


def test_throughput_benchmark_times_the_training_step(load_benchmark, capsys):
    load_benchmark("stage2_throughput").main(["--size", "tiny", "--resolution", "32", "--batch-size", "1",
                                              "--accumulation", "1", "2", "--warmup", "0", "--steps", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[1]) > 0 for row in rows)  # samples/s


# ----------------------------------------------------------------------------------- SpaAE pre-training
@pytest.mark.slow
def test_spaae_adaptation_writes_an_sd_folder_and_resumes_exactly(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root):
    from diffusers import AutoencoderKL

    from uldm.stages.pretrain_spaae import SpaAEConfig, train as pretrain

    sd_folder = tmp_path / "sd"
    shutil.copytree(tiny_sd_dir, sd_folder)
    config_path = tmp_path / "spaae.yaml"
    config_path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "sd_folder": str(sd_folder), "speuae_path": str(tiny_speuae_dir),
        "data_root": str(tiny_cave_root), "data_format": "cave", "train_scenes": ["balloons_ms", "cd_ms"],
        "val_scenes": ["watercolors_ms"], "patch_size": 16, "patches_per_scene": 4, "train_batch_size": 2,
        "max_train_steps": 4, "checkpointing_steps": 2, "checkpoints_total_limit": 5, "report_to": None,
        "learning_rate": 1e-2,
    }))
    config = load_config(SpaAEConfig, config_path)
    original = AutoencoderKL.from_pretrained(sd_folder / "vae").state_dict()
    pretrain(config)
    written = Path(config.output_dir) / "sd"
    trained = AutoencoderKL.from_pretrained(written / "vae").state_dict()
    assert trained.keys() == original.keys()
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # the adapted SpaAE is in <run>/sd/vae
    for name, tensor in AutoencoderKL.from_pretrained(sd_folder / "vae").state_dict().items():
        assert torch.equal(tensor, original[name]), name  # and the source folder is untouched
    assert sorted(p.name for p in written.iterdir()) == sorted(p.name for p in sd_folder.iterdir())
    # the run died after step 2: the checkpoint restores the weights
    shutil.rmtree(Path(config.output_dir) / "checkpoint-4")
    pretrain(config, resume_from="latest")
    resumed = AutoencoderKL.from_pretrained(written / "vae").state_dict()
    for name, tensor in trained.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_full_model_gathers_into_a_rebuilt_module_when_sharded(tiny_vae_dir):
    """Under FSDP / DeepSpeed `full_model` loads the gathered state into a fresh module (here a fake accelerator
    stands in for the sharded run: the gather itself needs several GPUs)."""
    from accelerate.utils import DistributedType
    from diffusers import AutoencoderKL

    from uldm.stages.pretrain_spaae import VAEObjective
    from uldm.training import full_model

    class ShardedAccelerator:
        distributed_type, is_main_process, device = DistributedType.FSDP, True, torch.device("cpu")

        def unwrap_model(self, model):
            return model

        def get_state_dict(self, model):
            return {k: v.clone() for k, v in model.state_dict().items()}

    objective = VAEObjective(AutoencoderKL.from_pretrained(tiny_vae_dir))
    copy = full_model(ShardedAccelerator(), objective, rebuild=VAEObjective.fresh_copy)
    assert copy is not objective and isinstance(copy.vae, AutoencoderKL)
    for name, tensor in objective.state_dict().items():
        assert torch.equal(copy.state_dict()[name], tensor), name
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    assert full_model(ShardedAccelerator(), vae) is not vae  # the default rebuild: same class from its config


# ------------------------------------------------------------------------------- tiny SpaAE, RGB encoding
@pytest.mark.slow
def test_stage_2_with_a_replacement_tiny_spaae_caches_deterministic_latents(tmp_path, tiny_sd_dir, tiny_tae_sd_dir,
                                                                            tiny_speuae_dir, tiny_cave_root):
    """The SpaAE of another folder replaces the checkpoint's (diffusers' --pretrained_vae_model_name_or_path); a tiny
    autoencoder's cached latents have zero spread and the sRGB-encoded RGB is what the condition latents encode."""
    from uldm.latent_cache import LatentCacheDataset
    from uldm.models import spaae
    from uldm.training import build_train_loader

    config = load_config(ULDMConfig, write_config(
        tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, pretrained_vae_model_name_or_path=str(tiny_tae_sd_dir),
        precompute_latents=True, latent_cache_epochs=1, rgb_encoding="srgb", patch_size=16))
    pipeline = train(config)
    vae = spaae.load_spaae(tiny_tae_sd_dir)
    assert type(pipeline.vae).__name__ == "AutoencoderTiny" and pipeline.config.rgb_encoding == "srgb"
    for name, tensor in vae.state_dict().items():
        assert torch.equal(pipeline.vae.state_dict()[name], tensor), name
    cache = LatentCacheDataset(Path(config.output_dir) / "latent_cache", 1)
    dataset, _, _ = build_train_loader(config, pipeline.camera)
    item = dataset[0]
    assert torch.count_nonzero(cache[0]["std"]) == 0
    with torch.no_grad():
        expected = spaae.encode(vae, spaae.rgb_image(item["rgb"][None], "srgb"))[0]
        torch.testing.assert_close(cache[0]["condition"], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(pipeline.encode_rgb(item["rgb"][None])[0], expected, atol=1e-5, rtol=0)
    summary = json.loads((Path(config.output_dir) / "logs" / "run_summary.json").read_text())
    assert summary == [{**summary[0], "from_step": 0, "to_step": 4, "samples": 8, "processes": 1}]
    assert summary[0]["device"].startswith("CPU") and summary[0]["seconds"] >= 0 and summary[0]["ended"]


def test_a_killed_call_keeps_its_budget_up_to_its_last_checkpoint(tmp_path):
    """The budget entry of a call is written at each checkpoint (ended: null) and completed at its end; a call
    killed after a checkpoint leaves its entry, and the resumed call adds its own."""
    from types import SimpleNamespace

    from uldm.training.loop import record_budget

    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, mixed_precision="no")
    config = SimpleNamespace(train_batch_size=2, gradient_accumulation_steps=1)
    record_budget(tmp_path, accelerator, config, 0, 5, 10.0, started="first", ended=False)
    record_budget(tmp_path, accelerator, config, 0, 10, 20.0, started="first", ended=False)  # then killed
    record_budget(tmp_path, accelerator, config, 10, 12, 3.0, started="second", ended=False)
    record_budget(tmp_path, accelerator, config, 10, 20, 15.0, started="second")
    summary = json.loads((tmp_path / "logs" / "run_summary.json").read_text())
    assert [(e["from_step"], e["to_step"], e["samples"], e["seconds"], e["ended"] is None) for e in summary] == [
        (0, 10, 20, 20.0, True), (10, 20, 20, 15.0, False)]


def test_a_replacement_spaae_must_match_the_unet_and_an_rgb_encoding_must_match_the_run(
        tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root, tiny_pipeline):
    from diffusers import AutoencoderTiny

    from conftest import TINY_TAESD_CONFIG

    AutoencoderTiny(**{**TINY_TAESD_CONFIG, "latent_channels": 16}).save_pretrained(tmp_path / "tae16")
    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root,
                                                  pretrained_vae_model_name_or_path=str(tmp_path / "tae16")))
    with pytest.raises(ConfigError, match="tae16: 16 latent channels, the UNet generates 4"):
        train(config)
    tiny_pipeline.save_pretrained(tmp_path / "linear-uldm")  # rgb_encoding "linear", the default
    config = load_config(ULDMConfig, write_config(tmp_path, tmp_path / "linear-uldm", tiny_speuae_dir, tiny_cave_root,
                                                  rgb_encoding="srgb"))
    with pytest.raises(ConfigError, match="encodes its RGB condition as 'linear'.*set rgb_encoding: linear"):
        train(config)


def test_metrics_lines_of_a_resumed_run_win_and_a_cut_line_is_skipped(tmp_path):
    from uldm.training import read_metrics

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text(
        '{"step": 1, "train/loss": 3.0}\n{"step": 2, "train/loss": 2.0}\n{"step": 3, "train/lo\n'
        '{"step": 2, "train/loss": 2.5}\n{"step": 3, "train/loss": 1.5}\n')
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.5},
                                      {"step": 3, "train/loss": 1.5}]
    assert read_metrics(tmp_path / "nowhere") == []


@pytest.mark.slow
def test_spaae_adaptation_of_a_tiny_autoencoder_keeps_rgb_latents_anchored(tmp_path, tiny_tae_sd_dir,
                                                                            tiny_speuae_dir, tiny_cave_root):
    from uldm.models import spaae
    from uldm.stages.pretrain_spaae import SpaAEConfig, train as adapt
    from uldm.training import read_metrics

    config_path = tmp_path / "spaae.yaml"
    config_path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "sd_folder": str(tiny_tae_sd_dir), "speuae_path": str(tiny_speuae_dir),
        "data_root": str(tiny_cave_root), "train_scenes": ["balloons_ms", "cd_ms"], "val_scenes": ["watercolors_ms"],
        "patch_size": 16, "patches_per_scene": 4, "train_batch_size": 2, "max_train_steps": 4,
        "checkpointing_steps": 2, "checkpoints_total_limit": 5, "report_to": None, "learning_rate": 1e-2,
        "latent_anchor_weight": 1.0, "rgb_encoding": "srgb",
    }))
    config = load_config(SpaAEConfig, config_path)
    adapt(config)
    rows = read_metrics(Path(config.output_dir))
    assert rows[0]["train/rgb_latent_drift"] == 0  # the first step's latents are the starting encoder's
    assert rows[-1]["train/rgb_latent_drift"] > 0 and all(row["train/kl"] == 0 for row in rows)
    written = Path(config.output_dir) / "sd" / "vae"
    trained, start = spaae.load_spaae(written).state_dict(), spaae.load_spaae(tiny_tae_sd_dir).state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    shutil.rmtree(Path(config.output_dir) / "checkpoint-4")
    adapt(config, resume_from="latest")
    for name, tensor in spaae.load_spaae(written).state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=1e-6, msg=name)


def test_training_summary_reads_a_runs_own_logs(tmp_path, load_benchmark):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train/loss": 1.0 / s, **({"val/loss": 0.5 / s} if s % 2 == 0 else {})}) + "\n"
        for s in range(1, 5)))
    (tmp_path / "logs" / "run_summary.json").write_text(json.dumps([
        {"from_step": 0, "to_step": 2, "samples": 16, "seconds": 3.0, "device": "CPU, 2 threads"},
        {"from_step": 2, "to_step": 4, "samples": 16, "seconds": 5.0, "device": "CPU, 2 threads"}]))
    summary = load_benchmark("training_summary").summarise(tmp_path, window=2)
    assert summary["steps"] == 4 and summary["samples"] == 32 and summary["seconds"] == 8.0
    assert summary["train_loss_first"] == pytest.approx(0.75) and summary["train_loss_last"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert summary["validations"] == [{"step": 2, "val/loss": 0.25}, {"step": 4, "val/loss": 0.125}]


@pytest.mark.slow
def test_the_trainers_card_carries_the_validation_metrics_it_measured(tmp_path, tiny_sd_dir, tiny_speuae_dir,
                                                                      tiny_cave_root):
    from huggingface_hub import ModelCard

    from uldm.training import read_metrics

    config = load_config(ULDMConfig, write_config(tmp_path, tiny_sd_dir, tiny_speuae_dir, tiny_cave_root))
    train(config)
    card = ModelCard.load(Path(config.output_dir) / "pipeline" / "README.md")
    last = read_metrics(Path(config.output_dir))[-1]
    assert card.data.uldm["metrics"]["PSNR"] == pytest.approx(last["val/psnr"])
    results = card.data.eval_results
    assert {r.metric_type: r.metric_value for r in results}["psnr"] == pytest.approx(last["val/psnr"])
    assert card.data.pipeline_tag == "image-to-image" and "SpectralReconstructionPipeline.from_pretrained" in card.text
    assert "```yaml\noutput_dir:" in card.text and "data_root" not in card.text  # no local folder in a card
    assert f"Budget: {config.max_train_steps} steps, " in card.text and "min of training on CPU" in card.text


def test_previews_go_to_every_tracker_that_takes_images():
    from uldm.training import log_images

    class Tracker:
        def __init__(self, name):
            self.name, self.calls = name, []

        def log_images(self, values, step=None, **kwargs):
            self.calls.append((values, step, kwargs))

    class TextOnly:
        name = "text"

    board, wandb = Tracker("tensorboard"), Tracker("wandb")
    images = np.zeros((2, 4, 5, 3), dtype=np.float32)
    log_images([board, wandb, TextOnly()], "samples", images, 7)
    (values, step, kwargs), = board.calls
    assert values["samples"] is images and step == 7 and kwargs == {"dataformats": "NHWC"}
    (values, step, kwargs), = wandb.calls
    assert [image.shape for image in values["samples"]] == [(4, 5, 3)] * 2 and kwargs == {}
