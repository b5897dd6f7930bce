"""The request side of the OpenAI chat-completions API, checked before any work is done.

``parse_chat`` turns a decoded JSON body into a ``ChatRequest`` or raises an ``ApiError``
naming the field (``param``) in OpenAI's error shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[0].role",
               "code": "unknown_role"}}

Also here, because they are pure text rules: ``StopText`` (the ``stop`` strings: text is
cut before the first one, and text that could still become one is held back) and
``parse_duration`` (``--keep-alive 5m``). Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..validate import MAX_SEED

# A request body, base64 media included: room for one inline medium at its limit (48 MiB,
# sources.MAX_MEDIA_BYTES: 64 MiB as base64) and the rest of the request.
MAX_BODY_BYTES = 80 * 1024 * 1024
MAX_MEDIA_ITEMS = 32  # images and videos in one request
# Characters of text in one request: far more than any LLaVA context holds (even stretched
# by --long-video), and little enough that the worker never stalls on tokenizing it.
MAX_TEXT_CHARS = 1_000_000
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024
ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer name for system
FRAME_KEYS = ("frames", "fps", "max_frames", "start", "end")  # the "llava" extra object

# Parameters whose non-default values this server cannot honour: refused, never ignored.
_UNSUPPORTED = {
    "logprobs": lambda v: v is True,
    "top_logprobs": lambda v: v not in (None, 0),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "tool_choice": lambda v: v not in (None, "none", "auto"),
    "function_call": lambda v: v not in (None, "none", "auto"),
    "logit_bias": lambda v: bool(v),
    "frequency_penalty": lambda v: v not in (None, 0, 0.0),
    "presence_penalty": lambda v: v not in (None, 0, 0.0),
    "response_format": lambda v: v is not None and not (isinstance(v, dict) and v.get("type") == "text"),
    "audio": lambda v: v is not None,
    "modalities": lambda v: v is not None and v != ["text"],
}


class ApiError(Exception):
    """A request refused with an HTTP status and OpenAI's error object."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
             422: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())  # one line
        self.param = param
        self.code = code
        self.type = type or self.TYPES.get(status, "server_error")

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class MediaPart:
    """An ``image_url`` or ``video_url`` content part, in prompt order."""

    url: str
    part: str  # "image_url" | "video_url"
    param: str  # where it is in the body, for errors: messages[1].content[0].image_url.url


@dataclass
class ChatRequest:
    """A checked chat-completions request. ``messages`` are chat-template messages whose
    media parts are ``{"type": "media", "index": i}`` until the media is decoded and its
    kind known (``template_messages``)."""

    messages: list[dict[str, Any]]
    media: list[MediaPart] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    frames: dict[str, Any] = field(default_factory=dict)  # the "llava" object's settings, as given
    has_system: bool = False

    def template_messages(self, kinds: list[str], system: str | None = None) -> list[dict[str, Any]]:
        """The messages for the chat template, each media part as its kind ("image" or
        "video"); ``system`` (the server's --system) goes first when the request has none."""
        out: list[dict[str, Any]] = []
        if system and not self.has_system:
            out.append({"role": "system", "content": [{"type": "text", "text": system}]})
        for message in self.messages:
            content = [{"type": kinds[part["index"]]} if part["type"] == "media" else part
                       for part in message["content"]]
            out.append({"role": message["role"], "content": content})
        return out


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise bad("the request body is empty: send a JSON object", code="invalid_json")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise bad(f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                  code="invalid_json") from None
    except RecursionError:
        raise bad("the request body is nested too deeply", code="invalid_json") from None


