"""Fetching a snapshot's files into the Hugging Face cache: huggingface_hub does the
transfer in a thread; we watch the cache to draw a byte progress bar, check the free disk
space first, and turn Ctrl-C into an interrupted download that the next run resumes."""

from __future__ import annotations

import contextlib
import glob
import re
import shutil
import threading
import warnings
from pathlib import Path
from typing import Iterator

from .errors import DownloadInterrupted, HubError
from .hub import ModelRef, _hf, cache_dir, format_bytes
from .hub_errors import explain


class _Tracker:
    """Bytes on disk for the files being fetched, read from the cache itself: a blob, or a
    partial file beside it while it downloads. Public layout only, no hooks.

    huggingface_hub before 1.18 writes ``blobs/<etag>.incomplete`` and resumes it on the
    next run; 1.18 and later write ``blobs/<etag>.<8 hex>.incomplete``, a file of this
    process's own, resume a dropped connection within the run and delete the file when they
    give up. Such files found before the download are another process's (running, or killed
    and never resumed): they are not counted."""

    def __init__(self, storage: Path, files, force: bool) -> None:
        self.files = [(s.size or 0, self._blob(storage, s)) for s in files]
        self.force = force
        # With force, an existing blob counts as done once it has been replaced.
        self.before = {blob: _mtime(blob) for _, blob in self.files if blob is not None} if force else {}
        self.total = sum(size for size, _ in self.files)
        self.foreign = {path for _, blob in self.files if blob is not None for path in self._own_partials(blob)}

    @staticmethod
    def _blob(storage: Path, sibling) -> Path | None:
        etag = sibling.lfs.sha256 if sibling.lfs is not None else sibling.blob_id
        return storage / "blobs" / etag if etag else None

    @staticmethod
    def _own_partials(blob: Path) -> list[Path]:
        """The per-process partial files of huggingface_hub >= 1.18."""
        return [path for path in blob.parent.glob(glob.escape(blob.name) + ".*.incomplete")
                if re.fullmatch(r"[0-9a-f]{8}", path.name[len(blob.name) + 1:-len(".incomplete")])]

    def _partials(self, blob: Path) -> list[Path]:
        return [blob.with_name(blob.name + ".incomplete"),
                *(path for path in self._own_partials(blob) if path not in self.foreign)]

    def done(self) -> int:
        total = 0
        for size, blob in self.files:
            if blob is None:
                continue
            complete = blob.exists() and (not self.force or _mtime(blob) != self.before.get(blob))
            if complete:
                total += size
            else:
                total += min(max((_size(path) for path in self._partials(blob)), default=0), size)
        return total

    def discard_unresumable(self) -> None:
        """Delete this run's per-process partial files (huggingface_hub >= 1.18): no later
        run resumes them, and a run stopped at once (Ctrl-C) would leave them behind."""
        for _, blob in self.files:
            if blob is None:
                continue
            for path in self._own_partials(blob):
                if path not in self.foreign:
                    with contextlib.suppress(OSError):
                        path.unlink()


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _free_space(path: Path) -> tuple[Path, int | None]:
    for candidate in (path, *path.parents):
        try:
            return candidate, shutil.disk_usage(candidate).free
        except OSError:
            continue
    return path, None


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence huggingface_hub's own tqdm bars and warnings: we draw one bar and report
    failures as one line ourselves."""
    hf = _hf()
    utils = hf.utils
    bars_were_off = utils.are_progress_bars_disabled()
    verbosity = utils.logging.get_verbosity()
    utils.disable_progress_bars()
    utils.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        utils.logging.set_verbosity(verbosity)
        if not bars_were_off:
            utils.enable_progress_bars()


def download(ref: ModelRef, commit: str, files, storage: Path, *, force: bool, progress: bool) -> None:
    from rich.console import Console

    tracker = _Tracker(storage, files, force)
    already = 0 if force else tracker.done()
    needed = tracker.total - already
    where, free = _free_space(storage)
    if free is not None and needed > free:
        raise HubError(f"not enough disk space for {ref.display}: it needs {format_bytes(needed)} more, "
                       f"{where} has {format_bytes(free)} free (the Hugging Face cache is {cache_dir()}; "
                       f"set HF_HUB_CACHE or HF_HOME to put it on a bigger disk)")
    console = Console(stderr=True, highlight=False)
    bar = None
    # Nothing to fetch when only links to blobs already cached are missing (a branch moved
    # but the files did not): then nothing is announced either.
    progress = progress and needed > 0
    if progress and console.is_terminal:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), console=console, transient=False)
        task = bar.add_task(f"{ref.display}", total=tracker.total, completed=already)
    elif progress:
        resumed = f", resuming after {format_bytes(already)}" if already else ""
        console.print(f"downloading {ref.display} ({len(files)} files, {format_bytes(needed)}{resumed})",
                      markup=False, highlight=False)

    outcome: dict = {}

    def work() -> None:
        try:
            with _quiet_hub():
                _hf().snapshot_download(ref.repo_id, revision=commit, force_download=force,
                                        allow_patterns=[glob.escape(s.rfilename) for s in files])
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    # A daemon thread, so that Ctrl-C reaches us at once instead of after every file.
    worker = threading.Thread(target=work, name="llava-download", daemon=True)
    try:
        if bar is not None:
            bar.start()
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            if bar is not None:
                bar.update(task, completed=tracker.done())
    except KeyboardInterrupt:
        tracker.discard_unresumable()
        kept = tracker.done()
        raise DownloadInterrupted(f"download of {ref.display} interrupted with {format_bytes(kept)} of "
                                  f"{format_bytes(tracker.total)} fetched; run the same command again "
                                  f"to resume") from None
    finally:
        if bar is not None:
            if "error" not in outcome and not worker.is_alive():
                bar.update(task, completed=tracker.total)
            bar.stop()
    if "error" in outcome:
        raise explain(outcome["error"], ref, downloading=True, needed=needed) from None
