"""Stage 2: fine-tune a pretrained Stable Diffusion UNet (and optionally the VAE decoder) into the ULDM.

    accelerate launch stages/train_uldm.py --config stages/configs/uldm_cave_small.yaml
    accelerate launch stages/train_uldm.py --config stages/configs/uldm_arad_sd21.yaml     # the paper-scale recipe

The frozen stage-1 SpeUAE turns ground-truth spectra into code images; the VAE (SpaAE) encodes code and RGB;
the UNet, its conv_in widened to [RGB latent, noisy code latent], learns to denoise the code latent with the
pretrained scheduler's noise and prediction type. The result is saved as a complete
`SpectralReconstructionPipeline` in <output_dir>/pipeline (and pushed to a hub with `push_to_hub: true`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from uldm.baseline import DEGREES, RootPolynomialRegression
from uldm.degradation import Degradation
from uldm.models import SpeUAE, spaae
from uldm.models.code_prior import RootPolynomialPrior, code_to_residual, prior_code
from uldm.models.scene_prior import SceneMixturePrior
from uldm.models.sd_adapter import (
    StableDiffusionLoadError,
    StableDiffusionParts,
    load_stable_diffusion,
    sampling_scheduler,
)
from uldm.training import (
    ConfigError,
    PipelineConfig,
    averaged_weights,
    build_accelerator,
    build_augmentation,
    build_ema,
    build_scheduler,
    build_train_loader,
    config_dict,
    denoising_loss,
    final_model,
    full_model,
    make_loader,
    resume,
    publish_pipeline,
    scene_paths,
    stage_main,
    train_loop,
    validate_pipeline,
)

CODE_PRIORS = ("none", "root_polynomial", "scene_mixture")


@dataclass
class ULDMConfig(PipelineConfig):
    # hub id or local SD folder, or a ULDM pipeline folder to go on from (required)
    pretrained_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    variant: Optional[str] = None
    pretrained_vae_model_name_or_path: Optional[str] = None  # a SpaAE folder to use instead of the checkpoint's vae/
    speuae_path: Optional[str] = None  # stage-1 output folder (required)
    learning_rate: float = 5e-5
    train_vae_decoder: bool = False  # also fine-tune the VAE decoder to reproduce code images
    vae_learning_rate: float = 1e-5
    # "root_polynomial": the diffusion model generates the code's residual from that regression's code;
    # "scene_mixture": from the code of the scene-adaptive mixture of per-scene regressions (uldm.models.scene_prior),
    # each training patch's own scene left out of the bank, as a scene at inference is not in it
    code_prior: str = "none"
    code_prior_degree: int = 2  # the regression's root-polynomial degree (1 to 4; 2 is the baseline)
    code_residual_scale: float = 3.0  # the residual is multiplied by this before the VAE (so it fills [-1, 1])
    # how the RGB condition is encoded for the SpaAE: "linear" (as rendered) or "srgb" (as the photographs a
    # pretrained SpaAE / UNet learnt from); saved in the pipeline's config
    rgb_encoding: str = "linear"
    precompute_latents: bool = False  # encode code/RGB latents once to <output_dir>/latent_cache, reuse every epoch
    latent_cache_epochs: int = 2  # distinct epochs of patches cached; training cycles through them
    gradient_checkpointing: bool = False
    # timesteps are drawn from [min_train_timestep, num_train_timesteps): 999 trains only the first step from pure
    # noise, all that a 1-step pipeline runs (x0 prediction)
    min_train_timestep: int = 0
    # validation and the saved pipeline's defaults
    validation_inference_steps: int = 4
    default_denoising_steps: int = 4
    default_processing_resolution: int = 0
    default_ensemble_size: int = 1

    def validate(self) -> None:
        super().validate()
        for name in ("pretrained_model_name_or_path", "speuae_path"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if self.min_train_timestep < 0:
            raise ConfigError(f"min_train_timestep must be >= 0, got {self.min_train_timestep}")
        if self.code_prior not in CODE_PRIORS:
            raise ConfigError(f"code_prior must be one of {CODE_PRIORS}, got {self.code_prior!r}")
        if self.code_prior_degree not in DEGREES:
            raise ConfigError(f"code_prior_degree must be 1, 2, 3 or 4, got {self.code_prior_degree}")
        if self.rgb_encoding not in spaae.RGB_ENCODINGS:
            raise ConfigError(f"rgb_encoding must be one of {spaae.RGB_ENCODINGS}, got {self.rgb_encoding!r}")
        if self.code_residual_scale <= 0:
            raise ConfigError(f"code_residual_scale must be > 0, got {self.code_residual_scale}")
        if self.precompute_latents and self.train_vae_decoder:
            raise ConfigError("precompute_latents cannot be combined with train_vae_decoder (the decoder needs codes)")


class CodeDecoderLoss(nn.Module):
    """L1 between VAE.decode(latent) and the code image: a forward of its own so DDP syncs the decoder's grads."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(spaae.decode(self.vae, latents).float(), code.float())


