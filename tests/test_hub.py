"""uldm.hub against a real HTTP server speaking the Hugging Face Hub protocol (tests/hub_server.py, on 127.0.0.1).

Everything goes through the installed huggingface_hub over HTTP: pushes are real commits, pulls fill a real cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uldm.hub import DEFAULT_TAGS, HubError, hub_endpoint, push_folder, resolve_pretrained, write_model_card

REPO_ID = "testorg/tiny"


def _make_model_folder(root: Path, seed: int = 0) -> Path:
    """A folder shaped like a saved model: config.json, ~100 KB of random 'weights', a nested text file."""
    import numpy as np

    folder = root / "tiny-model"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "Tiny", "bands": 31, "seed": seed}))
    (folder / "model.safetensors").write_bytes(np.random.default_rng(seed).bytes(100_000))
    (folder / "sub" / "file.txt").write_text("nested file\n")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `folder` (symlinks into the cache's blobs followed)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _assert_cache_consistent(cache: Path) -> None:
    """No download left half-done: no temporary files, and every snapshot entry resolves to a whole blob."""
    leftovers = [p for p in cache.rglob("*") if p.name.endswith(".incomplete") or ".tmp" in p.name]
    assert leftovers == [], f"temporary files left in the cache: {leftovers}"
    for link in cache.glob("*/snapshots/*/**/*"):
        assert link.exists(), f"dangling snapshot entry {link}"


# ------------------------------------------------------------------------------------------ push and pull
def test_push_then_pull_is_byte_identical(hub_server, tmp_path):
    folder = _make_model_folder(tmp_path)
    url = push_folder(folder, REPO_ID)
    assert url.startswith(f"{hub_server.url}/{REPO_ID}/commit/")
    assert url.oid == hub_server.head(REPO_ID)

    cache = tmp_path / "empty-cache"
    pulled = resolve_pretrained(REPO_ID, cache_dir=cache)

    assert pulled.is_relative_to(cache) and pulled.name == url.oid
    remote = _files(pulled)
    assert set(remote) == {"config.json", "model.safetensors", "sub/file.txt", ".gitattributes"}
    for name, data in _files(folder).items():
        assert remote[name] == data, name
    _assert_cache_consistent(cache)


def test_new_push_is_a_new_commit_and_old_sha_keeps_old_content(hub_server, tmp_path):
    from huggingface_hub import HfApi

    folder = _make_model_folder(tmp_path)
    first = push_folder(folder, REPO_ID)
    old_config = (folder / "config.json").read_bytes()
    (folder / "config.json").write_text(json.dumps({"_class_name": "Tiny", "bands": 31, "version": 2}))
    second = push_folder(folder, REPO_ID, commit_message="second version")

    assert second.oid != first.oid
    commits = HfApi().list_repo_commits(REPO_ID)
    assert [c.commit_id for c in commits[:2]] == [second.oid, first.oid]
    assert commits[0].title == "second version"
    # only the changed file was sent: the hub's preupload answer told the client the others were unchanged
    assert hub_server.files(REPO_ID, second.oid)["model.safetensors"] == (folder / "model.safetensors").read_bytes()

    cache = tmp_path / "cache"
    old = resolve_pretrained(REPO_ID, revision=first.oid, cache_dir=cache)
    new = resolve_pretrained(REPO_ID, cache_dir=cache)
    assert (old / "config.json").read_bytes() == old_config
    assert (new / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert (old / "model.safetensors").read_bytes() == (new / "model.safetensors").read_bytes()
    assert old.name == first.oid and new.name == second.oid

    # pushing identical files makes no empty commit
    assert push_folder(folder, REPO_ID).oid == second.oid


def test_model_info_and_model_card_round_trip(hub_server, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    folder = _make_model_folder(tmp_path)
    card_path = write_model_card(
        folder, title="Tiny ULDM", description="A tiny test model.", metrics={"MRAE": 0.2544, "PSNR": 32.86},
        camera="Nikon 5100 (NPL)", training="Two stages on CAVE.", tags=["cave"],
    )
    push = push_folder(folder, REPO_ID)

    info = HfApi().model_info(REPO_ID, files_metadata=True)
    assert info.sha == push.oid
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.safetensors"] == 100_000 and "README.md" in sizes
    assert info.card_data.library_name == "uldm"
    assert {"hyperspectral", "spectral-reconstruction", "cave"} <= set(info.tags)

    pulled = resolve_pretrained(REPO_ID, cache_dir=tmp_path / "cache")
    assert (pulled / "README.md").read_bytes() == card_path.read_bytes()
    card = ModelCard.load(pulled / "README.md")
    assert card.data.library_name == "uldm" and card.data.license == "apache-2.0"
    assert card.data.to_dict()["uldm"] == {"camera": "Nikon 5100 (NPL)", "metrics": {"MRAE": 0.2544, "PSNR": 32.86}}
    assert "# Tiny ULDM" in card.text and "| MRAE | 0.2544 |" in card.text


def test_write_model_card_front_matter(tmp_path):
    import numpy as np

    path = write_model_card(tmp_path / "new-folder", title="T", description="D", metrics={"SAM": np.float32(13.25)},
                            camera=None, training=None, tags=["extra", "hyperspectral"])
    text = path.read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "uldm" and front["license"] == "apache-2.0"
    assert front["tags"] == [*DEFAULT_TAGS, "extra"]  # defaults first, no duplicates
    assert front["uldm"] == {"metrics": {"SAM": 13.25}}
    assert [p.name for p in path.parent.iterdir()] == ["README.md"]  # no temporary file left behind
    with pytest.raises(ValueError, match="title"):
        write_model_card(tmp_path, title=" ", description="D", metrics=None, camera=None, training=None)


def test_push_to_a_branch_and_as_a_pull_request(hub_server, tmp_path):
    folder = _make_model_folder(tmp_path)
    main = push_folder(folder, REPO_ID)
    (folder / "sub" / "file.txt").write_text("on the dev branch\n")
    dev = push_folder(folder, REPO_ID, revision="dev")
    (folder / "sub" / "file.txt").write_text("proposed in a pull request\n")
    pr = push_folder(folder, REPO_ID, create_pr=True)

    assert hub_server.head(REPO_ID) == main.oid  # neither touched main
    assert pr.pr_url == f"{hub_server.url}/{REPO_ID}/discussions/1" and pr.pr_revision == "refs/pr/1"
    cache = tmp_path / "cache"
    assert (resolve_pretrained(REPO_ID, revision="dev", cache_dir=cache) / "sub/file.txt").read_text() == (
        "on the dev branch\n")
    assert (resolve_pretrained(REPO_ID, revision="refs/pr/1", cache_dir=cache) / "sub/file.txt").read_text() == (
        "proposed in a pull request\n")
    assert resolve_pretrained(REPO_ID, revision=dev.oid, cache_dir=cache).name == dev.oid
    with pytest.raises(ValueError, match="create_pr"):
        push_folder(folder, REPO_ID, create_pr=True, revision="dev")


def test_push_without_hf_xet_takes_the_single_commit_path(hub_server, tmp_path, monkeypatch):
    """Without hf_xet, upload_folder validates README metadata and sends one create_commit: the same result."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    folder = _make_model_folder(tmp_path)
    write_model_card(folder, title="T", description="D", metrics=None, camera=None, training=None)
    push = push_folder(folder, REPO_ID)
    assert ("POST", "/api/validate-yaml") in hub_server.requests
    assert hub_server.files(REPO_ID, push.oid)["README.md"] == (folder / "README.md").read_bytes()


