"""What ask, chat and batch do alike once their options are parsed: merge them with the
environment and config.toml, resolve the model (before any media is decoded or torch is
imported), load the engine, and read the question."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..render import Notices
from ..validate import MAX_SEED


@dataclass
class Run:
    """What ask, chat and batch share once options, environment and config are merged."""

    notices: Notices
    settings: Any  # config.Settings
    reference: str
    offline: bool
    start: float | None
    end: float | None
    seed: int | None
    long_video: bool
    checkpoint: Any = None
    family: Any = None
    spec: Any = None  # media.FrameSpec
    engine: Any = None

    @property
    def model_name(self) -> str:
        from ..hub import parse_ref

        return parse_ref(self.reference).display

    def open(self, *, has_video: bool = True) -> None:
        """Resolve (downloading if need be) and verify the model, and fix the frame
        settings from its family: before any media is decoded or torch imported, so a
        bad model name fails at once."""
        from ..families import family_for
        from ..hub import open_checkpoint
        from ..media import FrameSpec

        self.checkpoint = open_checkpoint(self.reference, offline=self.offline, progress=not self.notices.quiet,
                                          warn=self.notices.warn)
        self.family = family_for(self.checkpoint)
        settings = self.settings
        frames = settings.frames
        if settings.fps is None:
            frames = self.family.frames_for(frames, warn=self.notices.warn if has_video else None)
        self.spec = FrameSpec(frames=frames, fps=settings.fps, max_frames=settings.max_frames,
                              start=self.start, end=self.end, decoder=settings.decoder)

    def load_engine(self) -> Any:
        from ..engine import Engine

        with self.notices.status("loading model…"):
            settings = self.settings
            quantize = settings.quantize
            self.engine = Engine.load(self.checkpoint, family=self.family, device=settings.device,
                                      dtype=settings.dtype, attn=settings.attn, quantize=quantize,
                                      compile=bool(settings.compile), prefill_chunk=settings.prefill_chunk,
                                      time_instruction=settings.time_instruction)
        notices = self.notices
        engine = self.engine
        if settings.time_instruction and not self.family.takes_time_instruction:
            notices.warn(f"the time instruction (--time-instruction) is for LLaVA-OneVision-class models "
                         f"(LLaVA-Video); ignored for {self.family.title}")
        weights = "unquantized" if quantize in (None, "none") else quantize
        notices.detail(f"model {self.family.title} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}), "
                       f"attention {engine.attention}, language-model weights {weights}"
                       + (", compiled decode" if settings.compile else "")
                       + (", LLaVA-Video time instruction before video questions" if engine.time_instruction else ""))

        def encoded(media, item) -> None:
            if media is None:
                notices.detail(f"encoded {item.kind}")
            elif media.kind == "video":
                notices.detail(f"encoded video {media.source} ({len(media.frame_indices)} frames)")
            else:
                notices.detail(f"encoded image {media.source}")

        self.engine.on_encode = encoded
        return self.engine

    def sampling(self):
        settings = self.settings
        return self.engine.sampling(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                    top_p=settings.top_p, top_k=settings.top_k, seed=self.seed)

    def load_media(self, path: str):
        from ..media import load_media

        media = load_media(path, self.spec)
        for note in media.notices:
            self.notices.warn(note)
        self.notices.detail(media.describe())
        return media


    @classmethod
    def create(cls, options) -> "Run":
        """A run from a command's shared options (``options.RunOptions``)."""
        from .. import config

        notices = Notices(quiet=options.quiet, verbose=options.verbose)
        if options.seed is not None and not 0 <= options.seed <= MAX_SEED:
            raise UsageError(f"--seed must be from 0 to {MAX_SEED} (2**64 - 1), got {options.seed}")
        flags = {setting.key: getattr(options, setting.key) for setting in config.SETTINGS}
        settings = config.resolve(flags, warn=notices.warn).settings
        check_text(settings.system, "the system prompt")
        start = end = None
        if options.start is not None or options.end is not None:
            from ..media import parse_time

            start = parse_time(options.start) if options.start is not None else None
            end = parse_time(options.end) if options.end is not None else None
        return cls(notices, settings, settings.model, options.offline, start, end, options.seed, options.long_video)


def check_question(question: str, *, folders: bool = False) -> None:
    """`llava ask clip.mp4`: a media path in the question's place is a missing question,
    not a question (for batch, a folder too)."""
    from ..media import looks_like_media

    if looks_like_media(question):
        raise UsageError(f"missing argument QUESTION: '{question}' is a media file, not a question")
    if folders and os.path.isdir(os.path.expanduser(question)):
        raise UsageError(f"missing argument QUESTION: '{question}' is a folder, not a question")


MAX_QUESTION_BYTES = 16 * 1024 * 1024  # a question read from stdin; /dev/zero is not one


def read_stdin_question() -> str:
    """The question from standard input: UTF-8 text, at most MAX_QUESTION_BYTES."""
    stream = getattr(sys.stdin, "buffer", None)
    raw = stream.read(MAX_QUESTION_BYTES + 1) if stream is not None else sys.stdin.read().encode("utf-8")
    if len(raw) > MAX_QUESTION_BYTES:
        raise UsageError(f"the question read from standard input is too long (over {MAX_QUESTION_BYTES >> 20} MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the question read from standard input is not valid UTF-8 text "
                         f"(byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise UsageError("the question read from standard input is empty")
    return text.strip()


def check_text(text: str | None, what: str) -> None:
    """Command-line text arrives decoded with surrogate escapes for bytes that are not
    UTF-8; a question or a system prompt has to be text: refused, not mangled."""
    if text is not None and any("\ud800" <= c <= "\udfff" for c in text):
        raise UsageError(f"{what} is not valid UTF-8 text")
