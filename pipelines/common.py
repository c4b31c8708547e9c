"""What every uldm pipeline shares, so the model families differ only in their denoising step.

- the output dataclass `SpectralReconstructionOutput` (one type for every family, so the CLI, the evaluation loop
  and `uldm.checkpoints.PipelineReconstructor` never ask which model made it);
- input handling: argument checks, images of any kind -> a linear-RGB batch tensor, resizing to a processing
  resolution;
- per-image noise (a batch equals the same images passed one at a time), ensemble statistics, output layout;
- `SpectralPipelineMixin`: `from_pretrained` from a folder or a hub id and `push_to_hub` with a model card.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

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


@dataclass
class SpectralReconstructionOutput(BaseOutput):
    """spectra / uncertainty: N x H x W x B (np) or N x B x H x W (pt); code: the generated code images
    (N x H x W x 3 or N x 3 x H x W, ensemble mean) for families that have one (ULDM), None for those that
    denoise the spectra directly (R2H-Diff); wavelengths: (B,) nm; rgb_error: (N,) max |Φŝ − c|."""

    spectra: Union[np.ndarray, torch.Tensor]
    uncertainty: Union[np.ndarray, torch.Tensor]
    code: Optional[Union[np.ndarray, torch.Tensor]]
    wavelengths: np.ndarray
    rgb_error: np.ndarray


# ------------------------------------------------------------------------------------------------ inputs
def split_batch(image: ImageInput) -> list:
    """One item per image: lists stay lists, 4-D arrays/tensors are split along their first axis."""
    if isinstance(image, (list, tuple)):
        return list(image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        return list(image)
    return [image]


def check_call_arguments(steps: int, ensemble_size: int, batch_size: int, processing_resolution: int,
                         input_space: str, output_type: str) -> None:
    """The checks every pipeline's `__call__` makes before doing any work."""
    for name, value in (("num_inference_steps", steps), ("ensemble_size", ensemble_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if processing_resolution < 0:
        raise ValueError(f"processing_resolution must be >= 0 (0: native), got {processing_resolution}")
    if input_space not in ("srgb", "linear"):
        raise ValueError(f"input_space must be 'srgb' or 'linear', got {input_space!r}")
    if output_type not in ("np", "pt"):
        raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")


def load_rgb_batch(image: ImageInput, input_space: str, generator: GeneratorInput,
                   device: torch.device) -> torch.Tensor:
    """Any accepted input -> linear RGB in [0, 1], float32, N x 3 x H x W on `device`.

    All images of one call must share a size (they are stacked), and a list of generators needs one per image.
    """
    images = split_batch(image)
    if isinstance(generator, list) and len(generator) != len(images):
        raise ValueError(f"got {len(generator)} generators for {len(images)} images")
    arrays = [load_linear_rgb(item, input_space, where=f"image {i}") for i, item in enumerate(images)]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"all images of one call must have the same size, got {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device=device, dtype=torch.float32)


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


def scheduler_step_kwargs(scheduler, generator: GeneratorInput, start: int, count: int, ensemble: int) -> dict:
    """What this scheduler's `step` takes of the generator: samplers that add noise (DDPM, Euler ancestral, ...)
    draw it from the caller's generator (one per image: the members of rows start..start+count use their image's),
    others take none (UniPC's `step` has no such argument)."""
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
    """
    grouped = samples.reshape(num_images, ensemble, *samples.shape[1:])
    mean = grouped.mean(dim=1)
    return mean, (grouped - mean.unsqueeze(1)).square_().mean(dim=1).sqrt_()


def rgb_error_per_image(split, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """max |Φŝ − c| of each image (N x B x H x W spectra, N x 3 x H x W RGB), through an `ObservableSplit`."""
    return (split.render(spectra.float(), dim=1) - rgb.float()).abs().flatten(1).max(dim=1).values


def make_output(spectra: torch.Tensor, uncertainty: torch.Tensor, code: Optional[torch.Tensor],
                wavelengths: np.ndarray, rgb_error: torch.Tensor, output_type: str,
                return_dict: bool) -> Union[SpectralReconstructionOutput, tuple]:
    """Channel-first tensors -> the requested layout ("np": N x H x W x C arrays, "pt": as they are)."""
    if output_type == "np":
        spectra, uncertainty = (x.permute(0, 2, 3, 1).cpu().numpy() for x in (spectra, uncertainty))
        code = code.permute(0, 2, 3, 1).cpu().numpy() if code is not None else None
    output = (spectra, uncertainty, code, np.asarray(wavelengths, dtype=np.float64), rgb_error.cpu().numpy())
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
    """Loading and publishing for uldm pipelines; list it before `DiffusionPipeline` in the bases.

    A pipeline supplies `camera`, `model_card_name` and `model_card_training()`; the rest is the same for every
    family.
    """

    model_card_name = "uldm spectral reconstruction"

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
        pipeline = super().from_pretrained(str(folder), **dtype_argument_for_diffusers(kwargs))
        realign_weights(*(c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)))
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
        if push_to_hub:
            repo_id = hub_options.pop("repo_id", Path(save_directory).name)
            self._publish_folder(Path(save_directory), repo_id, **hub_options)

    def push_to_hub(self, repo_id: str, *, metrics: Optional[dict[str, float]] = None, description: str = "",
                    private: bool = False, token: Optional[str] = None, revision: Optional[str] = None,
                    commit_message: Optional[str] = None, create_pr: bool = False) -> str:
        """Save to a temporary folder with a model card (camera, metrics, what it was trained on), then upload it."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return self._publish_folder(Path(tmp), repo_id, metrics=metrics, description=description, private=private,
                                        token=token, revision=revision, commit_message=commit_message,
                                        create_pr=create_pr)

    def _publish_folder(self, folder: Path, repo_id: str, *, metrics: Optional[dict[str, float]] = None,
                        description: str = "", private: Optional[bool] = None, token: Optional[str] = None,
                        revision: Optional[str] = None, commit_message: Optional[str] = None,
                        create_pr: bool = False) -> str:
        """Write uldm's model card into a saved `folder` (unless it has one) and upload the folder."""
        from uldm.hub import push_folder, write_model_card

        name = type(self).__name__
        if not (folder / "README.md").exists():
            write_model_card(folder, title=f"{self.model_card_name}: {repo_id}", pipeline_class=name,
                             description=description or f"A uldm {name} (RGB -> {self.camera.num_bands}-band spectra).",
                             metrics=metrics, camera=self.camera.name, training=self.model_card_training())
        return push_folder(folder, repo_id, token=token, private=bool(private), revision=revision,
                           commit_message=commit_message or f"Upload {name}", create_pr=create_pr)

__all__ = [
    "DEFAULT_CAMERA",
    "camera_config",
    "camera_from_config",
    "project_onto_rgb",
    "GeneratorInput",
    "ImageInput",
    "SpectralPipelineMixin",
    "SpectralReconstructionOutput",
    "check_call_arguments",
    "draw_noise",
    "ensemble_statistics",
    "load_rgb_batch",
    "make_output",
    "progress_bar_options",
    "sampling_timesteps",
    "scheduler_step_kwargs",
    "resize_longer_side",
    "resize_to",
    "split_batch",
]
