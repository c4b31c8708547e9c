"""Datasets: readers for CAVE, ARAD-1K and our own cubes, splits, the spectral training dataset, and natural
photographs for RGB pre-training."""

from __future__ import annotations

from .dataset import SpectralPatchDataset
from .photos import PhotoCropDataset, default_photo_root, find_images
from .readers import (
    DatasetError,
    Scene,
    list_scenes,
    read_arad,
    read_cave,
    read_scene,
    read_uldm_cube,
)
from .splits import CAVE_VAL_SCENES, cave_split, cave_split_from_files, default_cave_root, read_split_file, select_scenes

__all__ = [
    "CAVE_VAL_SCENES",
    "DatasetError",
    "PhotoCropDataset",
    "Scene",
    "SpectralPatchDataset",
    "cave_split",
    "cave_split_from_files",
    "default_cave_root",
    "default_photo_root",
    "find_images",
    "list_scenes",
    "read_arad",
    "read_cave",
    "read_scene",
    "read_split_file",
    "read_uldm_cube",
    "select_scenes",
]
