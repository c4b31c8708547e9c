"""Training pairs (hyperspectral patch, RGB rendered from it) drawn lazily from scenes on disk.

RGB is rendered on the fly with the camera (then degraded if asked), so one set of scenes serves any camera.
Decoded scenes are kept in a small LRU cache, so a 900-scene ARAD-1K never has to fit in memory.

Randomness (crop position, flips/rotations, the degradation's noise) comes from one torch generator per item:
- `seed=None` (training): torch's global RNG. Every epoch draws new crops; runs repeat under
  `torch.manual_seed`, DataLoader workers are seeded from it, and accelerate's RNG checkpointing resumes exactly.
- `seed=int`: a generator seeded from (seed, epoch, index), so item i of a given epoch is the same patch in every
  process and after a resume, whatever the global RNG does. Trainers call `set_epoch` for new crops each epoch;
  validation leaves the epoch at 0 and sees the same patches every time.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..camera import CameraResponse
from ..degradation import Degradation
from ..spectral import SpectralGrid
from .readers import DatasetError, Scene, read_scene

PathLike = Union[str, Path]


class SpectralPatchDataset(Dataset):
    """Items {"hsi": B x h x w, "rgb": 3 x h x w (float32 tensors), "name": scene name}.

    Item `i` comes from scene `i // patches_per_scene`; `patch_size=None` gives whole images. With `augment`,
    patches are flipped and rotated by multiples of 90 degrees (180 only, for non-square patches, so all items
    of same-sized scenes keep one shape and batch together).
    """

    def __init__(
        self,
        scenes: Sequence[PathLike],
        camera: CameraResponse,
        patch_size: Optional[int] = None,
        patches_per_scene: int = 1,
        augment: bool = True,
        degradation: Optional[Degradation] = None,
        format: Optional[str] = None,
        grid: Optional[SpectralGrid] = None,
        cache_size: Optional[int] = 8,
        seed: Optional[int] = None,
    ) -> None:
        self.scenes = [Path(p) for p in scenes]
        if not self.scenes:
            raise DatasetError("SpectralPatchDataset needs at least one scene")
        self.grid = grid if grid is not None else camera.grid
        if camera.grid.num_bands != self.grid.num_bands or not camera.grid.matches(self.grid.wavelengths):
            raise DatasetError(
                f"camera {camera.name!r} is defined on {camera.grid} but the scenes are read onto {self.grid}; "
                "build the camera on the same grid (CameraResponse.from_preset(name, grid=grid))"
            )
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be a positive number of pixels or None, got {patch_size}")
        if patches_per_scene < 1:
            raise ValueError(f"patches_per_scene must be at least 1, got {patches_per_scene}")
        if cache_size is not None and cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0: no cache) or None (cache all), got {cache_size}")
        self.camera = camera
        self.patch_size = patch_size
        self.patches_per_scene = patches_per_scene
        self.augment = augment
        self.degradation = None if degradation is None or degradation.is_identity else degradation
        self.format = format
        self.cache_size = cache_size
        self.seed = seed
        self.epoch = 0
        self._cache: OrderedDict[int, Scene] = OrderedDict()  # per process: each DataLoader worker has its own

    def __len__(self) -> int:
        return len(self.scenes) * self.patches_per_scene

    # -------------------------------------------------------------------------------------------- loading
    def scene(self, scene_index: int) -> Scene:
        """The decoded scene, from the LRU cache when it is there."""
        if scene_index in self._cache:
            self._cache.move_to_end(scene_index)
            return self._cache[scene_index]
        scene = read_scene(self.scenes[scene_index], format=self.format, grid=self.grid)
        if self.cache_size is None or self.cache_size > 0:
            self._cache[scene_index] = scene
            if self.cache_size is not None and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return scene

    # ------------------------------------------------------------------------------------------ sampling
    def set_epoch(self, epoch: int) -> None:
        """With a seed, item draws depend on (seed, epoch, index): new crops each epoch, reproducibly."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> Optional[torch.Generator]:
        """None means torch's global RNG (seed=None); otherwise a generator fixed by (seed, epoch, index)."""
        if self.seed is None:
            return None
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)

    def _crop(self, scene: Scene, gen: Optional[torch.Generator]) -> np.ndarray:
        height, width = scene.cube.shape[:2]
        size = self.patch_size
        if size is None:
            return scene.cube
        if size > height or size > width:
            raise DatasetError(
                f"scene {scene.name!r} ({scene.source}) is {height}x{width}, smaller than patch_size={size}"
            )
        top = int(torch.randint(0, height - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, width - size + 1, (1,), generator=gen))
        return scene.cube[top : top + size, left : left + size]

    @staticmethod
    def _augment(patch: np.ndarray, gen: Optional[torch.Generator]) -> np.ndarray:
        flip_v, flip_h, quarter_turns = torch.randint(0, 4, (3,), generator=gen).tolist()
        if flip_v % 2:
            patch = patch[::-1]
        if flip_h % 2:
            patch = patch[:, ::-1]
        if patch.shape[0] != patch.shape[1]:
            quarter_turns -= quarter_turns % 2  # keep the shape: only 0 or 180 degrees
        return np.rot90(patch, k=quarter_turns, axes=(0, 1))

    def __getitem__(self, index: int) -> dict[str, Union[torch.Tensor, str]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        gen = self._generator(index)
        scene = self.scene(index // self.patches_per_scene)
        patch = self._crop(scene, gen)
        if self.augment:
            patch = self._augment(patch, gen)
        hsi = np.ascontiguousarray(patch, dtype=np.float32)
        rgb = self.camera.render(hsi)
        if self.degradation is not None:
            noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            rgb = self.degradation(rgb, seed=noise_seed)
        return {
            "hsi": torch.from_numpy(hsi).permute(2, 0, 1).contiguous(),
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1).contiguous(),
            "name": scene.name,
        }

    def __repr__(self) -> str:
        size = "whole images" if self.patch_size is None else f"{self.patch_size}x{self.patch_size} patches"
        return (
            f"SpectralPatchDataset({len(self.scenes)} scenes x {self.patches_per_scene}, {size}, "
            f"camera={self.camera.name!r}, augment={self.augment}, degradation={self.degradation})"
        )
