"""The documentation matches the product: README commands run, tables agree with the benchmarks' JSON, links resolve,
every config key is documented, and the docs speak of the product, not of how it was made."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"
DOC_FILES = [README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "checkpoints").glob("*/README.md"))]
CONFIG_FILES = sorted((REPO / "stages" / "configs").glob("*.yaml"))

# README commands the suite runs (each under a minute on 2 CPU cores), in a scratch folder holding samples/
RUN = {
    "uldm info": [],
    "uldm reconstruct samples/colorchecker.png -o outputs/cli --preview":
        ["outputs/cli/colorchecker.h5", "outputs/cli/colorchecker_preview.png", "outputs/cli/colorchecker_spectra.png"],
    "uldm evaluate --data samples/colorchecker_truth.h5 --format h5": [],
    "uldm relight samples/colorchecker.png --to A -o outputs/colorchecker_A.png": ["outputs/colorchecker_A.png"],
}
# README commands that need the real data beside the repository and take a few seconds more (marked slow)
SLOW = {"python -m uldm.sd_scaffold runs/sd-taesd3 base --vae taesd3 --prediction-type sample": ["runs/sd-taesd3/vae/config.json"]}
# README commands the suite does not run, and why
NOT_RUN = {
    "bash scripts/demo.sh": "sets up the environment the suite runs in; its command is `uldm reconstruct` above",
    "bash scripts/test.sh": "runs this suite (CI runs it on a clean clone)",
    "python stages/": "training: minutes to an hour (the stages are tested on tiny models in test_stage*.py)",
    "python benchmarks/compare_models.py": "scores three models on the CAVE val split: minutes",
    "python benchmarks/docs_tables.py": "run here with --check (test_every_table_matches_its_json)",
    "accelerate launch": "several processes or machines (test_batch.py shares a folder between two CPU processes)",
}


def readme_commands() -> list[str]:
    """Shell commands in the README's ```bash blocks (continuation lines joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(line.split("#", 1)[0].split())
            if command:
                commands.append(command)
    return commands


def test_readme_is_a_ten_minute_read():
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("path", DOC_FILES + CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_docs_describe_the_product_not_how_it_was_made(path):
    text = path.read_text().lower()
    assert "session" not in text
    assert "../shared" not in text or path.suffix == ".yaml"  # configs may name the data's default location


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_inside_the_repository(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.exists(), f"{path.name} links to {target}, which does not exist"
        assert REPO in resolved.parents or resolved == REPO, f"{path.name} links outside the repository: {target}"


def test_every_table_matches_its_json(load_benchmark):
    assert load_benchmark("docs_tables").main(["--check"]) == 0


def test_a_table_block_is_found_by_its_whole_name(load_benchmark):
    """A table whose name begins another's ("crossval", "crossval-weights") finds its own block, wherever each is."""
    block = load_benchmark("docs_tables").block
    text = ("<!-- table:crossval-weights (a) -->\nW\n<!-- /table:crossval-weights -->\n"
            "<!-- table:crossval (b) -->\nC\n<!-- /table:crossval -->\n")
    assert block("crossval").search(text)[2] == "C\n"
    assert block("crossval-weights").search(text)[2] == "W\n"


def test_every_config_key_is_documented():
    from uldm.stages.pretrain_rgb import RGBPretrainConfig
    from uldm.stages.pretrain_spaae import SpaAEConfig
    from uldm.stages.train_mstpp import MSTPPConfig
    from uldm.stages.train_r2hdiff import R2HDiffConfig
    from uldm.stages.train_speuae import SpeUAEConfig
    from uldm.stages.train_uldm import ULDMConfig

    training = (REPO / "docs" / "training.md").read_text()
    for config in (SpeUAEConfig, SpaAEConfig, RGBPretrainConfig, ULDMConfig, R2HDiffConfig, MSTPPConfig):
        missing = [f.name for f in dataclasses.fields(config) if f"`{f.name}`" not in training]
        assert not missing, f"{config.__name__}: keys not in docs/training.md: {missing}"


def test_every_readme_command_is_run_or_accounted_for():
    unaccounted = [c for c in readme_commands()
                   if c not in RUN and c not in SLOW and not any(c.startswith(prefix) for prefix in NOT_RUN)]
    assert not unaccounted, f"README commands neither run by the suite nor listed in NOT_RUN: {unaccounted}"
    assert set(RUN) | set(SLOW) <= set(readme_commands())  # and what the suite runs is still in the README


def run_in_scratch(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "samples").symlink_to(REPO / "samples")
    argv = shlex.split(command)
    if argv[0] == "uldm":
        argv = [sys.executable, "-m", "uldm.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", list(RUN))
def test_readme_command_runs(command, tmp_path):
    result = run_in_scratch(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for output in RUN[command]:
        assert (tmp_path / output).stat().st_size > 0, output


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("command", list(SLOW))
def test_readme_command_that_needs_the_real_data_runs(command, tmp_path):
    from uldm.models.taesd import default_taesd_dir

    if default_taesd_dir() is None:
        pytest.skip("the TAESD files are not beside the repository")
    result = run_in_scratch(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for output in SLOW[command]:
        assert (tmp_path / output).stat().st_size > 0, output


def test_readme_quick_start_runs():
    code = re.search(r"```python\n(from uldm import SpectralReconstructionPipeline\n.*?)```", README.read_text(), re.S)[1]
    code += "\nassert out.spectra.shape[-1] == 31 and float(out.rgb_error.max()) < 1e-5\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
