"""The HTTP side of `llava serve`: a starlette application on uvicorn.

starlette + uvicorn rather than FastAPI: a handful of routes need no dependency
injection, and FastAPI would bring pydantic (and its start-up cost) for validation that
``api.parse_chat`` already does field by field, with OpenAI's error shape.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models`` (and ``/v1/models/{id}``),
``GET /health``. With an API key every ``/v1`` route wants ``Authorization: Bearer KEY``;
``/health`` stays open (it says nothing a port scan would not). Every refusal is a JSON
error in OpenAI's shape; nothing ever answers with a traceback.

A chat completion, on the event loop: check the key, read the body (at most
``MAX_BODY_BYTES``), then in a thread pool parse it, fetch and decode its media and
preprocess it; then hand a ``worker.Job`` to the worker and wait for its first event
(accepted, or a refusal such as a prompt too long for the context: still a 4xx). The
answer comes back as events on an asyncio queue, sent as one JSON object or as
server-sent events. A task watches the connection meanwhile: a client that goes away
cancels its job, which frees its row in the generation core.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hmac
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from ..errors import EXIT_INTERRUPTED, LlavaError, UsageError
from .api import MAX_BODY_BYTES, ApiError, ChatRequest, format_duration, parse_chat, parse_json
from .sources import Sources, frame_spec
from .worker import Job, Worker


class Service:
    """What the routes share: the run (model, settings), the worker, the media sources."""

    def __init__(self, run, worker: Worker, sources: Sources, *, api_key: str | None, notices,
                 pool: concurrent.futures.Executor) -> None:
        self.run = run
        self.worker = worker
        self.sources = sources
        self.api_key = api_key
        self.notices = notices
        self.pool = pool
        self.model = run.model_name
        self.started = int(time.time())
        self.requests = 0  # chat completions received, refused ones included (the event loop counts)

    # -- checks --------------------------------------------------------------------------
    def check_key(self, request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def sampling(self, chat: ChatRequest):
        from ..generate import Sampling

        settings = self.run.settings

        def pick(given, default):
            return default if given is None else given

        try:
            return Sampling.resolve(self.run.checkpoint.generation,
                                    max_new_tokens=pick(chat.max_tokens, settings.max_new_tokens),
                                    temperature=pick(chat.temperature, settings.temperature),
                                    top_p=pick(chat.top_p, settings.top_p), top_k=pick(chat.top_k, settings.top_k),
                                    seed=pick(chat.seed, self.run.seed))
        except UsageError as exc:
            raise ApiError(400, exc.message, code="invalid_value") from None

    def prepare(self, raw: bytes) -> tuple[ChatRequest, Any, list, list]:
        """In the thread pool: the body parsed and checked, its media decoded and
        preprocessed. Returns (request, sampling, loaded media, preprocessed items)."""
        chat = parse_chat(parse_json(raw))
        sampling = self.sampling(chat)
        spec = frame_spec(self.run.spec, chat.frames)
        loaded = [self.sources.load(part, spec) for part in chat.media]
        items: list = []
        if loaded:
            try:
                items = self.run.family.prepare([entry.media for entry in loaded])
            except LlavaError as exc:  # e.g. a family that takes no images
                raise ApiError(400, exc.message, param="messages", code="invalid_media") from None
        return chat, sampling, loaded, items

    def health(self) -> dict[str, Any]:
        worker = self.worker
        return {"status": "ok", "model": self.model, "loaded": worker.loaded, "state": worker.state,
                "keep_alive": format_duration(worker.keep_alive),
                "counters": {"requests": self.requests, "decode_steps": worker.decode_steps,
                             "max_batch": worker.max_batch, "in_flight": worker.in_flight,
                             "loads": worker.loads, "unloads": worker.unloads,
                             "media_decoded": self.sources.decoded, "media_encoded": worker.media_encoded}}


# ---------------------------------------------------------------------------------------
# responses


def error_response(error: ApiError):
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.payload(), status_code=error.status, headers=headers)


def _media_records(loaded: list) -> list[dict[str, Any]]:
    from ..schema import media_record

    return [media_record(entry.media, entry.label) for entry in loaded]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Answer:
    """One completion's identity and the pieces of its OpenAI objects."""

    def __init__(self, service: Service, loaded: list, include_usage: bool = False) -> None:
        self.service = service
        self.started = time.perf_counter()
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = service.model
        self.media = _media_records(loaded)
        self.include_usage = include_usage

    def done(self, reason: str, prompt: int, completion: int) -> None:
        """The --verbose line of a finished answer."""
        self.service.notices.detail(f"{self.id}: prompt {prompt} tokens, answer {completion} tokens ({reason}) in "
                                    f"{time.perf_counter() - self.started:.2f} s")

    def completion(self, text: str, reason: str, prompt: int, completion: int) -> dict[str, Any]:
        self.done(reason, prompt, completion)
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": reason}],
                "usage": _usage(prompt, completion), "llava": {"media": self.media}}

    def chunk(self, delta: dict[str, Any] | None, reason: str | None = None, *, usage: dict | None = None,
              extra: bool = False) -> bytes:
        """A chat.completion.chunk event; ``delta`` None: the usage chunk (no choices).
        With stream_options.include_usage every other chunk says "usage": null, as OpenAI's do."""
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model,
                                "choices": [] if delta is None else
                                [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
        if usage is not None or self.include_usage:
            body["usage"] = usage
        if extra:
            body["llava"] = {"media": self.media}
        return _event(body)


def _event(body: Any) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"


class _EventStream:
    """An ASGI response: the answer as server-sent events, ending with ``data: [DONE]``;
    whatever ends it (done, an error, the client gone), the job is over afterwards."""

    def __init__(self, service: Service, job: Job, events: asyncio.Queue, watcher: asyncio.Task,
                 answer: _Answer) -> None:
        self.service, self.job, self.events, self.watcher, self.answer = service, job, events, watcher, answer

    async def __call__(self, scope, receive, send) -> None:
        answer = self.answer
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                    (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
            await self._send(send, answer.chunk({"role": "assistant", "content": ""}))
            while True:
                # One chunk per piece, as it comes (as OpenAI's API streams): a client sees
                # the answer grow even when pieces queue up behind a slow connection.
                event = await self.events.get()
                if event[0] == "text":
                    await self._send(send, answer.chunk({"content": event[1]}))
                    continue
                if event[0] == "done":
                    _, reason, prompt, completion = event
                    answer.done(reason, prompt, completion)
                    await self._send(send, answer.chunk({}, reason, extra=True))
                    if answer.include_usage:
                        await self._send(send, answer.chunk(None, usage=_usage(prompt, completion)))
                elif event[0] == "error":
                    await self._send(send, _event(event[1].payload()))
                else:  # "gone": the client went away; nobody to tell
                    return
                await self._send(send, b"data: [DONE]\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        except OSError:
            pass  # the connection broke while sending
        finally:
            self.watcher.cancel()
            self.service.worker.cancel(self.job)

    @staticmethod
    async def _send(send, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})


async def _watch(receive, events: asyncio.Queue) -> None:
    """Put ("gone",) on the job's queue when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            events.put_nowait(("gone",))
            return


# ---------------------------------------------------------------------------------------
# routes


def build_app(service: Service):
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def guarded(handler):
        async def endpoint(request):
            try:
                return await handler(request)
            except ApiError as error:
                return error_response(error)
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                return Response(status_code=499)
            except Exception as exc:  # noqa: BLE001 - a bug answers 500 in OpenAI's shape; the server goes on
                service.notices.warn(f"server: {request.method} {request.url.path}: {exc.__class__.__name__}: {exc}")
                return error_response(ApiError(500, f"internal error: {exc.__class__.__name__}",
                                               type="server_error", code="internal_error"))
        return endpoint

    async def health(request):
        return JSONResponse(service.health())

    async def models(request):
        service.check_key(request)
        return JSONResponse({"object": "list", "data": [_model_card(service)]})

    async def model(request):
        service.check_key(request)
        if request.path_params["name"] != service.model:
            raise ApiError(404, f"no model {request.path_params['name'][:200]!r}: this server serves "
                                f"{service.model}", param="model", code="model_not_found")
        return JSONResponse(_model_card(service))

    async def chat_completions(request):
        started = time.perf_counter()
        service.requests += 1
        service.check_key(request)
        raw = await _read_body(request)
        loop = asyncio.get_running_loop()
        chat, sampling, loaded, items = await loop.run_in_executor(service.pool, service.prepare, raw)
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is closed: the server is gone
                pass

        messages = chat.template_messages([entry.media.kind for entry in loaded], service.run.settings.system)
        job = Job(messages=messages, items=items, media=[entry.media for entry in loaded],
                  keys=[entry.key for entry in loaded], sampling=sampling, stops=chat.stop, emit=emit)
        service.worker.submit(job)
        watcher = asyncio.ensure_future(_watch(request.receive, events))
        handed_over = False
        try:
            event = await events.get()
            if event[0] == "error":
                raise event[1]
            if event[0] == "gone":
                return Response(status_code=499)
            answer = _Answer(service, loaded, include_usage=chat.stream and chat.include_usage)
            answer.started = started
            if chat.stream:
                handed_over = True
                return _EventStream(service, job, events, watcher, answer)
            pieces: list[str] = []
            while True:
                event = await events.get()
                if event[0] == "text":
                    pieces.append(event[1])
                elif event[0] == "done":
                    _, reason, prompt, completion = event
                    return JSONResponse(answer.completion("".join(pieces), reason, prompt, completion))
                elif event[0] == "error":
                    raise event[1]
                else:
                    return Response(status_code=499)
        finally:
            if not handed_over:
                watcher.cancel()
                service.worker.cancel(job)

    async def not_found(request, exc):
        return error_response(ApiError(404, f"no route {request.method} {request.url.path[:200]}",
                                       code="not_found"))

    async def not_allowed(request, exc):
        response = error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path[:200]}",
                                           code="method_not_allowed"))
        if exc.headers and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response

    async def http_error(request, exc: HTTPException):
        return error_response(ApiError(exc.status_code, exc.detail or "bad request", code="http_error"))

    routes = [
        Route("/health", guarded(health), methods=["GET"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/models/{name:path}", guarded(model), methods=["GET"]),
        Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed,
                                                        HTTPException: http_error})


def _model_card(service: Service) -> dict[str, Any]:
    return {"id": service.model, "object": "model", "created": service.started, "owned_by": "llava-cli"}


async def _read_body(request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "bad Content-Length header", code="invalid_request") from None
        if declared > MAX_BODY_BYTES:
            raise _body_too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _body_too_large()
    return bytes(body)


def _body_too_large() -> ApiError:
    return ApiError(413, f"the request body is over {MAX_BODY_BYTES >> 20} MiB (for large videos use a "
                         f"file:// URL under an --allowed-media-path, or an http(s) URL)", code="body_too_large")


# ---------------------------------------------------------------------------------------
# the server


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (before the model loads, so a port in use fails at once)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({getattr(exc, 'strerror', None) or exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise LlavaError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def serve(run, *, host: str, port: int, api_key: str | None, allowed: list[str], keep_alive: float | None,
          parallel: int, debug: bool) -> None:
    """Open the model, load it, and serve until Ctrl-C (KeyboardInterrupt, exit 130) or
    SIGTERM (exit 0)."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise LlavaError(f"llava serve needs starlette and uvicorn ({exc.name} is missing): "
                         f"pip install 'llava-cli[serve]'") from None
    notices = run.notices
    sock = listen(host, port)
    tmpdir = tempfile.mkdtemp(prefix="llava-serve-")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                 thread_name_prefix="llava-media")
    worker = None
    terminated = False
    try:
        run.open()
        engine = run.load_engine()
        worker = Worker(run, slots=parallel, keep_alive=keep_alive, long_video=run.long_video, notices=notices,
                        engine=engine)
        service = Service(run, worker, Sources(allowed, tmpdir), api_key=api_key, notices=notices, pool=pool)
        app = build_app(service)
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=notices.verbose,
                                lifespan="off", loop="asyncio", timeout_graceful_shutdown=3, server_header=False)
        _quiet_uvicorn_logs(verbose=notices.verbose, debug=debug)  # after Config, which sets the levels
        bound = sock.getsockname()
        where = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{where}:{bound[1]}"

        class Server(uvicorn.Server):
            signals: list[int] = []

            async def startup(self, sockets=None) -> None:
                await super().startup(sockets=sockets)
                if self.started:
                    worker.start()
                    notices.info(f"llava: serving {service.model} at {url}/v1 (keep-alive "
                                 f"{format_duration(keep_alive)}{', API key required' if api_key else ''}; "
                                 f"Ctrl-C stops)")

            @contextlib.contextmanager
            def capture_signals(self):
                # uvicorn's own re-raises the signal after shutting down; here the command
                # decides (Ctrl-C: KeyboardInterrupt, exit 130; SIGTERM: a clean exit 0),
                # the same even where the signal was inherited as ignored.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig, frame) -> None:
                self.signals.append(sig)
                worker.stop_soon()  # ends what is in flight, so the connections close at once
                super().handle_exit(sig, frame)

        server = Server(config)
        server.run(sockets=[sock])
        if signal.SIGINT in server.signals:
            raise KeyboardInterrupt
        terminated = signal.SIGTERM in server.signals
    except KeyboardInterrupt:
        # One line and exit 130, during the model's loading as after serving.
        raise LlavaError("interrupted: the server stopped", exit_code=EXIT_INTERRUPTED) from None
    finally:
        if worker is not None:
            worker.stop(timeout=5)
        pool.shutdown(wait=False, cancel_futures=True)
        sock.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    if terminated:
        notices.info("llava: stopped")


class _OneLine(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        if record.levelno >= logging.WARNING:
            text = f"llava: {'error' if record.levelno >= logging.ERROR else 'warning'}: server: {message}"
        else:
            text = f"llava: {message}"
        if self.debug and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _quiet_uvicorn_logs(*, verbose: bool, debug: bool) -> None:
    """uvicorn's log lines as one-line notices on stderr (its access log with --verbose)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(debug))
    logger = logging.getLogger("uvicorn")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    # Its start and stop chatter stays out; with --verbose one line per request.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if verbose else logging.WARNING)
