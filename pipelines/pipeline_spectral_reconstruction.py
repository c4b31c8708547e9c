"""SpectralReconstructionPipeline: RGB image -> 31-band spectra with the ULDM (METHOD.md section 3).

    from uldm import SpectralReconstructionPipeline
    pipe = SpectralReconstructionPipeline.from_pretrained("checkpoints/uldm-cave")   # or "org/name" on a hub
    out = pipe("photo.png", num_inference_steps=4, ensemble_size=5)
    out.spectra          # N x H x W x 31 (output_type="np") or N x 31 x H x W ("pt")
    out.uncertainty      # per-pixel, per-band standard deviation across the ensemble (zeros for one member)
    pipe("photo.png", num_images_per_prompt=3).spectra   # 3 independent samples per image, unreduced
    pipe("photo.png", output_type="pil").images[0]       # the spectra rendered in sRGB, beside them

The UNet denoises the SpeUAE code latent next to the RGB latent; the VAE decodes the code image; SpeUAE turns
code + RGB into spectra Φ⁺c + N û, which re-render to the input RGB exactly (`rgb_error` reports how exactly).
By default (`physical=True`) they are then projected onto the spectra that are non-negative and at most 1 where
the RGB allows it (`uldm.feasibility`); `out.out_of_gamut` flags the pixels whose RGB no such spectrum renders to.
With a `code_prior` (optional component), the latent is that of the code's residual from the prior's code
(scaled by `code_residual_scale`), and the pipeline adds the prior's code back before SpeUAE decodes, the residual
weighted by `code_residual_weight` (1: as trained; less shrinks it toward the prior, where a held-out check says the
generated residual transfers poorly to new scenes).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin

from uldm.feasibility import project_feasible
from uldm.models import spaae
from uldm.models.code_prior import RootPolynomialPrior, prior_code, residual_to_code
from uldm.models.scene_prior import SceneMixturePrior
from uldm.models.sd_adapter import PromptEmbedding
from uldm.models.speuae import SpeUAE

from .common import (
    BandSink,
    GeneratorInput,
    ImageInput,
    SpectralPipelineMixin,
    SpectralReconstructionOutput,
    callback_tensor_names,
    check_call_arguments,
    check_scheduler,
    ensemble_statistics,
    initial_latents,
    latent_output,
    load_rgb_batch,
    make_output,
    noise_groups,
    progress_bar_options,
    repeat_per_sample,
    resize_longer_side,
    resize_to,
    rgb_error_per_image,
    run_step_callback,
    sampling_timesteps,
    scheduler_step_kwargs,
    threads_beside_a_sink,
    warn_if_camera_mismatch,
)


TILE_PIXELS = 1 << 18  # pixels per band of the full-resolution tail (SpeUAE decode, composition): ~50 MB of work


class SpectralReconstructionPipeline(SpectralPipelineMixin, DiffusionPipeline):
    """RGB-guided latent diffusion of the SpeUAE code, then exact spectral composition.

    Components: `unet` (SD UNet with conv_in widened to [RGB latent, code latent]), `vae` (the SpaAE: an
    AutoencoderKL or a tiny AutoencoderTiny, see `uldm.models.spaae`),
    `scheduler` (DDIM with trailing spacing: 1 step starts at t=999), `speuae` (stage 1) and
    `prompt_embedding` (the empty prompt, encoded once: no text encoder at inference) and, optionally,
    `code_prior` (a spectral prior whose code the diffusion model corrects: the per-pixel regression of
    `uldm.models.code_prior`, or the scene-adaptive mixture of per-scene regressions of `uldm.models.scene_prior`).
    """

    model_cpu_offload_seq = "vae->unet->code_prior->speuae"
    _optional_components = ["code_prior"]
    model_card_name = "ULDM spectral reconstruction"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: Union[AutoencoderKL, AutoencoderTiny],
        scheduler: SchedulerMixin,
        speuae: SpeUAE,
        prompt_embedding: PromptEmbedding,
        code_prior: Optional[Union[RootPolynomialPrior, SceneMixturePrior]] = None,
        default_denoising_steps: int = 4,
        default_processing_resolution: int = 0,
        default_ensemble_size: int = 1,
        code_residual_scale: float = 1.0,
        rgb_encoding: str = "linear",
        code_residual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if code_residual_scale <= 0:
            raise ValueError(f"code_residual_scale must be > 0, got {code_residual_scale}")
        if not 0 <= code_residual_weight <= 1:
            raise ValueError(f"code_residual_weight must lie in [0, 1], got {code_residual_weight}")
        if rgb_encoding not in spaae.RGB_ENCODINGS:
            raise ValueError(f"rgb_encoding must be one of {spaae.RGB_ENCODINGS}, got {rgb_encoding!r}")
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, speuae=speuae,
                              prompt_embedding=prompt_embedding, code_prior=code_prior)
        self.register_to_config(default_denoising_steps=default_denoising_steps,
                                default_processing_resolution=default_processing_resolution,
                                default_ensemble_size=default_ensemble_size,
                                code_residual_scale=code_residual_scale, rgb_encoding=rgb_encoding,
                                code_residual_weight=code_residual_weight)

    def model_card_training(self) -> str:
        kind = "scene mixture" if isinstance(self.code_prior, SceneMixturePrior) else "root-polynomial"
        prior = ("" if self.code_prior is None
                 else f"; code prior: {kind}, residual x{self.config.code_residual_scale:g}"
                      f", weight {self.config.code_residual_weight:g}")
        return f"SpeUAE camera {self.camera.name}; UNet {self.unet.config.block_out_channels}{prior}"

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def vae_scale_factor(self) -> int:
        return spaae.downsampling_factor(self.vae)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to this: the VAE's downsampling times the UNet's."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def camera(self):
        return self.speuae.camera

    def encode_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """Linear RGB in [0, 1] -> condition latents (scaled; a KL posterior's mean), in the UNet's dtype; the SpaAE
        sees the RGB encoded as the config's `rgb_encoding` says (linear, or sRGB as photographs are)."""
        image = spaae.rgb_image(rgb, self.config.rgb_encoding)
        return spaae.encode(self.vae, image).to(self.unet.dtype)

    def decode_latents(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents -> the VAE's image in [-1, 1]: the code, or with a prior the scaled residual (each component
        runs in its own dtype: mixed-precision training keeps a bf16/fp16 VAE beside an fp32 UNet)."""
        return spaae.decode(self.vae, latent).clamp(-1, 1)

    def add_prior(self, decoded: torch.Tensor, rgb: torch.Tensor, context: Optional[dict] = None,
                  rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """VAE images -> codes: unchanged without a prior, else prior code + weight x residual / scale (the members
        of an ensemble share their image's prior code). `rgb` is the rows `rows` of the image whose `context` the prior
        read (`code_prior.image_context`), or the whole image."""
        if self.code_prior is None:
            return decoded
        prior = prior_code(self.code_prior, self.speuae, rgb, context, rows)
        prior = prior.repeat_interleave(len(decoded) // len(prior), dim=0)
        return residual_to_code(decoded, prior, self.config.code_residual_scale, self.config.code_residual_weight)

    # ---------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        num_inference_steps: Optional[int] = None,
        ensemble_size: Optional[int] = None,
        processing_resolution: Optional[int] = None,
        match_input_resolution: bool = True,
        batch_size: int = 1,
        generator: GeneratorInput = None,
        input_space: str = "srgb",
        clamp: bool = False,
        physical: bool = True,
        output_type: str = "np",
        show_progress_bar: Optional[bool] = None,
        return_dict: bool = True,
        latents: Optional[torch.Tensor] = None,
        callback_on_step_end: Optional[Callable[..., dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        num_images_per_prompt: int = 1,
        band_sink: Optional[BandSink] = None,
    ) -> Union[SpectralReconstructionOutput, tuple]:
        """Reconstruct spectra from one RGB image or a batch.

        Args:
            image: PIL image, H x W x 3 / 3 x H x W array or tensor, a file path, a list of these, or a 4-D batch.
                Integer images are scaled by their bit depth; float values must lie in [0, 1].
            num_inference_steps: denoising steps (default: config `default_denoising_steps`); 1 works.
            ensemble_size: samples per image from different noise; the answer is their mean and
                `uncertainty` their per-pixel, per-band standard deviation (default: config).
            processing_resolution: run the UNet and VAE with the longer side shrunk to at most this (0: native
                size; smaller images are never enlarged); their memory and time then stay bounded whatever the input
                size, and the rest works band by band at full size (`compose_spectra`). The code image
                is upsampled and decoded with the full-resolution RGB, so the observable part stays exact.
            match_input_resolution: return spectra at the input size (True) or at the processing size.
            batch_size: latents denoised together (memory vs speed; results do not depend on it).
            generator: a torch.Generator (consumed image by image), one per image or one per output sample.
            input_space: "srgb" (default: ordinary photos are sRGB-encoded) or "linear" (camera RGB); "srgb" with a
                model for a camera other than the sRGB observer warns, once (`common.warn_if_camera_mismatch`).
            clamp: clip spectra to [0, 1], last. With `physical` they already lie there except where the RGB needs
                more (a highlight, up to `uldm.feasibility.MAX_VALUE`), whose RGB clipping then changes (rgb_error).
            physical: the spectra closest to the model's estimate that are non-negative, at most 1 where the RGB
                allows it and render to the input RGB exactly (`uldm.feasibility`); where none does (out of the
                camera's gamut), the least RGB change, flagged in `out_of_gamut`. False: the raw estimate.
            output_type: "np" (N x H x W x B), "pt" (N x B x H x W), "pil" ("np" plus `images`, the spectra rendered
                in sRGB) or "latent" (only `latents`: the denoised code latents, before the VAE decodes them).
            latents: the initial noise (N·k·E x C x h x w, image-major), instead of drawing it from `generator`.
            callback_on_step_end: `f(pipeline, step_index, timestep, {"latents": ...})` after every denoising step
                (of every batch: the index restarts at 0, up to `pipeline.num_timesteps` - 1); a "latents" entry in
                what it returns replaces the latents, and setting `pipeline._interrupt = True` stops denoising
                (`interrupt`), as in diffusers.
            callback_on_step_end_tensor_inputs: what the callback is handed, of `_callback_tensor_inputs`.
            num_images_per_prompt: k independent samples of every image, each the mean of its own `ensemble_size`
                members (k x E members per image in all), returned unreduced: N images give N·k outputs,
                image-major. With one generator per image, each image's samples are drawn in turn from it; a
                list of N·k generators gives one per sample (sample j is then the k = 1 answer of generator j).
            band_sink: `band_sink(rows, spectra, uncertainty, out_of_gamut)` is handed each band of rows as it is
                composed (a slice of rows and those rows of the outputs, tensors in `output_type`'s layout; the mask
                None when not `physical`), top to bottom, and the outputs keep none of them (their spectra,
                uncertainty, code and mask have 0 rows; `rgb_error` is whole): how `uldm reconstruct` writes a cube
                of any size into its file without holding it (`uldm.io.open_cube_writer`).
        """
        # 0. Resolve defaults
        device, dtype = self._execution_device, self.unet.dtype
        steps = num_inference_steps if num_inference_steps is not None else self.config.default_denoising_steps
        ensemble = ensemble_size if ensemble_size is not None else self.config.default_ensemble_size
        resolution = processing_resolution if processing_resolution is not None else self.config.default_processing_resolution
        samples = num_images_per_prompt

        # 1. Check inputs
        check_call_arguments(steps, ensemble, batch_size, resolution, input_space, output_type, samples)
        check_scheduler(self.scheduler, self.scheduler.config.prediction_type)
        tensor_names = callback_tensor_names(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        warn_if_camera_mismatch(self, input_space)

        # 2. Preprocess: linear RGB, N x 3 x H x W (all images of one call must share a size)
        rgb_full = load_rgb_batch(image, input_space, generator, device, samples)
        num_images, _, height, width = rgb_full.shape

        # 3. Resize to the processing resolution and pad to a multiple of the latent grid
        rgb = resize_longer_side(rgb_full, resolution)
        proc_h, proc_w = rgb.shape[-2:]
        multiple = self.size_multiple
        pad_h, pad_w = (-proc_h) % multiple, (-proc_w) % multiple
        padded = F.pad(rgb, (0, pad_w, 0, pad_h), mode="replicate")

        # 4. Condition latents (one per image, repeated for its k samples x E members) and initial noise
        condition = torch.cat([self.encode_rgb(chunk) for chunk in padded.split(batch_size)])
        condition = condition.repeat_interleave(samples * ensemble, dim=0)
        groups = noise_groups(generator, num_images, samples)
        rows_per_group = len(condition) // groups
        latents = initial_latents(latents, rows_per_group, groups, tuple(condition.shape[1:]), generator, device,
                                  dtype)
        text = self.prompt_embedding(1).to(device=device, dtype=dtype)

        # 5. Denoise, `batch_size` latents at a time
        self._interrupt = False
        results = []
        with progress_bar_options(self, show_progress_bar, "ULDM"):
            batches = self.progress_bar(range(0, len(latents), batch_size))
        for start in batches:
            sample, cond = latents[start:start + batch_size], condition[start:start + batch_size]
            timesteps = sampling_timesteps(self.scheduler, steps, device)
            self._num_timesteps = len(timesteps)
            sample = sample * self.scheduler.init_noise_sigma
            step_kwargs = scheduler_step_kwargs(self.scheduler, generator, start, len(sample), rows_per_group)
            prompt = text.expand(len(sample), -1, -1)
            for index, (t, t_device) in enumerate(timesteps):
                if self.interrupt:
                    break
                model_input = torch.cat([cond, self.scheduler.scale_model_input(sample, t)], dim=1)
                noise_pred = self.unet(model_input, t_device, encoder_hidden_states=prompt, return_dict=False)[0]
                sample = self.scheduler.step(noise_pred, t, sample, **step_kwargs, return_dict=False)[0]
                sample = run_step_callback(self, callback_on_step_end, index, t, tensor_names,
                                           {"latents": sample})["latents"]
            results.append(sample if output_type == "latent" else self.decode_latents(sample))
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latent_output(torch.cat(results), self.speuae.config.wavelengths, return_dict)
        codes = torch.cat(results)[..., :proc_h, :proc_w].float()

        # 6. VAE images to the output size; spectra there (each image's RGB for its k samples), band by band of
        #    rows (bounded memory at any size)
        rgb_out = repeat_per_sample(rgb_full if match_input_resolution else rgb, samples)
        codes = resize_to(codes, tuple(rgb_out.shape[-2:]))
        spectra, uncertainty, codes, rgb_error, out_of_gamut = self.compose_spectra(
            codes, rgb_out, ensemble, clamp, channels_last=output_type in ("np", "pil"), physical=physical,
            band_sink=band_sink)

        # 7. Outputs
        self.maybe_free_model_hooks()
        return make_output(spectra, uncertainty, codes, self.speuae.config.wavelengths, rgb_error, output_type,
                           return_dict, out_of_gamut)

    def compose_spectra(self, codes: torch.Tensor, rgb: torch.Tensor, ensemble: int, clamp: bool = False,
                        channels_last: bool = False, tile_pixels: int = TILE_PIXELS, physical: bool = True,
                        band_sink: Optional[BandSink] = None):
        """(mean spectra, their spread, mean code, RGB error per image, out-of-gamut mask or None) from the VAE
        images of every ensemble member (N·E x 3 x H x W, at the RGB's size) and the linear RGB (N x 3 x H x W).

        A band of rows at a time: the prior's code is added (if any), SpeUAE decodes the unobservable part, the
        observable part is composed exactly in float32 (Φŝ = c), the members are reduced to their mean and
        spread, the mean is made physical (`physical`: `uldm.feasibility`; the spread stays the raw members'), and
        both are written straight into the outputs (N x B x H x W views of arrays laid out channels-last when
        `channels_last`, as the "np" output wants them, so nothing is copied after). Bands hold about
        `tile_pixels` pixels, plus the rows a small-context SpeUAE sees around them, aligned to its Jacobian
        blocks, so the result is the one the whole image would give. With a `band_sink` (see `__call__`) each band
        goes to it instead, channels-last when `channels_last`, and the outputs have 0 rows.
        """
        num_images, _, height, width = rgb.shape
        bands, kept = self.speuae.num_bands, 0 if band_sink is not None else height  # rows the outputs hold
        layout = (num_images, kept, width, bands) if channels_last else (num_images, bands, kept, width)
        to_view = (lambda x: x.permute(0, 3, 1, 2)) if channels_last else (lambda x: x)
        to_layout = (lambda x: x.permute(0, 2, 3, 1)) if channels_last else (lambda x: x)
        # outputs in host memory, whatever the device (bounded device memory at any size); page-locked next to a
        # GPU, so each band's copy back runs at the bus's speed
        pinned = rgb.device.type == "cuda"
        spectra = to_view(torch.empty(layout, pin_memory=pinned))
        # one member has no spread: zeros that take no memory until read (np.zeros maps pages lazily)
        spread = to_view(torch.from_numpy(np.zeros(layout, np.float32)) if ensemble == 1
                         else torch.empty(layout, pin_memory=pinned))
        mean_codes = torch.empty(num_images, codes.shape[1], kept, width, pin_memory=pinned)
        rgb_error = torch.zeros(num_images)
        out_of_gamut = torch.zeros(num_images, kept, width, dtype=torch.bool) if physical else None
        align = self.speuae.config.refine_block if self.speuae.config.refine_steps else 1
        # rows of neighbours a small-context SpeUAE sees: decoding, and encoding the prior's spectra before it
        reach = self.speuae.config.context // 2 * (1 if self.code_prior is None else 2)
        halo = -(-reach // align) * align
        rows = max(align, tile_pixels // max(width, 1) // align * align)
        dtype = self.speuae.linear_decoder.weight.dtype
        # what a scene-adaptive prior reads of the whole image (its palette), once, small at any size
        context = self.code_prior.image_context(rgb.float()) if self.code_prior is not None else None
        with threads_beside_a_sink(band_sink, rgb.device):
            for top in range(0, height, rows):
                start, stop = max(0, top - halo), min(height, top + rows + halo)
                inner = slice(top - start, top - start + min(rows, height - top))
                band_rgb = rgb[..., start:stop, :].float()
                code = self.add_prior(codes[..., start:stop, :].float(), band_rgb, context, (start, stop)).float()
                members = band_rgb.repeat_interleave(ensemble, dim=0)
                u = self.speuae.decode_unobservable(code.to(dtype), members.to(dtype)).float()
                members_spectra = self.speuae.split.compose(members, u, dim=1)[..., inner, :]  # float32: exact in RGB
                mean, std = ensemble_statistics(members_spectra, num_images, ensemble)
                rows_out, mask = slice(top, top + mean.shape[-2]), None
                if physical:
                    mean, mask = project_feasible(mean, band_rgb[..., inner, :], self.camera, dim=1)
                if clamp:
                    mean = mean.clamp(0, 1)
                band_error = rgb_error_per_image(self.speuae.split, mean, band_rgb[..., inner, :])
                rgb_error = torch.maximum(rgb_error, band_error.cpu())
                if band_sink is not None:
                    band_sink(rows_out, to_layout(mean), to_layout(std), mask)
                    continue
                spectra[..., rows_out, :] = mean
                if ensemble > 1:
                    spread[..., rows_out, :] = std
                if physical:
                    out_of_gamut[:, rows_out] = mask
                mean_codes[..., rows_out, :] = ensemble_statistics(code[..., inner, :], num_images, ensemble)[0]
        return spectra, spread, mean_codes, rgb_error, out_of_gamut
