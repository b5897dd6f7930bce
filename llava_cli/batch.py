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

Output lines are written whole: one ``write`` of the full line and its newline, then a
flush and an fsync, so a run killed at any moment leaves complete lines plus at most one
partial last line, which has no newline. ``--resume`` reads the output file, keeps the
lines that are complete JSON objects with an answer and no error, rewrites the file with
only those (atomically: a crash during the rewrite leaves the old file or the new one),
and answers only the (input, question) pairs missing from it. Failed pairs are retried.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from .errors import EXIT_OK, EXIT_PARTIAL, LlavaError, UsageError

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
            stream = stdin or sys.stdin
            for line in stream:
                line = line.rstrip("\r\n")
                if line.strip():
                    one(line, True)
        else:
            one(arg, False)
    return inputs, skipped


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------
# Output


class JsonlOutput:
    """One JSON object per line, each line written whole and made durable at once."""

    def __init__(self, path: str | None, *, append: bool) -> None:
        self.path = path
        if path is None:
            self.fd = sys.stdout.fileno()
            sys.stdout.flush()
            self.durable = _is_regular(self.fd)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
            try:
                self.fd = os.open(path, flags, 0o644)
            except OSError as exc:
                raise LlavaError(f"cannot write {path}: {exc.strerror or exc}") from None
            self.durable = True

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        if self.durable:
            try:
                os.fsync(self.fd)
            except OSError:
                pass

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)


def _is_regular(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def trusted_lines(data: bytes) -> tuple[list[bytes], int]:
    """The lines --resume trusts (complete, a JSON object, an answer and no error), and
    how many other lines there were (failed, damaged, or a partial last line)."""
    good, dropped = [], 0
    complete, _, tail = data.rpartition(b"\n")
    if tail.strip():
        dropped += 1  # no newline: a write that a kill cut short
    for line in complete.split(b"\n") if complete else []:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            dropped += 1
            continue
        if (isinstance(record, dict) and record.get("error") is None and isinstance(record.get("answer"), str)
                and isinstance(record.get("path"), str) and isinstance(record.get("question"), str)):
            good.append(line)
        else:
            dropped += 1
    return good, dropped


def prepare_resume(path: str) -> tuple[set[tuple[str, str]], int, int]:
    """Rewrite ``path`` with only its trusted lines; return the (path, question) pairs
    done, the count kept and the count dropped."""
    target = Path(path)
    if not target.exists():
        return set(), 0, 0
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise LlavaError(f"cannot read {path}: {exc.strerror or exc}") from None
    good, dropped = trusted_lines(data)
    done = set()
    for line in good:
        record = json.loads(line)
        done.add((record["path"], record["question"]))
    if dropped:
        tmp = target.with_name(f".{target.name}.resume-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(b"".join(line + b"\n" for line in good))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise LlavaError(f"cannot rewrite {path}: {exc.strerror or exc}") from None
    return done, len(good), dropped


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
    target = Path(options.output)
    if target.is_dir():
        raise UsageError(f"{options.output} is a folder: --output needs a file")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {options.output}: the folder {target.parent} does not exist")
    if not options.resume and not options.overwrite and target.exists() and target.stat().st_size > 0:
        raise UsageError(f"{options.output} exists: pass --resume to continue it, or --overwrite to start over")


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
                except Exception as exc:  # noqa: BLE001 - one bad input must not end the run
                    error = f"{exc.__class__.__name__}: {exc}"
            for number, question in enumerate(questions):
                record = _record(item.path, question, options.model_name, entry)
                if error is None:
                    try:
                        prepared = engine.prepare([entry.media], question, system=options.system,
                                                  long_video=options.long_video, encoded=[entry.encoded])
                        answer = "".join(engine.stream(prepared, sampling))
                        _fill(record, answer, engine.timings, entry, first=number == 0)
                    except LlavaError as exc:
                        record["error"] = exc.message
                    except Exception as exc:  # noqa: BLE001
                        record["error"] = f"{exc.__class__.__name__}: {exc}"
                else:
                    record["error"] = error
                if record["error"] is None:
                    answered += 1
                else:
                    failed += 1
                    message = record["error"]
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
    media = entry.media if entry is not None else None
    return {
        "path": path, "question": question, "answer": None, "error": None,
        "kind": media.kind if media else None,
        "frames": list(media.frame_indices) if media else [],
        "timestamps": [round(t, 6) for t in media.timestamps] if media else [],
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
