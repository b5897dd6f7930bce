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
from dataclasses import dataclass, field
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
    parallel: int = 1  # requests in flight at once (the generation core's slots)


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


@dataclass(eq=False)
class _Task:
    """One input and its questions, from decoding to its written lines."""

    item: Input
    questions: list[str]
    entry: Any = None  # session.MediaEntry once decoded
    error: str | None = None  # the input's own failure: every question's line says it
    records: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(record is not None for record in self.records)


def run(inputs: list[Input], options: BatchOptions, *, engine, spec, sampling, notices,
        done: set[tuple[str, str]], progress: bool) -> int:
    """Answer every (input, question) not in ``done``; one JSON line each, in input order,
    to ``options.output`` (standard output when None). The exit status: 3 when a line
    holds an error."""
    total = sum(1 for item in inputs for q in options.questions if (item.path, q) not in done)
    sink = Sink(JsonlOutput(options.output, append=options.resume), notices, total, progress=progress)
    try:
        answer(inputs, options, engine=engine, spec=spec, sampling=sampling, done=done, emit=sink.write,
               warn=notices.warn, detail=notices.detail)
    finally:
        sink.close()
    return sink.finish()


class Sink:
    """Where finished lines go: the output file, the progress bar, a warning per failed
    line, and the summary at the end."""

    def __init__(self, output: JsonlOutput, notices, total: int, *, progress: bool) -> None:
        self.output = output
        self.notices = notices
        self.answered = self.failed = 0
        self.bar = _Progress(total, notices, enabled=progress)
        self.started = time.perf_counter()

    def write(self, record: dict[str, Any], path: str) -> None:
        if record["error"] is None:
            self.answered += 1
        else:
            self.failed += 1
            message = record["error"]
            self.bar.warn(message if path in message else f"{path}: {message}")
        self.output.write(record)
        self.bar.advance()

    def close(self) -> None:
        self.bar.stop()
        self.output.close()

    def finish(self) -> int:
        elapsed = time.perf_counter() - self.started
        summary = f"answered {self.answered} of {self.answered + self.failed}"
        if self.failed:
            summary += f" ({self.failed} failed)"
        self.notices.info(f"{summary} in {elapsed:.1f} s")
        return EXIT_PARTIAL if self.failed else EXIT_OK


