"""A small Hugging Face Hub-compatible HTTP server, so tests push and pull over real HTTP without the internet.

It speaks the subset of the Hub's protocol that `huggingface_hub` (2.x; checked against 2.4) uses for
`create_repo`, `upload_folder`/`create_commit`, `create_branch`, pull requests, `model_info`/`repo_info`,
`list_repo_tree`/`list_repo_files`, `list_repo_refs`, `list_repo_commits`, `get_paths_info`, `whoami`,
`hf_hub_download` and `snapshot_download`:

    POST   /api/repos/create                              DELETE /api/repos/delete
    GET    /api/whoami-v2                                  POST   /api/validate-yaml
    GET    /api/agent-harnesses (empty registry: the client asks once per process)
    GET    /api/{type}s/{ns}/{name}[/revision/{rev}]       repo info: sha, siblings, cardData, tags
    GET    /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]    ?recursive=true
    POST   /api/{type}s/{ns}/{name}/paths-info/{rev}
    GET    /api/{type}s/{ns}/{name}/refs                   GET /api/{type}s/{ns}/{name}/commits/{rev}
    POST   /api/{type}s/{ns}/{name}/preupload/{rev}        answers uploadMode "regular" for every file
    POST   /api/{type}s/{ns}/{name}/commit/{rev}           ndjson: header, file (base64), deletedFile/Folder
    POST / DELETE /api/{type}s/{ns}/{name}/branch/{branch}
    POST   /api/{type}s/{ns}/{name}/discussions            GET .../discussions/{num} (pull requests)
    HEAD / GET [/{type}s]/{ns}/{name}/resolve/{rev}/{path}  ETag (git blob sha1), X-Repo-Commit, Range

Every file is a regular git blob: preupload never answers "lfs" and no response carries X-Xet-* headers or a
`xet-auth` link, so the client never needs git-LFS or `hf_xet` transfers. Errors carry the `X-Error-Code`
header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that `huggingface_hub` maps to its exceptions.

Repos live on disk under `root` (`{type}s/{ns}/{name}/state.json` + content-addressed `blobs/`), so a server
restarted on the same root serves the same repos. A revision is a branch name (`main`, `refs/pr/N`, ...) or the
full 40-hex sha of any commit; each branch is a linear history (every commit records its parent and its full
file list). Any bearer token is accepted and maps to the user `HubServer.user`; writes without a token get 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

REPO_TYPES = ("model", "dataset", "space")
SHA_PATTERN = re.compile(r"^[0-9a-f]{40}$")
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
DEFAULT_GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    "*.h5 filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
).encode()


class HubRequestError(Exception):
    """An error answer: HTTP status, the X-Error-Code the client maps to an exception, and a message."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None,
                 extra: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # more fields of the JSON body


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub returns as ETag/oid for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _url_prefix(repo_type: str) -> str:
    return "" if repo_type == "model" else f"{repo_type}s/"


