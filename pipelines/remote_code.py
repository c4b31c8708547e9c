"""The generic entry point: `diffusers.DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`.

diffusers builds a pipeline whose class it does not ship through custom code kept with the weights, in the layout
it documents for custom pipelines and components: model_index.json's `_class_name` becomes `[file, class]` with
`<file>.py` at the folder's root, and a component from another library (`["uldm.models.speuae", "SpeUAE"]`) has
its module as `<component>/uldm.models.speuae.py` (for a hub repo diffusers refuses to download without it).
Every such file written here is one import line that re-exports the class of the installed uldm, so the generic
loader and uldm's own give the same classes and identical outputs, and no model code is copied into checkpoints.
diffusers asks for `trust_remote_code=True` before it runs those files; uldm's own `from_pretrained` runs them
without asking only when each is, byte for byte, the line written here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

ENTRY_MODULE = "uldm_pipeline"  # the root file diffusers imports the pipeline class from


def reexport_source(module: str, name: str) -> str:
    """The whole text of a custom-code file: one import from the installed uldm."""
    return (f'"""diffusers\' generic from_pretrained imports {name} from here; it needs uldm installed '
            f'(pip install uldm)."""\n\nfrom {module} import {name}  # noqa: F401\n')


def _is_uldm_module(module: Any) -> bool:
    return isinstance(module, str) and module.split(".")[0] == "uldm"


def expected_files(index: dict[str, Any], pipeline_class: type) -> dict[str, str]:
    """{relative path: text} of the custom-code files a folder with this model_index.json should hold."""
    files = {f"{ENTRY_MODULE}.py": reexport_source(pipeline_class.__module__, pipeline_class.__name__)}
    for component, entry in index.items():
        if component.startswith("_") or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            continue
        module, name = entry
        if _is_uldm_module(module):
            files[f"{component}/{module}.py"] = reexport_source(module, name)
    return files


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_remote_code(folder: Union[str, Path], pipeline_class: type) -> None:
    """After `save_pretrained(folder)`: add the custom-code files and point model_index.json's `_class_name` at the
    root one. Written so that a folder is always loadable: the files first, the index last."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    for relative, text in expected_files(index, pipeline_class).items():
        if (folder / relative).parent.is_dir():
            _write_atomically(folder / relative, text)
    index["_class_name"] = [ENTRY_MODULE, pipeline_class.__name__]
    _write_atomically(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")


def holds_only_uldm_reexports(folder: Union[str, Path], pipeline_class: type) -> bool:
    """True when every custom-code file diffusers would run from `folder` is exactly one written by
    `write_remote_code` for `pipeline_class` (so running it runs nothing but an import of uldm)."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    expected = expected_files(index, pipeline_class)
    present = [path for path in folder.glob("*.py")] + [path for path in folder.glob("*/*.py")]
    for path in present:
        relative = path.relative_to(folder).as_posix()
        if relative not in expected or path.read_text() != expected[relative]:
            return False
    return True
