"""`llava batch`: many inputs, one model load, one JSON line per (input, question).

Inputs, in the order given:

* a file is taken as it is, whatever its name (a file that is not media gets an error
  line);
* a folder is searched recursively, in sorted order, for files whose extension is an
  image or video one (``media.IMAGE_EXTENSIONS``/``VIDEO_EXTENSIONS``); other files
  (notes.txt, .DS_Store) are skipped and counted. Hidden files and folders are skipped;
* a glob (``clips/**/*.mp4``) that names no existing path is expanded, matches filtered
  like a folder's files;
* ``-`` reads paths from standard input, one per line (``find … | llava batch - "…"``).

The same file reached twice (two spellings, a folder and a glob) is one input.
Recognised by extension, every file is then checked by content when it is decoded: a
damaged video or a text file named .mp4 becomes an error line and the run goes on.

Output lines are written whole and durably, and ``--resume`` answers only the (input,
question) pairs missing from the output file (jsonl.py). Failed pairs are retried.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from .errors import EXIT_OK, EXIT_PARTIAL, LlavaError, UsageError
from .jsonl import JsonlOutput, json_line, prepare_resume, trusted_lines  # noqa: F401 (public here too)
from .schema import media_record

_GLOB_CHARS = set("*?[")


@dataclass
class Input:
    path: str  # as the user (or the folder walk, or stdin) spelled it
    error: str | None = None  # known before decoding: missing, unreadable


def _media_suffixes() -> frozenset[str]:
    from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    return IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def expand_inputs(args: Iterable[str], stdin: TextIO | None = None,
                  warn: Callable[[str], None] | None = None) -> tuple[list[Input], int]:
    """The inputs in order, and the number of files skipped for their extension."""
    suffixes = _media_suffixes()
    inputs: list[Input] = []
    seen: set[str] = set()
    skipped = 0

    def add(path: str, error: str | None = None) -> None:
        real = os.path.realpath(os.path.expanduser(path)) if not _is_url(path) else path
        if real in seen:
            return
        seen.add(real)
        inputs.append(Input(path, error))

    def media_files(paths: Iterable[str]) -> None:
        nonlocal skipped
        for path in paths:
            if Path(path).suffix.lower() in suffixes:
                add(path)
            else:
                skipped += 1

    def walk(folder: str) -> list[str]:
        found = []
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        return found

    def one(arg: str, from_stdin: bool) -> None:
        path = os.path.expanduser(arg)
        if _is_url(arg):
            add(arg)
        elif os.path.isdir(path):
            media_files(walk(arg))
        elif os.path.exists(path):
            add(arg)
        elif not from_stdin and _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches and warn is not None:
                warn(f"no files match '{arg}'")
            for match in matches:
                if os.path.isdir(match):
                    media_files(walk(match))
                else:
                    media_files([match])
        else:
            add(arg, f"no such file or directory: {arg}")

    for arg in args:
        if arg == "-":
            for line in _stdin_lines(stdin):
                if line.strip():
                    one(line, True)
        else:
            one(arg, False)
    return inputs, skipped


def _stdin_lines(stdin: TextIO | None) -> Iterator[str]:
    """Paths from standard input, one per line. Bytes that are not UTF-8 become surrogate
    escapes, as in names from a folder: such an input gets its error line, it does not end
    the run."""
    stream = stdin or sys.stdin
    raw = getattr(stream, "buffer", None)
    if raw is None:
        for line in stream:
            yield line.rstrip("\r\n")
        return
    for line in raw:
        yield os.fsdecode(line.rstrip(b"\r\n"))


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class BatchOptions:
    questions: list[str]
    output: str | None
    resume: bool
    overwrite: bool
    model_name: str
    system: str | None
    long_video: bool


def check_output(options: BatchOptions) -> None:
    """Refuse to clobber finished work by accident, before the model loads."""
    if options.resume and options.output is None:
        raise UsageError("--resume needs --output FILE: it continues that file")
    if options.resume and options.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    if options.output is None:
        return
    if _is_stdout(options.output) and not options.resume:
        options.output = None  # -o /dev/stdout: standard output, as without -o
        return
    target = Path(options.output)
    if target.is_dir():
        raise UsageError(f"{options.output} is a folder: --output needs a file")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {options.output}: the folder {target.parent} does not exist")
    try:
        status = target.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {options.output}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(status.st_mode):
        # A device, a FIFO or a socket: /dev/zero cannot be resumed, a FIFO would block.
        raise UsageError(f"{options.output} is not a regular file: --output needs a file")
    if not os.access(target, os.W_OK) or _virtual_filesystem(target):
        raise UsageError(f"cannot write {options.output}: it is not a writable file")
    if not options.resume and not options.overwrite and status.st_size > 0:
        raise UsageError(f"{options.output} exists: pass --resume to continue it, or --overwrite to start over")


def _is_stdout(path: str) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):
        return False


def _virtual_filesystem(path: Path) -> bool:
    """/proc and /sys files claim to be regular files (even to root, who may open them for
    writing) but are not data files."""
    real = os.path.realpath(path)
    return real.startswith(("/proc/", "/sys/"))


def run(inputs: list[Input], options: BatchOptions, *, engine, spec, sampling, notices,
        done: set[tuple[str, str]], progress: bool) -> int:
    from .session import MediaCache, MediaEntry, media_key
    from .media import load_media

    todo = [(item, [q for q in options.questions if (item.path, q) not in done]) for item in inputs]
    todo = [(item, questions) for item, questions in todo if questions]
    total = sum(len(questions) for _, questions in todo)
    output = JsonlOutput(options.output, append=options.resume)
    cache = MediaCache(engine, limit=2)
    failed = answered = 0
    bar = _Progress(total, notices, enabled=progress)
    started = time.perf_counter()

    def decode(path: str) -> MediaEntry:
        begun = time.perf_counter()
        media = load_media(path, spec)
        return MediaEntry(media, spec, media_key(path, spec), load_s=time.perf_counter() - begun)

    # Decode the next input's frames while the model works on this one.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llava-decode")
    futures: dict[int, concurrent.futures.Future] = {}

    def schedule(index: int) -> None:
        if index < len(todo) and index not in futures and todo[index][0].error is None:
            futures[index] = pool.submit(decode, todo[index][0].path)

    try:
        for index, (item, questions) in enumerate(todo):
            schedule(index)
            schedule(index + 1)
            entry = None
            error = item.error
            if error is None:
                try:
                    entry = cache.adopt(futures.pop(index).result())
                    for note in entry.media.notices:
                        notices.warn(note)
                    notices.detail(entry.media.describe())
                    cache.encode(entry)
                except LlavaError as exc:
                    error = exc.message
                except MemoryError:
                    error = "out of memory: try fewer --frames or a smaller model"
                except Exception as exc:  # noqa: BLE001 - one bad input must not end the run
                    error = f"{exc.__class__.__name__}: {exc}"
            for number, question in enumerate(questions):
                try:
                    record = _record(item.path, question, options.model_name, entry)
                except Exception as exc:  # noqa: BLE001 - a media object we cannot describe
                    entry, error = None, error or f"{exc.__class__.__name__}: {exc}"
                    record = _record(item.path, question, options.model_name, None)
                if error is None:
                    try:
                        prepared = engine.prepare([entry.media], question, system=options.system,
                                                  long_video=options.long_video, encoded=[entry.encoded])
                        answer = "".join(engine.stream(prepared, sampling))
                        _fill(record, answer, engine.timings, entry, first=number == 0)
                    except LlavaError as exc:
                        record["error"] = exc.message
                    except MemoryError:
                        record["error"] = "out of memory: try fewer --frames or a smaller model"
                    except Exception as exc:  # noqa: BLE001
                        record["error"] = f"{exc.__class__.__name__}: {exc}"
                else:
                    record["error"] = error
                if record["error"] is None:
                    answered += 1
                else:
                    failed += 1
                    message = " ".join(str(record["error"]).split())  # one line, as documented
                    record = {**record, "answer": None, "error": message}
                    bar.warn(message if item.path in message else f"{item.path}: {message}")
                output.write(record)
                bar.advance()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.stop()
        output.close()
    elapsed = time.perf_counter() - started
    summary = f"answered {answered} of {answered + failed}"
    if failed:
        summary += f" ({failed} failed)"
    notices.info(f"{summary} in {elapsed:.1f} s")
    return EXIT_PARTIAL if failed else EXIT_OK


def _record(path: str, question: str, model: str, entry) -> dict[str, Any]:
    media = media_record(entry.media, path) if entry is not None else {"path": path, "kind": None, "frames": [],
                                                                       "timestamps": []}
    return {
        "path": media["path"], "question": question, "answer": None, "error": None,
        "kind": media["kind"], "frames": media["frames"], "timestamps": media["timestamps"],
        "model": model, "prompt_tokens": None, "answer_tokens": None, "timings": None,
    }


def _fill(record: dict[str, Any], answer: str, timings, entry, *, first: bool) -> None:
    record["answer"] = answer
    record["prompt_tokens"] = timings.prompt_tokens
    record["answer_tokens"] = timings.answer_tokens
    # The media is decoded and encoded once for all of an input's questions: its cost is
    # on the first question's line, 0 on the others.
    record["timings"] = {
        "media_s": round(entry.load_s if first else 0.0, 6),
        "encode_s": round(entry.encode_s if first else 0.0, 6),
        "prefill_s": round(timings.prefill_s, 6),
        "decode_s": round(timings.decode_s, 6),
        "tokens_per_s": round(timings.tokens_per_s, 3) if timings.tokens_per_s else None,
    }


class _Progress:
    """A rich progress bar with ETA on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, total: int, notices, *, enabled: bool) -> None:
        self.notices = notices
        self.progress = None
        if enabled and total and notices.console.is_terminal and not notices.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=notices.console, transient=False)
            self.task = self.progress.add_task("answering", total=total)
            self.progress.start()

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def warn(self, message: str) -> None:
        self.notices.warn(message)  # rich prints above a live bar on the same console

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
