"""Where data and weights are found without configuration: an environment variable, else the `shared/` folder
beside the repository (how the project's own data, photographs and TAESD files are laid out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def shared_location(env: str, *relative: str) -> Optional[Path]:
    """`$env` when it is set (returned even if missing, so a typo surfaces as a clear "does not exist" rather than a
    silent fallback); otherwise `<repo>/../shared/<relative>` if it exists; otherwise None."""
    configured = os.environ.get(env)
    if configured:
        return Path(configured).expanduser()
    candidate = REPO.parent.joinpath("shared", *relative)
    return candidate if candidate.is_dir() else None