def parse_chat(body: Any) -> ChatRequest:
    """Check a chat-completions body (see the module notes)."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {_json_type(body)}", code="invalid_type")
    for name, refused in _UNSUPPORTED.items():
        if name in body and refused(body[name]):
            raise bad(f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise bad("'n' must be 1: this server returns one choice", param="n", code="unsupported_parameter")
    if "messages" not in body:
        raise bad("'messages' is required", param="messages", code="missing_required_parameter")
    raw_messages = body["messages"]
    if not isinstance(raw_messages, list):
        raise bad(f"'messages' must be an array, not {_json_type(raw_messages)}", param="messages",
                  code="invalid_type")
    if not raw_messages:
        raise bad("'messages' must hold at least one message", param="messages", code="invalid_value")
    chat = ChatRequest(messages=[])
    for index, message in enumerate(raw_messages):
        chat.messages.append(_message(message, f"messages[{index}]", chat))
    chars = sum(len(part.get("text", "")) for message in chat.messages for part in message["content"])
    if chars > MAX_TEXT_CHARS:
        raise bad(f"the messages hold {chars:,} characters of text, more than any model's context takes "
                  f"(at most {MAX_TEXT_CHARS:,})", param="messages", code="context_length_exceeded")
    if len(chat.media) > MAX_MEDIA_ITEMS:
        raise bad(f"at most {MAX_MEDIA_ITEMS} images and videos per request, got {len(chat.media)}",
                  param="messages", code="too_many_media")
    chat.model = _optional(body, "model", str)
    chat.stream = bool(_optional(body, "stream", bool))
    options = _optional(body, "stream_options", dict) or {}
    chat.include_usage = bool(_optional(options, "include_usage", bool, "stream_options.include_usage"))
    for name in ("max_completion_tokens", "max_tokens"):
        value = _optional(body, name, int)
        if value is not None and value < 1:
            raise bad(f"'{name}' must be at least 1, got {value}", param=name)
        if value is not None and chat.max_tokens is None:
            chat.max_tokens = value
    chat.temperature = _optional(body, "temperature", float)
    if chat.temperature is not None and chat.temperature < 0:
        raise bad(f"'temperature' must be 0 or more, got {chat.temperature:g}", param="temperature")
    chat.top_p = _optional(body, "top_p", float)
    if chat.top_p is not None and not 0 < chat.top_p <= 1:
        raise bad(f"'top_p' must be in (0, 1], got {chat.top_p:g}", param="top_p")
    chat.top_k = _optional(body, "top_k", int)
    if chat.top_k is not None and chat.top_k < 0:
        raise bad(f"'top_k' must be 0 or more, got {chat.top_k}", param="top_k")
    chat.seed = _optional(body, "seed", int)
    if chat.seed is not None and not 0 <= chat.seed <= MAX_SEED:
        raise bad(f"'seed' must be from 0 to {MAX_SEED}, got {chat.seed}", param="seed")
    chat.stop = _stop(body.get("stop"))
    chat.frames = _frames(body.get("llava"))
    return chat


def _message(message: Any, where: str, chat: ChatRequest) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise bad(f"{where} must be an object, not {_json_type(message)}", param=where, code="invalid_type")
    if "role" not in message:
        raise bad(f"{where}.role is required", param=f"{where}.role", code="missing_required_parameter")
    role = message["role"]
    if not isinstance(role, str):
        raise bad(f"{where}.role must be a string", param=f"{where}.role", code="invalid_type")
    if role not in ROLES:
        raise bad(f"{where}.role {role[:40]!r} is not supported (use system, user or assistant)",
                  param=f"{where}.role", code="unknown_role")
    if role == "developer":
        role = "system"
    if role == "system":
        chat.has_system = True
    content = message.get("content")
    parts: list[dict[str, Any]] = []
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        parts.append({"type": "text", "text": _text(content, f"{where}.content")})
    elif isinstance(content, list):
        for number, part in enumerate(content):
            parts.append(_part(part, f"{where}.content[{number}]", role, chat))
    elif content is None:
        raise bad(f"{where}.content is required", param=f"{where}.content", code="missing_required_parameter")
    else:
        raise bad(f"{where}.content must be a string or an array of parts, not {_json_type(content)}",
                  param=f"{where}.content", code="invalid_type")
    return {"role": role, "content": parts}


def _part(part: Any, where: str, role: str, chat: ChatRequest) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise bad(f"{where} must be an object, not {_json_type(part)}", param=where, code="invalid_type")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise bad(f"{where}.text must be a string", param=f"{where}.text", code="invalid_type")
        return {"type": "text", "text": _text(text, f"{where}.text")}
    if kind in ("image_url", "video_url"):
        if role != "user":
            raise bad(f"{where}: images and videos go in user messages, not {role} ones", param=where,
                      code="invalid_value")
        value = part.get(kind)
        url = value.get("url") if isinstance(value, dict) else value  # {"url": …} or the URL itself
        if not isinstance(url, str) or not url:
            raise bad(f"{where}.{kind}.url must be a non-empty string", param=f"{where}.{kind}.url",
                      code="invalid_type")
        chat.media.append(MediaPart(url, kind, f"{where}.{kind}.url"))
        return {"type": "media", "index": len(chat.media) - 1}
    shown = kind[:40] if isinstance(kind, str) else _json_type(kind)
    raise bad(f"{where}.type {shown!r} is not supported (use text, image_url or video_url)",
              param=f"{where}.type", code="invalid_value")


def _text(text: str, where: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which are not text a tokenizer can take.
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise bad(f"{where} is not valid Unicode text (a lone surrogate)", param=where, code="invalid_value")
    return text


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("'stop' must be a string or an array of strings", param="stop", code="invalid_type")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", param="stop")
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise bad(f"each stop string must have 1 to {MAX_STOP_CHARS} characters", param="stop")
        _text(stop, "stop")
    return list(dict.fromkeys(stops))


def _frames(value: Any) -> dict[str, Any]:
    """The "llava" object's frame settings, typed (their ranges are FrameSpec's to check)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"'llava' must be an object, not {_json_type(value)}", param="llava", code="invalid_type")
    unknown = sorted(set(value) - set(FRAME_KEYS))
    if unknown:
        raise bad(f"llava.{unknown[0][:40]} is not a setting (use {', '.join(FRAME_KEYS)})",
                  param=f"llava.{unknown[0][:40]}", code="unknown_parameter")
    out: dict[str, Any] = {}
    for key in ("frames", "max_frames"):
        number = _optional(value, key, int, f"llava.{key}")
        if number is not None:
            out[key] = number
    fps = _optional(value, "fps", float, "llava.fps")
    if fps is not None:
        out["fps"] = fps
    for key in ("start", "end"):
        given = value.get(key)
        if given is None:
            continue
        if isinstance(given, bool) or not isinstance(given, (int, float, str)):
            raise bad(f"llava.{key} must be seconds or a [HH:]MM:SS time", param=f"llava.{key}",
                      code="invalid_type")
        out[key] = given
    return out


