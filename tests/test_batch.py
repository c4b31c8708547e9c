"""Reconstruction at scale: distinct output names, shards, resume, a manifest, failures that do not end the batch."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, child_process, wait_for_file
from uldm.batch import Job, plan_jobs, run_jobs, shard, summary_line, write_manifest
from uldm.cli import main
from uldm.io import CubeFileError, load_cube, save_cube

BASELINE = REPO / "checkpoints" / "baseline-rootpoly-nikon5100.npz"
LOCK_FILES = [".manifest.json.lock", ".uldm-run.lock"]  # what a run leaves besides its outputs: empty lock files


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


def test_missing_inputs_and_empty_folders_fail_before_any_work(photo_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*missing.png"):
        plan_jobs([photo_tree, tmp_path / "missing.png"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        plan_jobs([tmp_path / "empty"], tmp_path / "out")


def _outputs(jobs, root):
    return {job.source.relative_to(root).as_posix(): job.output.relative_to(root / "out").as_posix() for job in jobs}


def test_names_that_collide_even_ignoring_case_get_distinct_outputs_the_same_at_every_run(tmp_path):
    """`a.png` + `a.PNG`, `a.png` + `a.jpg` + `a_png.png`, `Sub/` + `sub/`, two given folders of one name: every
    output distinct (also to a case-insensitive file system), decided by the sorted input paths alone."""
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    names = ["x/a.png", "x/a.PNG", "y/a.png", "y/a.jpg", "y/a_png.png", "z/Sub/b.png", "z/sub/b.png",
             "twin1/in/c.png", "twin2/in/c.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / name, format="PNG" if name.lower().endswith("png") else "JPEG")
    inputs = [tmp_path / "x", tmp_path / "y", tmp_path / "z", tmp_path / "twin1" / "in", tmp_path / "twin2" / "in"]
    outputs = _outputs(plan_jobs(inputs, tmp_path / "out"), tmp_path)
    assert len(outputs) == len(names) and len({o.lower() for o in outputs.values()}) == len(names)
    assert outputs["x/a.PNG"] == "x/a_png.h5" and outputs["x/a.png"] == "x/a_png_2.h5"  # sorted: "A" < "a"
    assert outputs["y/a.jpg"] == "y/a_jpg.h5" and outputs["y/a.png"] == "y/a_png.h5"
    assert outputs["y/a_png.png"] == "y/a_png_2.h5"
    assert outputs["twin1/in/c.png"] == "in/c.h5" and outputs["twin2/in/c.png"] == "in/c_2.h5"
    # stable: the same set of inputs, found in another order, maps the same way
    assert _outputs(plan_jobs(inputs[::-1][:3] + inputs[:2], tmp_path / "out"), tmp_path) == {
        k: v for k, v in outputs.items() if not k.startswith("twin")} | {
        "twin2/in/c.png": "in/c.h5", "twin1/in/c.png": "in/c_2.h5"}  # two same-named roots: the one given first


def test_the_output_folder_and_uldms_own_files_are_never_inputs(photo_tree, tmp_path, capsys):
    """`uldm reconstruct d -o d/cubes --preview`, run twice: the previews, cubes and temporary files in d/cubes are
    not photos to reconstruct, and nothing grows at the rerun; nor are previews beside their cubes in d itself."""
    folder = photo_tree / "sub"  # one photo: a.png
    argv = ["reconstruct", str(folder), "-o", str(folder / "cubes"), "--checkpoint", str(BASELINE), "--preview"]
    assert main(argv) == 0 and "1 done, 0 skipped, 0 failed (1 images)" in capsys.readouterr().out
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert {"cubes/a.h5", "cubes/a_preview.png", "cubes/a_spectra.png"} <= set(written)
    shutil.copy(folder / "a.png", folder / "cubes" / ".a_preview.png.0123456789ab.tmp.png")  # a killed save's
    written.append("cubes/.a_preview.png.0123456789ab.tmp.png")
    assert main(argv) == 0 and "0 done, 1 skipped, 0 failed (1 images)" in capsys.readouterr().out
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == sorted(written[:-1])
    assert len(json.loads((folder / "cubes" / "manifest.json").read_text())["images"]) == 1
    (photo_tree / "sub" / "a.h5").write_text("a cube beside its photo")  # -o d: previews there are not photos
    for own in ("sub/a_preview.png", "sub/a_spectra.png", "sub/.a.png.0123456789ab.tmp.png"):
        shutil.copy(photo_tree / "sub" / "a.png", photo_tree / own)
    shutil.copy(photo_tree / "sub" / "a.png", photo_tree / "sub" / "b_preview.png")  # no cube b.*: a photo
    found = {job.source.relative_to(photo_tree).as_posix() for job in plan_jobs([photo_tree], photo_tree)}
    assert found == {"scene.png", "scene.jpg", "bad.png", "sub/a.png", "sub/b_preview.png"}


def test_shards_cover_every_job_exactly_once():
    jobs = [Job(Path(f"{i}.png"), Path(f"{i}.h5")) for i in range(11)]
    shards = [shard(jobs, index, 3) for index in range(3)]
    assert sorted(j.source for part in shards for j in part) == sorted(j.source for j in jobs)
    assert [len(part) for part in shards] == [4, 4, 3]


def test_run_jobs_skips_existing_outputs_records_failures_and_goes_on(tmp_path):
    jobs = [Job(Path(f"{name}.png"), tmp_path / f"{name}.h5") for name in ("a", "b", "c", "d", "e")]
    (tmp_path / "b.h5").write_text("from an earlier run")

    def reconstruct(job):
        if job.source.name == "c.png":
            raise ValueError("cannot decode")
        if job.source.name == "d.png":  # another writer got there first: its file stays
            job.output.write_text("theirs")
            raise FileExistsError(job.output)
        if job.source.name == "e.png":  # a file where a folder must be: nothing was written, so not "skipped"
            raise FileExistsError(17, "File exists", str(tmp_path / "in-the-way"))
        job.output.write_text("cube")
        return {"rgb_error": 1e-8}

    results = run_jobs(jobs, reconstruct)
    assert [(r.status, r.reason[:11]) for r in results] == [
        ("done", ""), ("skipped", "output exis"), ("failed", "ValueError:"), ("skipped", "output writ"),
        ("failed", "cannot writ")]
    assert f"{tmp_path / 'in-the-way'} is a file where a folder must be; move that file away" in results[4].reason
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
    for spec in ("runs/uldm-cave", "./uldm-cave", "runs/uldm-cave/pipeline", "checkpoints-x/", "uldm-cav"):
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


@pytest.mark.parametrize("output_format,files", [("mat", ["scene.mat"]), ("envi", [
    "scene.hdr", "scene.img", "scene_out_of_gamut.hdr", "scene_out_of_gamut.img"])])  # ENVI: one array per file
def test_the_command_writes_researchers_formats(tmp_path, output_format, files):
    image = Image.fromarray((np.random.default_rng(0).random((8, 12, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "scene.png")
    assert main(["reconstruct", str(tmp_path / "scene.png"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(BASELINE), "--output-format", output_format]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [*files, "manifest.json", *LOCK_FILES])
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


# ------------------------------------------------------------------------------- never losing work (issue 35)
def test_an_output_path_that_is_a_file_is_an_error_not_a_silent_skip(photo_tree, tmp_path, capsys, monkeypatch):
    import uldm.cli

    (tmp_path / "f").touch()
    monkeypatch.setattr(uldm.cli, "model_from_args", lambda args: pytest.fail("the model was loaded"))
    assert main(["reconstruct", str(photo_tree), "-o", str(tmp_path / "f"), "--manifest", str(tmp_path / "m.json"),
                 "--checkpoint", str(BASELINE)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'f'} is a file, not a folder: -o names the folder the cubes go to" in err
    assert "remove the file or give another name" in err and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("spec", ["./nonexistent/dir", "uldm-cav", "checkpoints/uldm-cav", "missing.npz"])
def test_a_checkpoint_that_looks_like_a_path_is_a_local_error_never_a_download(spec, hub_server, photo_tree, tmp_path,
                                                                            capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # another folder than the repository's
    assert main(["reconstruct", str(photo_tree / "sub"), "-o", str(tmp_path / "out"), "--checkpoint", spec]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint {spec!r}: no such file or folder" in err and "'namespace/name'" in err
    if "uldm-cav" in spec and (REPO / "checkpoints" / "uldm-cave").is_dir():
        assert f"did you mean {REPO / 'checkpoints' / 'uldm-cave'}?" in err
    assert hub_server.requests == []


def test_shipped_checkpoints_are_found_by_name_from_any_folder_and_hub_ids_stay_hub_ids(tmp_path, monkeypatch):
    from uldm.checkpoints import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(BASELINE.name) == BASELINE
    assert resolve_checkpoint(f"checkpoints/{BASELINE.name}") == BASELINE
    assert resolve_checkpoint("someorg/some-model") == "someorg/some-model"
    (tmp_path / "mine").mkdir()
    assert resolve_checkpoint("mine") == Path("mine")  # a local folder of that name wins


def test_max_pixels_refuses_larger_photos_by_name_and_the_batch_goes_on(photo_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(photo_tree / "sub"), str(photo_tree / "scene.png"), "-o", str(out),
                 "--checkpoint", str(BASELINE), "--max-pixels", "100"]) == 1  # 20 x 16 = 320 pixels each
    err = capsys.readouterr().err
    assert "a.png: 20 x 16 pixels (0.0 MP) is over the limit of 0.0001 MP" in err and "--max-pixels" in err
    assert not list(out.rglob("*.h5"))
    assert main(["reconstruct", str(photo_tree / "sub"), "-o", str(out), "--checkpoint", str(BASELINE),
                 "--max-pixels", "320"]) == 0


def test_a_failing_manifest_write_names_the_manifest_and_says_what_to_do(photo_tree, tmp_path, capsys, monkeypatch):
    import uldm.batch

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uldm.batch, "save_json", full_disk)
    manifest = tmp_path / "records" / "m.json"
    assert main(["reconstruct", str(photo_tree / "sub"), "-o", str(tmp_path / "out"), "--checkpoint", str(BASELINE),
                 "--manifest", str(manifest)]) == 2
    assert (f"cannot write the manifest {manifest}: No space left on device; free some space there or give "
            "--manifest a place that can be written") in capsys.readouterr().err


def test_the_claim_of_a_dead_run_is_taken_over_and_a_live_one_is_left_to_its_holder(tmp_path):
    from uldm.locks import claim, claim_path

    jobs = [Job(Path("a.png"), tmp_path / "a.h5"), Job(Path("b.png"), tmp_path / "b.h5")]
    claim_path(jobs[0].output).write_text(json.dumps({"pid": 2**22 + 1, "host": "gone", "since": 0}))  # a killed run's
    with claim(jobs[1].output) as holder:  # a live run's (this process, through its own open file)
        assert holder is None
        results = run_jobs(jobs, _fake_cube_writer(tmp_path / "log", 0), manifest=tmp_path / "m.json")
    assert [r.status for r in results] == ["done", "busy"] and load_cube(jobs[0].output)[0].shape == (2, 2, 31)
    assert f"being reconstructed by another run (pid {os.getpid()} on " in results[1].reason
    assert not jobs[1].output.exists() and "left to other runs" in summary_line(results)
    assert [row["output"] for row in json.loads((tmp_path / "m.json").read_text())["images"]] == [str(jobs[0].output)]
    assert not claim_path(jobs[0].output).exists() and not claim_path(jobs[1].output).exists()


def _fake_cube_writer(log: Path, delay: float):
    """A reconstruction that logs who computed which image and takes `delay` seconds."""
    def reconstruct(job):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {job.source}\n")
        time.sleep(delay)
        save_cube(job.output, np.zeros((2, 2, 31), np.float32), np.arange(400, 701, 10))
        return {"rgb_error": 0.0}
    return reconstruct


def _one_of_two_runs(jobs, out: Path, manifest: Path, log: Path, start_together, delay: float) -> None:
    """A run in a child process. Fault injection: the manifest's read-merge-write is slowed down, so that without
    the manifest lock the other run's rows would be overwritten."""
    import uldm.batch
    from uldm.locks import sharing_folder

    read = uldm.batch._previous_rows
    uldm.batch._previous_rows = lambda path: (read(path), time.sleep(delay))[0]
    start_together.wait(timeout=300)
    with sharing_folder(out, time.time()):
        run_jobs(jobs, _fake_cube_writer(log, delay), manifest=manifest)


