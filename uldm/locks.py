"""How several runs share one output folder: file locks, claims on the images in progress, and removing what killed
runs left behind.

- `file_lock(path)`: an exclusive lock held while a block runs (the manifest's read-merge-write is one).
- `claim(output)`: a run claims an output (`.<name>.claim` beside it) before computing it; a run that finds the
  claim held leaves that image to its holder. A lock dies with its process, so a killed run's claim is free again
  and the next run takes it over.
- `sharing_folder(folder, started)`: every run holds the folder's run lock, shared, while it works; a run that
  finds no other there first removes the temporary files and claims that killed runs left (older than its start).

The locks are `fcntl.flock`s: they hold between the processes of one machine (and over NFS v4). A claim file also
names its holder (pid, host, time), for the messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Iterator, Optional

from .io import PathLike, is_temporary_file

CLAIM_SUFFIX = ".claim"
RUN_LOCK_NAME = ".uldm-run.lock"


def _open_locked(path: Path, operation: int) -> Optional[IO[str]]:
    """`path` opened and `flock`ed with `operation`; None when it includes LOCK_NB and another process holds the
    lock. A file its previous holder removed while this one waited is opened afresh, so that two holders never lock
    two different files of the same name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, operation)
            opened, current = os.fstat(handle.fileno()), os.stat(path)
        except BlockingIOError:
            handle.close()
            return None
        except FileNotFoundError:  # removed by its holder between open and lock: try the new one
            handle.close()
            continue
        except BaseException:
            handle.close()
            raise
        if (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
            return handle
        handle.close()


@contextlib.contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing, and left in place) while the block runs."""
    handle = _open_locked(Path(path), fcntl.LOCK_EX)
    try:
        yield
    finally:
        handle.close()


def claim_path(output: PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is still writing it
        return "another run"


@contextlib.contextmanager
def claim(output: PathLike) -> Iterator[Optional[str]]:
    """Claim `output` while the block runs: yields None when this process holds the claim, else who holds it (the
    block must then leave the output alone). The claim file is removed when the block ends."""
    path = claim_path(output)
    handle = _open_locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if handle is None:
        yield _holder(path)
        return
    try:
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        yield None
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting opener then sees a removed file and retries
        handle.close()


def remove_leftovers(folder: PathLike, before: float) -> list[Path]:
    """Remove the temporary files of atomic writes and the claim files below `folder` last modified before
    `before` (what killed runs left) and return them. Only safe while no other run works in `folder`."""
    removed = []
    for path in sorted(Path(folder).rglob(".*")):
        own = is_temporary_file(path) or path.name.endswith(CLAIM_SUFFIX)
        if own and path.is_file() and path.stat().st_mtime < before:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def sharing_folder(folder: PathLike, started: float) -> Iterator[list[Path]]:
    """Work in `folder` beside other runs: its run lock is held shared while the block runs. When no other run holds
    it, the leftovers of killed runs from before `started` are removed first; yields what was removed."""
    path = Path(folder) / RUN_LOCK_NAME
    handle = _open_locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    removed = []
    if handle is not None:  # alone in the folder: every temporary file and claim from before is stale
        removed = remove_leftovers(folder, started)
        fcntl.flock(handle, fcntl.LOCK_SH)
    else:
        handle = _open_locked(path, fcntl.LOCK_SH)
    try:
        yield removed
    finally:
        handle.close()
