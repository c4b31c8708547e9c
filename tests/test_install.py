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