def answer(inputs: list[Input], options: BatchOptions, *, engine, spec, sampling, done: set[tuple[str, str]],
           emit: Callable[[dict[str, Any], str], None], decode: Callable[[str], Any] | None = None,
           warn: Callable[[str], None] | None = None, detail: Callable[[str], None] | None = None) -> None:
    """Answer every (input, question) not in ``done``, calling ``emit(record, path)`` for
    each line, in input order.

    Inputs are decoded ahead on worker threads while the model works (``decode(path)`` →
    session.MediaEntry; by default the file is read with ``spec``). Up to
    ``options.parallel`` questions are in flight in the generation core at once: an input
    is admitted as soon as a slot is free and its frames are ready (inputs ready together
    are encoded in one vision pass), and a finished answer frees its slot for the next.
    Lines are emitted in input order as soon as an input and all before it are done, so
    a killed run loses only unfinished answers (--resume asks them again). ``engine`` None:
    every input has an error known before decoding (``Input.error``)."""
    from .session import MediaCache, MediaEntry, media_key
    from .media import load_media

    tasks = [_Task(item, [q for q in options.questions if (item.path, q) not in done]) for item in inputs]
    tasks = [task for task in tasks if task.questions]
    for task in tasks:
        task.records = [None] * len(task.questions)
        task.error = task.item.error
    parallel = max(1, options.parallel)
    core = engine.core(parallel) if engine is not None else None
    cache = MediaCache(engine, limit=2)

    def read(path: str) -> MediaEntry:
        begun = time.perf_counter()
        media = load_media(path, spec)
        return MediaEntry(media, spec, media_key(path, spec), load_s=time.perf_counter() - begun)

    decode = decode or read
    # Frames of the next inputs are decoded while the model works on the ones in flight.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1 if parallel == 1 else 2,
                                                 thread_name_prefix="llava-decode")
    futures: dict[int, concurrent.futures.Future] = {}
    running: dict[Any, tuple[_Task, int]] = {}  # Generation → (its task, question number)
    admitted = written = 0  # tasks turned into requests; tasks whose lines are out

    def schedule_ahead() -> None:
        for index in range(admitted, min(len(tasks), admitted + parallel + 1)):
            if index not in futures and tasks[index].error is None:
                futures[index] = pool.submit(decode, tasks[index].item.path)

    def finish(task: _Task, number: int, error: str | None, answer: str | None = None, result=None) -> None:
        record = _record(task.item.path, task.questions[number], options.model_name,
                         task.entry if task.error is None else None)
        if error is None:
            _fill(record, answer, result.timings, task.entry, first=number == 0)
        else:
            record = {**record, "answer": None, "error": " ".join(str(error).split())}  # one line
        task.records[number] = record

    def take_decoded(index: int) -> None:
        """The input's frames (waiting for them), or its error."""
        task = tasks[index]
        if task.error is not None:
            return
        try:
            task.entry = cache.adopt(futures.pop(index).result())
            for note in task.entry.media.notices:
                if warn is not None:
                    warn(note)
            if detail is not None:
                detail(task.entry.media.describe())
        except BaseException as exc:  # noqa: BLE001 - one bad input must not end the run
            task.entry, task.error = None, _problem(exc)

    def encode(group: list[_Task]) -> None:
        """The group's media through the vision tower together; if that fails, each one
        alone, so the error lands on the input that caused it."""
        ready = [task for task in group if task.error is None]
        try:
            cache.encode_many([task.entry for task in ready])
            return
        except BaseException as exc:  # noqa: BLE001
            if len(ready) == 1:
                ready[0].entry, ready[0].error = None, _problem(exc)
                return
        for task in ready:
            try:
                cache.encode(task.entry)
            except BaseException as exc:  # noqa: BLE001
                task.entry, task.error = None, _problem(exc)

    def submit(task: _Task) -> None:
        if task.error is None:
            try:
                _record(task.item.path, task.questions[0], options.model_name, task.entry)
            except Exception as exc:  # noqa: BLE001 - a media object we cannot describe
                task.entry, task.error = None, f"{exc.__class__.__name__}: {exc}"
        for number, question in enumerate(task.questions):
            if task.error is not None:
                finish(task, number, task.error)
                continue
            try:
                prepared = engine.prepare([task.entry.media], question, system=options.system,
                                          long_video=options.long_video, encoded=[task.entry.encoded])
                running[core.submit(engine.request(prepared, sampling))] = (task, number)
            except BaseException as exc:  # noqa: BLE001
                finish(task, number, _problem(exc))

    def collect() -> None:
        for generation in [g for g in running if g.done]:
            task, number = running.pop(generation)
            result = generation.result
            if result.error is not None:
                finish(task, number, result.error)
            else:
                finish(task, number, None, engine.tokenizer.decode(result.tokens), result)

    def write_ready() -> None:
        nonlocal written
        while written < len(tasks) and tasks[written].complete:
            task = tasks[written]
            for record in task.records:
                emit(record, task.item.path)
            task.entry = None  # written: let the frames and embeddings go
            written += 1

    try:
        while written < len(tasks):
            schedule_ahead()
            # Admit inputs in order while the core has room, those whose frames are ready
            # together as one group (one vision pass). Wait for frames only when the core
            # would otherwise sit idle.
            room = len(tasks) if core is None else core.room
            group: list[_Task] = []
            while admitted < len(tasks) and len(group) < room:
                future = futures.get(admitted)
                if future is not None and not future.done() and core is not None and (core.busy or group):
                    break
                take_decoded(admitted)
                group.append(tasks[admitted])
                admitted += 1
                schedule_ahead()
            if group:
                if core is not None:
                    encode(group)
                for task in group:
                    submit(task)
            if core is not None and core.busy:
                try:
                    core.step()
                except Exception as exc:  # noqa: BLE001 - out of memory, or worse: fail what is in flight, go on
                    for generation in list(running):
                        core.cancel(generation, "error", _problem(exc))
                collect()
            write_ready()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if core is not None:
            for generation in list(running):
                core.cancel(generation)


OUT_OF_MEMORY = "out of memory: try fewer --frames, a lower --parallel or a smaller model"


def _problem(exc: BaseException) -> str:
    """One input's failure as its line's error; Ctrl-C and exits are not a failure of the
    input and end the run."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    if isinstance(exc, LlavaError):
        return exc.message
    if isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError":
        return OUT_OF_MEMORY
    return f"{exc.__class__.__name__}: {exc}"


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
