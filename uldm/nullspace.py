"""The observable / unobservable split of spectra (METHOD.md section 1).

With Φ the 3 x B camera response, Φ⁺ = Φᵀ(ΦΦᵀ)⁻¹ and N an orthonormal basis (B x (B-3)) of the null space of Φ,
every spectrum splits exactly as

    s = Φ⁺ c + N u,   c = Φ s (what the camera sees),   u = Nᵀ s (what it cannot see).

`compose(c, u)` re-renders to `c` exactly, whatever `u` is: that is how every model here keeps its output
consistent with the input RGB. The bases are computed once in float64 and cast to the input's dtype.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .camera import CameraResponse


class ObservableSplit(nn.Module):
    """Split spectra into (c, u) and compose them back. `dim` is the channel axis of the tensors given."""

    def __init__(self, camera: CameraResponse) -> None:
        super().__init__()
        phi = torch.tensor(camera.matrix.tolist(), dtype=torch.float64)
        pinv = phi.T @ torch.linalg.inv(phi @ phi.T)
        # Right singular vectors beyond the rank span the null space of Φ.
        _, _, vh = torch.linalg.svd(phi, full_matrices=True)
        null_basis = vh[3:].T.contiguous()
        self.camera_name = camera.name
        self.register_buffer("response", phi, persistent=False)
        self.register_buffer("pinv", pinv, persistent=False)
        self.register_buffer("null_basis", null_basis, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """Follow device moves but stay float64: `model.half()` must not cost the exact RGB consistency."""
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(device=fn(buffer[:1]).device)
        return self

    @property
    def num_bands(self) -> int:
        return self.response.shape[1]

    @property
    def num_unobservable(self) -> int:
        return self.null_basis.shape[1]

    def _project(self, matrix: torch.Tensor, x: torch.Tensor, dim: int, expected: int, what: str) -> torch.Tensor:
        if x.shape[dim] != expected:
            raise ValueError(f"{what}: expected {expected} channels along dim {dim}, got shape {tuple(x.shape)}")
        m = matrix.to(dtype=x.dtype, device=x.device)
        return torch.movedim(torch.movedim(x, dim, -1) @ m.T, -1, dim)

    def render(self, spectra: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """c = Φ s."""
        return self._project(self.response, spectra, dim, self.num_bands, "render")

    def observable(self, rgb: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The fundamental metamer Φ⁺ c: the part of the spectrum the RGB fixes exactly."""
        return self._project(self.pinv, rgb, dim, 3, "observable")

    def unobservable(self, spectra: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """u = Nᵀ s: coordinates of the metameric black (B-3 channels)."""
        return self._project(self.null_basis.T, spectra, dim, self.num_bands, "unobservable")

    def lift(self, u: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """N u: the metameric black as a spectrum (invisible to the camera)."""
        return self._project(self.null_basis, u, dim, self.num_unobservable, "lift")

    def split(self, spectra: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """s -> (c, u)."""
        return self.render(spectra, dim), self.unobservable(spectra, dim)

    def compose(self, rgb: torch.Tensor, u: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """(c, u) -> Φ⁺ c + N u, which renders back to `rgb` exactly."""
        return self.observable(rgb, dim) + self.lift(u, dim)


def rgb_reprojection_error(spectra: torch.Tensor, rgb: torch.Tensor, split: Union[ObservableSplit, CameraResponse], dim: int = -1) -> float:
    """max |Φ ŝ − c|: how far a reconstruction is from rendering back to its input RGB."""
    if isinstance(split, CameraResponse):
        split = ObservableSplit(split)
    return float((split.render(spectra, dim) - rgb).abs().max())
