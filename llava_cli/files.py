"""Writing a file so that a crash leaves the old one or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

from .errors import LlavaError


def atomic_write(target: Path, data: bytes, *, tmp_tag: str, check: Callable[[], None], failure: str) -> None:
    """Write ``data`` to a temp file beside ``target`` (created exclusively, fsynced), run
    ``check`` (it raises when ``target`` may no longer be replaced: it became a device, a
    FIFO, a folder), then rename over ``target``. On any error the temp file is removed;
    a LlavaError from ``check`` passes through, an OSError becomes ``failure: reason``."""
    tmp = target.with_name(f".{target.name}.{tmp_tag}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(tmp)  # a leftover of a killed run that had this pid; O_EXCL below follows no link
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        check()
        os.replace(tmp, target)
    except (OSError, LlavaError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, LlavaError):
            raise
        raise LlavaError(f"{failure}: {exc.strerror or exc}") from None
