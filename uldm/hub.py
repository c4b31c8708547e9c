"""Pushing pipelines to, and pulling them from, a Hugging Face model hub: a thin layer over `huggingface_hub`.

What it adds to the raw client:

- one error type, `HubError`, whose message names the repo, the revision and the endpoint and says what to do
  next; the client's own errors are HTTP-centric and often end in a generic "check your connection";
- a local folder and a repo id are accepted in the same place (`resolve_pretrained`), as `from_pretrained` does;
- model cards that carry uldm's metadata (library name, tags, camera, metrics) in their YAML front matter.

The endpoint is huggingface_hub's (`HF_ENDPOINT`, read by huggingface_hub when it is imported). Downloads go
through `snapshot_download`, whose cache writes each file under a unique temporary name and renames it into place,
so an interrupted pull never leaves a truncated file in a snapshot; a snapshot the cache knows to be incomplete is
refused rather than returned. The partial file of a download that was killed (`<etag>.<hex>.incomplete`, which no
later download resumes) is removed by the next pull of that repo.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from .io import atomic_write

PathLike = Union[str, os.PathLike]

DEFAULT_TAGS = ("uldm", "hyperspectral", "spectral-reconstruction", "rgb-to-hyperspectral", "diffusers")
DEFAULT_LICENSE = "apache-2.0"  # the project's own licence (setup.cfg)
DEFAULT_COMMIT_MESSAGE = "Upload with uldm"
# Temporary files of an interrupted `atomic_write` (".<name>.<hex>.tmp<suffix>") must never be published.
NEVER_PUSHED = [".*.tmp*", "*/.*.tmp*"]


class HubError(OSError):
    """The model hub could not give or take what was asked: repo or revision missing, hub unreachable, token
    refused, files not cached. The message names the repo, revision and endpoint; so do the attributes."""

    def __init__(self, message: str, *, repo_id: Optional[str] = None, revision: Optional[str] = None,
                 endpoint: Optional[str] = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = endpoint


def hub_endpoint() -> str:
    """The model hub huggingface_hub talks to now (`HF_ENDPOINT`, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


# ------------------------------------------------------------------------------------------ error mapping
def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (huggingface_hub often wraps the network error)."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of whichever HTTP library huggingface_hub uses (httpx2, httpx or
    requests, depending on its version); only libraries already imported are looked at."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        module = sys.modules.get(module_name)
        types.extend(getattr(module, name) for name in names if module is not None and hasattr(module, name))
    return tuple(types)


def _find(exc: BaseException, types: tuple[type[BaseException], ...]) -> Optional[BaseException]:
    return next((cause for cause in _causes(exc) if isinstance(cause, types)), None)


def _offline_error(exc: BaseException) -> Optional[BaseException]:
    from huggingface_hub.utils import OfflineModeIsEnabled

    return _find(exc, (OfflineModeIsEnabled,))


def _network_error(exc: BaseException) -> Optional[BaseException]:
    return _find(exc, _network_error_types())


