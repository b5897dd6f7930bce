"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests that point HF_ENDPOINT at it.

It answers the requests huggingface_hub 0.36, 1.x and 2.x make (see their hf_api.py,
file_download.py and _snapshot_download.py), with the status codes and headers the real
Hub sends:

* ``GET /api/models/{org}/{name}[/revision/{rev}]`` → model info: ``sha`` and ``siblings``;
  with ``?blobs=true`` (``files_metadata=True``) each sibling also has ``size``, ``blobId``
  and, for LFS files (``*.safetensors``, ``*.bin``), ``lfs: {sha256, size, pointerSize}``.
* ``GET /api/models/{org}/{name}/tree/{rev}[/{path}][?recursive=true]`` → the files (and
  folders) as 1.x/2.x ``snapshot_download`` lists them: ``type``, ``path``, ``oid`` (the
  git blob id), ``size`` and, for LFS files, ``lfs: {oid (sha256), size, pointerSize}``;
  one page (no ``Link`` header).
* ``GET /api/agent-harnesses`` → an empty registry: recent huggingface_hub asks for it
  once a day (cached in HF_HOME) to name a calling AI agent in its User-Agent.
* ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}`` → the file, with ``X-Repo-Commit``,
  ``ETag`` (the git blob id), and for LFS files ``X-Linked-Etag`` (sha256) and
  ``X-Linked-Size``; ``Range: bytes=a-[b]`` is answered with 206 and ``Content-Range``.
* Errors carry ``X-Error-Code`` as on the Hub: an unknown (or private) repo is 401
  ``RepoNotFound`` without a token and 404 with one; an unknown revision 404
  ``RevisionNotFound``; a missing file 404 ``EntryNotFound``; a gated repo's files are
  401 ``GatedRepo`` without a token and 403 with a token that has no access (its model
  info stays public, as on the Hub).

