"""Find and load whatever a user names as `--checkpoint`: a shipped default, a local file or folder, a hub id.

Every loaded model is a `Reconstructor`: it knows its camera and maps linear RGB (H x W x 3) to spectra
(H x W x B). The CLI and the evaluation loop only ever see this interface, so model families plug in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Union

import numpy as np

from .camera import CameraResponse

if TYPE_CHECKING:
    import torch

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# Best shipped model first; the first one present is the default.
DEFAULT_CHECKPOINTS = ("uldm-cave", "baseline-rootpoly-nikon5100.npz")


class Reconstructor(Protocol):
    camera: CameraResponse

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...


class PipelineReconstructor:
    """A diffusion pipeline seen as a Reconstructor: fixed steps, ensemble size and seed, linear RGB in."""

    def __init__(self, pipeline, steps: Optional[int] = None, ensemble: Optional[int] = None, seed: int = 0,
                 processing_resolution: Optional[int] = None) -> None:
        self.pipeline, self.steps, self.ensemble, self.seed = pipeline, steps, ensemble, seed
        self.processing_resolution = processing_resolution

    @property
    def camera(self) -> CameraResponse:
        return self.pipeline.camera

    def predict(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(spectra, uncertainty), each H x W x B."""
        import torch

        out = self.pipeline(rgb, num_inference_steps=self.steps, ensemble_size=self.ensemble, input_space="linear",
                            processing_resolution=self.processing_resolution,
                            generator=torch.Generator().manual_seed(self.seed), show_progress_bar=False)
        return out.spectra[0], out.uncertainty[0]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.predict(rgb)[0]


def default_checkpoint() -> Union[str, Path]:
    """What `--checkpoint` means when it is not given: `$ULDM_CHECKPOINT` (a folder, a .npz or a hub id) when set,
    else the best model in the repository's checkpoints/ folder. A wheel install carries no weights (they are not
    package data: tens of MB), so there the error says what to give instead."""
    import os

    if os.environ.get("ULDM_CHECKPOINT"):
        return os.environ["ULDM_CHECKPOINT"]
    for name in DEFAULT_CHECKPOINTS:
        if (CHECKPOINTS_DIR / name).exists():
            return CHECKPOINTS_DIR / name
    raise FileNotFoundError(
        f"no default checkpoint: {CHECKPOINTS_DIR} holds none of {list(DEFAULT_CHECKPOINTS)} (uldm installed from a "
        "wheel carries no weights). Pass --checkpoint FOLDER, FILE.npz or ORG/NAME (a hub repo), set ULDM_CHECKPOINT "
        "to one of those, or run from a clone of the repository, whose checkpoints/ folder holds the shipped models.")


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

    folder = resolve_pretrained(str(spec), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
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
                       dtype: Optional[torch.dtype] = None) -> Reconstructor:
    """A model from a baseline .npz, a pipeline folder or hub id, or None for the best shipped checkpoint.

    `steps`, `ensemble`, `seed`, `processing_resolution`, `device` (default: where it loads, the CPU) and `dtype`
    (default: as saved) apply to pipelines; the regression runs in NumPy.
    """
    path = Path(spec if spec is not None else default_checkpoint())
    if path.suffix == ".npz":
        from .baseline import RootPolynomialRegression

        return RootPolynomialRegression.load(path)
    pipeline = load_pipeline(str(path), **({"dtype": dtype} if dtype is not None else {}))
    if device is not None:
        pipeline.to(device)
    return PipelineReconstructor(pipeline, steps=steps, ensemble=ensemble, seed=seed,
                                 processing_resolution=processing_resolution)
