"""MSTPlusPlusPipeline: RGB image -> 31-band spectra in one forward of MST++, the regression peer.

    from uldm import MSTPlusPlusPipeline
    pipe = MSTPlusPlusPipeline.from_pretrained("checkpoints/mstpp-cave")   # or "org/name" on a hub
    out = pipe("photo.png")                                 # the same output type as the diffusion pipelines
    pipe(image, physical=False)                             # the network's raw estimate

A regression network has no denoising steps and no noise: `num_inference_steps` and `ensemble_size` are accepted
as 1 (so every tool that drives a uldm pipeline drives this one too) and `uncertainty` is zero. diffusers' other
call arguments mean what they can: `num_images_per_prompt=k` repeats every answer k times (identical samples);
its one forward is the one step a `callback_on_step_end` sees (index 0 of `num_timesteps` = 1, once per batch,
the network's estimate as "latents", which the callback may replace; `interrupt` then has nothing left to stop);
`output_type="latent"` returns that estimate; `latents` (initial noise) has no meaning here and is refused.

Like R2H-Diff, it is free to disagree with the input colour. By default (`physical=True`) its estimate is
projected onto the spectra that render to the input RGB exactly and are non-negative, at most 1 where the RGB
allows it (`uldm.feasibility`, `out.out_of_gamut` flags where no such spectrum exists); with `physical=False`,
`rgb_consistent=True` (default: config `project_rgb`) only replaces the observable part with the input's, and
`rgb_error` reports the disagreement either way. The camera lives in the config, as for R2H-Diff.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline

from uldm.camera import CameraResponse
from uldm.models.mstpp import MSTPlusPlus
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
    latent_output,
    load_rgb_batch,
    make_output,
    physical_spectra,
    progress_bar_options,
    project_onto_rgb,
    repeat_per_sample,
    resize_longer_side,
    resize_to,
    rgb_error_per_image,
    run_step_callback,
    warn_if_camera_mismatch,
)


class MSTPlusPlusPipeline(SpectralPipelineMixin, DiffusionPipeline):
    """MST++ (`uldm.models.mstpp`) behind the uldm pipeline interface.

    Components: `net`. Config: the camera, `default_processing_resolution` (0: native size) and `project_rgb`.
    """

    model_cpu_offload_seq = "net"
    model_card_name = "MST++ spectral reconstruction"

    def __init__(self, net: MSTPlusPlus, camera_name: str = DEFAULT_CAMERA, camera_response: Optional[list] = None,
                 wavelengths: Optional[list] = None, default_processing_resolution: int = 0,
                 project_rgb: bool = False) -> None:
        super().__init__()
        camera = camera_from_config(camera_name, camera_response, wavelengths)
        if camera.num_bands != net.config.out_channels:
            raise ValueError(f"MSTPlusPlusPipeline: camera {camera.name!r} has {camera.num_bands} bands, the network "
                             f"{net.config.out_channels} output channels")
        self.register_modules(net=net)
        self.register_to_config(**camera_config(camera), default_processing_resolution=default_processing_resolution,
                                project_rgb=project_rgb)
        self._camera = camera
        self.split = ObservableSplit(camera)

    @classmethod
    def for_camera(cls, net: MSTPlusPlus, camera: CameraResponse, **defaults) -> "MSTPlusPlusPipeline":
        """Build from a `CameraResponse` (what trainers hold) instead of its serialised parts."""
        return cls(net=net, **camera_config(camera), **defaults)

    @property
    def camera(self) -> CameraResponse:
        return self._camera

    def model_card_training(self) -> str:
        config = self.net.config
        return (f"MST++ {config.stages} stages of {config.channels} channels, "
                f"{sum(p.numel() for p in self.net.parameters()):,} parameters; camera {self.camera.name}")

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
        """Reconstruct spectra from one RGB image or a batch (arguments as the ULDM pipeline's; `generator` is not
        used, `num_inference_steps` and `ensemble_size` can only be 1: a regression network is deterministic).
        `physical` (default) projects onto the feasible spectra (`uldm.feasibility`), after `rgb_consistent`'s
        projection if that is on (which it then makes redundant) and before `clamp`. `num_images_per_prompt`,
        `callback_on_step_end`, `output_type="latent"` and `latents` as the module docstring says: k identical
        answers per image; the callback called once per batch (step 0, timestep 0) with the network's estimate
        (B x h x w per image, at the processing size) as "latents"; that estimate as the "latent" output; no
        `latents`."""
        # 0. Resolve defaults
        device, dtype = self._execution_device, self.net.dtype
        resolution = processing_resolution if processing_resolution is not None else self.config.default_processing_resolution
        project = self.config.project_rgb if rgb_consistent is None else bool(rgb_consistent)

        # 1. Check inputs
        samples = num_images_per_prompt
        check_call_arguments(num_inference_steps or 1, ensemble_size or 1, batch_size, resolution, input_space,
                             output_type, samples)
        tensor_names = callback_tensor_names(self, callback_on_step_end, callback_on_step_end_tensor_inputs)
        warn_if_camera_mismatch(self, input_space)
        if (num_inference_steps or 1) != 1 or (ensemble_size or 1) != 1:
            raise ValueError("MST++ is a regression network: it takes no denoising steps and gives one answer "
                             f"(num_inference_steps={num_inference_steps}, ensemble_size={ensemble_size})")
        if latents is not None:
            raise ValueError("MST++ is a regression network: it starts from no noise, so it takes no `latents` "
                             "(a callback_on_step_end can replace its estimate)")

        # 2. Preprocess: linear RGB, N x 3 x H x W, at the processing resolution
        rgb_full = load_rgb_batch(image, input_space, generator, device, samples)
        rgb = resize_longer_side(rgb_full, resolution)

        # 3. One forward per `batch_size` images: the one step a step callback sees; k copies of every answer
        self._interrupt, self._num_timesteps = False, 1
        with progress_bar_options(self, show_progress_bar, "MST++"):
            batches = self.progress_bar(range(0, len(rgb), batch_size))
        estimates = [run_step_callback(self, callback_on_step_end, 0, 0, tensor_names,
                                       {"latents": self.net(rgb[start:start + batch_size].to(dtype))})["latents"]
                     for start in batches]
        estimate = repeat_per_sample(torch.cat(estimates), samples)
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latent_output(estimate, self.config.wavelengths, return_dict)
        spectra = estimate.float()

        # 4. Output size; projections onto the RGB-consistent set (optional) and the feasible set (default)
        rgb_out = repeat_per_sample(rgb_full if match_input_resolution else rgb, samples)
        spectra = resize_to(spectra, tuple(rgb_out.shape[-2:]))
        if project:
            spectra = project_onto_rgb(self.split, spectra, rgb_out)
        out_of_gamut = None
        if physical:
            spectra, out_of_gamut = physical_spectra(self.camera, spectra, rgb_out)
        if clamp:
            spectra = spectra.clamp(0, 1)
        rgb_error = rgb_error_per_image(self.split, spectra, rgb_out)

        # 5. Outputs (deterministic: no spread; no code image)
        self.maybe_free_model_hooks()
        return make_output(spectra, torch.zeros_like(spectra), None, self.config.wavelengths, rgb_error, output_type,
                           return_dict, out_of_gamut)


__all__ = ["MSTPlusPlusPipeline"]
