"""Find and load whatever a user names as `--checkpoint`: a shipped default, a local file or folder, a hub id.

Every loaded model is a `Reconstructor`: it knows its camera and maps linear RGB (H x W x 3) to spectra
(H x W x B). The CLI and the evaluation loop only ever see this interface, so model families plug in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Protocol, Union

import numpy as np

from .camera import CameraResponse

if TYPE_CHECKING:
    import torch

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# Per input space, the best shipped model first; the first one present is the default. Photos ("srgb") want the
# model for the sRGB observer when one is shipped, else get the Nikon 5100 model (which warns that it assumes
# that camera, `uldm.pipelines.common.warn_if_camera_mismatch`); linear camera RGB and the CAVE benchmark the
# Nikon 5100 model.
DEFAULT_CHECKPOINTS = {"srgb": ("uldm-srgb", "uldm-cave", "baseline-rootpoly-nikon5100.npz"),
                       "linear": ("uldm-cave", "baseline-rootpoly-nikon5100.npz")}


class Reconstructor(Protocol):
    camera: CameraResponse

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...


class Reconstruction(NamedTuple):
    """What a model's `predict` gives for one image: spectra (H x W x B), their uncertainty (H x W x B; None for a
    deterministic model) and the out-of-gamut mask (H x W bool; None when the physical projection is off)."""

    spectra: np.ndarray
    uncertainty: Optional[np.ndarray]
    out_of_gamut: Optional[np.ndarray]


# `sink(rows, spectra, uncertainty, out_of_gamut)`: one band of rows of an image's `Reconstruction` (NumPy arrays of
# those rows, the last two None when the model has none), as `stream_rows` hands them, top to bottom.
RowSink = Callable[[slice, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]], None]


def hand_over_rows(reconstruction: Reconstruction, sink: RowSink) -> None:
    """The rows of a whole `Reconstruction` to `sink`, in bands of about 32 MB."""
    from .io import row_bands

    for rows in row_bands(*reconstruction.spectra.shape):
        sink(rows, *(None if array is None else array[rows] for array in reconstruction))


def stream_rows(model: Reconstructor, rgb: np.ndarray, sink: RowSink) -> None:
    """The reconstruction of the H x W x 3 linear `rgb` to `sink`, band of rows by band of rows: as the model computes
    them when it can (`stream`: the ULDM and the baseline, so the cube is never held whole), else from its whole
    answer (`predict`, or a call)."""
    if hasattr(model, "stream"):
        return model.stream(rgb, sink)
    answer = model.predict(rgb) if hasattr(model, "predict") else Reconstruction(np.asarray(model(rgb)), None, None)
    hand_over_rows(answer, sink)


class PipelineReconstructor:
    """A diffusion pipeline seen as a Reconstructor: fixed steps, ensemble size and seed, linear RGB in, physical
    spectra (`uldm.feasibility`) unless `physical` is False."""

    def __init__(self, pipeline, steps: Optional[int] = None, ensemble: Optional[int] = None, seed: int = 0,
                 processing_resolution: Optional[int] = None, physical: bool = True) -> None:
        self.pipeline, self.steps, self.ensemble, self.seed = pipeline, steps, ensemble, seed
        self.processing_resolution, self.physical = processing_resolution, physical

    @property
    def camera(self) -> CameraResponse:
        return self.pipeline.camera

    def _call(self, rgb: np.ndarray, **kwargs):
        import torch

        return self.pipeline(rgb, num_inference_steps=self.steps, ensemble_size=self.ensemble, input_space="linear",
                             processing_resolution=self.processing_resolution, physical=self.physical,
                             generator=torch.Generator().manual_seed(self.seed), show_progress_bar=False, **kwargs)

    def predict(self, rgb: np.ndarray) -> Reconstruction:
        """The image's `Reconstruction`."""
        out = self._call(rgb)
        mask = out.out_of_gamut[0] if out.out_of_gamut is not None else None
        return Reconstruction(out.spectra[0], out.uncertainty[0], mask)

    def stream(self, rgb: np.ndarray, sink: RowSink) -> None:
        """`predict`, each band of rows handed to `sink` (see `RowSink`) as the pipeline composes it and none kept;
        a pipeline without a `band_sink` (one that upsamples its whole cube at once) hands over its answer's rows."""
        import inspect

        if "band_sink" not in inspect.signature(self.pipeline.__call__).parameters:
            return hand_over_rows(self.predict(rgb), sink)

        def first_image(rows: slice, spectra, uncertainty, out_of_gamut) -> None:
            sink(rows, spectra[0].cpu().numpy(), uncertainty[0].cpu().numpy(),
                 None if out_of_gamut is None else out_of_gamut[0].cpu().numpy())

        self._call(rgb, band_sink=first_image)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.predict(rgb)[0]


