"""The batch output file: JSON lines written whole and durably, and ``--resume``'s reading
of what a killed run left.

Output lines are written whole: one ``write`` of the full line and its newline, then a
flush and an fsync, so a run killed at any moment leaves complete lines plus at most one
partial last line, which has no newline. ``prepare_resume`` reads the output file, keeps the
lines that are complete JSON objects with an answer and no error, rewrites the file with
only those (atomically: a crash during the rewrite leaves the old file or the new one),
and returns the (input, question) pairs already answered.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Iterator

from .errors import LlavaError, UsageError
from .files import atomic_write


def json_line(record: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8. A path that is not valid UTF-8 (a file name's undecodable
    bytes, held as surrogate escapes) is written with \\udcXX escapes: valid JSON that
    reads back (json.loads) to the same string, whose os.fsencode is the name's bytes."""
    text = json.dumps(record, ensure_ascii=False)
    if _SURROGATES.search(text):
        text = _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return (text + "\n").encode("utf-8")


_SURROGATES = re.compile("[\ud800-\udfff]")


class JsonlOutput:
    """One JSON object per line, each line written whole and made durable at once."""

    def __init__(self, path: str | None, *, append: bool) -> None:
        self.path = path
        if path is None:
            self.fd = sys.stdout.fileno()
            sys.stdout.flush()
            self.durable = _is_regular(self.fd)
        else:
            # O_NONBLOCK: a FIFO put in the file's place since check_output must not block
            # the open; it is refused just below.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | (0 if append else os.O_TRUNC)
            try:
                self.fd = os.open(path, flags, 0o644)
            except OSError as exc:
                raise LlavaError(f"cannot write {path}: {exc.strerror or exc}") from None
            if not _is_regular(self.fd):
                os.close(self.fd)
                raise UsageError(f"{path} is not a regular file: --output needs a file")
            os.set_blocking(self.fd, True)
            self.durable = True

    def write(self, record: dict[str, Any]) -> None:
        view = memoryview(json_line(record))
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except BrokenPipeError:
            if self.path is None:
                raise  # the reader of stdout went away: exit 141, quietly
            raise LlavaError(f"cannot write {self.path}: broken pipe") from None
        except OSError as exc:
            where = self.path if self.path is not None else "standard output"
            raise LlavaError(f"cannot write {where}: {exc.strerror or exc}") from None
        if self.durable:
            try:
                os.fsync(self.fd)
            except OSError:
                pass

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


_MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer line in a --resume file is damage, not an answer


def _trusted(line: bytes) -> tuple[str, str] | None:
    """The (path, question) of a line --resume trusts (a JSON object with an answer and no
    error), else None."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    if (isinstance(record, dict) and record.get("error") is None and isinstance(record.get("answer"), str)
            and isinstance(record.get("path"), str) and isinstance(record.get("question"), str)):
        return record["path"], record["question"]
    return None


def _lines(handle) -> Iterator[bytes | None]:
    """The lines of a binary file, without their newlines; None for a line longer than
    _MAX_LINE_BYTES (skipped, never held whole) and for a last line without a newline."""
    while True:
        line = handle.readline(_MAX_LINE_BYTES + 1)
        if not line:
            return
        if not line.endswith(b"\n"):
            if len(line) > _MAX_LINE_BYTES:
                while line and not line.endswith(b"\n"):  # skip the rest of the long line
                    line = handle.readline(_MAX_LINE_BYTES + 1)
                yield None
                continue
            if line.strip():
                yield None  # no newline: a write that a kill cut short
            return
        yield line[:-1]


def trusted_lines(data: bytes) -> tuple[list[bytes], int]:
    """The lines --resume trusts (complete, a JSON object, an answer and no error), and
    how many other lines there were (failed, damaged, or a partial last line).
    prepare_resume also drops repeats of an answered (path, question)."""
    import io

    return _select(io.BytesIO(data), unique=False)[:2]


def _select(handle, *, unique: bool = True) -> tuple[list[bytes], int, set[tuple[str, str]]]:
    good, dropped, done = [], 0, set()
    for line in _lines(handle):
        pair = _trusted(line) if line is not None else None
        if pair is None or (unique and pair in done):
            if line is None or line.strip():
                dropped += 1
            continue
        done.add(pair)
        good.append(line)
    return good, dropped, done


def prepare_resume(path: str) -> tuple[set[tuple[str, str]], int, int]:
    """Rewrite ``path`` with only its trusted lines, one per (path, question); return the
    pairs done, the count kept and the count dropped. The file is read a line at a time
    (a line over _MAX_LINE_BYTES is dropped unread); it must be a regular file."""
    target = Path(os.path.realpath(path))  # a symlinked output: rewrite the file, keep the link
    try:
        status = target.stat()
    except FileNotFoundError:
        return set(), 0, 0
    except OSError as exc:
        raise LlavaError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(status.st_mode):
        raise UsageError(f"{path} is not a regular file: --resume continues a file")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UsageError(f"{path} is not a regular file: --resume continues a file")
            good, dropped, done = _select(handle)
    except OSError as exc:
        raise LlavaError(f"cannot read {path}: {exc.strerror or exc}") from None
    if dropped:
        def still_regular() -> None:  # never rename over anything but the regular file just read
            if not stat.S_ISREG(os.lstat(target).st_mode):
                raise UsageError(f"{path} is no longer a regular file")

        atomic_write(target, b"".join(line + b"\n" for line in good), tmp_tag="resume", check=still_regular,
                     failure=f"cannot rewrite {path}")
    return done, len(good), dropped
