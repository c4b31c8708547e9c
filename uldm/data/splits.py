"""Which scenes train and which validate: the CAVE split of the data README, split files, and selection by name."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .readers import DatasetError, list_scenes, scene_name

PathLike = Union[str, Path]

CAVE_VAL_SCENES = ("balloons_ms", "face_ms", "jelly_beans_ms", "stuffed_toys_ms")
"""The validation scenes suggested in shared/data/cave/README.md; every other CAVE scene trains."""

CAVE_ROOT_ENV = "ULDM_CAVE_ROOT"


def default_cave_root() -> Optional[Path]:
    """Where the CAVE scenes are, so tests and examples need no configuration.

    `$ULDM_CAVE_ROOT` wins when set (returned even if missing, so a typo surfaces as a clear "does not exist"
    rather than a silent fallback); otherwise `<repo>/../shared/data/cave` if it exists; otherwise None.
    """
    from ..paths import shared_location

    return shared_location(CAVE_ROOT_ENV, "data", "cave")


def cave_split(root: Optional[PathLike]) -> dict[str, list[Path]]:
    """{"train": [...], "val": [...]} over the CAVE scenes present under `root`, val being `CAVE_VAL_SCENES`.
    `root` may be `default_cave_root()`'s None (no data found), which is an error saying where data are looked for."""
    if root is None:
        raise DatasetError(f"no CAVE data found: give the CAVE root (--data DIR) or set ${CAVE_ROOT_ENV}")
    scenes = list_scenes(root, "cave")
    val = [p for p in scenes if p.name in CAVE_VAL_SCENES]
    if not val:
        raise DatasetError(f"{root}: none of the CAVE validation scenes {list(CAVE_VAL_SCENES)} is present")
    train = [p for p in scenes if p.name not in CAVE_VAL_SCENES]
    return {"train": train, "val": val}


def cave_split_from_files(root: Optional[PathLike], train_file: PathLike, val_file: PathLike) -> dict[str, list[Path]]:
    """{"train": [...], "val": [...]}: another split of the CAVE scenes under `root`, named by two split files (e.g.
    stages/configs/splits/cave_b_*.txt)."""
    if root is None:
        raise DatasetError(f"no CAVE data found: give the CAVE root (--data DIR) or set ${CAVE_ROOT_ENV}")
    scenes = list_scenes(root, "cave")
    return {"train": select_scenes(scenes, read_split_file(train_file)),
            "val": select_scenes(scenes, read_split_file(val_file))}


def read_split_file(path: PathLike) -> list[str]:
    """Scene names, one a line; blank lines and everything after a `#` are ignored."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read split file {path}: {exc}") from exc
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [name for name in names if name]
    if not names:
        raise DatasetError(f"split file {path} lists no scene names")
    return names


def select_scenes(paths: Sequence[PathLike], names: Iterable[str]) -> list[Path]:
    """The scenes among `paths` with the given names (folder name or file stem/name), in the order of `names`."""
    by_name: dict[str, Path] = {}
    for path in map(Path, paths):
        by_name.setdefault(scene_name(path), path)
        by_name.setdefault(path.name, path)
    names = list(names)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        available = sorted({scene_name(p) for p in map(Path, paths)})
        shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
        raise DatasetError(f"unknown scene names {unknown}; available ({len(available)}): {shown}")
    return [by_name[name] for name in names]