def _optional(body: dict, name: str, kind: type, where: str | None = None) -> Any:
    """body[name] if present and not null, checked to be of ``kind`` (float takes ints)."""
    value = body.get(name)
    where = where or name
    if value is None:
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif kind is dict:
        ok, expected = isinstance(value, dict), "an object"
    else:
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        raise bad(f"'{where}' must be {expected}, not {_json_type(value)}", param=where, code="invalid_type")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# ---------------------------------------------------------------------------------------
# stop strings


class StopText:
    """Text pieces in, the text to send out: cut before the first stop string, and holding
    back any tail that could still grow into one (so no client ever sees part of a stop
    string, streamed or not)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add text; return what is safe to send now (``stopped`` tells whether a stop
        string was met: nothing after it is ever returned)."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self.held + piece
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, self.held = True, ""
            return text[:min(cuts)]
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:size]):
                    keep = size
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The end of the answer: what was held back is not a stop string after all."""
        held, self.held = ("" if self.stopped else self.held), ""
        return held


# ---------------------------------------------------------------------------------------
# --keep-alive

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """Seconds from ``5m``, ``30s``, ``1h30m``, ``250ms`` or a plain number of seconds;
    None (never) for a negative value such as ``-1``. As ollama's keep_alive."""
    value = str(text).strip().lower()
    if not value:
        raise ValueError("an empty duration")
    negative = value.startswith("-")
    body = value[1:] if negative else value
    try:
        seconds = float(body)
    except ValueError:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        if seconds is not None or not body or _DURATION_PART.sub("", body):
            raise ValueError(f"not a duration: {text!r} (use 30s, 5m, 1h, 0 or -1)")
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        seconds = sum(float(number) * units[unit] for number, unit in _DURATION_PART.findall(body))
    if negative and seconds > 0:
        return None
    return seconds


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