Every request is logged (method, path, Range and Authorization headers, status) so tests
can assert what was and was not fetched. ``cut`` makes every GET of a file stop at byte N
of the file and drop the connection, until it is removed: an interrupted download (a
client that resumes with a Range request from N is cut at once). ``stall`` sends N bytes
of the next GET and then hangs, for a user to interrupt. A repo's ``fail`` answers each
of its requests with an error status (a Hub outage: 503), its ``hang`` never answers
them (a Hub that times out).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated_token: str | None = None  # files need "Authorization: Bearer <this>"
    declared_sizes: dict[str, int] = field(default_factory=dict)  # sizes the metadata claims instead
    fail: tuple[int, str] | None = None  # (status, X-Error-Code) for every request about this repo
    hang: bool = False  # requests about this repo are logged, then never answered

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha1(self.files[name]).digest())
        return digest.hexdigest()

    @staticmethod
    def is_lfs(name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def blob_id(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def sibling(self, name: str, blobs: bool) -> dict:
        entry: dict = {"rfilename": name}
        if blobs:
            size = self.declared_sizes.get(name, len(self.files[name]))
            entry.update(size=size, blobId=self.blob_id(name))
            if self.is_lfs(name):
                entry["lfs"] = {"sha256": hashlib.sha256(self.files[name]).hexdigest(), "size": size,
                                "pointerSize": 134}
        return entry

    def tree_entry(self, name: str) -> dict:
        """The file as ``GET /api/models/{repo}/tree/{rev}`` lists it (huggingface_hub >= 1.x)."""
        size = self.declared_sizes.get(name, len(self.files[name]))
        entry: dict = {"type": "file", "oid": self.blob_id(name), "size": size, "path": name}
        if self.is_lfs(name):
            entry["lfs"] = {"oid": hashlib.sha256(self.files[name]).hexdigest(), "size": size, "pointerSize": 134}
        return entry


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int = 0


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.cut: dict[tuple[str, str], int] = {}  # (repo, file) → the file's byte to drop the connection at
        self.stall: dict[tuple[str, str], int] = {}  # (repo, file) → bytes to send before hanging
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- setup ---------------------------------------------------------------------------
    def add_folder(self, repo_id: str, folder: Path, **kwargs) -> Repo:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(repo_id, files, **kwargs)

    def add(self, repo_id: str, files: dict[str, bytes], **kwargs) -> Repo:
        repo = Repo(repo_id, dict(files), **kwargs)
        self.repos[repo_id] = repo
        return repo

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what was asked ------------------------------------------------------------------
    def requests(self, method: str | None = None, contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and contains in r.path]

    def file_gets(self, contains: str = "") -> list[Request]:
        return [r for r in self.requests("GET", contains) if "/resolve/" in r.path]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """Clients that hang up (an interrupted download) are expected; others are not."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet test output
        pass

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"",
              request: Request | None = None, *, head: bool = False) -> None:
        if request is not None:
            request.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, request: Request, *, head: bool = False,
               commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, body, request, head=head)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._handle(head=False)

    def _handle(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        request = Request("HEAD" if head else "GET", path, self.headers.get("Range"),
                          self.headers.get("Authorization"))
        self.fake._record(request)
        # Split before unquoting: a revision such as refs/pr/3 arrives as one quoted part.
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        repo = self.fake.repos.get("/".join(parts[2:4]) if parts[:2] == ["api", "models"] else "/".join(parts[:2]))
        if repo is not None and repo.hang:
            self.fake.stopping.wait(60)
            self.close_connection = True
            return
        if repo is not None and repo.fail:
            status, code = repo.fail
            self._error(status, code, f"{code or 'error'} ({status})", request, head=head)
            return
        if parts == ["api", "agent-harnesses"]:
            body = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
            self._send(200, {"Content-Type": "application/json"}, body, request, head=head)
        elif len(parts) >= 6 and parts[0] == "api" and parts[1] == "models" and parts[4] == "tree":
            recursive = query.get("recursive", [""])[0].lower() in ("true", "1")
            self._tree("/".join(parts[2:4]), parts[5], "/".join(parts[6:]), recursive, request, head)
        elif len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            repo_id = "/".join(parts[2:4])
            revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            blobs = query.get("blobs", [""])[0].lower() in ("true", "1")
            self._model_info(repo_id, revision, blobs, request, head)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), request, head)
        else:
            self._error(404, "NotFound", "Not Found", request, head=head)

    def _repo(self, repo_id: str, revision: str, request: Request, head: bool) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            status = 404 if self._token() else 401
            self._error(status, "RepoNotFound", "Repository not found", request, head=head)
            return None
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", request, head=head)
            return None
        return repo

    # -- endpoints -----------------------------------------------------------------------
    def _model_info(self, repo_id: str, revision: str, blobs: bool, request: Request, head: bool) -> None:
        repo = self._repo(repo_id, revision, request, head)
        if repo is None:
            return
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": repo.sha, "private": False,
            "gated": "manual" if repo.gated_token else False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": ["transformers", "safetensors"], "library_name": "transformers",
            "lastModified": "2024-06-01T12:00:00.000Z", "createdAt": "2024-06-01T12:00:00.000Z",
            "siblings": [repo.sibling(name, blobs) for name in sorted(repo.files)],
        }
        self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), request, head=head)

    def _tree(self, repo_id: str, revision: str, folder: str, recursive: bool, request: Request,
              head: bool) -> None:
        """The folder's entries (all below it with ``recursive``), folders included, in one page."""
        repo = self._repo(repo_id, revision, request, head)
        if repo is None:
            return
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for name in sorted(repo.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):].split("/")
            depth = len(rest) if recursive else 1
            for level in range(1, min(depth, len(rest) - 1) + 1):  # the folders on the way
                path = prefix + "/".join(rest[:level])
                entries.setdefault(path, {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(),
                                          "size": 0, "path": path})
            if len(rest) == 1 or recursive:
                entries[name] = repo.tree_entry(name)
        if prefix and not entries:
            self._error(404, "EntryNotFound", f"{folder} does not exist", request, head=head)
            return
        body = json.dumps(list(entries.values())).encode()
        self._send(200, {"Content-Type": "application/json"}, body, request, head=head)

    def _resolve(self, repo_id: str, revision: str, filename: str, request: Request, head: bool) -> None:
        repo = self._repo(repo_id, revision, request, head)
        if repo is None:
            return
        if repo.gated_token and self._token() != repo.gated_token:
            if self._token():
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                            "authorized list.", request, head=head)
            else:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                            "to it and be authenticated to access it. Please log in.", request, head=head)
            return
        if filename not in repo.files:
            self._error(404, "EntryNotFound", f"{filename} does not exist", request, head=head, commit=repo.sha)
            return
        data = repo.files[filename]
        size = len(data)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.blob_id(filename)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if repo.is_lfs(filename):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(size)
        status, start, end = 200, 0, size - 1
        spec = self.headers.get("Range")
        if spec and not head:
            first, _, last = spec.removeprefix("bytes=").partition("-")
            start = int(first) if first else 0
            end = min(int(last), size - 1) if last else size - 1
            if start >= size:
                headers["Content-Range"] = f"bytes */{size}"
                self._send(416, headers, b"", request)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = data[start:end + 1]
        headers["Content-Length"] = str(len(body))
        cut = None if head else self.fake.cut.get((repo_id, filename))
        cut = None if cut is None else max(0, cut - start)  # body bytes to send: the file up to its byte N
        stall = None if head else self.fake.stall.pop((repo_id, filename), None)
        if stall is not None:
            # Send part of the body, then hang (a stalled network) until the hub stops.
            request.status = status
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:stall])
            self.wfile.flush()
            self.fake.stopping.wait(60)
            self.close_connection = True
            return
        if cut is None:
            self._send(status, headers, body, request, head=head)
            return
        # Promise the whole body, send part of it, then drop the connection.
        request.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