def test_private_repo_needs_a_token(hub_server, tmp_path):
    push_folder(_make_model_folder(tmp_path), "testorg/secret", private=True)
    assert resolve_pretrained("testorg/secret", cache_dir=tmp_path / "with-token").is_dir()
    with pytest.raises(HubError, match="'testorg/secret' not found.*token"):
        resolve_pretrained("testorg/secret", cache_dir=tmp_path / "no-token", token=False)


def test_hub_api_basics_against_the_test_server(hub_server, tmp_path):
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import sha

    api = HfApi()
    assert api.whoami()["name"] == hub_server.user
    push = push_folder(_make_model_folder(tmp_path), REPO_ID)
    assert sorted(api.list_repo_files(REPO_ID)) == [".gitattributes", "config.json", "model.safetensors",
                                                    "sub/file.txt"]
    meta = get_hf_file_metadata(hf_hub_url(REPO_ID, "sub/file.txt"))
    assert meta.commit_hash == push.oid and meta.size == len(b"nested file\n")
    assert meta.etag == sha.git_hash(b"nested file\n") and meta.xet_file_data is None  # plain git blob, no Xet
    assert [b.name for b in api.list_repo_refs(REPO_ID).branches] == ["main"]


def test_subprocesses_see_the_test_hub(hub_server):
    code = "from huggingface_hub import constants; print(constants.ENDPOINT, constants.HF_HUB_OFFLINE)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.split() == [hub_server.url, "False"]


