"""Realistic RGB capture (NTIRE 2022 style): Poisson shot noise, quantisation to 8 bits, JPEG compression.

Clean rendering is `CameraResponse.render`; a `Degradation` is applied afterwards, seeded, so training data and
evaluations are reproducible.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

Seed = Union[int, np.random.Generator, None]


@dataclass(frozen=True)
class Degradation:
    """Steps applied in capture order: noise, then quantisation, then JPEG (which implies 8 bits).

    photons: expected photo-electrons for a value of 1.0; shot noise is Poisson(photons * rgb) / photons.
    bit_depth: quantise to 2**bit_depth levels (8 as in NTIRE 2022); None keeps floats.
    jpeg_quality: 1-95, compress and decompress the 8-bit image with PIL; None skips it.
    """

    photons: Optional[float] = None
    bit_depth: Optional[int] = None
    jpeg_quality: Optional[int] = None

    def __post_init__(self) -> None:
        if self.photons is not None and not self.photons > 0:
            raise ValueError(f"photons must be positive, got {self.photons}")
        if self.bit_depth is not None and not 1 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be in 1..16, got {self.bit_depth}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def is_identity(self) -> bool:
        return self.photons is None and self.bit_depth is None and self.jpeg_quality is None

    def __call__(self, rgb: np.ndarray, seed: Seed = None) -> np.ndarray:
        """Degrade a linear H x W x 3 image in [0, 1]; returns float32 in [0, 1]."""
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
        out = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
        if self.photons is not None:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            out = np.clip(rng.poisson(out * self.photons) / self.photons, 0.0, 1.0)
        if self.jpeg_quality is not None:
            out = _jpeg_roundtrip(out, self.jpeg_quality)
        elif self.bit_depth is not None:
            levels = 2**self.bit_depth - 1
            out = np.round(out * levels) / levels
        return out.astype(np.float32)

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: Optional[dict[str, Any]]) -> "Degradation":
        config = dict(config or {})
        unknown = set(config) - {"photons", "bit_depth", "jpeg_quality"}
        if unknown:
            raise ValueError(f"unknown degradation keys {sorted(unknown)}; known: photons, bit_depth, jpeg_quality")
        return cls(**config)


def _jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    image = Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64) / 255.0