def test_two_concurrent_runs_compute_every_image_once_and_keep_every_manifest_row(tmp_path):
    import multiprocessing

    out, manifest, log = tmp_path / "out", tmp_path / "out" / "manifest.json", tmp_path / "computed.log"
    jobs = [Job(Path(f"photo{i}.png"), out / f"photo{i}.h5") for i in range(8)]
    start_together = multiprocessing.get_context("spawn").Barrier(2)
    with child_process(_one_of_two_runs, jobs, out, manifest, log, start_together, 0.03) as first, \
            child_process(_one_of_two_runs, jobs, out, manifest, log, start_together, 0.03) as second:
        for run in (first, second):
            run.join(timeout=300)
    assert [run.exitcode for run in (first, second)] == [0, 0]
    computed = [line.split() for line in log.read_text().splitlines()]
    assert sorted(source for _, source in computed) == sorted(str(job.source) for job in jobs)  # each once
    assert len({pid for pid, _ in computed}) == 2  # and the two runs shared the work
    rows = json.loads(manifest.read_text())["images"]
    assert sorted(row["output"] for row in rows) == sorted(str(job.output) for job in jobs)
    assert {row["status"] for row in rows} == {"done"}
    assert not [p for p in out.iterdir() if p.name.endswith((".claim", ".tmp.h5"))]


