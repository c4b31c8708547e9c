"""Reconstruction at scale: distinct output names, shards, resume, a manifest, failures that do not end the batch."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from uldm.batch import Job, plan_jobs, run_jobs, shard, write_manifest
from uldm.cli import main
from uldm.io import CubeFileError, load_cube, save_cube

BASELINE = REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz"


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    """in/scene.png, in/scene.jpg (same stem), in/sub/a.png, in/bad.png (not an image), in/notes.txt."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((16, 20, 3)) * 255).astype(np.uint8))
    for name in ("scene.png", "scene.jpg", "sub/a.png"):
        image.save(root / name)
    (root / "bad.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("ignored")
    return root


def test_outputs_mirror_the_inputs_and_same_stems_keep_distinct_names(photo_tree, tmp_path):
    jobs = plan_jobs([photo_tree], tmp_path / "out")
    outputs = sorted(str(job.output.relative_to(tmp_path / "out")) for job in jobs)
    assert outputs == ["bad.h5", "scene_jpg.h5", "scene_png.h5", "sub/a.h5"]
    # several inputs: each folder its own sub-folder, a single file by its name
    other = tmp_path / "other"
    shutil.copytree(photo_tree, other)
    jobs = plan_jobs([photo_tree, other, photo_tree / "sub" / "a.png"], tmp_path / "out")
    outputs = {str(job.output.relative_to(tmp_path / "out")) for job in jobs}
    assert {"in/sub/a.h5", "other/sub/a.h5", "a.h5"} <= outputs and len(outputs) == len(jobs) == 9


def test_a_clash_the_naming_cannot_resolve_and_missing_inputs_fail_before_any_work(photo_tree, tmp_path):
    twin = tmp_path / "twin" / "in"
    shutil.copytree(photo_tree, twin)
    with pytest.raises(ValueError, match="would both be written to"):
        plan_jobs([photo_tree, twin], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*missing.png"):
        plan_jobs([photo_tree, tmp_path / "missing.png"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        plan_jobs([tmp_path / "empty"], tmp_path / "out")


def test_shards_cover_every_job_exactly_once():
    jobs = [Job(Path(f"{i}.png"), Path(f"{i}.h5")) for i in range(11)]
    shards = [shard(jobs, index, 3) for index in range(3)]
    assert sorted(j.source for part in shards for j in part) == sorted(j.source for j in jobs)
    assert [len(part) for part in shards] == [4, 4, 3]


def test_run_jobs_skips_existing_outputs_records_failures_and_goes_on(tmp_path):
    jobs = [Job(Path(f"{name}.png"), tmp_path / f"{name}.h5") for name in ("a", "b", "c", "d")]
    (tmp_path / "b.h5").write_text("from an earlier run")

    def reconstruct(job):
        if job.source.name == "c.png":
            raise ValueError("cannot decode")
        if job.source.name == "d.png":
            raise FileExistsError(job.output)
        job.output.write_text("cube")
        return {"rgb_error": 1e-8}

    results = run_jobs(jobs, reconstruct)
    assert [(r.status, r.reason[:11]) for r in results] == [
        ("done", ""), ("skipped", "output exis"), ("failed", "ValueError:"), ("skipped", "output writ")]
    assert results[0].rgb_error == 1e-8 and (tmp_path / "b.h5").read_text() == "from an earlier run"
    assert [r.status for r in run_jobs(jobs[:2], reconstruct, overwrite=True)] == ["done", "done"]
    assert (tmp_path / "b.h5").read_text() == "cube"


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_the_manifest_keeps_what_an_earlier_run_recorded_for_skipped_outputs(tmp_path, suffix):
    path = tmp_path / f"manifest{suffix}"

    def writer(error):
        def reconstruct(job):
            job.output.write_text("x")
            return {"rgb_error": error}
        return reconstruct

    write_manifest(path, run_jobs([Job(Path("a.png"), tmp_path / "a.h5")], writer(2e-8)))
    again = run_jobs([Job(Path("a.png"), tmp_path / "a.h5"), Job(Path("b.png"), tmp_path / "b.h5")], writer(3e-8))
    write_manifest(path, again)
    if suffix == ".json":
        rows = json.loads(path.read_text())["images"]
    else:
        import csv

        rows = list(csv.DictReader(path.open()))
    assert [(row["input"], row["status"]) for row in rows] == [("a.png", "done"), ("b.png", "done")]
    assert float(rows[0]["rgb_error"]) == 2e-8 and "earlier run" in rows[0]["reason"]


def test_the_command_reconstructs_a_mixed_folder_resumes_and_overwrites_only_when_asked(photo_tree, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reconstruct", str(photo_tree), "-o", str(out), "--checkpoint", str(BASELINE)]
    assert main(argv) == 1  # one input failed: the exit code says so, the others are done
    captured = capsys.readouterr()
    assert "3 done, 0 skipped, 1 failed" in captured.out and "bad.png" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"] == {"failed": 1, "done": 3}
    cube, _ = load_cube(out / "scene_png.h5")
    assert cube.shape == (16, 20, 31)
    stamp = (out / "scene_png.h5").stat().st_mtime_ns
    assert main(argv) == 1 and "0 done, 3 skipped, 1 failed" in capsys.readouterr().out
    assert (out / "scene_png.h5").stat().st_mtime_ns == stamp  # never overwritten without --overwrite
    assert main(argv + ["--overwrite"]) == 1 and "3 done, 0 skipped, 1 failed" in capsys.readouterr().out


def test_a_missing_input_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import uldm.cli

    monkeypatch.setattr(uldm.cli, "model_from_args", lambda args: pytest.fail("the model was loaded"))
    assert main(["reconstruct", str(tmp_path / "nope.png"), "-o", str(tmp_path / "out")]) == 2
    assert "nope.png" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_share_the_batch_each_input_exactly_once(photo_tree, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m", "uldm.cli",
         "reconstruct", str(photo_tree), "-o", str(tmp_path / "out"), "--checkpoint", str(BASELINE)],
        capture_output=True, text=True, env=env, timeout=600)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    inputs = [row["input"] for row in manifest["images"]]
    assert sorted(inputs) == sorted(str(p) for p in photo_tree.rglob("*") if p.suffix in (".png", ".jpg"))
    assert len(set(inputs)) == len(inputs) == 4 and manifest["summary"] == {"failed": 1, "done": 3}
    assert "3 done, 0 skipped, 1 failed" in result.stdout and result.returncode != 0


def test_an_existing_cube_is_never_replaced_without_overwrite(tmp_path):
    cube, wavelengths = np.zeros((2, 2, 31), np.float32), np.arange(400, 701, 10)
    save_cube(tmp_path / "c.h5", cube, wavelengths)
    with pytest.raises(FileExistsError):
        save_cube(tmp_path / "c.h5", cube + 1, wavelengths, overwrite=False)
    assert load_cube(tmp_path / "c.h5")[0].max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, suffix):
    import builtins

    real_open = builtins.open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and ".tmp" in str(file) else handle

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(CubeFileError, match=rf"c{suffix}: cannot write the cube \(No space left on device\)"):
        save_cube(tmp_path / f"c{suffix}", np.zeros((2, 2, 31), np.float32), np.arange(400, 701, 10))
    assert list(tmp_path.iterdir()) == []


def test_a_local_looking_path_that_does_not_exist_is_never_a_hub_download(tmp_path, monkeypatch, unreachable_hub):
    from uldm.hub import resolve_pretrained

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    for spec in ("runs/uldm-cave", "./uldm-cave", "runs/uldm-cave/pipeline", "checkpoints-x/"):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            resolve_pretrained(spec)


def test_evaluate_scores_the_readable_scenes_and_lists_the_failures(tiny_cave_root, tmp_path, capsys):
    broken = tiny_cave_root / "cd_ms" / "cd_ms" / "cd_ms_07.png"
    broken.write_bytes(b"truncated")
    report = tmp_path / "report.json"
    assert main(["evaluate", "--data", str(tiny_cave_root), "--split", "all", "--checkpoint", str(BASELINE),
                 "--json", str(report)]) == 1
    data = json.loads(report.read_text())
    assert sorted(data["per_scene"]) == ["balloons_ms", "watercolors_ms"] and data["settings"]["scenes"] == 2
    assert list(data["failures"]) == [str(tiny_cave_root / "cd_ms")] and "cd_ms_07.png" in data["failures"][str(tiny_cave_root / "cd_ms")]
    assert "failed: " in capsys.readouterr().err


@pytest.mark.parametrize("output_format,files", [("mat", ["scene.mat"]), ("envi", ["scene.hdr", "scene.img"])])
def test_the_command_writes_researchers_formats(tmp_path, output_format, files):
    image = Image.fromarray((np.random.default_rng(0).random((8, 12, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "scene.png")
    assert main(["reconstruct", str(tmp_path / "scene.png"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(BASELINE), "--output-format", output_format]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*files, "manifest.json"])
    cube, wavelengths = load_cube(tmp_path / "out" / files[0])
    assert cube.shape == (8, 12, 31) and wavelengths[0] == 400


@pytest.mark.parametrize("argv", [["evaluate", "--data", "MISSING"], ["relight", "MISSING.png", "--to", "A", "-o", "x.png"]])
def test_every_command_checks_its_inputs_before_loading_a_model(tmp_path, capsys, monkeypatch, argv):
    import uldm.cli

    monkeypatch.setattr(uldm.cli, "model_from_args", lambda args: pytest.fail("the model was loaded"))
    argv = [str(tmp_path / a) if a.startswith("MISSING") else a for a in argv]
    assert main(argv) == 2
    assert "MISSING" in capsys.readouterr().err


def test_uldm_version(capsys):
    from uldm import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"uldm {__version__}"


def test_dash_o_is_output_in_every_command_and_names_where_it_writes():
    """`-o` is `--output` wherever it exists, and no command uses `--output` for anything else (relight's colour
    space is `--space`)."""
    import argparse

    from uldm.cli import build_parser

    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)

    checked = 0
    for parser in walk(build_parser()):
        for action in parser._actions:
            if "-o" in action.option_strings or "--output" in action.option_strings:
                assert set(action.option_strings) == {"-o", "--output"}, (parser.prog, action.option_strings)
                assert action.choices is None and action.type is Path, parser.prog
                checked += 1
    assert checked >= 4  # baseline fit, reconstruct, relight, pull
