"""The one thread that owns the engine and the generation core (neither is thread-safe).

HTTP handlers hand it ``Job``s through a thread-safe queue, each with its media already
decoded and preprocessed; the worker, in a loop:

1. takes what arrived (new jobs, cancellations from clients that went away, stop);
2. admits waiting jobs while the core has free rows: renders each prompt with the chat
   template (a prompt too long for the context is refused here, before any encoding),
   encodes the media no earlier job left in the encoding LRU (all of this round's media in
   one vision pass), and submits the requests;
3. runs one ``core.step()`` — one prefill chunk and ONE decode step for every sequence in
   flight, however many requests they belong to;
4. turns each job's new tokens into text with its own ``StreamDecoder``, applies its stop
   strings, and hands the pieces to the job's ``emit`` (which moves them to the request's
   asyncio queue with ``loop.call_soon_threadsafe``).

While nothing is in flight it sleeps on the queue; after ``keep_alive`` seconds of that
(None: never) it unloads the model, and the next job loads it again (ollama's keep_alive).

Events a job receives, in order: ``("accepted", prompt_tokens)``, any number of
``("text", piece)``, then ``("done", finish_reason, prompt_tokens, completion_tokens)`` —
or ``("error", ApiError)`` at any point instead.
"""

from __future__ import annotations

import gc
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LlavaError, PromptError
from .api import ApiError, StopText, format_duration

ENCODINGS_KEPT = 32  # media embeddings kept for reuse (device memory: a few MB each)


@dataclass(eq=False)
class Job:
    """One chat completion for the worker (built by the HTTP side)."""

    messages: list[dict[str, Any]]  # chat-template messages, media parts as their kinds
    items: list[Any]  # the media preprocessed (families' MediaInput), in prompt order
    media: list[Any]  # the decoded Media, same order
    keys: list[tuple]  # each medium's (content, FrameSpec)
    sampling: Any  # generate.Sampling
    stops: list[str]
    emit: Callable[[tuple], None]  # thread-safe: hands an event to the request's handler
    cancelled: bool = False
    # The worker's own state for the job.
    generation: Any = None
    decoder: Any = None
    stopper: StopText | None = None
    prompt_tokens: int = 0
    prepared: Any = None
    features: list[Any] = field(default_factory=list)
    finished: bool = False


_STOP = object()