def default_checkpoint(input_space: str = "linear") -> Union[str, Path]:
    """What `--checkpoint` means when it is not given: `$ULDM_CHECKPOINT` (a folder, a .npz or a hub id) when set,
    else the best model in the repository's checkpoints/ folder for images in `input_space` ("srgb" or "linear",
    `DEFAULT_CHECKPOINTS`). A wheel install carries no weights (they are not package data: tens of MB), so there
    the error says what to give instead."""
    import os

    if input_space not in DEFAULT_CHECKPOINTS:
        raise ValueError(f"input_space must be one of {sorted(DEFAULT_CHECKPOINTS)}, got {input_space!r}")
    if os.environ.get("ULDM_CHECKPOINT"):
        return os.environ["ULDM_CHECKPOINT"]
    names = DEFAULT_CHECKPOINTS[input_space]
    for name in names:
        if (CHECKPOINTS_DIR / name).exists():
            return CHECKPOINTS_DIR / name
    raise FileNotFoundError(
        f"no default checkpoint: {CHECKPOINTS_DIR} holds none of {list(names)} (uldm installed from a "
        "wheel carries no weights). Pass --checkpoint FOLDER, FILE.npz or ORG/NAME (a hub repo), set ULDM_CHECKPOINT "
        "to one of those, or run from a clone of the repository, whose checkpoints/ folder holds the shipped models.")


def resolve_checkpoint(spec: Union[str, Path]) -> Union[str, Path]:
    """Where `--checkpoint spec` points: an existing file or folder as given; a shipped model by its name or its
    path in the repository (`uldm-cave`, `checkpoints/uldm-cave`) from any folder; a 'namespace/name' hub id as a
    string. Anything else that looks like a path (a bare name, `./x`, `checkpoints/x`) and does not exist is a
    FileNotFoundError here, naming where it was looked for and the shipped models: never a hub download."""
    import os

    from .hub import looks_like_local_path

    if isinstance(spec, os.PathLike) or Path(spec).expanduser().exists():
        return Path(spec).expanduser()
    shipped = _shipped_path(spec)
    if shipped is not None:
        return shipped
    if looks_like_local_path(spec) or "/" not in spec or Path(spec).parts[0] == CHECKPOINTS_DIR.name:
        raise FileNotFoundError(_missing_checkpoint_message(spec))
    return spec


def _shipped_path(spec: str) -> Optional[Path]:
    """The shipped model `spec` names by its name (`uldm-cave`) or its path in the repository
    (`checkpoints/uldm-cave`), if there is one; an explicitly relative or absolute path is never one."""
    import os

    parts = Path(spec).parts
    if spec.startswith((".", "~")) or os.path.isabs(spec) or not parts:
        return None
    candidate = CHECKPOINTS_DIR.joinpath(*parts[1:] if parts[0] == CHECKPOINTS_DIR.name else parts)
    return candidate if candidate != CHECKPOINTS_DIR and candidate.exists() else None


