"""What the installed dependencies must give: the imports uldm relies on work in any order."""

import subprocess
import sys


def test_colour_then_diffusers_imports_in_a_fresh_interpreter():
    # colour-science >= 0.4.7 replaces a missing scipy with a MagicMock in sys.modules, and diffusers' import then
    # fails ("scipy.__spec__ is not set"); setup.cfg requires scipy for that reason. A fresh interpreter, because
    # pytest's own imports must not hide the order that fails.
    script = (
        "import sys, colour, diffusers\n"
        "from unittest.mock import Mock\n"
        "assert not isinstance(sys.modules.get('scipy'), Mock), 'scipy is a mock: install scipy'\n"
        "import uldm.baseline, uldm.pipelines\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_wheel_install_names_what_to_give_instead_of_the_default_checkpoint(tmp_path):
    """Installed from a wheel (no repository beside it, no weights), `uldm evaluate` without --checkpoint fails
    with a message that names --checkpoint and ULDM_CHECKPOINT; with ULDM_CHECKPOINT set it uses that model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(repo)], check=True, cwd=tmp_path)
    assert (target / "uldm" / "pipelines" / "pipeline_spectral_reconstruction.py").is_file()
    assert not (target / "checkpoints").exists()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    env.pop("ULDM_CHECKPOINT", None)
    sample = repo / "samples" / "colorchecker_truth.h5"
    command = [sys.executable, "-c", "import sys, uldm.cli; sys.exit(uldm.cli.main(sys.argv[1:]))",
               "evaluate", "--data", str(sample), "--format", "h5"]
    failed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode != 0
    assert "--checkpoint" in failed.stderr and "ULDM_CHECKPOINT" in failed.stderr, failed.stderr
    env["ULDM_CHECKPOINT"] = str(repo / "checkpoints" / "baseline-rootpoly-nikon5100.npz")
    used = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert used.returncode == 0, used.stderr
    assert "colorchecker_truth" in used.stdout