@torch.no_grad()
def vae_target(speuae, hsi: torch.Tensor, rgb: torch.Tensor, prior=None, scale: float = 1.0) -> torch.Tensor:
    """The image the VAE carries: the code, or with a prior the code's scaled residual from the prior's code."""
    return code_to_residual(speuae.encode(hsi, rgb), prior_code(prior, speuae, rgb), scale)


@torch.no_grad()
def encode_latents(vae, speuae, hsi: torch.Tensor, rgb: torch.Tensor, prior=None, scale: float = 1.0,
                   rgb_encoding: str = "linear") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(code latent mean, its spread (zero for a tiny autoencoder), RGB condition latent), all scaled: everything
    stage 2 needs from a patch."""
    mean, std = spaae.encode_posterior(vae, vae_target(speuae, hsi, rgb, prior, scale))
    return mean, std, spaae.encode(vae, spaae.rgb_image(rgb, rgb_encoding))


def build_pipeline(unet, vae, noise_scheduler, speuae, empty_prompt, code_prior=None, **defaults):
    """The inference pipeline from the current components: DDIM with trailing spacing (1 step starts at t=999).
    `defaults`: default_denoising_steps / default_processing_resolution / default_ensemble_size /
    code_residual_scale / rgb_encoding."""
    from uldm.pipelines import SpectralReconstructionPipeline

    return SpectralReconstructionPipeline(unet=unet, vae=vae, scheduler=sampling_scheduler(noise_scheduler), speuae=speuae,
                                          prompt_embedding=empty_prompt, code_prior=code_prior, **defaults)


def pipeline_defaults(config: ULDMConfig) -> dict[str, Union[float, str]]:
    return {"default_denoising_steps": config.default_denoising_steps,
            "default_processing_resolution": config.default_processing_resolution,
            "default_ensemble_size": config.default_ensemble_size,
            "code_residual_scale": config.code_residual_scale if config.code_prior != "none" else 1.0,
            "rgb_encoding": config.rgb_encoding}


def build_code_prior(config: ULDMConfig, camera) -> Optional[Union[RootPolynomialPrior, SceneMixturePrior]]:
    """The code prior fitted on the training scenes (None without one): the root-polynomial regression on every
    pixel, or the scene mixture (its bank and its gate, `uldm.scene_prior_fit`)."""
    if config.code_prior == "none":
        return None
    scenes = scene_paths(config, config.train_scenes)
    degradation = Degradation.from_config(config.degradation)
    if config.code_prior == "scene_mixture":
        from uldm.scene_prior_fit import fit_scene_mixture_prior, scene_data

        data = scene_data(scenes, camera, degradation, format=config.data_format, seed=config.seed)
        return fit_scene_mixture_prior(data, camera, degree=config.code_prior_degree, seed=config.seed)[0]
    regression = RootPolynomialRegression.fit_scenes(scenes, camera, degradation, format=config.data_format,
                                                     seed=config.seed, degree=config.code_prior_degree)
    return RootPolynomialPrior.from_regression(regression)


def prior_for_patches(code_prior, names: Optional[Sequence[str]]):
    """The prior a batch of training patches is encoded with: a scene mixture leaves each patch's own scene out of
    its bank (`SceneMixturePrior.excluding`); other priors are the same for every patch."""
    if isinstance(code_prior, SceneMixturePrior) and names is not None:
        return code_prior.excluding(names)
    return code_prior


def load_uldm_parts(folder: Path, rgb_encoding: str = "linear") -> StableDiffusionParts:
    """UNet, VAE, noise scheduler and prompt of a trained ULDM pipeline folder, to go on training it (the UNet is
    already widened; the scheduler is the training form of the pipeline's DDIM). Its RGB encoding must be the run's:
    the UNet learnt the condition latents of that encoding."""
    from diffusers import DDPMScheduler

    from uldm.pipelines import SpectralReconstructionPipeline

    pipeline = SpectralReconstructionPipeline.from_pretrained(folder)
    if pipeline.config.rgb_encoding != rgb_encoding:
        raise ConfigError(f"{folder} encodes its RGB condition as {pipeline.config.rgb_encoding!r}, the config says "
                          f"{rgb_encoding!r}: set rgb_encoding: {pipeline.config.rgb_encoding}")
    return StableDiffusionParts(unet=pipeline.unet, vae=pipeline.vae, empty_prompt=pipeline.prompt_embedding,
                                noise_scheduler=DDPMScheduler.from_config(pipeline.scheduler.config))


def is_uldm_pipeline(folder: Path) -> bool:
    """Whether `folder` holds a saved ULDM pipeline (training goes on from it) rather than a Stable Diffusion model."""
    from uldm.checkpoints import pipeline_class_name

    try:
        return pipeline_class_name(folder) == "SpectralReconstructionPipeline"
    except (OSError, ValueError):
        return False


def load_replacement_spaae(path: str, unet):
    """A SpaAE from another folder (e.g. one adapted by stages/pretrain_spaae.py) in place of the checkpoint's own,
    as diffusers' SDXL script takes `--pretrained_vae_model_name_or_path`; its latent channels must be the UNet's."""
    from uldm.models.alignment import realign_weights

    try:
        vae = spaae.load_spaae(path)
    except spaae.SpaAELoadError as exc:
        raise ConfigError(f"pretrained_vae_model_name_or_path: {exc}") from exc
    if vae.config.latent_channels != unet.config.out_channels:
        raise ConfigError(f"pretrained_vae_model_name_or_path {path}: {vae.config.latent_channels} latent channels, "
                          f"the UNet generates {unet.config.out_channels}")
    realign_weights(vae)
    return vae


def load_components(config: ULDMConfig):
    folder = Path(config.pretrained_model_name_or_path)
    try:
        if is_uldm_pipeline(folder):
            parts = load_uldm_parts(folder, config.rgb_encoding)
        else:
            parts = load_stable_diffusion(config.pretrained_model_name_or_path, revision=config.revision,
                                          variant=config.variant)
    except StableDiffusionLoadError as exc:
        raise ConfigError(f"pretrained_model_name_or_path: {exc}") from exc
    if config.pretrained_vae_model_name_or_path:
        parts.vae = load_replacement_spaae(config.pretrained_vae_model_name_or_path, parts.unet)
    speuae_folder = Path(config.speuae_path)
    if not (speuae_folder / "config.json").exists():
        raise ConfigError(f"speuae_path {speuae_folder}: no config.json (expected the stage-1 output, <run>/speuae)")
    speuae = SpeUAE.from_pretrained(str(speuae_folder))
    if speuae.camera != config.camera_response():
        raise ConfigError(f"camera {config.camera!r} differs from the camera SpeUAE was trained for "
                          f"({speuae.camera.name}); the RGB must be rendered with the same response")
    return parts, speuae


def train(config: ULDMConfig, resume_from: Optional[str] = None):
    """Run stage 2 in this process (one of several under `accelerate launch`); returns the pipeline."""
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config)
    set_seed(config.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 1. pretrained components: widened UNet (trainable, fp32 master weights), frozen VAE encoder, SpeUAE, prompt
    parts, speuae = load_components(config)
    unet, vae, noise_scheduler, empty_prompt = parts.unet, parts.vae, parts.noise_scheduler, parts.empty_prompt
    vae.requires_grad_(False)
    speuae.requires_grad_(False).eval()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = [unet]
    decoder_loss = None
    if config.train_vae_decoder:
        for module in spaae.decoder_modules(vae):
            module.requires_grad_(True)
        decoder_loss = CodeDecoderLoss(vae)
        trainable.append(decoder_loss)
    else:
        vae.to(accelerator.device, dtype=weight_dtype)
    speuae.to(accelerator.device)
    code_prior = build_code_prior(config, speuae.camera)
    if code_prior is not None:
        code_prior.to(accelerator.device)
    residual_scale = pipeline_defaults(config)["code_residual_scale"]

    # 2. data: seeded random patches of spectra, RGB rendered with SpeUAE's camera (or their cached latents)
    dataset, sampler, loader = build_train_loader(config, speuae.camera)
    val_scenes = scene_paths(config, config.val_scenes)

    augment = build_augmentation(config, speuae.camera, accelerator.device)  # None without mix / tilt / gain

    def augmented(hsi: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hsi, rgb = hsi.to(accelerator.device), rgb.to(accelerator.device)
        return (hsi, rgb) if augment is None else augment(hsi, rgb)

    def encode(hsi: torch.Tensor, rgb: torch.Tensor, names: Optional[Sequence[str]] = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents of augmented patches, live or for the cache (whose fingerprint holds the augmentation's config)."""
        return encode_latents(vae, speuae, *augmented(hsi, rgb), prior_for_patches(code_prior, names), residual_scale,
                              config.rgb_encoding)

    if config.precompute_latents:
        from uldm.latent_cache import (
            LatentCacheDataset,
            build_latent_cache,
            weights_digest,
        )

        folder = output_dir / "latent_cache"
        if accelerator.is_main_process:  # only it writes the cache, so only it hashes the encoders' weights
            fingerprint = {"config": config_dict(config), "scenes": [str(p) for p in dataset.scenes],
                           "speuae": {k: v for k, v in speuae.config.items() if not k.startswith("_")},  # refine_steps
                           "weights": weights_digest(speuae, vae)}
            build_latent_cache(folder, dataset, config.latent_cache_epochs,
                               lambda batch: dict(zip(("mean", "std", "condition"),
                                                      encode(batch["hsi"], batch["rgb"], batch.get("name")))),
                               fingerprint)
        accelerator.wait_for_everyone()
        dataset = LatentCacheDataset(folder, config.latent_cache_epochs)
        sampler, loader = make_loader(config, dataset)

    # 3. optimiser and schedule; accelerate wraps what trains
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": config.learning_rate}]
    if decoder_loss is not None:
        groups.append({"params": [p for p in decoder_loss.parameters() if p.requires_grad], "lr": config.vae_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.adam_weight_decay)
    lr_scheduler = build_scheduler(config, optimizer, accelerator.num_processes)
    prepared = accelerator.prepare(*trainable, optimizer, loader, lr_scheduler)
    models, (optimizer, loader, lr_scheduler) = list(prepared[:len(trainable)]), prepared[len(trainable):]
    unet = models[0]
    ema = build_ema(accelerator, config, unet, "unet")  # None unless use_ema
    text = empty_prompt.embedding.to(accelerator.device, dtype=torch.float32)
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=config_dict(config))
    step = resume(accelerator, output_dir, resume_from)
    frozen_vae = accelerator.unwrap_model(models[1]).vae if decoder_loss is not None else vae

    # 4. train: code latents noised by the pretrained scheduler, UNet predicts its target next to the RGB latent
    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        if "mean" in batch:  # cached
            hsi = rgb = None
            patch_prior = code_prior
            mean, std, condition = batch["mean"], batch["std"], batch["condition"]
        else:
            hsi, rgb = augmented(batch["hsi"], batch["rgb"])
            patch_prior = prior_for_patches(code_prior, batch.get("name"))
            mean, std, condition = encode_latents(vae, speuae, hsi, rgb, patch_prior, residual_scale, config.rgb_encoding)
        latents = (mean + std * torch.randn_like(mean)).float()  # a posterior sample, as VAE.encode().sample()
        loss = denoising_loss(unet, noise_scheduler, latents, condition.float(), text, config.min_train_timestep)
        if decoder_loss is None:
            return loss, {}
        code = vae_target(speuae, hsi, rgb, patch_prior, residual_scale)
        code_loss = models[1](latents, code)
        return loss + code_loss, {"train/vae_decoder_l1": code_loss.item()}

    def validate_fn(current: int) -> dict[str, float]:
        unwrapped = full_model(accelerator, unet)  # every process: a collective under FSDP
        if not accelerator.is_main_process:
            return {}
        with averaged_weights(ema, unwrapped):
            unwrapped.eval()
            pipeline = build_pipeline(unwrapped, frozen_vae, noise_scheduler, speuae, empty_prompt, code_prior,
                                      **pipeline_defaults(config))
            metrics = validate_pipeline(pipeline, val_scenes, data_format=config.data_format,
                                        num_inference_steps=config.validation_inference_steps,
                                        trackers=accelerator.trackers, step=current)
            unwrapped.train()
        return metrics

    started, first_step = time.perf_counter(), step
    step = train_loop(
        accelerator, config, models=models, optimizer=optimizer, lr_scheduler=lr_scheduler, loader=loader,
        dataset=dataset, sampler=sampler, start_step=step, loss_fn=loss_fn, validate_fn=validate_fn,
        ema=ema, desc="stage 2",
    )
    seconds = time.perf_counter() - started

    # 5. the complete pipeline (EMA weights if kept), saved atomically; model card; optional push
    accelerator.wait_for_everyone()
    unet = final_model(accelerator, unet, ema)
    pipeline = build_pipeline(unet.eval(), frozen_vae.to(torch.float32), noise_scheduler, speuae, empty_prompt,
                              code_prior, **pipeline_defaults(config))
    publish_pipeline(accelerator, config, pipeline, lambda folder: write_card(folder, config, step))
    samples = (step - first_step) * config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    accelerator.print(f"{step} steps ({seconds:.0f} s this run, {samples / max(seconds, 1e-9):.2f} samples/s)")
    accelerator.end_training()
    return pipeline


def write_card(folder: Path, config: ULDMConfig, step: int) -> None:
    """A model card saying what the pipeline was trained from and on, with the validation metrics it measured."""
    from uldm.training.card import write_run_card

    spaae = (f" and the SpaAE of `{config.pretrained_vae_model_name_or_path}`"
             if config.pretrained_vae_model_name_or_path else "")
    write_run_card(folder, config, title=f"ULDM spectral reconstruction ({Path(config.output_dir).name})",
                   description=(f"Stage 2 fine-tuned from `{config.pretrained_model_name_or_path}`{spaae} for {step} "
                                f"steps with SpeUAE `{config.speuae_path}` on {config.data_format} data "
                                f"({config.train_scenes})."),
                   camera=config.camera_response().name, pipeline_class="SpectralReconstructionPipeline",
                   started_from=config.pretrained_model_name_or_path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return stage_main("Stage 2: fine-tune Stable Diffusion into the ULDM", ULDMConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
