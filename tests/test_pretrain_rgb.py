"""RGB pre-training (stages/pretrain_rgb.py): photographs, the objective, the SD folder it writes, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from uldm.data import DatasetError, PhotoCropDataset, find_images
from uldm.models import spaae
from uldm.training import ConfigError, load_config, read_metrics


# ------------------------------------------------------------------------------------------------ photos
def test_photo_folders_are_scanned_recursively_and_unreadable_files_skipped_by_name(photo_folder, caplog):
    dataset = PhotoCropDataset(photo_folder, resolution=32, resize=0, seed=0)
    names = sorted(p.relative_to(photo_folder).as_posix() for p in dataset.paths)
    assert names == ["a/photo0.jpg", "a/photo1.jpg", "a/photo2.jpg", "a/photo3.jpg", "b/photo0.png", "b/photo1.png",
                     "held/photo0.png", "held/photo1.png"]  # the greyscale PNG is converted, the text file ignored
    assert [p.name for p, _ in dataset.skipped] == ["broken.jpg"]
    assert "broken.jpg: cannot decode image" in dataset.skipped[0][1]
    assert "broken.jpg" in caplog.text


def test_holdout_folders_are_left_out_or_kept_alone(photo_folder):
    assert all("held" not in p.parts for p in find_images(photo_folder, exclude=["held"]))
    assert [p.parent.name for p in find_images(photo_folder, include=["held"])] == ["held", "held"]


def test_crops_are_seeded_by_epoch_and_index_and_in_minus_one_to_one(photo_folder):
    dataset = PhotoCropDataset(photo_folder, resolution=32, resize=40, seed=5)
    first = dataset[3]["image"]
    assert first.shape == (3, 32, 32) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(PhotoCropDataset(photo_folder, resolution=32, resize=40, seed=5)[3]["image"], first)
    crops = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        crops.add(dataset[3]["image"].sum().item())
    assert len(crops) > 1  # new crops / flips each epoch


def test_a_folder_without_a_readable_image_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "bad.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"empty: no readable image \(1 unreadable files\).*bad.png"):
        PhotoCropDataset(tmp_path / "empty", resolution=16)
    with pytest.raises(DatasetError, match="does not exist"):
        PhotoCropDataset(tmp_path / "missing", resolution=16)


# ---------------------------------------------------------------------------------------------- the stage
def write_config(tmp_path: Path, sd_folder: Path, photos: Path, **overrides) -> Path:
    values = {
        "output_dir": str(tmp_path / "run"), "sd_folder": str(sd_folder), "image_root": str(photos),
        "holdout": ["held"], "resolution": 32, "resize": 0, "train_batch_size": 2, "max_train_steps": 6,
        "learning_rate": 1e-3, "latent_cache_epochs": 2, "checkpointing_steps": 2, "checkpoints_total_limit": 5,
        "validation_steps": 3, "sample_count": 2, "sample_steps": 2, "use_ema": True, "ema_decay": 0.9,
        "report_to": None, "seed": 0,
    }
    values.update(overrides)
    path = tmp_path / "rgb.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()


@pytest.mark.slow
def test_pretraining_writes_an_sd_folder_samples_and_curves_and_resumes_exactly(tmp_path, tiny_tae_sd_dir,
                                                                                photo_folder):
    from uldm.stages.pretrain_rgb import RGBPretrainConfig, train

    config = load_config(RGBPretrainConfig, write_config(tmp_path, tiny_tae_sd_dir, photo_folder))
    train(config)
    run = Path(config.output_dir)
    written = run / "sd"
    assert sorted(p.name for p in written.iterdir()) == sorted(p.name for p in tiny_tae_sd_dir.iterdir())
    assert json.loads((written / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderTiny"]
    trained, start = unet_weights(written), unet_weights(tiny_tae_sd_dir)
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the UNet was trained...
    assert all(torch.equal(a, b) for a, b in zip(unet_weights(tiny_tae_sd_dir).values(), start.values()))  # ...a copy
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000003.png", "step-000006.png"]
    assert (run / "loss_curve.png").stat().st_size > 0 and (run / "val_loss_curve.png").stat().st_size > 0
    rows = read_metrics(run)
    assert [row["step"] for row in rows] == list(range(1, 7)) and "val/loss" in rows[2] and "val/loss" in rows[5]
    # the run died after step 4: resuming from its checkpoint ends where the uninterrupted run ended
    shutil.rmtree(run / "checkpoint-6")
    shutil.rmtree(written)
    train(config, resume_from="latest")
    for name, tensor in unet_weights(written).items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=1e-6, msg=name)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_tae_sd_dir, photo_folder):
    from uldm.models.sd_adapter import load_stable_diffusion
    from uldm.stages.pretrain_rgb import fixed_validation_batch, validation_loss
    from uldm.training import denoising_loss

    torch.manual_seed(0)
    parts = load_stable_diffusion(str(tiny_tae_sd_dir), widen=False)
    dataset = PhotoCropDataset(photo_folder, resolution=32, resize=0, include=["a", "b"])
    batch = fixed_validation_batch(parts.vae, dataset, parts.noise_scheduler.config.num_train_timesteps, 0,
                                   torch.device("cpu"))
    prompt = parts.empty_prompt.embedding
    before = validation_loss(parts.unet, parts.noise_scheduler, batch, prompt)
    optimizer = torch.optim.AdamW(parts.unet.parameters(), lr=1e-3)
    for _ in range(10):
        loss = denoising_loss(parts.unet, parts.noise_scheduler, batch["latents"], None, prompt)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert validation_loss(parts.unet, parts.noise_scheduler, batch, prompt) < 0.8 * before


@pytest.mark.slow
def test_stage_2_trains_from_the_rgb_pretrained_base_and_its_pipeline_reconstructs(tmp_path, tiny_tae_sd_dir,
                                                                                   photo_folder, tiny_speuae_dir,
                                                                                   tiny_cave_root):
    from uldm.pipelines import SpectralReconstructionPipeline
    from uldm.stages.pretrain_rgb import RGBPretrainConfig, train as pretrain
    from uldm.stages.train_uldm import ULDMConfig, train as train_uldm

    pretrain(load_config(RGBPretrainConfig, write_config(tmp_path, tiny_tae_sd_dir, photo_folder, max_train_steps=2,
                                                         validation_steps=100)))
    base = tmp_path / "run" / "sd"
    stage2 = tmp_path / "stage2.yaml"
    stage2.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "uldm"), "pretrained_model_name_or_path": str(base),
        "speuae_path": str(tiny_speuae_dir), "data_root": str(tiny_cave_root), "train_scenes": ["balloons_ms", "cd_ms"],
        "val_scenes": ["watercolors_ms"], "patch_size": 16, "patches_per_scene": 2, "train_batch_size": 2,
        "max_train_steps": 2, "validation_steps": 2, "validation_inference_steps": 1, "default_denoising_steps": 1,
        "rgb_encoding": "srgb", "report_to": None,
    }))
    train_uldm(load_config(ULDMConfig, stage2))
    pipeline = SpectralReconstructionPipeline.from_pretrained(tmp_path / "uldm" / "pipeline")
    assert type(pipeline.vae).__name__ == "AutoencoderTiny" and pipeline.config.rgb_encoding == "srgb"
    for name, tensor in spaae.load_spaae(base).state_dict().items():  # the base's SpaAE, carried unchanged
        assert torch.equal(pipeline.vae.state_dict()[name], tensor), name
    # random colours are often outside the camera's gamut, where the physical projection changes the RGB: the
    # composition's own exactness is checked on the raw estimate
    out = pipeline(torch.rand(16, 16, 3), input_space="linear", generator=torch.Generator().manual_seed(0),
                   show_progress_bar=False, physical=False)
    assert out.spectra.shape == (1, 16, 16, 31) and out.rgb_error.max() < 1e-5


def test_bad_inputs_fail_before_anything_is_written(tmp_path, tiny_sd_dir, tiny_tae_sd_dir, photo_folder, capsys):
    from diffusers import AutoencoderTiny

    from conftest import TINY_TAESD_CONFIG
    from uldm.models.sd_adapter import save_sd_folder
    from uldm.stages.pretrain_rgb import RGBPretrainConfig, main, train

    empty = tmp_path / "no-photos"
    empty.mkdir()
    (empty / "x.jpg").write_bytes(b"garbage")
    config = load_config(RGBPretrainConfig, write_config(tmp_path, tiny_tae_sd_dir, empty, holdout=[]))
    with pytest.raises(ConfigError, match=r"image_root: .*no-photos: no readable image.*x.jpg"):
        train(config)
    mixed = save_sd_folder(tiny_sd_dir, tmp_path / "mixed", vae=AutoencoderTiny(**{**TINY_TAESD_CONFIG,
                                                                                   "latent_channels": 16}))
    config = load_config(RGBPretrainConfig, write_config(tmp_path, mixed, photo_folder))
    with pytest.raises(ConfigError, match="sd_folder: .*16 latent channels"):
        train(config)
    assert main(["--config", str(write_config(tmp_path, tmp_path / "nowhere", photo_folder))]) == 2
    assert "sd_folder: " in capsys.readouterr().err
    assert not (tmp_path / "run" / "sd").exists()