def _http_status(exc: BaseException) -> Optional[int]:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _server_message(exc: BaseException) -> str:
    message = getattr(exc, "server_message", None) or str(exc)
    return " ".join(message.split())[:300]


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pull_error(exc: BaseException, repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike],
                local_files_only: bool) -> Optional[HubError]:
    """A HubError explaining why `snapshot_download` failed, or None for errors that are not about the hub."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    rev = revision or "main"
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    where = dict(repo_id=repo_id, revision=rev, endpoint=endpoint)
    incomplete = type(exc).__name__ == "IncompleteSnapshotError"  # huggingface_hub >= 1.x only

    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"revision {rev!r} not found in model repo {repo_id!r} at {endpoint}; use a branch name or "
                        "the full sha of a commit that exists there", **where)
    if isinstance(exc, GatedRepoError):
        return HubError(f"model repo {repo_id!r} at {endpoint} is gated: accept its conditions on the hub and use a "
                        "token (token=... or HF_TOKEN) of an account that has access", **where)
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"model repo {repo_id!r} not found at {endpoint} (nor is there a local folder of that name); "
                        "check the name, or the token if the repo is private", **where)
    if isinstance(exc, LocalEntryNotFoundError) and incomplete:
        why = "local_files_only=True" if local_files_only else "the hub cannot be reached"
        return HubError(f"the cached copy of {repo_id!r} (revision {rev!r}) in {cache} is incomplete and cannot be "
                        f"completed ({why}); run again with access to {endpoint} to finish the download", **where)
    if isinstance(exc, LocalEntryNotFoundError) and local_files_only:
        return HubError(f"{repo_id!r} (revision {rev!r}) is not in the cache at {cache} and local_files_only=True "
                        f"forbids downloading it from {endpoint}; run once with network access first", **where)
    if _offline_error(exc) is not None:
        return HubError(f"{repo_id!r} (revision {rev!r}) is not in the cache at {cache} and HF_HUB_OFFLINE is set, "
                        f"so {endpoint} is not asked; unset HF_HUB_OFFLINE to download it", **where)
    network = _network_error(exc)
    if network is not None:
        return HubError(f"cannot reach the model hub at {endpoint} to download {repo_id!r} (revision {rev!r}): "
                        f"{_reason(network)}; nothing usable is cached in {cache}. Use a local folder, or "
                        "local_files_only=True to use files already in the cache", **where)
    if isinstance(exc, HfHubHTTPError):
        status = _http_status(exc)
        hint = "; check the token (token=... or HF_TOKEN)" if status in (401, 403) else ""
        return HubError(f"the model hub at {endpoint} answered {status} while downloading {repo_id!r} "
                        f"(revision {rev!r}): {_server_message(exc)}{hint}", **where)
    if isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"cannot download {repo_id!r} (revision {rev!r}) from {endpoint} and it is not in the cache "
                        f"at {cache}: {_reason(exc.__cause__ or exc)}", **where)
    return None


def _push_error(exc: BaseException, folder: Path, repo_id: str, revision: Optional[str]) -> Optional[HubError]:
    """A HubError explaining why pushing `folder` failed, or None for errors that are not about the hub."""
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = hub_endpoint()
    rev = revision or "main"
    where = dict(repo_id=repo_id, revision=rev, endpoint=endpoint)
    target = f"{repo_id!r} (branch {rev!r}) at {endpoint}"
    if _offline_error(exc) is not None:  # checked first: offline mode is a ConnectionError too
        return HubError(f"cannot push {folder} to {target}: HF_HUB_OFFLINE is set", **where)
    network = _network_error(exc)
    if network is not None:
        return HubError(f"cannot reach the model hub at {endpoint} to push {folder} to {repo_id!r}: "
                        f"{_reason(network)}", **where)
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"cannot push {folder} to {target}: the branch does not exist", **where)
    status = _http_status(exc)
    if isinstance(exc, RepositoryNotFoundError) or status in (401, 403):
        return HubError(f"cannot push {folder} to {target}: the repo was not found or the token cannot write to it "
                        f"(status {status}); log in (`hf auth login`) or pass token=...", **where)
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"cannot push {folder} to {target}: the hub answered {status}: {_server_message(exc)}",
                        **where)
    if isinstance(exc, (ValueError, OSError)):  # e.g. README metadata the hub rejects, a token that is not set
        return HubError(f"cannot push {folder} to {target}: {_reason(exc)}", **where)
    return None


# ----------------------------------------------------------------------------------------------- pulling
def _looks_like_path(name: str) -> bool:
    """Names a repo id cannot have (absolute, relative with ./ or ~, Windows separators, deeper than a/b, a trailing
    slash), or a repo-id-shaped name whose first part is a local folder (`runs/uldm-cave` beside a `runs/`): a
    mistyped local path must be an error, not a download."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/") or ("/" in name and Path(name.split("/", 1)[0]).is_dir()))


def looks_like_local_path(name: str) -> bool:
    """Whether `name` names a local folder (existing, or shaped like a path) rather than a hub repo id."""
    return Path(name).expanduser().exists() or _looks_like_path(name)