class Worker:
    """See the module notes. ``submit``, ``cancel``, ``stop`` and the counters may be used
    from any thread; everything else runs on the worker's own thread."""

    def __init__(self, run, *, slots: int, keep_alive: float | None, long_video: bool, notices,
                 engine=None) -> None:
        self.run = run
        self.slots = max(1, slots)
        self.keep_alive = keep_alive
        self.long_video = long_video
        self.notices = notices
        self.engine = engine
        self.core = engine.core(self.slots) if engine is not None else None
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: deque[Job] = deque()
        self.running: dict[Any, Job] = {}  # Generation → its job
        self.encodings: OrderedDict[tuple, Any] = OrderedDict()
        self.state = "loaded" if engine is not None else "unloaded"
        self.loads = 1 if engine is not None else 0
        self.unloads = 0
        self.media_encoded = 0
        self._steps_before = 0  # decode steps of cores unloaded since
        self._max_batch_before = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self.idle_since = time.monotonic()
        self.stopping = False
        self.thread = threading.Thread(target=self._main, name="llava-worker", daemon=True)

    # -- any thread ----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        if self.stopping:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        with self._lock:
            self._in_flight += 1
        self.inbox.put(job)

    def cancel(self, job: Job) -> None:
        """The client went away: end the job and free its row."""
        if not job.finished and not job.cancelled:
            job.cancelled = True
            self.inbox.put(("cancel", job))

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        self.inbox.put(_STOP)
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def stop_soon(self) -> None:
        """From a signal handler: no joining."""
        self.stopping = True
        self.inbox.put(_STOP)

    @property
    def loaded(self) -> bool:
        return self.state == "loaded"

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def decode_steps(self) -> int:
        core = self.core
        return self._steps_before + (core.steps if core is not None else 0)

    @property
    def max_batch(self) -> int:
        core = self.core
        return max(self._max_batch_before, core.max_batch if core is not None else 0)

    # -- the worker thread ---------------------------------------------------------------
    def _main(self) -> None:
        try:
            while True:
                if not self.pending and not self.running:
                    if not self._handle(self._wait_idle()):
                        return
                while True:
                    try:
                        message = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if not self._handle(message):
                        return
                try:
                    if self.pending:
                        self._admit()
                    if self.core is not None and self.core.busy:
                        self._step()
                    self._collect()
                except Exception as exc:  # noqa: BLE001 - a bug must not take the server down
                    self.notices.warn(f"server: {exc.__class__.__name__}: {exc}")
                    self._fail_all(ApiError(500, f"internal error: {exc.__class__.__name__}: {exc}",
                                            type="server_error", code="internal_error"))
                if not self.pending and not self.running:
                    self.idle_since = time.monotonic()
                    if self.keep_alive == 0:
                        self._unload()
        finally:
            self.stopping = True
            self._fail_all(ApiError(503, "the server is shutting down", type="server_error", code="shutting_down"))
            while True:  # jobs that arrived after the stop
                try:
                    message = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(message, Job):
                    self._fail(message, ApiError(503, "the server is shutting down", type="server_error",
                                                 code="shutting_down"))
            self._unload(quiet=True)

    def _wait_idle(self) -> Any:
        """The next message, unloading the model once it has been idle for keep_alive."""
        while True:
            timeout = None
            if self.engine is not None and self.keep_alive is not None:
                timeout = self.idle_since + self.keep_alive - time.monotonic()
                if timeout <= 0:
                    self._unload()
                    continue
            try:
                return self.inbox.get(timeout=timeout)
            except queue.Empty:
                continue

    def _handle(self, message: Any) -> bool:
        """False: stop."""
        if message is _STOP:
            return False
        if isinstance(message, Job):
            if message.cancelled:
                self._finished(message)
            else:
                self.pending.append(message)
        elif isinstance(message, tuple) and message[0] == "cancel":
            job = message[1]
            if job in self.pending:
                self.pending.remove(job)
            generation = job.generation
            if generation is not None and generation in self.running:
                del self.running[generation]
                if self.core is not None:
                    self.core.cancel(generation)
            self._finished(job)
        return True

    # -- loading -------------------------------------------------------------------------
    def _load(self) -> bool:
        self.state = "loading"
        self.notices.info("loading the model again…")
        started = time.perf_counter()
        try:
            engine = self.run.load_engine()
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the reason
            self.state = "unloaded"
            reason = exc.message if isinstance(exc, LlavaError) else f"{exc.__class__.__name__}: {exc}"
            self.notices.warn(f"cannot load the model: {reason}")
            error = ApiError(503, f"cannot load the model: {reason}", type="server_error", code="model_unavailable")
            while self.pending:
                self._fail(self.pending.popleft(), error)
            return False
        self.engine = engine
        self.core = engine.core(self.slots)
        self.state = "loaded"
        self.loads += 1
        self.notices.info(f"model loaded in {time.perf_counter() - started:.1f} s")
        return True

    def _unload(self, quiet: bool = False) -> None:
        if self.engine is None:
            return
        self.state = "unloading"
        core = self.core
        if core is not None:
            self._steps_before += core.steps
            self._max_batch_before = max(self._max_batch_before, core.max_batch)
        self.core = None
        self.engine = None
        self.run.engine = None
        self.encodings.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - freeing memory is best effort
            pass
        self.unloads += 1
        if not quiet:
            self.notices.info(f"model unloaded after {format_duration(self.keep_alive)} idle; the next request "
                              f"loads it again")
        self.state = "unloaded"

    # -- admitting -----------------------------------------------------------------------
    def _admit(self) -> None:
        if self.engine is None and not self._load():
            return
        engine, core = self.engine, self.core
        group: list[Job] = []
        room = core.room
        while self.pending and len(group) < room:
            job = self.pending.popleft()
            if job.cancelled:
                self._finished(job)
                continue
            try:
                job.prepared = engine.prepare_messages(job.messages, job.items, long_video=self.long_video,
                                                       media=job.media)
            except PromptError as exc:
                code = "context_length_exceeded" if "context" in exc.message else "invalid_prompt"
                self._fail(job, ApiError(400, _for_clients(exc.message), param="messages", code=code))
                continue
            except LlavaError as exc:
                self._fail(job, ApiError(400, exc.message, param="messages", code="invalid_prompt"))
                continue
            group.append(job)
        if not group:
            return
        group = self._encode(group)
        for job in group:
            prepared = job.prepared
            prepared.media = list(job.media)
            prepared.features = job.features
            try:
                request = engine.request(prepared, job.sampling)
                generation = core.submit(request)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                self._fail(job, _server_error("cannot start the answer", exc))
                continue
            job.prepared, job.features = None, []
            job.generation = generation
            job.decoder = engine.tokenizer.stream()
            job.stopper = StopText(job.stops)
            job.prompt_tokens = request.prompt_tokens
            self.running[generation] = job
            job.emit(("accepted", job.prompt_tokens))

    def _encode(self, group: list[Job]) -> list[Job]:
        """Every job's media embeddings: from the LRU, or encoded now (all of them in one
        vision pass; one by one if that fails, so an error lands on its own request).
        Returns the jobs that can go on."""
        available: dict[tuple, Any] = {}
        todo: dict[tuple, tuple[Any, Any]] = {}
        wanted: dict[int, list[tuple]] = {}
        for job in group:
            keys = [(key, item.num_tokens, tuple(item.pixels.shape)) for key, item in zip(job.keys, job.items)]
            wanted[id(job)] = keys
            for key, item, media in zip(keys, job.items, job.media):
                if key in self.encodings:
                    self.encodings.move_to_end(key)
                    available[key] = self.encodings[key]
                elif key not in available:
                    todo[key] = (item, media)
        failed: dict[tuple, ApiError] = {}
        if todo:
            try:
                features = self.engine.encode_items([i for i, _ in todo.values()], [m for _, m in todo.values()])
                available.update(zip(todo, features))
            except Exception as exc:  # noqa: BLE001
                if len(todo) == 1:
                    failed[next(iter(todo))] = _encode_error(exc)
                else:
                    for key, (item, media) in todo.items():
                        try:
                            available[key] = self.engine.encode_items([item], [media])[0]
                        except Exception as one:  # noqa: BLE001
                            failed[key] = _encode_error(one)
            self.media_encoded += len(todo) - len(failed)
            for key in todo:
                if key in available:
                    self.encodings[key] = available[key]
            while len(self.encodings) > ENCODINGS_KEPT:
                self.encodings.popitem(last=False)
        ready = []
        for job in group:
            keys = wanted[id(job)]
            problem = next((failed[key] for key in keys if key in failed), None)
            if problem is not None:
                self._fail(job, problem)
                continue
            job.features = [available[key] for key in keys]
            ready.append(job)
        return ready

    # -- running -------------------------------------------------------------------------
    def _step(self) -> None:
        core = self.core
        try:
            core.step()
        except Exception as exc:  # noqa: BLE001 - out of memory, or worse: what is in flight fails
            message = _reason(exc)
            for generation in list(self.running):
                core.cancel(generation, "error", message)

    def _collect(self) -> None:
        core = self.core
        for generation, job in list(self.running.items()):
            stopper = job.stopper
            for token in generation.take():
                if stopper.stopped:
                    break
                piece = job.decoder.push(token)
                if piece:
                    self._text(job, stopper.push(piece))
            if stopper.stopped and not generation.done:
                core.cancel(generation, "stop")
            if not generation.done:
                continue
            del self.running[generation]
            result = generation.result
            if result.stop_reason == "error":
                self._fail(job, ApiError(500, f"the answer failed: {result.error}", type="server_error",
                                         code="generation_failed"))
                continue
            if not stopper.stopped:
                tail = job.decoder.flush()
                if tail:
                    self._text(job, stopper.push(tail))
                self._text(job, stopper.flush())
            reason = "stop" if stopper.stopped or result.stop_reason == "stop" else "length"
            job.emit(("done", reason, job.prompt_tokens, len(result.tokens)))
            self._finished(job)

    @staticmethod
    def _text(job: Job, text: str) -> None:
        if text:
            job.emit(("text", text))

    # -- endings -------------------------------------------------------------------------
    def _fail(self, job: Job, error: ApiError) -> None:
        if not job.finished:
            job.emit(("error", error))
        self._finished(job)

    def _fail_all(self, error: ApiError) -> None:
        for generation, job in list(self.running.items()):
            if self.core is not None:
                self.core.cancel(generation)
            self._fail(job, error)
        self.running.clear()
        while self.pending:
            self._fail(self.pending.popleft(), error)

    def _finished(self, job: Job) -> None:
        if job.finished:
            return
        job.finished = True
        job.prepared, job.features = None, []
        with self._lock:
            self._in_flight -= 1


def _for_clients(message: str) -> str:
    """The engine's advice names CLI flags; a client sets the request's fields instead."""
    message = re.sub(r"\(use --frames (\d+)\)", r'(send "llava": {"frames": \1})', message)
    return message.replace("pass --long-video", "start the server with --long-video")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError":
        return "out of memory (try fewer frames or a smaller --parallel)"
    if isinstance(exc, LlavaError):
        return exc.message
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {first}"


def _server_error(what: str, exc: BaseException) -> ApiError:
    return ApiError(500, f"{what}: {_reason(exc)}", type="server_error", code="internal_error")


def _encode_error(exc: BaseException) -> ApiError:
    if isinstance(exc, LlavaError):
        return ApiError(400, f"cannot encode the media: {exc.message}", param="messages", code="invalid_media")
    return _server_error("cannot encode the media", exc)