# ---------------------------------------------------------------------------------------- errors, offline
def test_unreachable_hub_raises_clearly_and_leaves_the_cache_clean(unreachable_hub, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(HubError) as caught:
        resolve_pretrained(REPO_ID, cache_dir=cache)
    message = str(caught.value)
    assert f"cannot reach the model hub at {unreachable_hub}" in message
    assert REPO_ID in message and "local_files_only=True" in message
    assert caught.value.repo_id == REPO_ID and caught.value.endpoint == unreachable_hub == hub_endpoint()
    _assert_cache_consistent(cache)
    assert not list(cache.glob("*/snapshots/*"))

    with pytest.raises(HubError, match=f"cannot reach the model hub at {unreachable_hub} to push"):
        push_folder(_make_model_folder(tmp_path), REPO_ID)


def test_offline_mode_is_named_in_the_error(hub_server, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=f"'{REPO_ID}'.*not in the cache.*HF_HUB_OFFLINE is set"):
        resolve_pretrained(REPO_ID, cache_dir=tmp_path / "cache")
    assert hub_server.requests == []


def test_temporary_files_of_interrupted_writes_are_not_pushed(hub_server, tmp_path):
    folder = _make_model_folder(tmp_path)
    (folder / ".config.json.0123456789ab.tmp.json").write_text("half-written")
    (folder / "sub" / ".file.txt.0123456789ab.tmp.txt").write_text("half-written")
    push = push_folder(folder, REPO_ID)
    assert sorted(hub_server.files(REPO_ID, push.oid)) == [".gitattributes", "config.json", "model.safetensors",
                                                          "sub/file.txt"]


def test_failed_download_leaves_no_partial_files(hub_server, tmp_path):
    folder = _make_model_folder(tmp_path)
    push_folder(folder, REPO_ID)
    cache = tmp_path / "cache"

    hub_server.fail_downloads = {"model.safetensors"}
    with pytest.raises(HubError, match=f"answered 500 while downloading '{REPO_ID}'"):
        resolve_pretrained(REPO_ID, cache_dir=cache)
    _assert_cache_consistent(cache)
    for snapshot in cache.glob("*/snapshots/*"):  # what did arrive is whole; the broken file is absent
        got = _files(snapshot)
        assert "model.safetensors" not in got
        assert all(data == (folder / name).read_bytes() for name, data in got.items() if name != ".gitattributes")
    with pytest.raises(HubError, match="incomplete"):  # the partial snapshot is never handed out
        resolve_pretrained(REPO_ID, cache_dir=cache, local_files_only=True)

    hub_server.fail_downloads = set()
    pulled = resolve_pretrained(REPO_ID, cache_dir=cache)
    assert (pulled / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_a_server_that_keeps_truncating_ends_in_an_error_with_no_partial_files(hub_server, tmp_path):
    import time

    folder = _make_model_folder(tmp_path)
    push_folder(folder, REPO_ID)
    cache = tmp_path / "cache"
    hub_server.truncate_downloads = {"model.safetensors": 10}  # every GET of it stops after 10 bytes
    start = time.monotonic()
    with pytest.raises(HubError, match=f"'{REPO_ID}'.*complete message body"):
        resolve_pretrained(REPO_ID, cache_dir=cache)
    assert time.monotonic() - start < 120  # a bounded number of retries, not forever
    gets = [path for method, path in hub_server.requests if method == "GET" and path.endswith("/model.safetensors")]
    assert 1 <= len(gets) <= 20
    _assert_cache_consistent(cache)
    assert not [p for p in cache.rglob("*") if p.suffix == ".incomplete" or p.name.endswith(".incomplete")]


def test_cached_snapshot_works_offline(hub_server, tmp_path):
    folder = _make_model_folder(tmp_path)
    push_folder(folder, REPO_ID)
    cache = tmp_path / "cache"
    pulled = resolve_pretrained(REPO_ID, cache_dir=cache)
    hub_server.stop()

    assert resolve_pretrained(REPO_ID, cache_dir=cache, local_files_only=True) == pulled
    assert resolve_pretrained(REPO_ID, cache_dir=cache) == pulled  # hub unreachable: falls back to the cache
    assert _files(pulled)["model.safetensors"] == (folder / "model.safetensors").read_bytes()

    with pytest.raises(HubError, match="'testorg/never-pulled'.*not in the cache.*local_files_only=True"):
        resolve_pretrained("testorg/never-pulled", cache_dir=cache, local_files_only=True)


def test_unknown_repo_and_revision(hub_server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(HubError, match=f"model repo 'testorg/does-not-exist' not found at {hub_server.url}"):
        resolve_pretrained("testorg/does-not-exist", cache_dir=cache)
    push_folder(_make_model_folder(tmp_path), REPO_ID)
    with pytest.raises(HubError, match=f"revision 'no-such-branch' not found in model repo '{REPO_ID}'"):
        resolve_pretrained(REPO_ID, revision="no-such-branch", cache_dir=cache)
    with pytest.raises(HubError, match="revision '0{40}' not found"):
        resolve_pretrained(REPO_ID, revision="0" * 40, cache_dir=cache)


def test_local_folders_and_bad_names_never_touch_the_hub(unreachable_hub, tmp_path, monkeypatch):
    folder = _make_model_folder(tmp_path)
    assert resolve_pretrained(folder) == folder
    assert resolve_pretrained(str(folder)) == folder
    monkeypatch.chdir(tmp_path)
    assert resolve_pretrained("tiny-model") == Path("tiny-model")  # a relative folder wins over a repo id

    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_pretrained("./missing/model")
    with pytest.raises(NotADirectoryError):
        resolve_pretrained(folder / "config.json")
    with pytest.raises(HubError, match="neither an existing local folder nor a valid model repo id"):
        resolve_pretrained("not a repo id!")
    with pytest.raises(FileNotFoundError, match="cannot push"):
        push_folder(tmp_path / "missing", REPO_ID)


def test_a_killed_download_leaves_no_orphan_partial_file_after_the_next_pull(hub_server, tmp_path):
    """kill -9 during a pull leaves `blobs/<etag>.<hex>.incomplete`, which no later download resumes: the next pull
    removes it, but never the partial file of a download still running (its blob lock is held)."""
    import signal
    import time

    from filelock import FileLock

    folder = _make_model_folder(tmp_path)
    push_folder(folder, REPO_ID)
    cache = tmp_path / "cache"
    hub_server.stall_downloads = {"model.safetensors": 1000}
    code = f"from huggingface_hub import snapshot_download; snapshot_download({REPO_ID!r}, cache_dir={str(cache)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], env=os.environ)
    def downloading() -> bool:  # the three other files are whole, model.safetensors is on its way
        blobs = [p.name for p in cache.glob("*/blobs/*")]
        return sum(name.endswith(".incomplete") for name in blobs) == 1 and len(blobs) == 4

    deadline = time.monotonic() + 60
    while not downloading() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    orphans = list(cache.rglob("*.incomplete"))
    assert len(orphans) == 1, orphans  # what the kill left behind

    blobs = orphans[0].parent
    live = blobs / f"{'0' * 40}.0123abcd.incomplete"  # another download, still running: its lock is held
    live.write_bytes(b"partial")
    lock = blobs.parent.parent / ".locks" / blobs.parent.name / f"{'0' * 40}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    hub_server.stall_downloads = {}
    with FileLock(lock):
        pulled = resolve_pretrained(REPO_ID, cache_dir=cache)
    assert (pulled / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert list(cache.rglob("*.incomplete")) == [live]
    live.unlink()
    _assert_cache_consistent(cache)