def _killed_mid_batch(argv, stuck_on: str, ready: Path) -> None:
    """The command in a child process, which hangs after streaming the first rows of `stuck_on` into its
    temporary file."""
    import uldm.io

    real_write = uldm.io.CubeWriter.write

    def write(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        if self.path.stem == stuck_on:
            ready.touch()
            time.sleep(600)

    uldm.io.CubeWriter.write = write
    main(argv)


def test_kill_9_mid_batch_keeps_a_row_per_finished_image_and_the_next_run_leaves_no_temporary_file(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for name in "abcd":
        Image.fromarray(np.full((6, 8, 3), 40 * (ord(name) - 96), np.uint8)).save(photos / f"{name}.png")
    argv = ["reconstruct", str(photos), "-o", str(out), "--checkpoint", str(BASELINE)]
    ready = tmp_path / "stuck"
    with child_process(_killed_mid_batch, argv, "c", ready) as child:  # killed with SIGKILL on the way out
        reached = wait_for_file(ready, child)
    assert reached, "the run never reached the third image"

    rows = json.loads((out / "manifest.json").read_text())["images"]
    finished = sorted(p.name for p in out.glob("[!.]*.h5"))
    assert finished == ["a.h5", "b.h5"] and sorted(Path(row["output"]).name for row in rows) == finished
    assert {row["status"] for row in rows} == {"done"}
    left = [p.name for p in out.iterdir() if p.name.startswith(".c.h5.")]  # what the kill left
    assert len(left) == 2 and ".c.h5.claim" in left and any(name.endswith(".tmp.h5") for name in left)

    assert main(argv) == 0 and "2 done, 2 skipped, 0 failed" in capsys.readouterr().out
    rows = json.loads((out / "manifest.json").read_text())["images"]
    assert sorted(Path(row["output"]).name for row in rows) == ["a.h5", "b.h5", "c.h5", "d.h5"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.h5", "b.h5", "c.h5", "d.h5", "manifest.json",
                                                            *LOCK_FILES])
    assert load_cube(out / "c.h5")[0].shape == (6, 8, 31)
