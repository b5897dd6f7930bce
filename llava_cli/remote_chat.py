"""`llava chat` through a running `llava serve` (LLAVA_HOST or --host).

``RemoteChatSession`` keeps the conversation as ``ChatSession`` does (messages, attachments,
/system, /reset, /save, /load are inherited) and sends the whole conversation to the server
each turn, as any OpenAI client does. The server keeps each image and video's encoding
(keyed by its bytes and frame settings), so a turn re-runs the text of the conversation but
never the vision tower; unlike the in-process session it does not reuse the previous turn's
KV cache.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from .client import ServerAnswer, media_part, stream_answer
from .generate import Sampling
from .session import ChatSession, Message, TurnStats


class RemoteChatSession(ChatSession):
    def __init__(self, host: str, *, system: str | None = None, api_key: str | None = None,
                 cache=None) -> None:  # noqa: D107 - no engine: the server has the model
        import itertools

        self.engine = None
        self.host = host
        self.api_key = api_key if api_key is not None else os.environ.get("LLAVA_API_KEY")
        self.system = system
        self.long_video = False
        self.cache = cache
        self.messages: list[Message] = []
        self.pending = []
        self.last = TurnStats()
        self._uids = itertools.count()
        self._keys: list[int] = []
        self._rope_factor = 1.0
        self._row = None

    def _request(self, sampling: Sampling) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        spec = None
        for message in self.messages:
            if message.role == "assistant":
                messages.append({"role": "assistant", "content": message.text})
                continue
            content = [media_part(slot.entry.media.source)[0] for slot in message.media]
            content.append({"type": "text", "text": message.text})
            messages.append({"role": "user", "content": content})
            for slot in message.media:
                spec = slot.entry.spec  # the frame settings travel per request: the latest attachment's
        body: dict[str, Any] = {"model": "llava", "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}, "max_tokens": sampling.max_new_tokens,
                                "temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if spec is not None:
            frames = {"frames": spec.frames if spec.fps is None else None, "fps": spec.fps,
                      "max_frames": spec.max_frames,
                      "start": None if spec.start is None else repr(spec.start),
                      "end": None if spec.end is None else repr(spec.end)}
            body["llava"] = {key: value for key, value in frames.items() if value is not None}
        return body

    def ask(self, question: str, sampling: Sampling) -> Iterator[str]:
        """Send the conversation with ``question`` and stream the answer (see ChatSession.ask:
        an interruption keeps a partial answer, or withdraws a question not yet answered)."""
        user = Message("user", question, self.pending)
        self.messages.append(user)
        self.pending = []
        summary = ServerAnswer()
        pieces: list[str] = []
        finished = False
        try:
            body = self._request(sampling)
            for piece in stream_answer(self.host, body, api_key=self.api_key, summary=summary):
                pieces.append(piece)
                yield piece
            finished = True
        finally:
            if not pieces and not finished:
                self._withdraw(user)
            else:
                self.messages.append(Message("assistant", "".join(pieces).strip(), interrupted=not finished))
            self.last = TurnStats(prompt_tokens=summary.prompt_tokens or 0)
            self.last.timings.answer_tokens = summary.answer_tokens or 0
            self.last.timings.stop_reason = summary.stop_reason or ("interrupted" if not finished else "")
