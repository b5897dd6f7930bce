"""Multi-turn conversations whose history lives in the model's KV cache, and media that
is decoded and encoded once however many prompts use it.

A turn of ``ChatSession``:

1. the whole conversation (system prompt, every user and assistant turn, the new
   question) is rendered with the checkpoint's chat template and tokenized, exactly as a
   one-shot prompt would be;
2. those ids are compared with the ids whose keys and values the cache already holds;
   only the suffix after the longest common prefix is run through the model. Normally
   that is the new question (and the tail of the previous answer as the template
   writes it); after ``/system`` it is everything after the system prompt. Media
   placeholders compare by which image or video fills them, not by their token id;
3. only media that was never encoded is encoded; every other image and video reuses its
   stored embeddings, wherever the prefill starts;
4. the answer is decoded on top of the cache, which grows by copying
   (``TextModel.grow_cache``) and never loses its contents.

Interrupting an answer (Ctrl-C) keeps the partial answer as the assistant's turn (marked
``interrupted``). The cache is trusted only up to the last position whose forward pass
finished, so a turn cut anywhere leaves a consistent session. A question interrupted
before its first answer token is withdrawn, and its media goes back to "attached".
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .engine import Encoded, Engine
from .errors import LlavaError, PromptError, UsageError
from .families import MediaInput
from .generate import Sampling, decode_loop
from .media import FrameSpec, Media, is_url, load_media
from .schema import media_record

SAVE_FORMAT = "llava-chat/1"


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while bookkeeping that must not be cut in half runs (POSIX main
    thread only; elsewhere a no-op). A Ctrl-C pressed meanwhile arrives right after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------------------
# Media, decoded and encoded once


@dataclass(eq=False)
class MediaEntry:
    """One decoded image or video; preprocessed and encoded on first need, then kept."""

    media: Media
    spec: FrameSpec
    key: tuple | None = None
    item: MediaInput | None = None
    features: torch.Tensor | None = None
    load_s: float = 0.0
    encode_s: float = 0.0

    @property
    def encoded(self) -> Encoded:
        assert self.item is not None and self.features is not None
        return Encoded(self.media, self.item, self.features)


def media_key(path: str, spec: FrameSpec) -> tuple | None:
    """What makes decoded frames reusable: the file (by real path, modification time and
    size) and the frame settings. None for URLs, which are fetched every time."""
    if is_url(path):
        return None
    try:
        real = os.path.realpath(os.path.expanduser(path))
        info = os.stat(real)
    except OSError:
        return None
    return (real, info.st_mtime_ns, info.st_size, spec)


class MediaCache:
    """Decoded media and its embeddings by ``media_key``, the ``limit`` most recent."""

    def __init__(self, engine: Engine | None = None, limit: int = 16) -> None:
        self.engine = engine
        self.limit = limit
        self._entries: OrderedDict[tuple, MediaEntry] = OrderedDict()

    def load(self, path: str, spec: FrameSpec) -> MediaEntry:
        key = media_key(path, spec)
        if key is not None and key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        started = time.perf_counter()
        media = load_media(path, spec)
        entry = MediaEntry(media, spec, key, load_s=time.perf_counter() - started)
        self.adopt(entry)
        return entry

    def adopt(self, entry: MediaEntry) -> MediaEntry:
        """Keep an entry decoded elsewhere (a prefetch thread); the cached one if any."""
        if entry.key is None:
            return entry
        if entry.key in self._entries:
            self._entries.move_to_end(entry.key)
            return self._entries[entry.key]
        self._entries[entry.key] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        return entry

    def prepare(self, entry: MediaEntry) -> MediaInput:
        if entry.item is None:
            entry.item = self.engine.family.prepare([entry.media])[0]
        return entry.item

    def encode(self, entry: MediaEntry) -> Encoded:
        """The entry's embeddings, computed on first use only."""
        if entry.features is None:
            started = time.perf_counter()
            item = self.prepare(entry)
            entry.features = self.engine.encode_item(item, entry.media)
            entry.encode_s = time.perf_counter() - started
        return entry.encoded


# ---------------------------------------------------------------------------------------
# The conversation


@dataclass(eq=False)
class Slot:
    """One image or video at its place in the conversation."""

    entry: MediaEntry
    uid: int  # tells two slots apart even when they show the same file


