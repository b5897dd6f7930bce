"""Where media come from: local files (checked before any decoder sees them) and
http(s) URLs (fetched with timeouts and a minimum transfer rate), and one-line reasons
for the errors met on the way. No PyAV, Pillow or numpy here.

The network limits are read from the package (`llava_cli.media._NETWORK_TIMEOUT_S` and
friends) when used, so setting them there takes effect.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llava_cli import media as _media
from llava_cli.errors import MediaError

from .spec import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

if TYPE_CHECKING:
    import av


def is_url(path: str | Path) -> bool:
    """True for http(s) URLs, which are streamed rather than opened as files."""
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


class _TooSlow(MediaError):
    """A remote transfer below the minimum rate: no fallback retries it."""


class _Transfer:
    """The bytes of one remote load (every pass over the URL counts), checked against the
    minimum rate."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.started = time.monotonic()
        self.received = 0

    def add(self, count: int) -> None:
        self.received += count
        elapsed = time.monotonic() - self.started
        if elapsed > _media._MIN_RATE_GRACE_S and self.received < _media._MIN_BYTES_PER_S * elapsed:
            rate = self.received / elapsed
            raise _TooSlow(f"cannot read {self.source}: the server is too slow ({rate:,.0f} bytes/s "
                           f"after {elapsed:.0f} s; at least {_media._MIN_BYTES_PER_S:,} bytes/s needed)")

    def watch(self, packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
        try:
            for packet in packets:
                self.add(packet.size)
                yield packet
        finally:
            packets.close()


@dataclass(frozen=True)
class _Source:
    source: str  # as the user gave it, for messages
    target: str  # what PyAV opens: a path or the URL
    suffix: str  # lower-case extension, from the URL's path for URLs
    remote: bool
    transfer: _Transfer | None = field(default=None, compare=False, hash=False)


_UNDECODABLE = re.compile("[\ud800-\udfff]")


def _check_name(source: str) -> None:
    """A name that is not valid UTF-8 (its bytes held as surrogate escapes, as Python
    decodes file names) cannot be shown, written to JSON or handed to FFmpeg as it is."""
    if _UNDECODABLE.search(source):
        shown = _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xdc00:02x}" if ord(m.group()) >= 0xdc80
                                 else "\\ufffd", source)
        raise MediaError(f"the name is not valid UTF-8: {shown} (rename the file)")


def _source(path: str | Path) -> _Source:
    source = str(path)
    _check_name(source)
    if is_url(path):
        suffix = Path(urllib.parse.urlsplit(source).path).suffix.lower()
        return _Source(source, source, suffix, remote=True, transfer=_Transfer(source))
    file = _check_file(path)
    return _Source(source, str(file), file.suffix.lower(), remote=False)


def check_sources(paths) -> None:
    """Check that local media exist and can be read, before anything slow (resolving or
    downloading the model) happens: the first bad one is a MediaError. URLs are left to
    the loader."""
    for path in paths:
        _check_name(str(path))
        if not is_url(path):
            _check_file(path)


def looks_like_media(text: str) -> bool:
    """An argument that names a media file rather than asking a question: an existing
    file, a URL, or a single word ending in an image or video extension."""
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        return False
    if is_url(text) or Path(text).suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        return True
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):
        return False


def _check_file(path: str | Path) -> Path:
    """Reject what no decoder should be handed, before FFmpeg or Pillow sees it."""
    source = str(path)
    file = Path(path)
    try:
        status = file.stat()
    except FileNotFoundError:
        raise MediaError(f"no such file: {source}") from None
    except OSError as error:
        raise MediaError(f"cannot read {source}: {_reason(error)}") from None
    if file.is_dir():
        raise MediaError(f"is a directory, not a file: {source}")
    if not file.is_file():
        # FIFOs and devices can block forever or never end.
        raise MediaError(f"not a regular file: {source}")
    if status.st_size == 0:
        raise MediaError(f"empty file: {source}")
    try:
        # FFmpeg would report an unreadable file as "invalid data"; say what it is.
        with file.open("rb"):
            pass
    except OSError as error:
        raise MediaError(f"cannot read {source}: {_reason(error)}") from None
    return file


def _fetch(url: str, transfer: _Transfer | None = None) -> bytes:
    """The whole body, read in pieces: each read waits at most _NETWORK_TIMEOUT_S, and the
    transfer must keep the minimum rate."""
    transfer = transfer or _Transfer(url)
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=_media._NETWORK_TIMEOUT_S) as response:  # noqa: S310
            while size <= _media._MAX_REMOTE_IMAGE_BYTES:
                chunk = response.read1(min(1 << 16, _media._MAX_REMOTE_IMAGE_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                transfer.add(len(chunk))
        data = b"".join(chunks)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
        raise MediaError(f"cannot fetch {url}: {_reason(getattr(error, 'reason', error))}") from None
    if len(data) > _media._MAX_REMOTE_IMAGE_BYTES:
        raise MediaError(f"image too large to fetch: {url} (over {_media._MAX_REMOTE_IMAGE_BYTES >> 20} MiB)")
    if not data:
        raise MediaError(f"empty file: {url}")
    return data


def _reason(error: BaseException | str) -> str:
    """The error's own words, squeezed onto one line."""
    if isinstance(error, str):
        text = error
    else:
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return re.sub(r"\s+", " ", str(text)).strip()
