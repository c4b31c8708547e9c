"""Hyperspectral datasets: readers for CAVE, ARAD-1K and our own cubes, splits, and the training dataset."""

from __future__ import annotations

from .dataset import SpectralPatchDataset
from .readers import (
    DatasetError,
    Scene,
    list_scenes,
    read_arad,
    read_cave,
    read_scene,
    read_uldm_cube,
)
from .splits import CAVE_VAL_SCENES, cave_split, default_cave_root, read_split_file, select_scenes

__all__ = [
    "CAVE_VAL_SCENES",
    "DatasetError",
    "Scene",
    "SpectralPatchDataset",
    "cave_split",
    "default_cave_root",
    "list_scenes",
    "read_arad",
    "read_cave",
    "read_scene",
    "read_split_file",
    "read_uldm_cube",
    "select_scenes",
]
