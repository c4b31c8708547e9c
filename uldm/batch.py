"""Reconstructing many images: distinct output names, shards across processes, resume, a manifest, no lost work.

- `plan_jobs` maps every input image to one output file. Outputs mirror the inputs' paths relative to the folder
  given (each given folder or file root its own sub-folder when several are given). Output names are always
  distinct, to case-insensitive file systems too: inputs that share a stem in one folder (`scene.png`,
  `scene.JPG`) become `scene_png.h5` and `scene_jpg.h5`, and a name still taken gets `_2`, `_3`, ... in the order
  of the sorted input paths, so the mapping depends only on the set of inputs and is the same at every run. The
  output folder and uldm's own files (previews beside their cubes, temporary files) are never inputs.
- `shard` gives each of N processes every N-th job, so each input is handled by exactly one process.
- `run_jobs` reconstructs a shard. Each image is claimed before it is computed (`uldm.locks`), so concurrent runs
  into one folder share the work; an output that exists is skipped (a rerun resumes; `overwrite=True` replaces
  it); a failing input is recorded with its reason and the batch goes on; every output is written atomically.
- `write_manifest` merges results into the manifest (input, output, status, reason, seconds and RGB error per
  image; JSON or CSV) under its lock, reading, merging and writing it atomically. `run_jobs` records each image as
  it finishes, so a killed run loses no finished image's row and concurrent runs never drop each other's rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from .images import IMAGE_SUFFIXES
from .io import SUFFIXES as CUBE_SUFFIXES
from .io import atomic_write, is_temporary_file, save_json
from .locks import claim, file_lock

BUSY = "busy"  # the status of an image another live run has claimed: that run computes and records it
PREVIEW_ENDINGS = ("_preview.png", "_spectra.png")  # what `--preview` writes beside <name>.h5


@dataclass
class Job:
    source: Path
    output: Path


@dataclass
class JobResult:
    input: str
    output: str
    status: str  # done / skipped / failed / busy
    reason: str = ""
    seconds: Optional[float] = None
    rgb_error: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)


def preview_paths(output: Path) -> tuple[Path, Path]:
    """Where `--preview` writes the sRGB preview and the spectra plot of the cube `output`."""
    stem = Path(output).with_suffix("")
    return tuple(Path(f"{stem}{ending}") for ending in PREVIEW_ENDINGS)


def _is_own_file(path: Path) -> bool:
    """A file uldm wrote that looks like a photo: a temporary file of an atomic write, or a preview beside its cube."""
    if is_temporary_file(path):
        return True
    for ending in PREVIEW_ENDINGS:
        if path.name.endswith(ending):
            stem = path.name[: -len(ending)]
            return any((path.parent / f"{stem}{suffix}").exists() for suffix in CUBE_SUFFIXES)
    return False


def _images_in(folder: Path, skip: Optional[Path]) -> list[Path]:
    """Every image below `folder`, sorted: not uldm's own files, nor those in `skip` (the output folder) when it
    lies inside `folder`."""
    skipped: Optional[tuple[str, ...]] = None
    if skip is not None and folder.resolve() in skip.resolve().parents:
        skipped = skip.resolve().relative_to(folder.resolve()).parts
    files = []
    for path in sorted(folder.rglob("*")):
        if skipped is not None and path.relative_to(folder).parts[:len(skipped)] == skipped:
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not _is_own_file(path):
            files.append(path)
    return files


def find_inputs(inputs: Sequence[Path], skip: Optional[Path] = None) -> list[tuple[Path, Path]]:
    """(file, its path relative to what was given) for every image named or inside a named folder (recursively),
    leaving out the folder `skip` (the output folder) and uldm's own files; a missing path is an error before any
    model is loaded."""
    found: list[tuple[Path, Path]] = []
    missing = [str(item) for item in inputs if not Path(item).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    roots = len(inputs) > 1
    for item in map(Path, inputs):
        prefix = Path(item.resolve().name) if roots and item.is_dir() else Path()
        if item.is_dir():
            found.extend((p, prefix / p.relative_to(item)) for p in _images_in(item, skip))
        else:
            found.append((item, Path(item.name)))
    if not found:
        raise ValueError(f"no images found in {[str(i) for i in inputs]} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def distinct_names(relatives: Sequence[Path]) -> list[Path]:
    """An output name (without suffix) for each input path: distinct, also when case is ignored, and a function of
    the set of paths only (see the module doc)."""
    def key(name: Path) -> str:
        return name.as_posix().lower()

    stems = Counter(key(rel.with_suffix("")) for rel in set(relatives))  # the same path twice: one stem
    wanted = [rel.with_suffix("") if stems[key(rel.with_suffix(""))] == 1
              else rel.with_name(f"{rel.stem}_{rel.suffix.lstrip('.').lower()}") for rel in relatives]
    reserved = {key(name) for name in wanted}  # a numbered name never takes another input's own name
    taken: set[str] = set()
    names: list[Path] = list(wanted)
    for index in sorted(range(len(relatives)), key=lambda i: (relatives[i].as_posix(), i)):
        name, number = wanted[index], 1
        while key(name) in taken or (number > 1 and key(name) in reserved):
            number += 1
            name = wanted[index].with_name(f"{wanted[index].name}_{number}")
        taken.add(key(name))
        names[index] = name
    return names


def plan_jobs(inputs: Sequence[Path], output_dir: Path, suffix: str = ".h5") -> list[Job]:
    """One job per input image, every output name distinct (see the module doc); nothing in `output_dir` is taken
    as an input."""
    found = find_inputs(inputs, skip=Path(output_dir))
    names = distinct_names([rel for _, rel in found])
    return [Job(source, Path(output_dir) / f"{name}{suffix}") for (source, _), name in zip(found, names)]


def prepare_output_folder(folder: Path) -> Path:
    """Create the output folder; an existing file of that name, or a folder that cannot be made, is an error that
    names it and says what to do."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder: -o names the folder the cubes go to (created "
                                 "when missing); remove the file or give another name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the output folder {folder}: {exc.strerror or exc} ({exc.filename}); give -o "
                      "a folder that can be written") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in the output folder {folder}; give -o a folder that can be written")
    return folder


def shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """The jobs process `index` of `count` handles: every `count`-th, so shards differ by one job at most."""
    return list(jobs[index::count])


def run_jobs(jobs: Iterable[Job], reconstruct: Callable[[Job], dict[str, Any]], *, overwrite: bool = False,
             progress: Optional[Callable[[JobResult], None]] = None,
             manifest: Optional[Path] = None) -> list[JobResult]:
    """Run `reconstruct(job)` (which writes job.output and returns {"rgb_error": ..., ...}) for every job whose
    output does not exist yet (or every job with `overwrite`); an exception fails that job only.

    Each job is claimed first; one that another live run holds is left to it (status busy) and tried once more at
    the end, in case that run died meanwhile. With `manifest`, each result is recorded there as soon as it is final.
    """
    results: dict[int, JobResult] = {}
    pending = list(enumerate(jobs))
    for last_try in (False, True):
        busy = []
        for index, job in pending:
            result = _run_claimed(job, reconstruct, overwrite)
            if result.status == BUSY and not last_try:
                busy.append((index, job))
                continue
            if manifest is not None:
                write_manifest(manifest, [result])
            results[index] = result
            if progress is not None:
                progress(result)
        pending = busy
    return [results[index] for index in sorted(results)]


def _run_claimed(job: Job, reconstruct: Callable[[Job], dict[str, Any]], overwrite: bool) -> JobResult:
    result = JobResult(str(job.source), str(job.output), "done")
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        result.status, result.reason = "failed", _cannot_write(job.output, exc)
        return result
    with claim(job.output) as holder:
        if holder is not None:
            result.status, result.reason = BUSY, f"being reconstructed by another run ({holder})"
        elif job.output.exists() and not overwrite:
            result.status, result.reason = "skipped", "output exists (--overwrite replaces it)"
        else:
            _run(job, reconstruct, result)
    return result


def _run(job: Job, reconstruct: Callable[[Job], dict[str, Any]], result: JobResult) -> None:
    start = time.perf_counter()
    try:
        info = reconstruct(job)
    except FileExistsError as exc:
        if job.output.exists():  # a writer that does not claim (not a uldm run) got there first: its file stays
            result.status, result.reason = "skipped", "output written by another run meanwhile"
        else:
            result.status, result.reason = "failed", _cannot_write(job.output, exc)
    except Exception as exc:  # one bad input never ends the batch; the reason is kept
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    else:
        result.rgb_error = info.pop("rgb_error", None)
        result.extra = info
    result.seconds = round(time.perf_counter() - start, 3)


def _cannot_write(output: Path, exc: OSError) -> str:
    """Why `output` cannot be written, naming the path in the way and what to do."""
    where = exc.filename or output
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return (f"cannot write {output}: {where} is a file where a folder must be; move that file away or choose "
                "another output folder")
    return f"cannot write {output}: {exc.strerror or exc} ({where})"


def summary_line(results: Sequence[JobResult]) -> str:
    counts = Counter(r.status for r in results)
    busy = f", {counts[BUSY]} left to other runs still working on them" if counts[BUSY] else ""
    return f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed{busy}"


def _previous_rows(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
        else:
            rows = json.loads(path.read_text())["images"]
    except (ValueError, KeyError, TypeError):
        return {}  # an unreadable manifest is replaced
    return {row["output"]: row for row in rows}


def _merged_row(result: JobResult, earlier: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The manifest row of `result`'s output after it, None to leave the row as it is."""
    if result.status == BUSY:  # the run that holds the image records it
        return None
    if result.status == "skipped" and earlier is not None and earlier.get("status") == "done":
        return {**earlier, "reason": "written by an earlier run"}
    return {k: v for k, v in asdict(result).items() if k != "extra"} | result.extra


def _write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if path.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(path) as tmp:
            tmp.write_text(buffer.getvalue())
    else:
        save_json({"summary": dict(Counter(row["status"] for row in rows)), "images": list(rows)}, path)


def manifest_lock_path(path: Path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.lock")


def write_manifest(path: Path, results: Sequence[JobResult]) -> Path:
    """Merge `results` into the manifest at `path`: JSON (a summary and one entry per image) or CSV, by the suffix.
    Under the manifest's lock (`.<name>.lock` beside it) the rows are read, merged and written atomically, so
    concurrent writers never drop each other's rows. A result replaces its output's row, except that one skipped
    because its output exists keeps the row an earlier run wrote, and a busy one leaves the row to its holder."""
    path = Path(path)
    try:
        with file_lock(manifest_lock_path(path)):
            rows = _previous_rows(path)
            for result in results:
                row = _merged_row(result, rows.get(result.output))
                if row is not None:
                    rows[result.output] = row
            _write_rows(path, [rows[output] for output in sorted(rows)])
    except OSError as exc:
        raise OSError(f"cannot write the manifest {path}: {exc.strerror or exc}; free some space there or give "
                      "--manifest a place that can be written (the cubes written so far are kept)") from exc
    return path