def _local_folder(name_or_path: PathLike) -> Optional[Path]:
    """The folder `name_or_path` names, None if it should be taken as a repo id; errors for paths that
    cannot be either."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a pipeline folder or a model repo id "
                                 "('namespace/name')")
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        raise _no_such_folder(path)
    return None


def _no_such_folder(path: PathLike) -> FileNotFoundError:
    return FileNotFoundError(f"no such folder: {path} (and it is not a model repo id of the form 'namespace/name')")


def _checked_repo_id(name: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise HubError(f"{name!r} is neither an existing local folder nor a valid model repo id "
                       f"('namespace/name'): {exc}", repo_id=name, endpoint=hub_endpoint()) from exc
    return name


def remove_orphan_downloads(repo_id: str, cache_dir: Optional[PathLike] = None) -> list[Path]:
    """Remove the partial files (`blobs/<etag>.<hex>.incomplete`) that killed downloads of `repo_id` left in the
    cache and return them. Each download writes under a name of its own, so nothing would ever resume or remove
    them; one whose blob lock (huggingface_hub's, `.locks/<repo>/<etag>.lock`) is held belongs to a live download
    and stays."""
    from filelock import FileLock, Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    removed = []
    for partial in sorted((cache / folder / "blobs").glob("*.incomplete")):
        lock = cache / ".locks" / folder / f"{partial.name.split('.', 1)[0]}.lock"
        try:
            if lock.exists():
                with FileLock(lock, timeout=0):
                    partial.unlink(missing_ok=True)
            else:
                partial.unlink(missing_ok=True)
        except Timeout:  # a live download holds it
            continue
        removed.append(partial)
    return removed


def resolve_pretrained(
    name_or_path: PathLike,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    local_files_only: bool = False,
    token: Union[str, bool, None] = None,
    allow_patterns: Union[str, Sequence[str], None] = None,
) -> Path:
    """The local folder holding `name_or_path`: a folder is returned as is; a missing path (`./x`, `runs/x` beside a
    `runs/`, a bare name without a namespace) is a FileNotFoundError; a 'namespace/name' is a model repo id whose
    snapshot (at `revision`: a branch or a full commit sha; default main) is downloaded into the cache
    (`cache_dir`, default HF_HUB_CACHE) and returned.

    When the hub cannot be reached, a snapshot already in the cache is used, as with `local_files_only=True`.
    `allow_patterns` limits the download (e.g. ["*.json", "unet/*"]). Raises HubError naming the repo, the
    revision and the endpoint when the repo or revision does not exist, the hub is unreachable and nothing is
    cached, or `local_files_only=True` and the snapshot is not cached (or only partly).
    """
    local = _local_folder(name_or_path)
    if local is not None:
        return local
    repo_id = _checked_repo_id(str(name_or_path))
    if "/" not in repo_id:  # a uldm model on a hub is always 'namespace/name': a bare name is a missing local path
        raise _no_such_folder(repo_id)
    from huggingface_hub import snapshot_download

    from . import __version__

    try:
        remove_orphan_downloads(repo_id, cache_dir)
    except OSError:  # a read-only or odd cache: the download itself says what is wrong, if anything is
        pass
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=list(allow_patterns) if isinstance(allow_patterns, (list, tuple)) else allow_patterns,
            library_name="uldm",
            library_version=__version__,
        )
    except Exception as exc:
        error = _pull_error(exc, repo_id, revision, cache_dir, local_files_only)
        if error is None:
            raise
        raise error from exc
    return Path(folder)


# ----------------------------------------------------------------------------------------------- pushing
def push_folder(
    folder: PathLike,
    repo_id: str,
    *,
    token: Union[str, bool, None] = None,
    private: bool = False,
    revision: Optional[str] = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    create_pr: bool = False,
) -> str:
    """Upload every file of `folder` to the model repo `repo_id` in one commit and return the commit URL.

    The repo is created when missing (`private` applies only then), and so is the branch `revision` (from main).
    Files identical to those already on the branch are not re-sent; temporary files of interrupted atomic writes
    are skipped. With `create_pr=True` the commit goes to a new pull request against main. The returned string is
    huggingface_hub's CommitInfo (`.oid` is the commit sha, `.pr_url` the pull request). Raises HubError naming
    the repo and the endpoint when the hub is unreachable, refuses the token, or rejects the upload.
    """
    from huggingface_hub import HfApi

    from . import __version__

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot push {folder}: no such folder")
    if not any(path.is_file() for path in folder.rglob("*")):
        raise ValueError(f"cannot push {folder}: the folder holds no files")
    if create_pr and revision not in (None, "main"):
        raise ValueError(f"create_pr=True opens a pull request against main; do not also pass revision={revision!r}")
    if not commit_message:
        raise ValueError("commit_message must not be empty")
    repo_id = _checked_repo_id(repo_id)
    api = HfApi(token=token, library_name="uldm", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main") and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            folder_path=folder, repo_id=repo_id, revision=revision, commit_message=commit_message,
            create_pr=create_pr, ignore_patterns=list(NEVER_PUSHED),
        )
    except Exception as exc:
        error = _push_error(exc, folder, repo_id, revision)
        if error is None:
            raise
        raise error from exc


# -------------------------------------------------------------------------------------------- model cards
def _plain_value(value: Any) -> Any:
    """Numbers as Python floats/ints (NumPy scalars do not serialise to YAML), the rest as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _format_metric(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def _card_body(title: str, description: str, metrics: Mapping[str, Any], camera: Optional[str],
               training: Optional[str], pipeline_class: str) -> str:
    lines = [f"# {title}", "", description.strip(), ""]
    if camera:
        lines += ["## Camera", "", camera.strip(), ""]
    if training:
        lines += ["## Training", "", training.strip(), ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_format_metric(value)} |" for name, value in metrics.items()]
        lines.append("")
    lines += ["## Usage", "", "With `uldm` installed (`pip install uldm`):", "", "```python",
              f"from uldm import {pipeline_class}", "",
              f"pipe = {pipeline_class}.from_pretrained(\"<this repo id or folder>\")",
              "out = pipe(\"photo.png\")     # sRGB photo in; out.spectra: 1 x H x W x 31 (400-700 nm)", "```", "",
              "diffusers' generic entry point loads it too: `DiffusionPipeline.from_pretrained(\"<repo id or folder>\", "
              "trust_remote_code=True)`. The code it runs is the repo's `uldm_pipeline.py` and one file per uldm "
              "component, each a single import from the installed uldm.", ""]
    return "\n".join(lines)


# Metric ids the hub's model-index knows; a metric named e.g. "val PSNR (dB)" gets the id it names.
METRIC_TYPES = ("psnr", "ssim", "sam", "mrae", "rmse")


def metric_type(name: str) -> str:
    """The model-index `type` of a metric: the standard id its name contains (psnr, sam, ...), else its words."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    return next((word for word in words if word in METRIC_TYPES), "-".join(words) or name)


def _eval_results(evaluation: Optional[Mapping[str, Any]]) -> Optional[list]:
    """huggingface_hub's EvalResults (the card's model-index) of `evaluation` = {"dataset": name, "dataset_type": id,
    "split": ..., "metrics": {name: value}}; None without one."""
    from huggingface_hub import EvalResult

    if not evaluation or not evaluation.get("metrics"):
        return None
    return [EvalResult(task_type="image-to-image", task_name="RGB to hyperspectral reconstruction",
                       dataset_type=evaluation["dataset_type"], dataset_name=evaluation["dataset"],
                       dataset_split=evaluation.get("split"), metric_type=metric_type(name), metric_name=name,
                       metric_value=_plain_value(value))
            for name, value in evaluation["metrics"].items()]


def _card_data(title: str, *, license: str, tags: Sequence[str], base_model: Any, datasets: Sequence[str],  # noqa: A002
               evaluation: Optional[Mapping[str, Any]], uldm: Mapping[str, Any]):
    """The front matter every uldm card carries: library, licence, pipeline_tag, tags, base_model, datasets, the
    model-index and the `uldm` mapping (camera, metrics)."""
    from huggingface_hub import ModelCardData

    results = _eval_results(evaluation)
    return ModelCardData(library_name="uldm", license=license, tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
                         pipeline_tag="image-to-image", base_model=base_model or None, datasets=list(datasets) or None,
                         eval_results=results, model_name=title if results else None,
                         **({"uldm": dict(uldm)} if uldm else {}))


def read_model_card(folder: PathLike) -> Optional[str]:
    """The text of `folder`/README.md, None when there is none."""
    path = Path(folder) / "README.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def card_metadata(text: Optional[str]) -> dict[str, Any]:
    """What a card's front matter says, as `write_model_card` takes it: base_model, datasets, metrics, evaluation
    (the first dataset of its model-index) and tags; {} for no card, or one without front matter."""
    from huggingface_hub import ModelCard

    if not text:
        return {}
    try:
        data = ModelCard(text, ignore_metadata_errors=True).data
    except ValueError:
        return {}
    results = data.eval_results or []
    first = results[0] if results else None
    evaluation = None if first is None else {
        "dataset": first.dataset_name, "dataset_type": first.dataset_type, "split": first.dataset_split,
        "metrics": {r.metric_name or r.metric_type: r.metric_value for r in results
                    if (r.dataset_name, r.dataset_type) == (first.dataset_name, first.dataset_type)}}
    extra = getattr(data, "uldm", None) or {}
    found = {"base_model": data.base_model, "datasets": data.datasets, "metrics": extra.get("metrics"),
             "evaluation": evaluation, "tags": data.tags}
    return {key: value for key, value in found.items() if value}


def _write_card(path: Path, front: Any, body: str) -> Path:
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{front.to_yaml()}\n---\n\n{body}")  # parsing it checks the front matter
    with atomic_write(path) as tmp:
        tmp.write_text(str(card), encoding="utf-8")
    return path


def write_model_card(
    folder: PathLike,
    *,
    title: str,
    description: str,
    metrics: Optional[Mapping[str, Any]] = None,
    camera: Optional[str] = None,
    training: Optional[str] = None,
    tags: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,  # noqa: A002 - the model-card field's name
    pipeline_class: str = "SpectralReconstructionPipeline",
    base_model: Optional[Union[str, Sequence[str]]] = None,
    datasets: Sequence[str] = (),
    evaluation: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write `folder`/README.md (atomically): YAML front matter the hub indexes (library_name: uldm, license,
    pipeline_tag, DEFAULT_TAGS plus `tags`, `base_model` (the hub ids of the pretrained weights it started from) and
    `datasets` when known, an `uldm` mapping with camera and metrics, and with `evaluation` = {"dataset": name,
    "dataset_type": id, "split": ..., "metrics": {name: value}} a model-index, so the hub shows the metrics) and a
    Markdown body with the title, description, camera, training notes, a metrics table and how to load it with
    `pipeline_class`."""
    if not title or not title.strip():
        raise ValueError("a model card needs a non-empty title")
    metrics = {str(name): _plain_value(value) for name, value in (metrics or {}).items()}
    extra = {key: value for key, value in (("camera", camera), ("metrics", metrics)) if value}
    front = _card_data(title.strip(), license=license, tags=tags, base_model=base_model, datasets=datasets,
                       evaluation=evaluation, uldm=extra)
    body = _card_body(title.strip(), description, metrics, camera, training, pipeline_class)
    return _write_card(Path(folder) / "README.md", front, body)


def update_model_card(
    folder: PathLike,
    *,
    base_model: Optional[Union[str, Sequence[str]]] = None,
    datasets: Sequence[str] = (),
    evaluation: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Rewrite the front matter of an existing `folder`/README.md as `write_model_card` writes it (adding what
    cards written by older versions lack, such as pipeline_tag), with `base_model`, `datasets` and `evaluation`
    where given, and what it said before elsewhere; the body stays as it is."""
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model card to update")
    card = ModelCard.load(path)
    old = card.data.to_dict()
    before = card_metadata(str(card))
    title = card.data.model_name or next((line[2:].strip() for line in card.text.splitlines()
                                          if line.startswith("# ")), Path(folder).name)
    front = _card_data(title, license=old.get("license", DEFAULT_LICENSE), tags=old.get("tags") or (),
                       base_model=base_model or before.get("base_model"),
                       datasets=datasets or before.get("datasets") or (),
                       evaluation=evaluation or before.get("evaluation"), uldm=old.get("uldm") or {})
    return _write_card(path, front, card.text.lstrip("\n"))