@dataclass
class Message:
    role: str  # "user" | "assistant"
    text: str
    media: list[Slot] = field(default_factory=list)
    interrupted: bool = False  # an assistant turn cut short by Ctrl-C


@dataclass
class TurnStats:
    prompt_tokens: int = 0  # the whole conversation as the model sees it
    reused_tokens: int = 0  # of those, already in the cache
    media_encoded: int = 0  # images and videos encoded for this turn


class ChatSession:
    """A conversation with one loaded model (see the module notes)."""

    def __init__(self, engine: Engine, *, system: str | None = None, long_video: bool = False,
                 cache: MediaCache | None = None) -> None:
        self.engine = engine
        self.system = system
        self.long_video = long_video
        self.cache = cache or MediaCache(engine)
        self.messages: list[Message] = []
        self.pending: list[Slot] = []  # attached, sent with the next question
        self.last = TurnStats()
        self._uids = itertools.count()
        # The cache's contents: one key per position (a token id, or -1-uid for the
        # positions of a media slot), and the RoPE factor they were computed with.
        self._keys: list[int] = []
        self._rope_factor = engine.family.text_config.rope_linear_factor

    # -- state ---------------------------------------------------------------------------
    @property
    def cached_tokens(self) -> int:
        return len(self._keys)

    def attach(self, entry: MediaEntry) -> Slot:
        slot = Slot(entry, next(self._uids))
        self.pending.append(slot)
        return slot

    def reset(self) -> None:
        """Forget the conversation and attachments; the system prompt stays."""
        self.messages, self.pending, self._keys = [], [], []

    def set_system(self, text: str | None) -> None:
        # The next turn's prefix comparison finds where the prompt changed: nothing else
        # to do here, and the media stays encoded.
        self.system = text or None

    def template_messages(self, extra: Message | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        for message in [*self.messages, *([extra] if extra else [])]:
            content: list[dict[str, Any]] = [{"type": s.entry.media.kind} for s in message.media]
            content.append({"type": "text", "text": message.text})
            out.append({"role": message.role, "content": content})
        return out

    def slots(self) -> list[Slot]:
        return [slot for message in self.messages for slot in message.media]

    # -- a turn --------------------------------------------------------------------------
    def ask(self, question: str, sampling: Sampling) -> Iterator[str]:
        """Answer ``question`` (with the attached media) in pieces of text.

        Ends the turn however iteration ends: finished, closed early, or interrupted by
        an exception (Ctrl-C) inside or outside the generator.
        """
        engine, text_model = self.engine, self.engine.model.text
        user = Message("user", question, self.pending)
        self.messages.append(user)
        self.pending = []
        try:
            slots = self.slots()
            for slot in slots:
                self.cache.prepare(slot.entry)
            prepared = engine.prepare_messages(self.template_messages(), [s.entry.item for s in slots],
                                               long_video=self.long_video)
        except PromptError as exc:
            self._withdraw(user)
            if len(self.messages) > 0:
                raise PromptError(f"{exc.message} (the whole conversation counts: /reset starts over)") from None
            raise
        except BaseException:
            self._withdraw(user)
            raise
        ids = prepared.input_ids
        keys, spans = _keys_and_spans(ids, slots)
        length = len(ids)
        reuse = _common_prefix(self._keys, keys) if prepared.rope_factor == self._rope_factor else 0
        reuse = min(reuse, length - 1)  # at least one position to run, for the next-token logits
        # From here on the cache beyond `reuse` is being rewritten.
        self._keys = self._keys[:reuse]
        self._rope_factor = prepared.rope_factor
        stats = self.last = TurnStats(prompt_tokens=length, reused_tokens=reuse)
        answer: list[int] = []
        finished = False
        try:
            engine.timings.prompt_tokens = length
            started = time.perf_counter()
            before = engine.stats.media_encoded
            features = {}
            for slot, start in spans:
                if start + slot.entry.item.num_tokens > reuse:  # some of it must be run
                    features[slot.uid] = self.cache.encode(slot.entry).features
            stats.media_encoded = engine.stats.media_encoded - before
            engine.timings.encode_s = time.perf_counter() - started
            embeds = self._embed(ids, reuse, spans, features)
            capacity = min(length + sampling.max_new_tokens, prepared.context)
            grow_to = max(capacity, min(prepared.context, int(text_model.cache_capacity * 1.5)))
            with sigint_deferred():
                text_model.grow_cache(grow_to)
            engine._use_rope(prepared)
            decoder = engine.tokenizer.stream()
            tokens = decode_loop(text_model, embeds, sampling, engine.stop_ids, start=reuse,
                                 max_positions=capacity)
            for token in engine._timed(tokens, sampling, limit=capacity - length):
                answer.append(token)
                piece = decoder.push(token)
                if piece:
                    yield piece
            finished = True
            tail = decoder.flush()
            if tail:
                yield tail
        finally:
            with sigint_deferred():
                self._end_turn(user, keys[:length], answer, finished)

    def _embed(self, ids: list[int], start: int, spans: list[tuple[Slot, int]],
               features: dict[int, torch.Tensor]) -> torch.Tensor:
        """Embeddings of ids[start:] with media features spliced in: (1, L - start, hidden)."""
        engine = self.engine
        with torch.inference_mode():
            embeds = engine.model.text.embed(torch.tensor(ids[start:], device=engine.device))
            for slot, begin in spans:
                if slot.uid not in features:
                    continue
                end = begin + slot.entry.item.num_tokens
                lo = max(begin, start)
                embeds[lo - start:end - start] = features[slot.uid][lo - begin:].to(embeds.dtype)
        return embeds[None]

    def _end_turn(self, user: Message, prompt_keys: list[int], answer: list[int], finished: bool) -> None:
        engine = self.engine
        if not answer and not finished:
            # Stopped before the first token: as if the question was never asked. The
            # prompt's positions may be half written, so the cache keeps what it had.
            self._withdraw(user)
            return
        # decode_loop feeds every token it yields back into the cache except the last one
        # when it stops at the limit or is cut off; at a stop token all of them are in.
        fed = len(answer) if engine.timings.stop_reason == "stop" else max(0, len(answer) - 1)
        self._keys = prompt_keys + answer[:fed]
        text = engine.tokenizer.decode(answer).strip()
        self.messages.append(Message("assistant", text, interrupted=not finished))

    def _withdraw(self, user: Message) -> None:
        if self.messages and self.messages[-1] is user:
            self.messages.pop()
        self.pending = user.media + self.pending

    # -- save and load -------------------------------------------------------------------
    def to_json(self, model: str, settings: dict[str, Any]) -> dict[str, Any]:
        def media(slot: Slot) -> dict[str, Any]:
            m = slot.entry.media
            source = m.source if is_url(m.source) else os.path.abspath(os.path.expanduser(m.source))
            return {**media_record(m, source), "spec": asdict(slot.entry.spec)}

        messages = []
        for message in self.messages:
            record: dict[str, Any] = {"role": message.role, "content": message.text}
            if message.media:
                record["media"] = [media(s) for s in message.media]
            if message.interrupted:
                record["interrupted"] = True
            messages.append(record)
        return {"format": SAVE_FORMAT, "model": model, "system": self.system, "settings": settings,
                "messages": messages, "attached": [media(s) for s in self.pending]}

    def load_json(self, data: Any, load: Callable[[str, FrameSpec], MediaEntry]) -> None:
        """Replace the conversation with a saved one; its media is decoded again (and
        encoded at the next question). On any error the session is left unchanged."""
        if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
            raise UsageError(f"not a saved llava conversation (expected \"format\": \"{SAVE_FORMAT}\")")
        messages: list[Message] = []
        uids = itertools.count()

        def slots(records: Any) -> list[Slot]:
            if not isinstance(records, list):
                raise UsageError("a saved conversation's media must be a list")
            out = []
            for record in records:
                if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                    raise UsageError("a saved media entry has no path")
                try:
                    saved = record.get("spec") or {}
                    if not isinstance(saved, dict):
                        raise TypeError
                    spec = FrameSpec(**saved)
                except (TypeError, ValueError, OverflowError):
                    raise UsageError(f"bad frame settings saved for {record['path']}") from None
                out.append(Slot(load(record["path"], spec), next(uids)))
            return out

        raw_messages = data.get("messages")
        if not isinstance(raw_messages, list):
            raise UsageError("a saved conversation needs a list of messages")
        for record in raw_messages:
            if not isinstance(record, dict) or record.get("role") not in ("user", "assistant") \
                    or not isinstance(record.get("content"), str):
                raise UsageError("each saved message needs a role (user or assistant) and text content")
            messages.append(Message(record["role"], record["content"], slots(record.get("media", [])),
                                    bool(record.get("interrupted", False))))
        pending = slots(data.get("attached", []))
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise UsageError("a saved system prompt must be text")
        self.messages, self.pending, self.system = messages, pending, system
        self._uids = uids
        self._keys = []


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _keys_and_spans(ids: list[int], slots: list[Slot]) -> tuple[list[int], list[tuple[Slot, int]]]:
    """Cache keys for ``ids`` and where each slot's placeholder run starts.

    The k-th run of a placeholder id belongs to the k-th slot of that kind, as in
    ``expand_placeholders`` (a template may order images before videos in a turn)."""
    queues: dict[int, list[Slot]] = {}
    for slot in slots:
        queues.setdefault(slot.entry.item.placeholder_id, []).append(slot)
    cursor = {placeholder: 0 for placeholder in queues}
    keys = list(ids)
    spans: list[tuple[Slot, int]] = []
    i = 0
    while i < len(ids):
        token = ids[i]
        queue = queues.get(token)
        if queue is not None and cursor[token] < len(queue):
            slot = queue[cursor[token]]
            cursor[token] += 1
            n = slot.entry.item.num_tokens
            keys[i:i + n] = [-1 - slot.uid] * n
            spans.append((slot, i))
            i += n
        else:
            i += 1
    return keys, spans


MAX_CONVERSATION_BYTES = 64 * 1024 * 1024  # /load reads the file whole: at most this much


def save_conversation(path: str | Path, data: dict[str, Any]) -> Path:
    """Write atomically: a crash leaves the old file or the new one, never half of one.
    The temp file is renamed only over a regular file (or nothing): never over a device,
    a FIFO or a folder, whatever the user's rights. A symlink is followed, so the file it
    names is replaced and the link stays."""
    target = Path(os.path.realpath(Path(path).expanduser()))
    _check_save_target(target, path)
    text = json.dumps(data, ensure_ascii=False, indent=2)
    try:
        encoded = (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a media path that is not UTF-8: \udcXX escapes
        encoded = (json.dumps(data, ensure_ascii=True, indent=2) + "\n").encode("ascii")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())
        _check_save_target(target, path)  # still a regular file (or absent) just before the rename
        os.replace(tmp, target)
    except (OSError, LlavaError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, LlavaError):
            raise
        raise LlavaError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def _check_save_target(target: Path, given: str | Path) -> None:
    try:
        status = os.lstat(target)
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise LlavaError(f"cannot write {given}: the folder {target.parent} does not exist") from None
        return
    except OSError as exc:
        raise LlavaError(f"cannot write {given}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(status.st_mode):
        what = "a folder" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise LlavaError(f"cannot save to {given}: it is {what}")


def read_conversation(path: str | Path) -> Any:
    """A saved conversation: a regular file of at most MAX_CONVERSATION_BYTES (a device
    or a FIFO is refused before it is opened, and the open cannot block)."""
    source = Path(path).expanduser()
    try:
        status = source.stat()
        if stat.S_ISDIR(status.st_mode):
            raise LlavaError(f"cannot load {source}: it is a folder")
        if not stat.S_ISREG(status.st_mode):
            raise LlavaError(f"cannot load {source}: it is not a regular file")
        if status.st_size > MAX_CONVERSATION_BYTES:
            raise LlavaError(f"cannot load {source}: too large for a saved conversation "
                             f"({status.st_size:,} bytes; at most {MAX_CONVERSATION_BYTES >> 20} MiB)")
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise LlavaError(f"cannot load {source}: it is not a regular file")
            raw = handle.read(MAX_CONVERSATION_BYTES + 1)
        if len(raw) > MAX_CONVERSATION_BYTES:
            raise LlavaError(f"cannot load {source}: too large for a saved conversation")
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise LlavaError(f"no such file: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LlavaError(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise LlavaError(f"{source} is not JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise LlavaError(f"{source} is nested too deeply to be a saved conversation") from None
