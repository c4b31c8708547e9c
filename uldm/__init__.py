"""uldm: RGB-to-hyperspectral reconstruction by unobservable-feature latent diffusion (ULDM).

    from uldm import SpectralReconstructionPipeline
    pipe = SpectralReconstructionPipeline.from_pretrained("checkpoints/uldm-cave")
    out = pipe(image)            # out.spectra, out.wavelengths, out.uncertainty

`R2HDiffPipeline` (R2H-Diff, diffusion directly on the cube) and `MSTPlusPlusPipeline` (MST++, the regression
peer) have the same call and output.

Heavy parts (models, pipelines) are imported lazily so `import uldm` and the CLI stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .camera import CameraError, CameraResponse, available_cameras
from .degradation import Degradation
from .nullspace import ObservableSplit, rgb_reprojection_error
from .spectral import DEFAULT_GRID, SpectralGrid, SpectralGridError

# name -> module that defines it, imported on first access
_LAZY = {
    "SpectralReconstructionPipeline": ".pipelines.pipeline_spectral_reconstruction",
    "SpectralReconstructionOutput": ".pipelines.common",
    "CameraMismatchWarning": ".pipelines.common",
    "R2HDiffPipeline": ".pipelines.pipeline_r2hdiff",
    "MSTPlusPlusPipeline": ".pipelines.pipeline_mstpp",
    "SpeUAE": ".models.speuae",
    "R2HDiffNet": ".models.r2hdiff",
    "MSTPlusPlus": ".models.mstpp",
    "PromptEmbedding": ".models.sd_adapter",
    "save_cube": ".io",
    "load_cube": ".io",
    "load_out_of_gamut": ".io",
    "FeasibleProjection": ".feasibility",
    "project_feasible": ".feasibility",
    "evaluate_cube": ".metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'uldm' has no attribute {name!r}")


__all__ = [
    "CameraError",
    "CameraResponse",
    "DEFAULT_GRID",
    "Degradation",
    "ObservableSplit",
    "SpectralGrid",
    "SpectralGridError",
    "available_cameras",
    "rgb_reprojection_error",
    *_LAZY,
]
