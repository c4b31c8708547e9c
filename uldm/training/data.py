"""Training data for the spectral stages: scene selection, seeded patch loaders, batch augmentation.

Batches are a pure function of (seed, epoch, position), so a resumed run sees exactly the batches an uninterrupted
run would have seen (`EpochSampler`; the datasets seed each item).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from ..camera import CameraResponse
from ..degradation import Degradation
from .config import ConfigError, RunConfig, TrainConfig


def scene_paths(config: TrainConfig, which: Any) -> list[Path]:
    """Resolve a config's scene selection ("train"/"val"/"all", names, or a split file) to paths."""
    from ..data import (
        cave_split,
        default_cave_root,
        list_scenes,
        read_split_file,
        select_scenes,
    )

    root = Path(config.data_root) if config.data_root else default_cave_root()
    if root is None or not root.exists():
        raise ConfigError(f"data_root {root} does not exist (set data_root or $ULDM_CAVE_ROOT)")
    paths = list_scenes(root, config.data_format)
    if which == "all":
        return paths
    if which in ("train", "val"):
        if config.data_format != "cave":
            raise ConfigError(f"scene selection {which!r} is defined for CAVE only; give a list of names or a split file")
        return cave_split(root)[which]
    if isinstance(which, str):
        return select_scenes(paths, read_split_file(which))
    return select_scenes(paths, list(which))


class EpochSampler(torch.utils.data.Sampler):
    """A permutation fixed by (seed, epoch): the same on every process and after a resume."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def build_train_loader(config: TrainConfig, camera: CameraResponse):
    """(dataset, sampler, loader) of seeded random patches; call `set_epoch` on dataset and sampler per epoch."""
    from ..data import SpectralPatchDataset

    dataset = SpectralPatchDataset(
        scene_paths(config, config.train_scenes), camera, patch_size=config.patch_size,
        patches_per_scene=config.patches_per_scene, augment=True,
        degradation=Degradation.from_config(config.degradation), format=config.data_format,
        cache_size=config.scene_cache_size, seed=config.seed,
    )
    # Read the first scene now (into the dataset's cache): data that cannot be brought onto the camera's grid
    # fails here, naming the file, before any model is built.
    dataset.scene(0)
    sampler, loader = make_loader(config, dataset)
    return dataset, sampler, loader


def build_augmentation(config: TrainConfig, camera: CameraResponse, device: torch.device):
    """The `BatchAugmentation` the config asks for (tilts re-render RGB with `camera`), or None."""
    if not config.augments:
        return None
    from ..data.augment import BatchAugmentation
    from ..nullspace import ObservableSplit

    return BatchAugmentation(ObservableSplit(camera).to(device), config.mix_probability, config.tilt_std,
                             config.gain_std)


def sample_pixels(dataset, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb P x 3, hsi P x B) of the first `pixels` pixels of the dataset's patches, for data-driven starts.

    Patches are seeded, so every process draws the same pixels and the models start identical on all ranks.
    """
    rgbs, cubes, count = [], [], 0
    for index in range(len(dataset)):
        item = dataset[index]
        rgbs.append(item["rgb"].flatten(1).T)
        cubes.append(item["hsi"].flatten(1).T)
        count += len(cubes[-1])
        if count >= pixels:
            break
    return torch.cat(rgbs)[:pixels], torch.cat(cubes)[:pixels]


def make_loader(config: RunConfig, dataset):
    """(sampler, loader) over any dataset with `set_epoch`: seeded order per epoch, fixed-size batches."""
    sampler = EpochSampler(len(dataset), config.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, sampler=sampler, drop_last=True,
        num_workers=config.dataloader_num_workers,
    )
    if len(loader) == 0:
        raise ConfigError(f"{len(dataset)} training items are fewer than one batch of {config.train_batch_size}")
    return sampler, loader


