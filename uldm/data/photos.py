"""Natural RGB photographs for pre-training: any folder tree of images, as seeded random crops.

Every file is decoded once when the dataset is built; files that cannot be decoded are reported by name and left
out (`skipped`), so one bad file never costs a run; a tree with no readable image is an error naming the folder.
Items are sRGB-encoded images in [-1, 1], as Stable Diffusion's autoencoders and UNets are trained on: the shorter
side resized to `resize` (antialiased), a random `resolution` x `resolution` crop, a random horizontal flip, all
drawn from a generator fixed by (seed, epoch, index), so a resumed run sees the same crops.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .readers import DatasetError

logger = logging.getLogger(__name__)
PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PHOTO_ROOT_ENV = "ULDM_RGB_ROOT"


def default_photo_root() -> Optional[Path]:
    """`$ULDM_RGB_ROOT` when set, else `<repo>/../shared/data/rgb` if it exists, else None."""
    from ..paths import shared_location

    return shared_location(PHOTO_ROOT_ENV, "data", "rgb")


def find_images(root: PathLike, exclude: Sequence[str] = (), include: Optional[Sequence[str]] = None) -> list[Path]:
    """Image files under `root` (recursively, sorted), leaving out any whose path passes through a folder named in
    `exclude` and, with `include`, any that passes through none of the folders named there."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    excluded, included = set(exclude), None if include is None else set(include)

    def wanted(path: Path) -> bool:
        folders = set(path.relative_to(root).parts[:-1])
        return not excluded & folders and (included is None or bool(included & folders))

    return sorted(path for path in root.rglob("*")
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and wanted(path))


def read_photo(path: Path) -> Image.Image:
    """The decoded RGB image (grey and palette images converted), or a DatasetError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # decoders raise many types; the file name is what the user needs
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


class PhotoCropDataset(Dataset):
    """Items {"image": 3 x resolution x resolution float32 in [-1, 1] (sRGB-encoded)} from a folder tree of photos."""

    def __init__(self, root: PathLike, resolution: int = 128, resize: int = 256, random_flip: bool = True,
                 exclude: Sequence[str] = (), include: Optional[Sequence[str]] = None, seed: int = 0) -> None:
        if resolution < 8 or resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
        if resize and resize < resolution:
            raise ValueError(f"resize ({resize}) must be 0 (native size) or at least the crop resolution ({resolution})")
        self.root, self.resolution, self.resize, self.random_flip = Path(root), resolution, resize, random_flip
        self.seed, self.epoch = seed, 0
        self.paths: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in find_images(self.root, exclude, include):
            try:
                read_photo(path)
            except DatasetError as exc:
                self.skipped.append((path, str(exc)))
                logger.warning("skipping %s", exc)
            else:
                self.paths.append(path)
        if not self.paths:
            detail = f"; e.g. {self.skipped[0][1]}" if self.skipped else ""
            where = (f", excluding {list(exclude)}" if exclude else "") + (f", in {list(include)}" if include else "")
            raise DatasetError(f"{self.root}: no readable image ({len(self.skipped)} unreadable files{where}){detail}")

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """New crops and flips each epoch, reproducibly."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _sized(self, image: Image.Image) -> Image.Image:
        """The image with its shorter side at `resize` (or at least `resolution`, never smaller than a crop)."""
        target = max(self.resize or min(image.size), self.resolution)
        scale = target / min(image.size)
        if scale == 1:
            return image
        size = (max(self.resolution, round(image.width * scale)), max(self.resolution, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None if scale > 1 else 3.0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        image = self._sized(read_photo(self.paths[index]))
        top = int(rng.integers(0, image.height - self.resolution + 1))
        left = int(rng.integers(0, image.width - self.resolution + 1))
        crop = np.asarray(image.crop((left, top, left + self.resolution, top + self.resolution)), dtype=np.float32)
        if self.random_flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        return {"image": tensor / 127.5 - 1}

    def __repr__(self) -> str:
        return (f"PhotoCropDataset({len(self.paths)} images under {self.root}, {len(self.skipped)} skipped, "
                f"{self.resolution}x{self.resolution} crops of the shorter side at {self.resize or 'native size'})")
