"""RGB pre-training: an SD-architecture UNet learns natural photographs in a SpaAE's latent space.

    python -m uldm.sd_scaffold runs/sd-taesd3 base --vae taesd3 --prediction-type sample
    python stages/pretrain_rgb.py --config stages/configs/rgb_pretrain_cpu.yaml          # or accelerate launch ...

The method's premise is that stage 2 starts from a UNet that already knows natural images (Stable Diffusion's).
Where none can be downloaded, this stage makes one with Stable Diffusion's own objective: noise the latent of a
photograph with the folder's scheduler, predict its target (epsilon, v or the sample, as the scheduler config
says), with the empty prompt (unconditional), on seeded random crops and flips of a folder tree of photographs,
whose latents are encoded once by the folder's SpaAE (a fingerprinted cache, as in stage 2).

Output: <output_dir>/sd, the `sd_folder` with the trained UNet (its weight average with `use_ema`), which
`stages/train_uldm.py --set pretrained_model_name_or_path=<output_dir>/sd` consumes as it would consume
`stabilityai/stable-diffusion-2-1`. What it learnt shows in <output_dir>/samples/step-N.png (grids of samples),
<output_dir>/loss_curve.png and the validation loss: the same objective on held-out photographs (the `holdout`
sub-folders) at fixed noise and timesteps, comparable from one validation to the next.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from uldm.data import DatasetError, PhotoCropDataset, default_photo_root
from uldm.models import spaae
from uldm.models.sd_adapter import (
    StableDiffusionLoadError,
    load_stable_diffusion,
    sampling_scheduler,
    save_sd_folder,
)
from uldm.pipelines.common import sampling_timesteps
from uldm.training import (
    ConfigError,
    RunConfig,
    averaged_weights,
    build_accelerator,
    build_ema,
    build_scheduler,
    config_dict,
    denoising_loss,
    diffusion_target,
    final_model,
    full_model,
    make_loader,
    read_metrics,
    resume,
    stage_main,
    log_images,
    train_loop,
)


@dataclass
class RGBPretrainConfig(RunConfig):
    sd_folder: Optional[str] = None  # SD folder: its unet/ is trained, its vae/ (the SpaAE) sets the latent space
    image_root: Optional[str] = None  # folder tree of photographs (default ../shared/data/rgb or $ULDM_RGB_ROOT)
    holdout: Any = ("kodak24", "mcmaster18")  # sub-folders kept out of training for the validation loss ([]: none)
    resolution: int = 128  # crop size (pixels); latents are resolution / 8 with a TAESD SpaAE
    resize: int = 256  # shorter side resized to this before cropping (0: native size)
    random_flip: bool = True
    precompute_latents: bool = True  # encode `latent_cache_epochs` epochs of crops once, cycle through them
    latent_cache_epochs: int = 4
    sample_count: int = 16  # images in each sample grid
    sample_steps: int = 25  # DDIM steps (trailing spacing) for the samples
    learning_rate: float = 1e-4

    def validate(self) -> None:
        super().validate()
        if not self.sd_folder:
            raise ConfigError("sd_folder is required")
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        for name in ("latent_cache_epochs", "sample_count", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if isinstance(self.holdout, str):
            self.holdout = [self.holdout]
        self.holdout = list(self.holdout or [])

    def photo_root(self) -> Path:
        root = Path(self.image_root) if self.image_root else default_photo_root()
        if root is None:
            raise ConfigError("no photographs found: set image_root (or $ULDM_RGB_ROOT)")
        return root


def photo_datasets(config: RGBPretrainConfig) -> tuple[PhotoCropDataset, Optional[PhotoCropDataset]]:
    """(training crops, held-out crops or None): the holdout sub-folders are left out of training."""
    root = config.photo_root()
    try:
        train = PhotoCropDataset(root, config.resolution, config.resize, config.random_flip, exclude=config.holdout,
                                 seed=config.seed)
        held_out = (PhotoCropDataset(root, config.resolution, config.resize, random_flip=False,
                                     include=config.holdout, seed=config.seed) if config.holdout else None)
    except DatasetError as exc:
        raise ConfigError(f"image_root: {exc}") from exc
    for _, reason in train.skipped:
        print(f"skipped (unreadable): {reason}", file=sys.stderr)
    return train, held_out


@torch.no_grad()
def fixed_validation_batch(vae, dataset: PhotoCropDataset, num_train_timesteps: int, seed: int,
                           device: torch.device) -> dict[str, torch.Tensor]:
    """Latents of the held-out crops with noise and timesteps drawn once: the validation loss is then the same
    measurement at every validation. Timesteps spread evenly over the schedule."""
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))]).to(device)
    latents = torch.cat([spaae.encode(vae, chunk).float() for chunk in images.split(16)])
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.linspace(0, num_train_timesteps - 1, len(latents)).round().long().to(device)
    return {"latents": latents, "noise": noise, "timesteps": timesteps}


@torch.no_grad()
def validation_loss(unet, noise_scheduler, batch: dict[str, torch.Tensor], prompt: torch.Tensor) -> float:
    latents, noise, timesteps = batch["latents"], batch["noise"], batch["timesteps"]
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    dtype = next(unet.parameters()).dtype
    losses = []
    for start in range(0, len(latents), 16):
        part = slice(start, start + 16)
        prediction = unet(noisy[part].to(dtype), timesteps[part],
                          encoder_hidden_states=prompt.expand(len(noisy[part]), -1, -1).to(dtype)).sample
        target = diffusion_target(noise_scheduler, latents[part], noise[part], timesteps[part])
        losses.append(F.mse_loss(prediction.float(), target.float(), reduction="sum"))
    return (torch.stack(losses).sum() / latents.numel()).item()


@torch.no_grad()
def sample_images(unet, vae, noise_scheduler, prompt: torch.Tensor, count: int, latent_size: int, steps: int,
                  seed: int) -> torch.Tensor:
    """`count` unconditional samples (count x 3 x H x W in [0, 1], sRGB-encoded): DDIM from seeded noise, decoded."""
    scheduler = sampling_scheduler(noise_scheduler)
    dtype = next(unet.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    shape = (count, unet.config.out_channels, latent_size, latent_size)
    sample = torch.randn(shape, generator=generator).to(prompt.device, dtype)
    text = prompt.expand(count, -1, -1).to(dtype)
    for t, t_device in sampling_timesteps(scheduler, steps, prompt.device):
        sample = scheduler.step(unet(sample, t_device, encoder_hidden_states=text).sample, t, sample).prev_sample
    return ((spaae.decode(vae, sample).float() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """A square-ish grid PNG of N x 3 x H x W images in [0, 1], written atomically."""
    from PIL import Image

    from uldm.io import atomic_write

    count, _, height, width = images.shape
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    grid = np.ones((rows * height, columns * width, 3), dtype=np.float32)
    for index, image in enumerate(images.cpu().numpy()):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image.transpose(1, 2, 0)
    with atomic_write(path) as tmp:
        Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(tmp, format="PNG")
    return path


def plot_loss_curve(output_dir: Path) -> Optional[Path]:
    """<output_dir>/loss_curve.png: training loss (and its running mean) and validation loss against the step."""
    rows = read_metrics(output_dir)
    if not rows:
        return None
    from uldm.visualize import plot_curve

    steps = [row["step"] for row in rows]
    loss = np.array([row["train/loss"] for row in rows])
    window = max(1, len(loss) // 50)
    totals = np.concatenate([[0.0], np.cumsum(loss)])
    first = np.maximum(np.arange(1, len(loss) + 1) - window, 0)
    smooth = (totals[1:] - totals[first]) / (np.arange(1, len(loss) + 1) - first)  # mean of the last `window` steps
    series = {"training loss": loss.tolist(), f"mean of the last {window} steps": smooth.tolist()}
    path = plot_curve(output_dir / "loss_curve.png", steps, series, xlabel="step", ylabel="MSE",
                      title="RGB pre-training", marker=None, log_y=True)
    validated = [row for row in rows if "val/loss" in row]
    if validated:
        plot_curve(output_dir / "val_loss_curve.png", [row["step"] for row in validated],
                   {"held-out loss (fixed noise)": [row["val/loss"] for row in validated]}, xlabel="step",
                   ylabel="MSE", title="RGB pre-training, held-out photographs")
    return path


def train(config: RGBPretrainConfig, resume_from: Optional[str] = None):
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config)
    set_seed(config.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 1. the SD folder: UNet (trained, as it is: no widening), frozen SpaAE, scheduler, empty prompt
    try:
        parts = load_stable_diffusion(config.sd_folder, widen=False)  # checks that UNet and SpaAE agree
    except StableDiffusionLoadError as exc:
        raise ConfigError(f"sd_folder: {exc}") from exc
    unet, vae, noise_scheduler = parts.unet, parts.vae, parts.noise_scheduler
    vae.requires_grad_(False).eval().to(accelerator.device, dtype=weight_dtype)
    prompt = parts.empty_prompt.embedding.to(accelerator.device, dtype=torch.float32)

    # 2. photographs: seeded crops, their latents cached once (fingerprinted: other settings or weights rebuild it)
    dataset, held_out = photo_datasets(config)
    accelerator.print(f"{dataset}; held out for validation: {len(held_out) if held_out else 0} images")
    if config.precompute_latents:
        from uldm.latent_cache import LatentCacheDataset, build_latent_cache, weights_digest

        folder = output_dir / "latent_cache"
        if accelerator.is_main_process:
            fingerprint = {"config": config_dict(config), "images": [str(p) for p in dataset.paths],
                           "weights": weights_digest(vae)}
            build_latent_cache(folder, dataset, config.latent_cache_epochs,
                               lambda batch: {"latent": spaae.encode(vae, batch["image"].to(accelerator.device))},
                               fingerprint)
        accelerator.wait_for_everyone()
        dataset = LatentCacheDataset(folder, config.latent_cache_epochs)
    sampler, loader = make_loader(config, dataset)
    val_batch = (fixed_validation_batch(vae, held_out, noise_scheduler.config.num_train_timesteps, config.seed,
                                        accelerator.device) if held_out is not None else None)

    # 3. optimiser, schedule, EMA; accelerate wraps what trains
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    ema = build_ema(accelerator, config, unet, "unet")
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))
    step = resume(accelerator, output_dir, resume_from)
    latent_size = config.resolution // spaae.downsampling_factor(vae)

    # 4. train: Stable Diffusion's objective, unconditional (the empty prompt)
    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        if "latent" in batch:
            latents = batch["latent"].float()
        else:
            with torch.no_grad():
                latents = spaae.encode(vae, batch["image"]).float()
        return denoising_loss(unet, noise_scheduler, latents, None, prompt), {}

    def validate_fn(current: int) -> dict[str, float]:
        unwrapped = full_model(accelerator, unet)  # every process: a collective under FSDP
        if not accelerator.is_main_process:
            return {}
        metrics = {}
        with averaged_weights(ema, unwrapped):
            unwrapped.eval()
            if val_batch is not None:
                metrics["val/loss"] = validation_loss(unwrapped, noise_scheduler, val_batch, prompt)
            samples = sample_images(unwrapped, vae, noise_scheduler, prompt, config.sample_count, latent_size,
                                    config.sample_steps, config.seed)
            unwrapped.train()
        save_grid(samples, output_dir / "samples" / f"step-{current:06d}.png")
        log_images(accelerator.trackers, "samples", samples.permute(0, 2, 3, 1).cpu().numpy(), current)
        return metrics

    step = train_loop(accelerator, config, models=[unet], optimizer=optimizer, lr_scheduler=lr_scheduler,
                      loader=loader, dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn,
                      validate_fn=validate_fn, ema=ema, desc="RGB pre-training")

    # 5. the SD folder with the trained UNet (EMA weights if kept), written atomically; the loss curve
    accelerator.wait_for_everyone()
    unet = final_model(accelerator, unet, ema)
    if accelerator.is_main_process:
        folder = save_sd_folder(config.sd_folder, output_dir / "sd", unet=unet)
        curve = plot_loss_curve(output_dir)
        accelerator.print(f"wrote {folder} after {step} steps; loss curve {curve}; samples in {output_dir / 'samples'}")
    accelerator.end_training()
    return unet


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("RGB pre-training: an SD-architecture UNet learns photographs in the SpaAE's latent space",
                      RGBPretrainConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
