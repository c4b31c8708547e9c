"""R2HDiffPipeline: RGB image -> 31-band spectra with R2H-Diff, an RGB-guided diffusion on the cube itself.

    from uldm import R2HDiffPipeline
    pipe = R2HDiffPipeline.from_pretrained("runs/r2hdiff-cave/pipeline")   # or "org/name" on a hub
    out = pipe("photo.png", ensemble_size=4)            # 5 DDIM steps by default
    out.spectra, out.uncertainty, out.rgb_error          # the same output type as the ULDM pipeline
    pipe(image, rgb_consistent=True)                     # project onto {ŝ : Φŝ = c}: rgb_error ~ 1e-7

How it differs from the ULDM pipeline (`pipeline_spectral_reconstruction.py`), with which it shares its inputs,
outputs, loading and publishing (`pipelines/common.py`):

- **Data space.** The network denoises the spectra directly, mapped to x = 2s − 1 (s in [0, 1] -> x in
  [-1, 1], the range of the N(0, I) noise it starts from, as for images in DDPM); the answer is s = (x + 1) / 2.
  `to_model_space` / `from_model_space` are the one place this mapping lives (the trainer uses them too).
- **Sampling.** x_T ~ N(0, I) at the cube's size (B x H x W per member), then DDIM with the network predicting
  the clean cube (prediction_type "sample"); with zero terminal SNR, t = 999 is pure noise, as in training.
- **No code image.** Nothing between RGB and spectra is generated, so `output.code` is None (the field exists
  for families that generate one; filling it with the input RGB would suggest a code that is not there).
- **RGB consistency is optional.** The network is free to disagree with the input colour; `rgb_consistent=True`
  (default: config `project_rgb`) replaces each member's observable part with the input's, ŝ ← Φ⁺c + N Nᵀŝ,
  the closest spectrum (in L2) that renders to c exactly. `rgb_error` is reported either way, so the cost of
  skipping the projection is visible.
- **The camera lives in the pipeline config** (model_index.json: `camera_name`, `camera_response`,
  `wavelengths`), not in a component: the network itself does not depend on Φ, only the projection and the
  RGB error do, and a config entry needs no weights file. `pipe.camera` rebuilds the `CameraResponse`.
"""

from __future__ import annotations

from typing import Optional, Union

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
    camera_from_config,
    check_call_arguments,
    draw_noise,
    ensemble_statistics,
    load_rgb_batch,
    make_output,
    progress_bar_options,
    project_onto_rgb,
    resize_longer_side,
    resize_to,
    rgb_error_per_image,
    sampling_timesteps,
    scheduler_step_kwargs,
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
    def denoise(self, rgb: torch.Tensor, noise: torch.Tensor, steps: int, **step_kwargs) -> torch.Tensor:
        """The scheduler (DDIM by default) from `noise` (model space) guided by `rgb` (same batch, [0, 1]) -> clean
        cubes in model space; `step_kwargs` from `scheduler_step_kwargs` (the generator, where the step takes one)."""
        timesteps = sampling_timesteps(self.scheduler, steps, noise.device)
        sample = noise * self.scheduler.init_noise_sigma
        for t, t_device in timesteps:
            prediction = self.net(self.scheduler.scale_model_input(sample, t), rgb, t_device)
            sample = self.scheduler.step(prediction, t, sample, **step_kwargs, return_dict=False)[0]
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
        output_type: str = "np",
        show_progress_bar: Optional[bool] = None,
        return_dict: bool = True,
        rgb_consistent: Optional[bool] = None,
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
            generator: a torch.Generator (consumed image by image) or one per image.
            input_space: "srgb" (default: ordinary photos are sRGB-encoded) or "linear" (camera RGB).
            clamp: clip spectra to [0, 1]; after a projection this can break Φŝ = c slightly (see rgb_error).
            output_type: "np" (N x H x W x B) or "pt" (N x B x H x W).
            rgb_consistent: project every member onto the spectra that render to the input RGB exactly
                (default: config `project_rgb`).
        """
        # 0. Resolve defaults
        device, dtype = self._execution_device, self.net.dtype
        steps = num_inference_steps if num_inference_steps is not None else self.config.default_denoising_steps
        ensemble = ensemble_size if ensemble_size is not None else self.config.default_ensemble_size
        resolution = processing_resolution if processing_resolution is not None else self.config.default_processing_resolution
        project = self.config.project_rgb if rgb_consistent is None else bool(rgb_consistent)

        # 1. Check inputs
        check_call_arguments(steps, ensemble, batch_size, resolution, input_space, output_type)

        # 2. Preprocess: linear RGB, N x 3 x H x W (all images of one call must share a size)
        rgb_full = load_rgb_batch(image, input_space, generator, device)
        num_images, _, height, width = rgb_full.shape

        # 3. Processing resolution (native by default); the network pads to its own multiple internally
        rgb = resize_longer_side(rgb_full, resolution)
        proc_h, proc_w = rgb.shape[-2:]

        # 4. Initial noise in model space, one cube per ensemble member, drawn image by image
        condition = rgb.repeat_interleave(ensemble, dim=0).to(dtype)
        noise = draw_noise(ensemble, num_images, (self.net.config.spectral_channels, proc_h, proc_w), generator,
                           device, dtype)

        # 5. Denoise, `batch_size` members at a time
        with progress_bar_options(self, show_progress_bar, "R2H-Diff"):
            batches = self.progress_bar(range(0, len(noise), batch_size))
        results = [self.denoise(condition[start:start + batch_size], noise[start:start + batch_size], steps,
                                **scheduler_step_kwargs(self.scheduler, generator, start,
                                                        len(noise[start:start + batch_size]), ensemble))
                   for start in batches]
        spectra = from_model_space(torch.cat(results).float())

        # 6. Output size; optional projection onto the RGB-consistent set, member by member
        rgb_out = rgb_full if match_input_resolution else rgb
        spectra = resize_to(spectra, tuple(rgb_out.shape[-2:]))
        if project:
            spectra = self.project_onto_rgb(spectra, rgb_out.repeat_interleave(ensemble, dim=0))

        # 7. Ensemble: mean as the answer, spread as the uncertainty
        spectra, uncertainty = ensemble_statistics(spectra, num_images, ensemble)
        if clamp:
            spectra = spectra.clamp(0, 1)
        rgb_error = rgb_error_per_image(self.split, spectra, rgb_out)

        # 8. Outputs (no code image in this family)
        self.maybe_free_model_hooks()
        return make_output(spectra, uncertainty, None, self.config.wavelengths, rgb_error, output_type, return_dict)


__all__ = ["R2HDiffPipeline", "from_model_space", "to_model_space"]
