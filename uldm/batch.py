"""Reconstructing many images: distinct output names, shards across processes, resume, a manifest, no lost batch.

- `plan_jobs` maps every input image to one output file. Outputs mirror the inputs' paths relative to the folder
  given (each given folder or file root its own sub-folder when several are given), and inputs that share a stem in
  one folder (`scene.png`, `scene.jpg`) keep distinct names (`scene_png.h5`, `scene_jpg.h5`).
- `shard` gives each of N processes every N-th job, so each input is handled by exactly one process.
- `run_jobs` reconstructs a shard: an output that exists is skipped (a rerun resumes; `overwrite=True` replaces
  it), a failing input is recorded with its reason and the batch goes on, and every output is written atomically
  and never over a file another run wrote meanwhile.
- `write_manifest` records input, output, status, reason, seconds and RGB error per image (JSON or CSV), keeping
  what an earlier run recorded for the outputs this one skipped.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from .images import IMAGE_SUFFIXES


@dataclass
class Job:
    source: Path
    output: Path


@dataclass
class JobResult:
    input: str
    output: str
    status: str  # done / skipped / failed
    reason: str = ""
    seconds: Optional[float] = None
    rgb_error: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)


def find_inputs(inputs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, its path relative to what was given) for every image named or inside a named folder (recursively);
    a missing path is an error before any model is loaded."""
    found: list[tuple[Path, Path]] = []
    missing = [str(item) for item in inputs if not Path(item).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    roots = len(inputs) > 1
    for item in map(Path, inputs):
        prefix = Path(item.resolve().name) if roots and item.is_dir() else Path()
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found.extend((p, prefix / p.relative_to(item)) for p in files)
        else:
            found.append((item, Path(item.name)))
    if not found:
        raise ValueError(f"no images found in {[str(i) for i in inputs]} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def plan_jobs(inputs: Sequence[Path], output_dir: Path, suffix: str = ".h5") -> list[Job]:
    """One job per input image, every output name distinct (see the module doc); a clash that the rules cannot
    resolve (two given folders of the same name) is an error naming both inputs."""
    found = find_inputs(inputs)
    stems = Counter((rel.parent, rel.stem) for _, rel in found)
    jobs, seen = [], {}
    for source, rel in found:
        name = rel.stem if stems[(rel.parent, rel.stem)] == 1 else f"{rel.stem}_{rel.suffix.lstrip('.').lower()}"
        output = Path(output_dir) / rel.parent / f"{name}{suffix}"
        if output in seen:
            raise ValueError(f"{seen[output]} and {source} would both be written to {output}: give them separate "
                             "output folders")
        seen[output] = source
        jobs.append(Job(source, output))
    return jobs


def shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """The jobs process `index` of `count` handles: every `count`-th, so shards differ by one job at most."""
    return list(jobs[index::count])


def run_jobs(jobs: Iterable[Job], reconstruct: Callable[[Job], dict[str, Any]], *, overwrite: bool = False,
             progress: Optional[Callable[[JobResult], None]] = None) -> list[JobResult]:
    """Run `reconstruct(job)` (which writes job.output and returns {"rgb_error": ..., ...}) for every job whose
    output does not exist yet (or every job with `overwrite`); an exception fails that job only."""
    results = []
    for job in jobs:
        result = JobResult(str(job.source), str(job.output), "done")
        if job.output.exists() and not overwrite:
            result.status, result.reason = "skipped", "output exists (--overwrite replaces it)"
        else:
            start = time.perf_counter()
            try:
                info = reconstruct(job)
            except FileExistsError:  # another run wrote it meanwhile: its file stays
                result.status, result.reason = "skipped", "output written by another run meanwhile"
            except Exception as exc:  # one bad input never ends the batch; the reason is kept
                result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
            else:
                result.rgb_error = info.pop("rgb_error", None)
                result.extra = info
            result.seconds = round(time.perf_counter() - start, 3)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def summary_line(results: Sequence[JobResult]) -> str:
    counts = Counter(r.status for r in results)
    return f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"


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


def write_manifest(path: Path, results: Sequence[JobResult]) -> Path:
    """The manifest as JSON (a summary and one entry per image) or CSV (by the suffix), written atomically. For an
    output this run skipped because it existed, the row an earlier run wrote (if any) is kept."""
    from .io import atomic_write, save_json

    previous = _previous_rows(path)
    rows = []
    for result in results:
        row = {k: v for k, v in asdict(result).items() if k != "extra"} | result.extra
        earlier = previous.get(result.output)
        if result.status == "skipped" and earlier is not None and earlier.get("status") == "done":
            row = {**earlier, "status": "done", "reason": "written by an earlier run"}
        rows.append(row)
    if path.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(path) as tmp:
            tmp.write_text(buffer.getvalue())
        return path
    counts = Counter(row["status"] for row in rows)
    return save_json({"summary": dict(counts), "images": rows}, path)
