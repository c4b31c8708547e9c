"""R2HDiffPipeline: RGB image -> 31-band spectra with R2H-Diff, an RGB-guided diffusion on the cube itself.

    from uldm import R2HDiffPipeline
    pipe = R2HDiffPipeline.from_pretrained("runs/r2hdiff-cave/pipeline")   # or "org/name" on a hub
    out = pipe("photo.png", ensemble_size=4)            # 5 DDIM steps by default
    out.spectra, out.uncertainty, out.rgb_error          # the same output type as the ULDM pipeline
    pipe(image, physical=False)                          # the raw ensemble mean, not made physical

How it differs from the ULDM pipeline (`pipeline_spectral_reconstruction.py`), with which it shares its inputs,
outputs, loading and publishing (`pipelines/common.py`):

- **Data space.** The network denoises the spectra directly, mapped to x = 2s − 1 (s in [0, 1] -> x in
  [-1, 1], the range of the N(0, I) noise it starts from, as for images in DDPM); the answer is s = (x + 1) / 2.
  `to_model_space` / `from_model_space` are the one place this mapping lives (the trainer uses them too).
- **Sampling.** x_T ~ N(0, I) at the cube's size (B x H x W per member), then DDIM with the network predicting
  the clean cube (prediction_type "sample"); with zero terminal SNR, t = 999 is pure noise, as in training.
- **No code image.** Nothing between RGB and spectra is generated, so `output.code` is None (the field exists
  for families that generate one; filling it with the input RGB would suggest a code that is not there).
- **Physical spectra by default.** The network is free to disagree with the input colour and to go negative;
  `physical=True` (default) projects the ensemble mean onto the spectra that render to c exactly and are
  non-negative, at most 1 where the RGB allows it (`uldm.feasibility`; `out.out_of_gamut` flags where none does).
  `rgb_consistent=True` (default: config `project_rgb`) replaces each member's observable part with the input's,
  ŝ ← Φ⁺c + N Nᵀŝ, the closest spectrum (in L2) that renders to c exactly: with `physical=False` the only
  projection. `rgb_error` is reported either way, so the cost of skipping the projections is visible.
- **The camera lives in the pipeline config** (model_index.json: `camera_name`, `camera_response`,
  `wavelengths`), not in a component: the network itself does not depend on Φ, only the projection and the
  RGB error do, and a config entry needs no weights file. `pipe.camera` rebuilds the `CameraResponse`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from uldm.camera import CameraResponse
from uldm.models.r2hdiff import R2HDiffNet
from uldm.nullspace import ObservableSplit

from .common import (
    DEFAULT_CAMERA,
    GeneratorInput,
    ImageInput,
    SpectralPipelineMixin,
    SpectralReconstructionOutput,
    camera_config,
    callback_tensor_names,
    camera_from_config,
    check_call_arguments,
    check_scheduler,
    ensemble_statistics,
    initial_latents,
    latent_output,
    load_rgb_batch,
    make_output,
    noise_groups,
    physical_spectra,
    progress_bar_options,
    project_onto_rgb,
    repeat_per_sample,
    resize_longer_side,
    resize_to,
    rgb_error_per_image,
    run_step_callback,
    sampling_timesteps,
    scheduler_step_kwargs,
    warn_if_camera_mismatch,
)



def to_model_space(spectra: torch.Tensor) -> torch.Tensor:
    """Reflectance-like spectra in [0, 1] -> the network's data space [-1, 1] (the scale of its noise)."""
    return spectra * 2 - 1


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_model_space`."""
    return (x + 1) / 2


class R2HDiffPipeline(SpectralPipelineMixin, DiffusionPipeline):
    """RGB-guided conditional diffusion of the hyperspectral cube (the R2H-Diff paper), few-step DDIM.

    Components: `net` (`uldm.models.r2hdiff.R2HDiffNet`) and `scheduler` (DDIM from `make_r2hdiff_scheduler`:
    linear betas, trailing spacing, zero terminal SNR). Config: the camera, `default_denoising_steps` (5, the
    paper's), `default_processing_resolution` (0: native size), `default_ensemble_size` and `project_rgb` (the
    default of `rgb_consistent`).
    """

    model_cpu_offload_seq = "net"
    model_card_name = "R2H-Diff spectral reconstruction"

    def __init__(
        self,
        net: R2HDiffNet,
        scheduler: DDIMScheduler,
        camera_name: str = DEFAULT_CAMERA,
        camera_response: Optional[list] = None,
        wavelengths: Optional[list] = None,
        default_denoising_steps: int = 5,
        default_processing_resolution: int = 0,
        default_ensemble_size: int = 1,
        project_rgb: bool = False,
    ) -> None:
        super().__init__()
        camera = camera_from_config(camera_name, camera_response, wavelengths)
        if camera.num_bands != net.config.spectral_channels:
            raise ValueError(f"R2HDiffPipeline: camera {camera.name!r} has {camera.num_bands} bands, the network "
                             f"{net.config.spectral_channels} spectral channels")
        if scheduler.config.prediction_type != net.config.prediction_type:
            raise ValueError(f"R2HDiffPipeline: the scheduler expects prediction_type "
                             f"{scheduler.config.prediction_type!r}, the network was built for "
                             f"{net.config.prediction_type!r}")
        self.register_modules(net=net, scheduler=scheduler)
        self.register_to_config(**camera_config(camera), default_denoising_steps=default_denoising_steps,
                                default_processing_resolution=default_processing_resolution,
                                default_ensemble_size=default_ensemble_size, project_rgb=project_rgb)
        self._camera = camera
        self.split = ObservableSplit(camera)

    @classmethod
    def for_camera(cls, net: R2HDiffNet, scheduler: DDIMScheduler, camera: CameraResponse,
                   **defaults) -> "R2HDiffPipeline":
        """Build from a `CameraResponse` (what trainers hold) instead of its serialised parts."""
        return cls(net=net, scheduler=scheduler, **camera_config(camera), **defaults)

    @property
    def camera(self) -> CameraResponse:
        return self._camera

    def model_card_training(self) -> str:
        config = self.net.config
        return (f"R2H-Diff network {list(config.block_channels)} channels, {list(config.layers_per_level)} blocks "
                f"per level, {sum(p.numel() for p in self.net.parameters()):,} parameters; camera {self.camera.name}")

    # ---------------------------------------------------------------------------------------------- steps
    def denoise(self, rgb: torch.Tensor, noise: torch.Tensor, steps: int, callback: Optional[Callable] = None,
                tensor_names: Sequence[str] = ("latents",), **step_kwargs) -> torch.Tensor:
        """The scheduler (DDIM by default) from `noise` (model space) guided by `rgb` (same batch, [0, 1]) -> clean
        cubes in model space; `step_kwargs` from `scheduler_step_kwargs` (the generator, where the step takes one).
        After every step, `callback` (diffusers' `callback_on_step_end`) sees the state as "latents"; it stops
        early once `interrupt` is set."""
        timesteps = sampling_timesteps(self.scheduler, steps, noise.device)
        self._num_timesteps = len(timesteps)
        sample = noise * self.scheduler.init_noise_sigma
        for index, (t, t_device) in enumerate(timesteps):
            if self.interrupt:
                break
            prediction = self.net(self.scheduler.scale_model_input(sample, t), rgb, t_device)
            sample = self.scheduler.step(prediction, t, sample, **step_kwargs, return_dict=False)[0]
            sample = run_step_callback(self, callback, index, t, tensor_names, {"latents": sample})["latents"]
        return sample

    def project_onto_rgb(self, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """`pipelines.common.project_onto_rgb` with this pipeline's camera."""
        return project_onto_rgb(self.split, spectra, rgb)

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
        rgb_consistent: Optional[bool] = None,
        latents: Optional[torch.Tensor] = None,
        callback_on_step_end: Optional[Callable[..., dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        num_images_per_prompt: int = 1,
    ) -> Union[SpectralReconstructionOutput, tuple]:
        """Reconstruct spectra from one RGB image or a batch.

        Args:
            image: PIL image, H x W x 3 / 3 x H x W array or tensor, a file path, a list of these, or a 4-D batch.
                Integer images are scaled by their bit depth; float values must lie in [0, 1].
            num_inference_steps: DDIM steps (default: config `default_denoising_steps`, 5).
            ensemble_size: samples per image from different noise; the answer is their mean and `uncertainty`
                their per-pixel, per-band standard deviation (default: config).
            processing_resolution: 0 (default): the network runs at the input's native size, as R2H-Diff is
                meant to (its attention is linear in the pixel count). Otherwise the RGB's longer side is shrunk
                to at most this, as in the ULDM pipeline; the spectra are upsampled bilinearly to the input size, and with
                `rgb_consistent=True` their observable part then comes from the full-resolution RGB.
            match_input_resolution: return spectra at the input size (True) or at the processing size.
            batch_size: ensemble members denoised together (memory vs speed; results do not depend on it).
            generator: a torch.Generator (consumed image by image), one per image or one per output sample.
            input_space: "srgb" (default: ordinary photos are sRGB-encoded) or "linear" (camera RGB); "srgb" with a
                model for a camera other than the sRGB observer warns, once (`common.warn_if_camera_mismatch`).
            clamp: clip spectra to [0, 1], last. With `physical` they already lie there except where the RGB needs
                more (a highlight, up to `uldm.feasibility.MAX_VALUE`), whose RGB clipping then changes (rgb_error).
            physical: project the ensemble mean onto the spectra closest to it that are non-negative, at most 1
                where the RGB allows it and render to the input RGB exactly (`uldm.feasibility`); out of the
                camera's gamut, the least RGB change, flagged in `out_of_gamut`. False: the raw mean.
            output_type: "np" (N x H x W x B), "pt" (N x B x H x W), "pil" ("np" plus `images`, the spectra rendered
                in sRGB) or "latent" (only `latents`: the denoised cubes in model space, 2s - 1, at the processing
                size, before any resizing or projection).
            rgb_consistent: project every member onto the spectra that render to the input RGB exactly
                (default: config `project_rgb`).
            latents: the initial noise in model space (N·k·E x B x h x w at the processing size, image-major),
                instead of drawing it from `generator`.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in the ULDM pipeline: after every
                denoising step (of every batch), with the model-space state as "latents".
            num_images_per_prompt: k independent samples of every image, each the mean of its own `ensemble_size`
                members, returned unreduced (N·k outputs, image-major), as in the ULDM pipeline.
        """
        # 0. Resolve defaults
        device, dtype = self._execution_device, self.net.dtype
        steps = num_inference_steps if num_inference_steps is not None else self.config.default_denoising_steps
        ensemble = ensemble_size if ensemble_size is not None else self.config.default_ensemble_size
        resolution = processing_resolution if processing_resolution is not None else self.config.default_processing_resolution
        project = self.config.project_rgb if rgb_consistent is None else bool(rgb_consistent)
        samples = num_images_per_prompt

        # 1. Check inputs
        check_call_arguments(steps, ensemble, batch_size, resolution, input_space, output_type, samples)
        check_scheduler(self.scheduler, self.net.config.prediction_type)
        tensor_names = callback_tensor_names(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        warn_if_camera_mismatch(self, input_space)

        # 2. Preprocess: linear RGB, N x 3 x H x W (all images of one call must share a size)
        rgb_full = load_rgb_batch(image, input_space, generator, device, samples)
        num_images, _, height, width = rgb_full.shape

        # 3. Processing resolution (native by default); the network pads to its own multiple internally
        rgb = resize_longer_side(rgb_full, resolution)
        proc_h, proc_w = rgb.shape[-2:]

        # 4. Initial noise in model space, one cube per member (k samples x E members per image), drawn image by image
        condition = rgb.repeat_interleave(samples * ensemble, dim=0).to(dtype)
        groups = noise_groups(generator, num_images, samples)
        rows_per_group = len(condition) // groups
        noise = initial_latents(latents, rows_per_group, groups, (self.net.config.spectral_channels, proc_h, proc_w),
                                generator, device, dtype)

        # 5. Denoise, `batch_size` members at a time
        self._interrupt = False
        with progress_bar_options(self, show_progress_bar, "R2H-Diff"):
            batches = self.progress_bar(range(0, len(noise), batch_size))
        results = [self.denoise(condition[start:start + batch_size], noise[start:start + batch_size], steps,
                                callback_on_step_end, tensor_names,
                                **scheduler_step_kwargs(self.scheduler, generator, start,
                                                        len(noise[start:start + batch_size]), rows_per_group))
                   for start in batches]
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latent_output(torch.cat(results), self.config.wavelengths, return_dict)
        spectra = from_model_space(torch.cat(results).float())

        # 6. Output size (each image's RGB for its k samples); optional projection onto the RGB-consistent set,
        #    member by member
        rgb_out = repeat_per_sample(rgb_full if match_input_resolution else rgb, samples)
        spectra = resize_to(spectra, tuple(rgb_out.shape[-2:]))
        if project:
            spectra = self.project_onto_rgb(spectra, rgb_out.repeat_interleave(ensemble, dim=0))

        # 7. Ensemble: mean as the answer (made physical by default), spread as the uncertainty
        spectra, uncertainty = ensemble_statistics(spectra, len(rgb_out), ensemble)
        out_of_gamut = None
        if physical:
            spectra, out_of_gamut = physical_spectra(self.camera, spectra, rgb_out)
        if clamp:
            spectra = spectra.clamp(0, 1)
        rgb_error = rgb_error_per_image(self.split, spectra, rgb_out)

        # 8. Outputs (no code image in this family)
        self.maybe_free_model_hooks()
        return make_output(spectra, uncertainty, None, self.config.wavelengths, rgb_error, output_type, return_dict,
                           out_of_gamut)


__all__ = ["R2HDiffPipeline", "from_model_space", "to_model_space"]
