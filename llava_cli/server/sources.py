"""The media of a request, fetched and decoded off the worker thread.

A content part's URL is one of:

* ``data:[<mime>][;base64],<payload>`` — the bytes are written to a temporary file whose
  suffix follows the MIME type (so the decoders pick the right path), decoded with
  ``load_media``, and the file removed; at most ``MAX_MEDIA_BYTES`` once decoded.
* ``http://`` or ``https://`` — ``load_media`` fetches it (with its timeouts and minimum
  transfer rate; videos stream through FFmpeg).
* ``file://`` — only a file under one of the server's ``--allowed-media-path`` folders,
  checked after symlinks and ``..`` are resolved; anything else is a 403.

Decoded media is kept in a small LRU keyed by (content, FrameSpec): the SHA-256 of the
bytes for ``data:`` URLs and files (a file's digest is remembered by its inode, size and
modification time, so an unchanged file is not read twice), the URL for http(s). The same
key, with the preprocessed shape, names the media's encoding in the worker.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from ..errors import LlavaError, UsageError
from .api import ApiError, MediaPart, bad

MAX_MEDIA_BYTES = 48 * 1024 * 1024  # one inline (data:) image or video, decoded

# MIME type → the suffix the temporary file gets (load_media goes by the suffix first; an
# unknown type gets none, and load_media then tries the image decoder, then the video one).
_SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg", "image/gif": ".gif",
    "image/webp": ".webp", "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp", "image/tiff": ".tiff",
    "image/apng": ".apng", "image/x-icon": ".ico", "image/vnd.microsoft.icon": ".ico",
    "image/x-portable-pixmap": ".ppm", "image/x-tga": ".tga",
    "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
    "video/matroska": ".mkv", "video/x-msvideo": ".avi", "video/avi": ".avi", "video/mpeg": ".mpeg",
    "video/ogg": ".ogv", "video/3gpp": ".3gp", "video/3gpp2": ".3g2", "video/x-flv": ".flv",
    "video/mp2t": ".ts", "video/x-m4v": ".m4v", "video/x-ms-wmv": ".wmv",
}
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


@dataclass
class Loaded:
    """One decoded image or video of a request."""

    media: Any  # llava_cli.media.Media
    key: tuple  # (content, FrameSpec)
    label: str  # how the response names it: the URL as given, or "data:<mime> (N bytes)"


class Sources:
    """Resolves and decodes media parts (thread-safe: called from the HTTP thread pool)."""

    def __init__(self, allowed: list[str], tmpdir: str, limit: int = 16) -> None:
        self.allowed = [os.path.realpath(path) for path in allowed]
        self.tmpdir = tmpdir
        self.limit = limit
        self._decoded: OrderedDict[tuple, Any] = OrderedDict()
        self._digests: dict[tuple, str] = {}  # (realpath, inode, size, mtime_ns) → sha256
        self._lock = threading.Lock()
        self.decoded = 0  # media decoded (not found in the LRU); tests read it through /health

    def load(self, part: MediaPart, spec) -> Loaded:
        url = part.url
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        try:
            if scheme == "data":
                return self._data(part, spec)
            if scheme in ("http", "https"):
                return self._cached(("url", url), spec, url, lambda: url)
            if scheme == "file":
                path = self.local_path(part)
                return self._cached(("sha256", self._file_digest(path, part)), spec, url, lambda: path)
        except LlavaError as exc:
            raise _media_error(exc, part) from None
        raise bad(f"{part.param}: unsupported URL {_short(url)!r} (use data:, http(s):// or file://)",
                  param=part.param, code="invalid_url")

    # -- the three kinds of URL --------------------------------------------------------
    def _data(self, part: MediaPart, spec) -> Loaded:
        header, comma, payload = part.url[5:].partition(",")
        if not comma:
            raise bad(f"{part.param}: a data: URL needs a comma before its data", param=part.param,
                      code="invalid_data_url")
        fields = header.split(";")
        mime = fields[0].strip().lower() or "text/plain"
        encoded = any(f.strip().lower() == "base64" for f in fields[1:])
        if not _MIME.match(mime):
            raise bad(f"{part.param}: bad MIME type in the data: URL", param=part.param, code="invalid_data_url")
        if not (mime.startswith(("image/", "video/")) or mime in ("application/octet-stream",)):
            raise bad(f"{part.param}: a data: URL of type {mime} is not an image or a video", param=part.param,
                      code="invalid_media")
        if len(payload) > MAX_MEDIA_BYTES * 4 // 3 + 4:
            raise _too_large(part)
        try:
            data = base64.b64decode(payload, validate=True) if encoded else unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise bad(f"{part.param}: the data: URL's base64 data is not valid", param=part.param,
                      code="invalid_data_url") from None
        if not data:
            raise bad(f"{part.param}: the data: URL holds no data", param=part.param, code="invalid_data_url")
        if len(data) > MAX_MEDIA_BYTES:
            raise _too_large(part)
        digest = hashlib.sha256(data).hexdigest()
        label = f"data:{mime} ({len(data):,} bytes)"

        def written() -> str:
            handle = tempfile.NamedTemporaryFile(dir=self.tmpdir, prefix="media-", suffix=_SUFFIXES.get(mime, ""),
                                                 delete=False)
            with handle:
                handle.write(data)
            return handle.name

        return self._cached(("sha256", digest), spec, label, written, temporary=True)

    def local_path(self, part: MediaPart) -> str:
        """The real path of a file:// URL, if it lies under an allowed folder (else 403)."""
        pieces = urlsplit(part.url)
        if pieces.netloc not in ("", "localhost"):
            raise bad(f"{part.param}: a file:// URL must name a local file (file:///path)", param=part.param,
                      code="invalid_url")
        if pieces.query or pieces.fragment:
            raise bad(f"{part.param}: a file:// URL takes no query or fragment", param=part.param,
                      code="invalid_url")
        path = unquote(pieces.path)
        if not path.startswith("/") or "\x00" in path:
            raise bad(f"{part.param}: a file:// URL needs an absolute path", param=part.param, code="invalid_url")
        if not self.allowed:
            raise ApiError(403, f"{part.param}: file:// URLs are refused: this server allows none (start it "
                                f"with --allowed-media-path DIR)", param=part.param, code="file_url_forbidden")
        real = os.path.realpath(path)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.allowed):
            raise ApiError(403, f"{part.param}: {_short(part.url)} is outside the server's allowed media "
                                f"folders", param=part.param, code="file_url_forbidden")
        return real

    def _file_digest(self, path: str, part: MediaPart) -> str:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise bad(f"{part.param}: no such file: {_short(part.url)}", param=part.param,
                      code="media_not_found") from None
        except OSError as exc:
            raise bad(f"{part.param}: cannot read {_short(part.url)}: {exc.strerror}", param=part.param,
                      code="invalid_media") from None
        if not stat.S_ISREG(info.st_mode):
            raise bad(f"{part.param}: {_short(part.url)} is not a regular file", param=part.param,
                      code="invalid_media")
        stamp = (path, info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            digest = self._digests.get(stamp)
        if digest is not None:
            return digest
        hasher = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
        except OSError as exc:
            raise bad(f"{part.param}: cannot read {_short(part.url)}: {exc.strerror}", param=part.param,
                      code="invalid_media") from None
        digest = hasher.hexdigest()
        with self._lock:
            if len(self._digests) > 1024:
                self._digests.clear()
            self._digests[stamp] = digest
        return digest

    # -- the LRU -----------------------------------------------------------------------
    def _cached(self, content: tuple, spec, label: str, target, *, temporary: bool = False) -> Loaded:
        from ..media import load_media

        key = (content, spec)
        with self._lock:
            media = self._decoded.get(key)
            if media is not None:
                self._decoded.move_to_end(key)
        if media is None:
            path = target()
            try:
                media = load_media(path, spec)
            except LlavaError as exc:
                if not temporary:
                    raise
                # The temporary file's name means nothing to the client: name the URL instead.
                raise LlavaError(exc.message.replace(path, "the data: URL's content")) from None
            finally:
                if temporary:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            with self._lock:
                self.decoded += 1
                self._decoded[key] = media
                while len(self._decoded) > self.limit:
                    self._decoded.popitem(last=False)
        return Loaded(media, key, label)

    def clear(self) -> None:
        with self._lock:
            self._decoded.clear()


def frame_spec(base, given: dict[str, Any]):
    """The server's FrameSpec with a request's "llava" settings on top, checked as the
    CLI checks --frames, --fps, --max-frames, --start and --end."""
    from ..media import FrameSpec, parse_time

    values = {"frames": base.frames, "fps": base.fps, "max_frames": base.max_frames, "start": base.start,
              "end": base.end}
    if "frames" in given or "fps" in given:  # one choice, as in config.resolve
        values["frames"], values["fps"] = given.get("frames", base.frames), given.get("fps")
    if "max_frames" in given:
        values["max_frames"] = given["max_frames"]
    for key in ("start", "end"):
        if key in given:
            try:
                values[key] = parse_time(given[key])
            except UsageError as exc:
                raise bad(f"llava.{key}: {exc.message}", param=f"llava.{key}") from None
    try:
        return FrameSpec(**values, decoder=base.decoder, seek=base.seek)
    except UsageError as exc:
        param = f"llava.{next(iter(given))}" if len(given) == 1 else "llava"
        raise bad(f"{param}: {exc.message}", param=param) from None


def _media_error(exc: LlavaError, part: MediaPart) -> ApiError:
    return bad(f"{part.param}: {exc.message}", param=part.param, code="invalid_media")


def _too_large(part: MediaPart) -> ApiError:
    return ApiError(413, f"{part.param}: inline media is limited to {MAX_MEDIA_BYTES >> 20} MiB per image or "
                         f"video (use a file:// or http(s) URL for larger ones)", param=part.param,
                    code="media_too_large")


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