def _missing_checkpoint_message(spec: str) -> str:
    import difflib

    shipped = sorted(p.name for p in CHECKPOINTS_DIR.iterdir()) if CHECKPOINTS_DIR.is_dir() else []
    close = difflib.get_close_matches(Path(spec).name, shipped, n=1)
    hint = f" (did you mean {CHECKPOINTS_DIR / close[0]}?)" if close else ""
    shipped_text = f"; the shipped ones are {', '.join(shipped)}" if shipped else ""
    return (f"no checkpoint {spec!r}: no such file or folder in {Path.cwd()} or {CHECKPOINTS_DIR}{hint}. Give a "
            f"pipeline folder, a baseline .npz or a hub model id 'namespace/name'{shipped_text}")


def checkpoint_camera_name(spec: Union[str, Path]) -> str:
    """The camera a checkpoint assumes, read from its files without loading its weights: a baseline .npz's
    `camera` entry; a pipeline folder's `camera_name` in model_index.json (R2H-Diff, MST++) or in a component's
    config.json (ULDM: its SpeUAE's)."""
    import json

    path = Path(spec)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return json.loads(str(data["camera"]))["name"]
        for config in (path / "model_index.json", *sorted(path.glob("*/config.json"))):
            name = json.loads(config.read_text()).get("camera_name") if config.is_file() else None
            if name:
                return name
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the camera it assumes ({exc})") from exc
    raise ValueError(f"{path}: names no camera (no camera_name in model_index.json or a component's config.json)")


def pipeline_class_name(folder: Path) -> Optional[str]:
    """The class a saved pipeline's model_index.json names (OSError if there is none, ValueError if unreadable);
    `_class_name` may be diffusers' [custom-code file, class] pair (`uldm.pipelines.remote_code`)."""
    import json

    name = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    return name[-1] if isinstance(name, list) and name else name


def load_pipeline(spec: Union[str, Path], *, revision: Optional[str] = None, cache_dir: Optional[str] = None,
                  local_files_only: bool = False, token: Optional[str] = None, **kwargs):
    """Any uldm pipeline (folder or hub id): the class is read from its model_index.json. `revision`,
    `cache_dir`, `local_files_only` and `token` go to the hub download; the rest (`dtype`, `variant`, ...)
    to the pipeline's `from_pretrained`."""
    import uldm

    from .hub import resolve_pretrained

    folder = resolve_pretrained(spec, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                token=token)
    index = folder / "model_index.json"
    if not index.exists():
        raise ValueError(f"{spec}: no model_index.json (expected a pipeline saved with save_pretrained)")
    class_name = pipeline_class_name(folder)
    pipeline_class = getattr(uldm, str(class_name), None)
    if pipeline_class is None or not hasattr(pipeline_class, "from_pretrained"):
        raise ValueError(f"{spec}: model_index.json names {class_name!r}, which is not a uldm pipeline")
    return pipeline_class.from_pretrained(folder, **kwargs)


def load_reconstructor(spec: Optional[Union[str, Path]] = None, steps: Optional[int] = None,
                       ensemble: Optional[int] = None, seed: int = 0, processing_resolution: Optional[int] = None,
                       device: Optional[Union[str, torch.device]] = None,
                       dtype: Optional[torch.dtype] = None, physical: bool = True,
                       input_space: str = "linear") -> Reconstructor:
    """A model from a baseline .npz, a pipeline folder or hub id, or None for the best shipped checkpoint for
    images in `input_space` (`default_checkpoint`; the model itself always takes linear RGB).

    `steps`, `ensemble`, `seed`, `processing_resolution`, `device` (default: where it loads, the CPU) and `dtype`
    (default: as saved) apply to pipelines; the regression runs in NumPy. Every model returns physical spectra
    (`uldm.feasibility`) unless `physical` is False, which gives its raw estimate.
    """
    spec = resolve_checkpoint(spec if spec is not None else default_checkpoint(input_space))
    if Path(spec).suffix == ".npz":
        from .baseline import RootPolynomialRegression

        return RootPolynomialRegression.load(spec, physical=physical)
    pipeline = load_pipeline(spec, **({"dtype": dtype} if dtype is not None else {}))
    if device is not None:
        pipeline.to(device)
    return PipelineReconstructor(pipeline, steps=steps, ensemble=ensemble, seed=seed,
                                 processing_resolution=processing_resolution, physical=physical)
