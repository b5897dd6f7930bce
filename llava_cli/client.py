"""`llava ask` through a running `llava serve` (LLAVA_HOST or --host): the question starts
at once, with the model already resident.

The request is the server's OpenAI chat-completions API, streamed: media files go up as
``data:`` URLs (the server may not see this machine's files), frame settings in the
``llava`` extra field, and the pieces come back as server-sent events. Standard library
only: no HTTP client to import at start.
"""

from __future__ import annotations

import base64
import http.client
import json
import mimetypes
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit

from .errors import LlavaError, UsageError

DEFAULT_PORT = 8000
# A media file sent inline grows by a third (base64); the server refuses bodies past its
# limit anyway, so say so here first, in a clear line.
MAX_UPLOAD_BYTES = 48 * 1024 * 1024


@dataclass
class ServerAnswer:
    """What the server said besides the text: usage and the frames it used."""

    prompt_tokens: int | None = None
    answer_tokens: int | None = None
    stop_reason: str | None = None
    media: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None


def base_url(host: str) -> tuple[str, str, int, str]:
    """``host`` as LLAVA_HOST gives it (``127.0.0.1``, ``:8000``, ``host:port``,
    ``http://host:port/prefix``) → (scheme, hostname, port, path prefix)."""
    text = host.strip()
    if not text:
        raise UsageError("LLAVA_HOST is empty")
    if "://" not in text:
        text = "http://" + (text if not text.startswith(":") else "127.0.0.1" + text)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not a server address: {host!r} (expected host[:port] or http://host:port)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else DEFAULT_PORT)
    except ValueError:
        raise UsageError(f"not a server address: {host!r} (bad port)") from None
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def media_part(path: str) -> tuple[dict[str, Any], str]:
    """A content part for one media file or URL, and its kind."""
    from .media import IMAGE_EXTENSIONS, is_url

    suffix = os.path.splitext(urlsplit(path).path if is_url(path) else path)[1].lower()
    kind = "image" if suffix in IMAGE_EXTENSIONS else "video"
    if is_url(path):
        url = path
    else:
        source = os.path.expanduser(path)
        try:
            size = os.path.getsize(source)
            if size > MAX_UPLOAD_BYTES:
                raise LlavaError(f"{path} is too large to send to the server ({size:,} bytes; at most "
                                 f"{MAX_UPLOAD_BYTES >> 20} MiB): run without LLAVA_HOST")
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise LlavaError(f"cannot read {path}: {exc.strerror or exc}") from None
        mime = mimetypes.guess_type(source)[0] or ("image/png" if kind == "image" else "video/mp4")
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    key = "image_url" if kind == "image" else "video_url"
    return {"type": key, key: {"url": url}}, kind


def build_request(media: list[str], question: str, *, system: str | None, frames: dict[str, Any],
                  sampling: dict[str, Any]) -> dict[str, Any]:
    content = [media_part(path)[0] for path in media]
    content.append({"type": "text", "text": question})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body: dict[str, Any] = {"model": "llava", "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    body.update({key: value for key, value in sampling.items() if value is not None})
    extra = {key: value for key, value in frames.items() if value is not None}
    if extra:
        body["llava"] = extra
    return body


def stream_answer(host: str, body: dict[str, Any], *, api_key: str | None = None,
                  summary: ServerAnswer | None = None, timeout: float = 600.0) -> Iterator[str]:
    """POST the request and yield the answer's text pieces as the server sends them;
    ``summary`` is filled from the final chunks (usage, the media's frames)."""
    scheme, hostname, port, prefix = base_url(host)
    where = f"{scheme}://{hostname}:{port}"
    connection_type = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_type(hostname, port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        connection.request("POST", f"{prefix}/v1/chat/completions", body=json.dumps(body).encode("utf-8"),
                           headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise LlavaError(f"the llava server at {where} refused the request: {_error_message(response)}")
        for data in _events(response):
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise LlavaError(f"the llava server at {where} sent a malformed event") from None
            if "error" in chunk:
                raise LlavaError(f"the llava server at {where}: {_message_of(chunk)}")
            if summary is not None:
                _note(summary, chunk)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece
    except (ConnectionRefusedError, socket.gaierror) as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else "unknown host"
        raise LlavaError(f"cannot reach the llava server at {where} ({reason}): start it with `llava serve`, "
                         f"or unset LLAVA_HOST to run here") from None
    except (TimeoutError, socket.timeout):
        raise LlavaError(f"the llava server at {where} did not answer within {timeout:.0f} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise LlavaError(f"lost the connection to the llava server at {where}: {exc}") from None
    finally:
        connection.close()


def _events(response) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream."""
    lines: list[str] = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))
    if lines:
        yield "\n".join(lines)


def _note(summary: ServerAnswer, chunk: dict[str, Any]) -> None:
    summary.model = chunk.get("model") or summary.model
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        summary.prompt_tokens = usage.get("prompt_tokens")
        summary.answer_tokens = usage.get("completion_tokens")
    for choice in chunk.get("choices") or []:
        if choice.get("finish_reason"):
            summary.stop_reason = choice["finish_reason"]
    extra = chunk.get("llava")
    if isinstance(extra, dict) and isinstance(extra.get("media"), list):
        summary.media = extra["media"]


def _error_message(response) -> str:
    raw = response.read(1 << 16)
    try:
        return _message_of(json.loads(raw))
    except (ValueError, AttributeError):
        return f"HTTP {response.status} {response.reason}"


def _message_of(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return " ".join(error["message"].split())
    return "unknown error"
