"""What every uldm pipeline shares, so the model families differ only in their denoising step.

- the output dataclass `SpectralReconstructionOutput` (one type for every family, so the CLI, the evaluation loop
  and `uldm.checkpoints.PipelineReconstructor` never ask which model made it);
- input handling: argument checks, images of any kind -> a linear-RGB batch tensor, resizing to a processing
  resolution;
- per-image noise (a batch equals the same images passed one at a time), ensemble statistics, output layout;
- diffusers' call contract: output types ("np", "pt", "pil", "latent"), step callbacks, scheduler checks;
- `SpectralPipelineMixin`: `from_pretrained` from a folder or a hub id and `push_to_hub` with a model card.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from uldm.images import load_linear_rgb

from .remote_code import holds_only_uldm_reexports, write_remote_code

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor, str, Path, list]
GeneratorInput = Optional[Union[torch.Generator, list[torch.Generator]]]
# What a pipeline's `band_sink` is handed for each band of rows it composes: (rows, spectra, uncertainty, mask or None)
BandSink = Callable[[slice, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], None]


@dataclass
class SpectralReconstructionOutput(BaseOutput):
    """spectra / uncertainty: N x H x W x B (np) or N x B x H x W (pt); code: the generated code images
    (N x H x W x 3 or N x 3 x H x W, ensemble mean) for families that have one (ULDM), None for those that
    denoise the spectra directly (R2H-Diff); wavelengths: (B,) nm; rgb_error: (N,) max |Φŝ − c|, which with the
    physical projection is ~1e-7 in gamut and, out of gamut, the RGB change the projection had to make;
    out_of_gamut: N x H x W bool, the pixels whose RGB no spectrum in [0, `uldm.feasibility.MAX_VALUE`] renders
    to (their spectra have the least RGB change instead), None when the projection is off (`physical=False`);
    images: with `output_type="pil"`, the spectra rendered as sRGB PIL images (`render_srgb`: equal-energy light,
    CIE 1931 2° observer, white-balanced to D65), one per output, beside the spectra ("np" layout), else None;
    latents: with `output_type="latent"`, the denoised latents before decoding (a tensor, image-major: N·k·E x C
    x h x w), else None; nothing is decoded then, so every field but `wavelengths` is None.

    N counts outputs: `num_images_per_prompt` (k) samples of every input image, image-major (N = images x k)."""

    spectra: Optional[Union[np.ndarray, torch.Tensor]]
    uncertainty: Optional[Union[np.ndarray, torch.Tensor]]
    code: Optional[Union[np.ndarray, torch.Tensor]]
    wavelengths: np.ndarray
    rgb_error: Optional[np.ndarray]
    out_of_gamut: Optional[Union[np.ndarray, torch.Tensor]] = None
    images: Optional[list[Image.Image]] = None
    latents: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------------ inputs
def split_batch(image: ImageInput) -> list:
    """One item per image: 4-D arrays/tensors are split along their first axis, and so is every 4-D item of a
    list (diffusers' pipelines take a list of 1 x 3 x H x W tensors); other list items are one image each."""
    if isinstance(image, (list, tuple)):
        return [part for item in image for part in split_batch(item)]
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        return list(image)
    return [image]


OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def check_call_arguments(steps: int, ensemble_size: int, batch_size: int, processing_resolution: int,
                         input_space: str, output_type: str, num_images_per_prompt: int = 1) -> None:
    """The checks every pipeline's `__call__` makes before doing any work."""
    for name, value in (("num_inference_steps", steps), ("ensemble_size", ensemble_size), ("batch_size", batch_size),
                        ("num_images_per_prompt", num_images_per_prompt)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if processing_resolution < 0:
        raise ValueError(f"processing_resolution must be >= 0 (0: native), got {processing_resolution}")
    if input_space not in ("srgb", "linear"):
        raise ValueError(f"input_space must be 'srgb' or 'linear', got {input_space!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def noise_groups(generator: GeneratorInput, num_images: int, samples: int = 1) -> int:
    """How many runs of rows the noise is drawn in, each from one generator: a list gives one per image (each
    draws its image's k samples in turn) or, as diffusers' pipelines take them, one per output (images x k
    samples); a single generator (or None) is consumed image by image."""
    if not isinstance(generator, list):
        return num_images
    if len(generator) not in (num_images, num_images * samples):
        per_sample = f" or {num_images * samples} (one per sample)" if samples > 1 else ""
        raise ValueError(f"got {len(generator)} generators for {num_images} images: pass {num_images} (one per "
                         f"image){per_sample}")
    return len(generator)


def load_rgb_batch(image: ImageInput, input_space: str, generator: GeneratorInput,
                   device: torch.device, samples: int = 1) -> torch.Tensor:
    """Any accepted input -> linear RGB in [0, 1], float32, N x 3 x H x W on `device`.

    All images of one call must share a size (they are stacked), and a list of generators needs one per image
    or one per output sample (`samples` per image: `noise_groups`).
    """
    images = split_batch(image)
    noise_groups(generator, len(images), samples)
    arrays = [load_linear_rgb(item, input_space, where=f"image {i}") for i, item in enumerate(images)]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"all images of one call must have the same size, got {sorted(sizes)}")
    batch = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)  # one image: no copy of a large photo
    return torch.from_numpy(batch).permute(0, 3, 1, 2).to(device=device, dtype=torch.float32)


def repeat_per_sample(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Each image's row repeated for its `samples` outputs (`num_images_per_prompt`), image-major; one: no copy."""
    return x if samples == 1 else x.repeat_interleave(samples, dim=0)


def resize_longer_side(rgb: torch.Tensor, resolution: int) -> torch.Tensor:
    """RGB (N x 3 x H x W) shrunk so that its longer side is `resolution`; smaller images (and 0) unchanged.

    Never enlarged: upsampling adds no information, and the models learnt from images at their native scale.
    Antialiased, so the model sees the colours a smaller camera would have recorded.
    """
    height, width = rgb.shape[-2:]
    if not resolution or max(height, width) <= resolution:
        return rgb
    scale = resolution / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(rgb, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an N x C x H x W map to `size` (a no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def draw_noise(count_per_image: int, num_images: int, shape: tuple, generator: GeneratorInput,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Initial noise, drawn image by image, so a batch equals the same images passed one at a time."""
    noises = []
    for index in range(num_images):
        gen = generator[index] if isinstance(generator, list) else generator
        noises.append(randn_tensor((count_per_image, *shape), generator=gen, device=device, dtype=dtype))
    return torch.cat(noises)


def initial_latents(latents: Optional[torch.Tensor], rows_per_group: int, groups: int, shape: tuple,
                    generator: GeneratorInput, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The caller's `latents`, checked against the rows x `shape` the call denoises, or noise drawn group by group
    (`draw_noise`, `noise_groups`)."""
    expected = (rows_per_group * groups, *shape)
    if latents is None:
        return draw_noise(rows_per_group, groups, shape, generator, device, dtype)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must have shape {expected} (images x samples x ensemble members, image-major; "
                         f"channels; latent size), got {got}")
    return latents.to(device=device, dtype=dtype)


def scheduler_step_kwargs(scheduler, generator: GeneratorInput, start: int, count: int, ensemble: int) -> dict:
    """What this scheduler's `step` takes of the generator: samplers that add noise (DDPM, Euler ancestral, ...)
    draw it from the caller's generator (from a list, rows start..start+count use their group's: `ensemble` rows
    per generator, `noise_groups`), others take none (UniPC's `step` has no such argument)."""
    import inspect

    if "generator" not in inspect.signature(scheduler.step).parameters:
        return {}
    if isinstance(generator, list):
        return {"generator": [generator[row // ensemble] for row in range(start, start + count)]}
    return {"generator": generator}


def sampling_timesteps(scheduler, steps: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fresh schedule of `steps` as (timestep for the scheduler, the same on `device` for the network) pairs.

    The schedule stays on the CPU, as diffusers already keeps Euler's sigmas: the scheduler's per-step arithmetic
    on it (indexing its alphas, DDIM's `prev_t >= 0`) then reads host memory, where a GPU timestep would make the
    host wait for the GPU at every step. The network's copy is made once, before the loop.
    """
    scheduler.set_timesteps(steps)
    return list(zip(scheduler.timesteps, scheduler.timesteps.to(device)))


# Schedulers whose `step` cannot use some prediction types (diffusers 0.40-0.42 raise inside the loop); every
# other scheduler of a pipeline's `scheduler.compatibles` takes "epsilon", "sample" and "v_prediction".
SCHEDULER_PREDICTION_TYPES = {
    name: ("epsilon", "v_prediction")
    for name in ("EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler",
                 "DPMSolverSDEScheduler", "EDMEulerScheduler", "PNDMScheduler")
}


def check_scheduler(scheduler, prediction_type: str) -> None:
    """Refuse, before any work, a scheduler that cannot sample a model predicting `prediction_type` (its own
    config must say the same, as `from_config(pipe.scheduler.config)` keeps it), naming the ones that can."""
    name = type(scheduler).__name__
    configured = scheduler.config.get("prediction_type")
    if configured is not None and configured != prediction_type:
        raise ValueError(f"{name} is configured for prediction_type {configured!r}, but the model predicts "
                         f"{prediction_type!r}: build it with {name}.from_config(pipe.scheduler.config)")
    if prediction_type in SCHEDULER_PREDICTION_TYPES.get(name, (prediction_type,)):
        return
    fits = sorted(cls.__name__ for cls in getattr(scheduler, "compatibles", ())
                  if prediction_type in SCHEDULER_PREDICTION_TYPES.get(cls.__name__, (prediction_type,)))
    raise ValueError(f"{name} cannot sample this model: its step does not implement prediction_type "
                     f"{prediction_type!r}. Schedulers that fit: {', '.join(fits)}")


def callback_tensor_names(pipeline, callback, names: Sequence[str]) -> list[str]:
    """The tensors `callback_on_step_end` is handed: `names`, or those a diffusers `PipelineCallback` asks for;
    a name outside the pipeline's `_callback_tensor_inputs` is refused before any work."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        names = callback.tensor_inputs
    names = list(names or ())
    unknown = [name for name in names if name not in pipeline._callback_tensor_inputs]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs may only name {pipeline._callback_tensor_inputs}, "
                         f"got {unknown}")
    return names


def run_step_callback(pipeline, callback, index: int, timestep, names: Sequence[str],
                      tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' `callback_on_step_end(pipeline, step_index, timestep, {name: tensor})` for the tensors in `names`;
    a tensor it returns replaces the one passed (none returned: all unchanged)."""
    if callback is None:
        return tensors
    returned = callback(pipeline, index, timestep, {name: tensors[name] for name in names}) or {}
    return {name: returned.get(name, value) for name, value in tensors.items()}


@contextmanager
def progress_bar_options(pipeline, show: Optional[bool], desc: str) -> Iterator[None]:
    """Within the block, the pipeline's progress bars follow what `set_progress_bar_config` set, with `desc`
    unless the user named it and, when `show` is given, shown or hidden for this call only."""
    saved = getattr(pipeline, "_progress_bar_config", None)
    options = {"desc": desc, **(saved or {})}
    if show is not None:
        options["disable"] = not show
    pipeline.set_progress_bar_config(**options)
    try:
        yield
    finally:
        pipeline.set_progress_bar_config(**(saved or {}))


# ------------------------------------------------------------------------------------------------ camera
DEFAULT_CAMERA = "Nikon 5100 (NPL)"


def camera_from_config(camera_name: str = DEFAULT_CAMERA, camera_response: Optional[list] = None,
                       wavelengths: Optional[list] = None):
    """The `CameraResponse` a pipeline config stores (name, 3 x B response, wavelengths), or a preset by name.

    Families whose network does not depend on Φ (R2H-Diff, MST++) keep the camera in their config, not in a
    component: only the projection onto Φŝ = c and the RGB error need it, and a config entry needs no weights."""
    from uldm.camera import CameraResponse

    if camera_response is None or wavelengths is None:
        return CameraResponse.from_preset(camera_name)
    return CameraResponse.from_config({"name": camera_name, "matrix": camera_response, "wavelengths": wavelengths})


def camera_config(camera) -> dict[str, Any]:
    """The config entries `camera_from_config` reads back."""
    return {"camera_name": camera.name, "camera_response": camera.matrix.tolist(),
            "wavelengths": list(camera.grid.wavelengths)}


class CameraMismatchWarning(UserWarning):
    """The input space says the image is something other than the RGB of the model's camera."""


def warn_if_camera_mismatch(model, input_space: str) -> None:
    """A `CameraMismatchWarning`, once per `model` (anything with a `camera`: a pipeline, a reconstructor), when
    `input_space` disagrees with the camera it assumes.

    The rule: "srgb" declares a display-referred photo, whose linear values are the sRGB observer's
    (`uldm.camera.SRGB_OBSERVER`), so it disagrees with every other camera (a sensor's raw response, such as the
    Nikon 5100's). "linear" declares the model camera's own linear RGB (for an sRGB-observer model: linear sRGB),
    so it never does: only the user knows where linear values came from. The camera is known by its name, which
    a model trained with `camera: srgb` records.
    """
    from uldm.camera import SRGB_OBSERVER

    if input_space != "srgb" or getattr(model, "_camera_mismatch_warned", False):
        return
    camera = model.camera
    if camera.name == SRGB_OBSERVER:
        return
    import warnings

    model._camera_mismatch_warned = True
    warnings.warn(
        f"input_space='srgb' takes the image for an sRGB photo, whose linear values are what the {SRGB_OBSERVER} "
        f"sees, but this model assumes the linear RGB of the camera {camera.name!r}: its spectra of a photo are a "
        "guess. Use a model for the sRGB observer (camera preset 'srgb'), or give that camera's linear RGB with "
        "input_space='linear' (--input-space linear). An image that is that camera's own RGB, sRGB-encoded, is "
        "read right: then this warning does not apply.", CameraMismatchWarning, stacklevel=2)


def project_onto_rgb(split, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """ŝ ← Φ⁺c + N Nᵀŝ (N x B x H x W, N x 3 x H x W): keep what the camera cannot see, take the rest from c.

    The closest spectrum to ŝ (in L2, per pixel) that renders to c. In float32, like the ULDM pipeline's
    composition (the bases are float64 and cast): Φŝ = c to ~1e-7.
    """
    return split.compose(rgb.float(), split.unobservable(spectra.float(), dim=1), dim=1)


# ----------------------------------------------------------------------------------------------- outputs
def ensemble_statistics(samples: torch.Tensor, num_images: int, ensemble: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N·E) x ... members, image-major -> (mean, per-element standard deviation), each N x ....

    The population standard deviation, so one member gives exactly zero uncertainty. Two passes (the mean, then
    the mean squared deviation from it): as accurate as `torch.std`, and on the CPU many times faster over this
    middle axis, which torch's own std reduction does not vectorise (the composition's profile in docs/results.md).
    One member is its own mean (`samples` itself, no copy) with zero spread, without the passes.
    """
    if ensemble == 1:
        return samples, torch.zeros_like(samples)
    grouped = samples.reshape(num_images, ensemble, *samples.shape[1:])
    mean = grouped.mean(dim=1)
    return mean, (grouped - mean.unsqueeze(1)).square_().mean(dim=1).sqrt_()


@contextmanager
def threads_beside_a_sink(band_sink: Optional[BandSink], device: torch.device) -> Iterator[None]:
    """Within the block, one intra-op CPU thread fewer when a `band_sink` is given: its writer's thread
    (`uldm.io.CubeWriter`) compresses each band on a core of its own meanwhile, and an intra-op pool that shares
    its cores with it spends more time synchronising than computing (the SpeUAE's band of 256k pixels: 7x slower
    on 2 threads than on 1 on a busy 2-core CPU). Two bands at once on a thread each were slower still: the
    physical projection's many small operations hold the GIL."""
    threads = torch.get_num_threads()
    if band_sink is None or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def physical_spectra(camera, spectra: torch.Tensor, rgb: torch.Tensor,
                     band_pixels: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """`uldm.feasibility.project_feasible` of N x B x H x W spectra against N x 3 x H x W RGB, in place, a band of
    about `band_pixels` pixels (per image) at a time, so the float64 work stays small at any size:
    (the spectra, the N x H x W out-of-gamut mask)."""
    from uldm.feasibility import project_feasible

    num_images, _, height, width = spectra.shape
    mask = torch.zeros(num_images, height, width, dtype=torch.bool, device=spectra.device)
    rows = max(1, band_pixels // max(width, 1))
    for top in range(0, height, rows):
        band = slice(top, top + rows)
        spectra[..., band, :], mask[:, band] = project_feasible(spectra[..., band, :], rgb[..., band, :], camera, dim=1)
    return spectra, mask


def rgb_error_per_image(split, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """max |Φŝ − c| of each image (N x B x H x W spectra, N x 3 x H x W RGB), through an `ObservableSplit`."""
    return (split.render(spectra.float(), dim=1) - rgb.float()).abs().flatten(1).max(dim=1).values


def render_srgb(spectra: np.ndarray, wavelengths: np.ndarray) -> list[Image.Image]:
    """N x H x W x B spectra -> N sRGB PIL images, as the previews render them (`uldm.visualize.cube_to_srgb`:
    the spectra as reflectance under an equal-energy light, CIE 1931 2° observer, white-balanced to D65)."""
    from uldm.visualize import cube_to_srgb

    return [Image.fromarray(cube_to_srgb(cube, wavelengths), mode="RGB") for cube in spectra]


def make_output(spectra: torch.Tensor, uncertainty: torch.Tensor, code: Optional[torch.Tensor],
                wavelengths: np.ndarray, rgb_error: torch.Tensor, output_type: str,
                return_dict: bool, out_of_gamut: Optional[torch.Tensor] = None) -> Union[SpectralReconstructionOutput, tuple]:
    """Channel-first tensors -> the requested layout ("np": N x H x W x C arrays, "pt": as they are, "pil": "np"
    plus sRGB renderings in `images`); the tuple (`return_dict=False`) holds the fields in the dataclass's order."""
    if output_type in ("np", "pil"):
        spectra, uncertainty = (x.permute(0, 2, 3, 1).cpu().numpy() for x in (spectra, uncertainty))
        code = code.permute(0, 2, 3, 1).cpu().numpy() if code is not None else None
        out_of_gamut = out_of_gamut.cpu().numpy() if out_of_gamut is not None else None
    images = render_srgb(spectra, wavelengths) if output_type == "pil" else None
    output = (spectra, uncertainty, code, np.asarray(wavelengths, dtype=np.float64), rgb_error.cpu().numpy(),
              out_of_gamut, images, None)
    return SpectralReconstructionOutput(*output) if return_dict else output


def latent_output(latents: torch.Tensor, wavelengths: np.ndarray,
                  return_dict: bool) -> Union[SpectralReconstructionOutput, tuple]:
    """`output_type="latent"`: the denoised latents as they are, nothing decoded (every other field None)."""
    output = (None, None, None, np.asarray(wavelengths, dtype=np.float64), None, None, None, latents)
    return SpectralReconstructionOutput(*output) if return_dict else output


# ---------------------------------------------------------------------------------------------- loading
def dtype_argument_for_diffusers(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`dtype=` or `torch_dtype=` renamed to what the installed diffusers takes: `dtype` from 0.40 on (it warns
    that `torch_dtype` is deprecated), `torch_dtype` before."""
    kwargs = dict(kwargs)
    if "dtype" in kwargs and "torch_dtype" in kwargs:
        raise ValueError("pass one of `dtype` and `torch_dtype`, not both")
    value = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    if value is not None:
        import diffusers

        major_minor = tuple(int(part) for part in diffusers.__version__.split(".")[:2])
        kwargs["dtype" if major_minor >= (0, 40) else "torch_dtype"] = value
    return kwargs


class SpectralPipelineMixin:
    """Loading and publishing for uldm pipelines, and diffusers' step-callback state; list it before
    `DiffusionPipeline` in the bases.

    A pipeline supplies `camera`, `model_card_name` and `model_card_training()`; the rest is the same for every
    family. A pipeline loaded with `from_pretrained` keeps the model card of the folder it came from: saving and
    pushing it again writes that card (base_model, datasets, metrics), not a blank one.
    """

    model_card_name = "uldm spectral reconstruction"
    _callback_tensor_inputs = ["latents"]  # what `callback_on_step_end` may ask for

    @property
    def num_timesteps(self) -> int:
        """Steps of the current (or last) call's schedule: a step callback's index runs 0..num_timesteps - 1."""
        return getattr(self, "_num_timesteps", 0)

    @property
    def interrupt(self) -> bool:
        """Set by a step callback (`pipeline._interrupt = True`) to stop denoising: no further step runs, in this
        batch or a later one, and every latent is decoded as it stands. Reset at the start of every call."""
        return getattr(self, "_interrupt", False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], *, revision: Optional[str] = None,
                        cache_dir: Optional[str] = None, local_files_only: bool = False, token: Optional[str] = None,
                        **kwargs: Any):
        """A local folder or a hub repo id. Hub repos are fetched with huggingface_hub first (diffusers will not
        download pipelines whose components come from another library), then loaded locally; `dtype` (or its
        older name `torch_dtype`), `variant` and other diffusers arguments pass through. Weights are realigned so
        that a saved-then-loaded pipeline gives bit-identical results (see `uldm.models.alignment`)."""
        from uldm.hub import resolve_pretrained
        from uldm.models.alignment import realign_weights

        folder = resolve_pretrained(str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, token=token)
        if "trust_remote_code" not in kwargs and holds_only_uldm_reexports(folder, cls):
            kwargs["trust_remote_code"] = True  # the folder's code files only import uldm (pipelines.remote_code)
        from uldm.hub import read_model_card

        pipeline = super().from_pretrained(str(folder), **dtype_argument_for_diffusers(kwargs))
        realign_weights(*(c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)))
        pipeline._model_card_text = read_model_card(folder)
        return pipeline

    def model_card_training(self) -> str:
        """One line for the model card: what the components are (overridden by each pipeline)."""
        return type(self).__name__

    def save_pretrained(self, save_directory: Union[str, Path], *, push_to_hub: bool = False, **kwargs: Any) -> None:
        """diffusers' save, plus the files that let `diffusers.DiffusionPipeline.from_pretrained(...,
        trust_remote_code=True)` load the folder (`pipelines.remote_code`). With `push_to_hub=True` (and diffusers'
        `repo_id`, `token`, `private`, `create_pr`, `commit_message`) the folder is then uploaded with uldm's model
        card, as `push_to_hub` does."""
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "token", "private", "create_pr", "commit_message")
                       if key in kwargs}
        super().save_pretrained(str(save_directory), **kwargs)
        write_remote_code(save_directory, type(self))
        card = getattr(self, "_model_card_text", None)
        if card:  # the card of the folder this pipeline was loaded from
            from uldm.io import atomic_write

            with atomic_write(Path(save_directory) / "README.md") as tmp:
                tmp.write_text(card, encoding="utf-8")
        if push_to_hub:
            repo_id = hub_options.pop("repo_id", Path(save_directory).name)
            self._publish_folder(Path(save_directory), repo_id, **hub_options)

    def push_to_hub(self, repo_id: str, *, metrics: Optional[dict[str, float]] = None, description: str = "",
                    evaluation: Optional[dict[str, Any]] = None, base_model: Optional[Union[str, list[str]]] = None,
                    datasets: Optional[list[str]] = None, private: bool = False, token: Optional[str] = None,
                    revision: Optional[str] = None, commit_message: Optional[str] = None,
                    create_pr: bool = False) -> str:
        """Save to a temporary folder with a model card, then upload it. The card is the loaded one when no card
        details are given, else written anew (`uldm.hub.write_model_card`: camera, metrics, `evaluation` (the
        metrics and the dataset they were measured on) as the hub's model-index, `base_model`, `datasets`), each
        detail not given taken from the loaded card (its model-index only while no new `metrics` are given)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return self._publish_folder(Path(tmp), repo_id, metrics=metrics, description=description,
                                        evaluation=evaluation, base_model=base_model, datasets=datasets,
                                        private=private, token=token, revision=revision,
                                        commit_message=commit_message, create_pr=create_pr)

    def _publish_folder(self, folder: Path, repo_id: str, *, metrics: Optional[dict[str, float]] = None,
                        description: str = "", evaluation: Optional[dict[str, Any]] = None,
                        base_model: Optional[Union[str, list[str]]] = None, datasets: Optional[list[str]] = None,
                        private: Optional[bool] = None, token: Optional[str] = None, revision: Optional[str] = None,
                        commit_message: Optional[str] = None, create_pr: bool = False) -> str:
        """Upload a saved `folder` with a model card: the one it holds when no card details are given, else uldm's
        card written anew, what is not given taken from the card the pipeline was loaded with."""
        from uldm.hub import card_metadata, push_folder, write_model_card

        name = type(self).__name__
        if metrics or description or evaluation or base_model or datasets or not (folder / "README.md").exists():
            loaded = card_metadata(getattr(self, "_model_card_text", None))
            write_model_card(folder, title=f"{self.model_card_name}: {repo_id}", pipeline_class=name,
                             description=description or f"A uldm {name} (RGB -> {self.camera.num_bands}-band spectra).",
                             metrics=metrics or loaded.get("metrics"), camera=self.camera.name,
                             training=self.model_card_training(), tags=loaded.get("tags", ()),
                             base_model=base_model or loaded.get("base_model"),
                             datasets=datasets or loaded.get("datasets", ()),
                             evaluation=evaluation or (None if metrics else loaded.get("evaluation")))
        return push_folder(folder, repo_id, token=token, private=bool(private), revision=revision,
                           commit_message=commit_message or f"Upload {name}", create_pr=create_pr)

__all__ = [
    "DEFAULT_CAMERA",
    "CameraMismatchWarning",
    "camera_config",
    "camera_from_config",
    "project_onto_rgb",
    "BandSink",
    "GeneratorInput",
    "ImageInput",
    "SpectralPipelineMixin",
    "OUTPUT_TYPES",
    "SCHEDULER_PREDICTION_TYPES",
    "SpectralReconstructionOutput",
    "callback_tensor_names",
    "check_call_arguments",
    "check_scheduler",
    "draw_noise",
    "ensemble_statistics",
    "initial_latents",
    "latent_output",
    "load_rgb_batch",
    "make_output",
    "noise_groups",
    "render_srgb",
    "run_step_callback",
    "physical_spectra",
    "progress_bar_options",
    "sampling_timesteps",
    "scheduler_step_kwargs",
    "repeat_per_sample",
    "resize_longer_side",
    "resize_to",
    "split_batch",
    "threads_beside_a_sink",
    "warn_if_camera_mismatch",
]