def _checked_path(path: str) -> str:
    """Reject paths that could escape the repo or that git would not store."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts) or ".git" in parts:
        raise HubRequestError(400, f"invalid path in repo: {path!r}")
    return path


# ------------------------------------------------------------------------------------------------ storage
class RepoStore:
    """Repos on disk. One lock serialises every read-modify-write of a repo's state; blobs are immutable."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def folder(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def load(self, repo_type: str, repo_id: str) -> Optional[dict]:
        state_file = self.folder(repo_type, repo_id) / "state.json"
        if not state_file.is_file():
            return None
        return json.loads(state_file.read_text())

    def save(self, repo_type: str, repo_id: str, state: dict) -> None:
        folder = self.folder(repo_type, repo_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".state.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, folder / "state.json")

    def delete(self, repo_type: str, repo_id: str) -> None:
        shutil.rmtree(self.folder(repo_type, repo_id), ignore_errors=True)

    def write_blob(self, repo_type: str, repo_id: str, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.folder(repo_type, repo_id) / "blobs" / oid
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{oid}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def blob_path(self, repo_type: str, repo_id: str, oid: str) -> Path:
        return self.folder(repo_type, repo_id) / "blobs" / oid


def _new_commit(state: dict, branch: str, files: dict, title: str, description: str, author: str) -> str:
    """Append a commit to `branch` (created from nothing if new) and return its sha."""
    parent = state["branches"].get(branch)
    date = _now()
    payload = json.dumps([parent, files, title, description, date, uuid.uuid4().hex], sort_keys=True)
    sha = hashlib.sha1(payload.encode()).hexdigest()
    state["commits"][sha] = {
        "parent": parent, "title": title, "message": description, "date": date, "author": author, "files": files,
    }
    state["branches"][branch] = sha
    return sha


def _resolve_revision(state: dict, revision: str) -> tuple[str, Optional[str]]:
    """(commit sha, branch or None) for a branch name, `refs/heads/<branch>` or a full commit sha."""
    name = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
    if name in state["branches"]:
        return state["branches"][name], name
    if SHA_PATTERN.match(revision) and revision in state["commits"]:
        return revision, None
    raise HubRequestError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _card_data(store: RepoStore, repo_type: str, repo_id: str, files: dict) -> Optional[dict]:
    """The YAML front matter of README.md, as the Hub reports it in `cardData`."""
    entry = files.get("README.md")
    if entry is None:
        return None
    text = store.blob_path(repo_type, repo_id, entry["oid"]).read_text(encoding="utf-8", errors="replace")
    match = FRONT_MATTER.match(text)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _tree_oid(files: dict, folder: str) -> str:
    prefix = folder + "/"
    listing = sorted((path, entry["oid"]) for path, entry in files.items() if path.startswith(prefix))
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


def _tree_entries(files: dict, folder: str, recursive: bool) -> list[dict]:
    """Files and folders under `folder` ("" for the root), like GET /api/models/{id}/tree/{rev}/{folder}."""
    prefix = folder + "/" if folder else ""
    entries: dict[str, dict] = {}
    for path in sorted(files):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
            sub = prefix + "/".join(parts[:i])
            entries.setdefault(sub, {"type": "directory", "oid": _tree_oid(files, sub), "size": 0, "path": sub})
        if recursive or len(parts) == 1:
            entries[path] = {"type": "file", "oid": files[path]["oid"], "size": files[path]["size"], "path": path}
    return list(entries.values())


# ------------------------------------------------------------------------------------------------ handler
class _Handler(BaseHTTPRequestHandler):
    """Routes one request. Every response closes the connection: a stopped server must look unreachable at once,
    which it would not if a client kept a pooled keep-alive connection to a still-running handler thread."""

    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    # ----------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # requests are recorded in HubServer.requests instead of being printed

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    @property
    def hub(self) -> "HubServer":
        return self.server.hub

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.segments = [unquote(part) for part in url.path.split("/")[1:]]
        self.hub.requests.append((method, url.path))
        try:
            self._body = self._read_body()
            self._route(method)
        except HubRequestError as exc:
            self._send_error(exc)
        except Exception as exc:  # a bug in this server: answer 500 with the reason, the test will show it
            self._send_error(HubRequestError(500, f"test hub server error: {type(exc).__name__}: {exc}"))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body or b"{}")
        except ValueError as exc:
            raise HubRequestError(400, f"request body is not JSON: {exc}") from exc

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: Optional[dict] = None, head_only: bool = False, cut: Optional[int] = None) -> None:
        """The response; with `cut`, only that many bytes of the body are sent before the connection closes
        (a truncated download: the headers still promise the whole body)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if body and not head_only and self.command != "HEAD":
            self.wfile.write(body if cut is None else body[:cut])

    def _send_json(self, data: Any, status: int = 200, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _send_error(self, exc: HubRequestError) -> None:
        headers = dict(exc.headers)
        headers["X-Error-Message"] = str(exc).encode("ascii", "replace").decode()
        if exc.code:
            headers["X-Error-Code"] = exc.code
        self._send(exc.status, json.dumps({"error": str(exc), **exc.extra}).encode(), headers=headers)

    def _user(self, required: bool) -> Optional[str]:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        if not token:
            if required:
                raise HubRequestError(401, "Invalid credentials in Authorization header")
            return None
        return self.hub.user

    # ----------------------------------------------------------------- routing
    def _route(self, method: str) -> None:
        seg = self.segments
        if seg[:1] == ["api"]:
            return self._route_api(method, seg[1:])
        repo_type = "model"
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, seg = seg[0][:-1], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), method)
        raise HubRequestError(404, f"this test hub does not implement {method} {urlsplit(self.path).path}")

    def _route_api(self, method: str, seg: list[str]) -> None:
        simple = {
            ("GET", "whoami-v2"): self._whoami,
            ("POST", "validate-yaml"): self._validate_yaml,
            ("GET", "agent-harnesses"): lambda: self._send_json({"standardEnvVars": [], "harnesses": {}}),
        }
        if len(seg) == 1 and (method, seg[0]) in simple:
            return simple[(method, seg[0])]()
        if seg[:2] == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if seg[:2] == ["repos", "delete"] and method in ("DELETE", "POST"):
            return self._delete_repo()
        if len(seg) >= 3 and seg[0] in ("models", "datasets", "spaces"):
            repo_type, repo_id, rest = seg[0][:-1], f"{seg[1]}/{seg[2]}", seg[3:]
            return self._route_repo(method, repo_type, repo_id, rest)
        raise HubRequestError(404, f"this test hub does not implement {method} /api/{'/'.join(seg)}")

    def _route_repo(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> None:
        action = rest[0] if rest else ""
        arg = rest[1] if len(rest) > 1 else None
        if method == "GET" and action == "":
            return self._repo_info(repo_type, repo_id, "main")
        if method == "GET" and action == "revision" and arg:
            return self._repo_info(repo_type, repo_id, arg)
        if method == "GET" and action == "tree" and arg:
            return self._tree(repo_type, repo_id, arg, "/".join(rest[2:]).strip("/"))
        if method == "POST" and action == "paths-info" and arg:
            return self._paths_info(repo_type, repo_id, arg)
        if method == "GET" and action == "refs":
            return self._refs(repo_type, repo_id)
        if method == "GET" and action == "commits" and arg:
            return self._commits(repo_type, repo_id, arg)
        if method == "POST" and action == "preupload" and arg:
            return self._preupload(repo_type, repo_id, arg)
        if method == "POST" and action == "commit" and arg:
            return self._commit(repo_type, repo_id, arg)
        if method in ("POST", "DELETE") and action == "branch" and arg:
            return self._branch(method, repo_type, repo_id, arg)
        if method == "POST" and action == "discussions" and arg is None:
            return self._create_discussion(repo_type, repo_id)
        if method == "GET" and action == "discussions" and arg and arg.isdigit():
            return self._discussion(repo_type, repo_id, int(arg))
        raise HubRequestError(404, f"this test hub does not implement {method} {urlsplit(self.path).path}")

    # ----------------------------------------------------------------- helpers
    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> dict:
        user = self._user(required=write)
        state = self.hub.store.load(repo_type, repo_id)
        if state is None or (state["private"] and user is None):
            raise HubRequestError(404, "Repository not found", "RepoNotFound")
        return state

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.hub.url}/{_url_prefix(repo_type)}{repo_id}"

    # ----------------------------------------------------------------- endpoints: account and validation
    def _whoami(self) -> None:
        user = self._user(required=True)
        self._send_json({
            "type": "user", "id": "0" * 24, "name": user, "fullname": "uldm test user", "email": None,
            "emailVerified": True, "isPro": False, "canPay": False, "periodEnd": None,
            "orgs": [{"type": "org", "name": name, "fullname": name, "roleInOrg": "admin"}
                     for name in self.hub.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test token", "role": "write"}},
        })

    def _validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        match = FRONT_MATTER.match(content)
        errors = []
        if match:
            try:
                data = yaml.safe_load(match.group(1))
                if data is not None and not isinstance(data, dict):
                    errors.append({"message": "the metadata must be a YAML mapping"})
            except yaml.YAMLError as exc:
                errors.append({"message": f"invalid YAML: {exc}"})
        self._send_json({"errors": errors, "warnings": []}, status=400 if errors else 200)

    # ----------------------------------------------------------------- endpoints: repos
    def _create_repo(self) -> None:
        user = self._user(required=True)
        body = self._json_body()
        name, namespace = body.get("name"), body.get("organization") or user
        repo_type = body.get("type") or "model"
        if not name or repo_type not in REPO_TYPES:
            raise HubRequestError(400, f"invalid repo name {name!r} or type {repo_type!r}")
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        private = body.get("visibility") == "private" or bool(body.get("private"))
        with self.hub.store.lock:
            if self.hub.store.load(repo_type, repo_id) is not None:
                # like the Hub: the 409 body carries the url, which create_repo(exist_ok=True) returns
                raise HubRequestError(409, "You already created this repo", extra={"url": url})
            state = {"private": private, "created_at": _now(), "branches": {}, "commits": {}, "discussions": []}
            oid = self.hub.store.write_blob(repo_type, repo_id, DEFAULT_GITATTRIBUTES)
            files = {".gitattributes": {"oid": oid, "size": len(DEFAULT_GITATTRIBUTES)}}
            _new_commit(state, "main", files, "initial commit", "", user)
            self.hub.store.save(repo_type, repo_id, state)
        self._send_json({"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _delete_repo(self) -> None:
        self._user(required=True)
        body = self._json_body()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.hub.user}/{body.get('name')}"
        with self.hub.store.lock:
            if self.hub.store.load(repo_type, repo_id) is None:
                raise HubRequestError(404, "Repository not found", "RepoNotFound")
            self.hub.store.delete(repo_type, repo_id)
        self._send_json({})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
            sha, _ = _resolve_revision(state, revision)
        commit = state["commits"][sha]
        files = commit["files"]
        with_blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=files[path]["size"], blobId=files[path]["oid"])
            siblings.append(sibling)
        card = _card_data(self.hub.store, repo_type, repo_id, files)
        tags = list((card or {}).get("tags") or [])
        library = (card or {}).get("library_name")
        if library and library not in tags:
            tags.insert(0, library)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
            "author": repo_id.split("/")[0], "sha": sha, "lastModified": commit["date"],
            "createdAt": state["created_at"], "private": state["private"], "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": tags, "siblings": siblings,
            "usedStorage": sum(entry["size"] for entry in files.values()),
        }
        if repo_type == "model":
            info.update(modelId=repo_id, library_name=library, spaces=[])
        if card is not None:
            info["cardData"] = card
        self._send_json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
            sha, _ = _resolve_revision(state, revision)
        files = state["commits"][sha]["files"]
        if folder and folder in files:
            raise HubRequestError(400, f"{folder} is a file, not a folder")
        if folder and not any(path.startswith(folder + "/") for path in files):
            raise HubRequestError(404, f"{folder} does not exist at revision {revision}", "EntryNotFound")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        self._send_json(_tree_entries(files, folder, recursive))

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
            sha, _ = _resolve_revision(state, revision)
        files = state["commits"][sha]["files"]
        form = parse_qs(self._body.decode())
        out = []
        for path in form.get("paths", []):
            if path in files:
                out.append({"type": "file", "oid": files[path]["oid"], "size": files[path]["size"], "path": path})
            elif any(p.startswith(path.rstrip("/") + "/") for p in files):
                out.append({"type": "directory", "oid": _tree_oid(files, path.rstrip("/")), "size": 0,
                            "path": path.rstrip("/")})
        self._send_json(out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
        include_prs = self.query.get("include_prs", "").lower() in ("1", "true")
        branches, prs = [], []
        for name, sha in sorted(state["branches"].items()):
            if name.startswith("refs/pr/"):
                prs.append({"name": name, "ref": name, "targetCommit": sha})
            else:
                branches.append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha})
        data = {"branches": branches, "converts": [], "tags": []}
        if include_prs:
            data["pullRequests"] = prs
        self._send_json(data)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
            sha, _ = _resolve_revision(state, revision)
        history = []
        while sha is not None:
            commit = state["commits"][sha]
            history.append({"id": sha, "title": commit["title"], "message": commit["message"],
                            "authors": [{"user": commit["author"]}], "date": commit["date"]})
            sha = commit["parent"]
        self._send_json(history)

    # ----------------------------------------------------------------- endpoints: uploads
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id, write=True)
            sha, _ = _resolve_revision(state, revision)
        files = state["commits"][sha]["files"]
        answer = []
        for item in self._json_body().get("files", []):
            path = item["path"]
            remote = files.get(path)
            answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                           "oid": remote["oid"] if remote else None})
        self._send_json({"files": answer, "commitOid": sha})

    def _parse_commit(self) -> tuple[dict, list[dict]]:
        header: dict = {}
        operations = []
        for line in self._body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise HubRequestError(400, f"the commit payload must be ndjson: {exc}") from exc
            if item.get("key") == "header":
                header = item.get("value") or {}
            else:
                operations.append(item)
        if not header.get("summary"):
            raise HubRequestError(400, "the commit needs a header line with a summary")
        return header, operations

    def _apply(self, repo_type: str, repo_id: str, files: dict, operations: list[dict]) -> dict:
        files = dict(files)
        for item in operations:
            key, value = item.get("key"), item.get("value") or {}
            path = _checked_path(str(value.get("path", "")).strip("/") if key == "deletedFolder"
                                 else str(value.get("path", "")))
            if key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                files[path] = {"oid": self.hub.store.write_blob(repo_type, repo_id, data), "size": len(data)}
            elif key == "deletedFile":
                if path not in files:
                    raise HubRequestError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubRequestError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            elif key == "lfsFile":
                raise HubRequestError(400, f"{path}: this test hub stores regular files only (preupload answered "
                                           "uploadMode 'regular'); LFS pointers are not accepted")
            else:
                raise HubRequestError(400, f"unknown commit operation {key!r}")
        return files

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        user = self._user(required=True)
        header, operations = self._parse_commit()
        create_pr = self.query.get("create_pr") == "1"
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id, write=True)
            head, branch = _resolve_revision(state, revision)
            if branch is None:
                raise HubRequestError(400, f"cannot commit to {revision}: it is a commit, not a branch")
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubRequestError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            files = self._apply(repo_type, repo_id, state["commits"][head]["files"], operations)
            pr_url = None
            if create_pr:
                num = self._add_discussion(state, header["summary"], header.get("description", ""), True, user)
                branch = f"refs/pr/{num}"
                state["branches"][branch] = head
                pr_url = f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"
            sha = _new_commit(state, branch, files, header["summary"], header.get("description", ""), user)
            self.hub.store.save(repo_type, repo_id, state)
        self._send_json({"success": True, "commitOid": sha, "hookOutput": "", "pullRequestUrl": pr_url,
                         "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{sha}"})

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id, write=True)
            if method == "DELETE":
                if branch not in state["branches"] or branch == "main":
                    raise HubRequestError(404 if branch != "main" else 403, f"cannot delete branch {branch}")
                del state["branches"][branch]
            else:
                if branch in state["branches"]:
                    raise HubRequestError(409, f"Reference already exists: refs/heads/{branch}")
                start = self._json_body().get("startingPoint") or "main"
                state["branches"][branch], _ = _resolve_revision(state, start)
            self.hub.store.save(repo_type, repo_id, state)
        self._send_json({})

    # ----------------------------------------------------------------- endpoints: pull requests
    @staticmethod
    def _add_discussion(state: dict, title: str, description: str, is_pr: bool, user: str) -> int:
        num = len(state["discussions"]) + 1
        state["discussions"].append({"num": num, "title": title, "description": description or "",
                                     "isPullRequest": is_pr, "status": "draft" if is_pr else "open",
                                     "createdAt": _now(), "author": user})
        return num

    def _create_discussion(self, repo_type: str, repo_id: str) -> None:
        user = self._user(required=True)
        body = self._json_body()
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id, write=True)
            is_pr = bool(body.get("pullRequest"))
            num = self._add_discussion(state, body.get("title") or "untitled", body.get("description"), is_pr, user)
            if is_pr:
                state["branches"][f"refs/pr/{num}"] = state["branches"]["main"]
            self.hub.store.save(repo_type, repo_id, state)
        self._send_json({"num": num, "pullRequest": is_pr,
                         "url": f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"})

    def _discussion(self, repo_type: str, repo_id: str, num: int) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
        if not 1 <= num <= len(state["discussions"]):
            raise HubRequestError(404, f"Discussion {num} not found")
        item = state["discussions"][num - 1]
        self._send_json({
            "num": num, "title": item["title"], "status": item["status"], "createdAt": item["createdAt"],
            "author": {"name": item["author"]}, "repo": {"name": repo_id, "type": repo_type},
            "isPullRequest": item["isPullRequest"], "events": [], "filesWithConflicts": [], "diff": "",
            "changes": {"base": "refs/heads/main"},
        })

    # ----------------------------------------------------------------- endpoint: file downloads
    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, method: str) -> None:
        with self.hub.store.lock:
            state = self._repo(repo_type, repo_id)
            sha, _ = _resolve_revision(state, revision)
        entry = state["commits"][sha]["files"].get(path)
        if entry is None:
            raise HubRequestError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        if method == "GET" and path in self.hub.fail_downloads:
            raise HubRequestError(500, f"injected failure: downloads of {path} are broken on this test hub")
        data = self.hub.store.blob_path(repo_type, repo_id, entry["oid"]).read_bytes()
        headers = {"ETag": f'"{entry["oid"]}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}"}
        status, body = 200, data
        range_header = self.headers.get("Range", "")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
        if match and method == "GET":
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                raise HubRequestError(416, "Requested range not satisfiable",
                                      headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        cut = self.hub.truncate_downloads.get(path) if method == "GET" else None
        stall = self.hub.stall_downloads.get(path) if method == "GET" else None
        self._send(status, body, content_type="application/octet-stream", headers=headers,
                   head_only=method == "HEAD", cut=cut if stall is None else stall)
        if stall is not None:  # the connection stays open, the rest of the body never comes
            self.wfile.flush()
            self.hub.unstall.wait(timeout=60)


# ------------------------------------------------------------------------------------------------- server
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """A Hub-compatible server on 127.0.0.1 (random free port) serving the repos stored under `root`.

        with HubServer(tmp_path / "hub") as server:
            HfApi(endpoint=server.url).create_repo("testorg/tiny")

    `requests` records (method, path) of every request; `fail_downloads` holds repo paths whose GET
    /resolve/ answers 500 (to test interrupted downloads); `truncate_downloads` maps repo paths to the number of
    body bytes their GET /resolve/ sends before closing the connection, every time (a server that keeps
    truncating); `stall_downloads` likewise, but the connection then hangs until `unstall` is set or the server
    stops (a download in progress, to kill its client). `user` is the account any token maps to.
    """

    def __init__(self, root: os.PathLike | str, *, host: str = "127.0.0.1", user: str = "uldm-tester",
                 orgs: tuple[str, ...] = ("testorg",)):
        self.store = RepoStore(Path(root))
        self.host = host
        self.user = user
        self.orgs = orgs
        self.requests: list[tuple[str, str]] = []
        self.fail_downloads: set[str] = set()
        self.truncate_downloads: dict[str, int] = {}
        self.stall_downloads: dict[str, int] = {}
        self.unstall = threading.Event()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the hub server is not running; call start() first")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> "HubServer":
        if self._httpd is not None:
            raise RuntimeError(f"the hub server is already running at {self.url}")
        self._httpd = _HTTPServer((self.host, 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hub-server-{self._httpd.server_address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (idempotent); later requests get 'connection refused'."""
        if self._httpd is None:
            return
        self.unstall.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection helpers for tests
    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        """The commit sha `branch` points to."""
        state = self.store.load(repo_type, repo_id)
        if state is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on this hub")
        return state["branches"][branch]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Path -> content of every file in `repo_id` at `revision`."""
        state = self.store.load(repo_type, repo_id)
        if state is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on this hub")
        sha, _ = _resolve_revision(state, revision)
        return {path: self.store.blob_path(repo_type, repo_id, entry["oid"]).read_bytes()
                for path, entry in state["commits"][sha]["files"].items()}
