"""Find and load whatever a user names as `--checkpoint`: a shipped default, a local file or folder, a hub id.

Every loaded model is a `Reconstructor`: it knows its camera and maps linear RGB (H x W x 3) to spectra
(H x W x B). The CLI and the evaluation loop only ever see this interface, so model families plug in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np

from .camera import CameraResponse

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# Best shipped model first; the first one present is the default.
DEFAULT_CHECKPOINTS = ("baseline-rootpoly-nikon5100.npz",)


class Reconstructor(Protocol):
    camera: CameraResponse

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...


def default_checkpoint() -> Path:
    for name in DEFAULT_CHECKPOINTS:
        if (CHECKPOINTS_DIR / name).exists():
            return CHECKPOINTS_DIR / name
    raise FileNotFoundError(f"no shipped checkpoint found in {CHECKPOINTS_DIR} (looked for {DEFAULT_CHECKPOINTS})")


def load_reconstructor(spec: Optional[Union[str, Path]] = None) -> Reconstructor:
    """A model from a path (baseline .npz) or None for the shipped default."""
    path = Path(spec) if spec is not None else default_checkpoint()
    if path.suffix == ".npz":
        from .baseline import RootPolynomialRegression

        return RootPolynomialRegression.load(path)
    raise ValueError(f"{spec}: not a known checkpoint (expected a baseline .npz)")
