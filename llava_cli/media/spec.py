"""What to ask of a video and what comes back: the sampling options (`FrameSpec`,
`parse_time`), the decoder names, the file extensions taken as images and videos, and
the `Media` result.

This module imports neither PyAV nor Pillow nor numpy, so that configuration and
argument checking can use it without paying for the decoders.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llava_cli.errors import MediaError, UsageError

if TYPE_CHECKING:
    import numpy as np


IMAGE_EXTENSIONS = frozenset(
    {".apng", ".bmp", ".gif", ".ico", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm",
     ".png", ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTENSIONS = frozenset(
    {".3g2", ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg",
     ".mpg", ".mts", ".mxf", ".nut", ".ogv", ".ts", ".vob", ".webm", ".wmv", ".y4m"}
)
DECODERS = ("pyav", "decord")


class SamplingError(UsageError, ValueError):
    """A bad sampling option (frame count, rate, window, time, decoder name).

    A UsageError for the CLI (one line, exit 2) and a ValueError for Python callers."""


# --- sampling options ------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSpec:
    """Which frames to take from a video, and with which decoder.

    `frames`: that many frames, uniformly by index (the reference recipe, see
    `sample_indices`) over the window. `fps`: frames at that rate instead (`frames` is
    then ignored), at most `max_frames` of them; when the cap bites, the rate is lowered
    so the frames still span the whole window. `max_frames` also caps `frames`.
    `start`/`end` (seconds from the first frame) limit the window to frames with
    start <= timestamp < end. `decoder`: "pyav" (default) or "decord" (falls back to
    PyAV, with a notice, where decord is missing or cannot read the input). `seek=False`
    decodes sequentially from the first frame (the fallback path): the same frames,
    slower; for benchmarks and debugging.
    """

    frames: int | None = 8
    fps: float | None = None
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None
    decoder: str = "pyav"
    seek: bool = True

    def __post_init__(self) -> None:
        if self.fps is None and self.frames is None:
            raise SamplingError("give a frame count or a frame rate")
        if self.frames is not None and (not _is_int(self.frames) or self.frames < 1):
            raise SamplingError(f"the frame count must be a whole number of at least 1, got {self.frames!r}")
        if self.fps is not None and not (_is_number(self.fps) and 0 < self.fps < math.inf):
            raise SamplingError(f"the frame rate must be a positive number, got {self.fps!r}")
        if self.max_frames is not None and (not _is_int(self.max_frames) or self.max_frames < 1):
            raise SamplingError(f"the maximum frame count must be at least 1, got {self.max_frames!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 <= value < math.inf):
                raise SamplingError(f"the {name} time must be a non-negative number of seconds, got {value!r}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise SamplingError(
                f"the window is empty: end ({_clock(self.end)}) is not after start ({_clock(self.start)})"
            )
        if self.decoder not in DECODERS:
            raise SamplingError(f"unknown decoder {self.decoder!r}; choose from {', '.join(DECODERS)}")

    @classmethod
    def of(cls, value: FrameSpec | int) -> FrameSpec:
        """A spec from a spec or a plain frame count (the original `num_frames`)."""
        if isinstance(value, FrameSpec):
            return value
        return cls(frames=value)

    @property
    def windowed(self) -> bool:
        return self.start is not None or self.end is not None

    @property
    def frame_count(self) -> int | None:
        """`frames` after the `max_frames` cap (None in fps mode)."""
        if self.fps is not None or self.frames is None:
            return None
        return min(self.frames, self.max_frames) if self.max_frames else self.frames


def _is_int(value: object) -> bool:
    return isinstance(value, (int, *_numpy_types("integer"))) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, *_numpy_types("integer", "floating"))) and not isinstance(value, bool)


def _numpy_types(*names: str) -> tuple[type, ...]:
    """numpy's scalar types, without importing numpy: a value can only be one of them
    once numpy has been imported."""
    numpy = sys.modules.get("numpy")
    return tuple(getattr(numpy, name) for name in names) if numpy is not None else ()


_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")


def parse_time(value: str | float | int) -> float:
    """Seconds from "90", "90.5", "90s", "1:30", "01:02:03.250" ([HH:]MM:SS[.ms]) or a number.

    Raises SamplingError (one line) for anything else, negative times included."""
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
        if not (0 <= seconds < math.inf):
            raise SamplingError(f"bad time {value!r}: times are seconds from the start, 0 or more")
        return seconds
    text = str(value).strip()
    hint = "use seconds (90, 90.5) or [HH:]MM:SS[.ms] (1:30, 1:02:03.5)"
    plain = text[:-1] if text.endswith("s") else text
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", plain):
        return float(plain)
    match = _CLOCK.match(text)
    if not match:
        raise SamplingError(f"bad time {text!r}: {hint}")
    hours, minutes, seconds = match.group(1), int(match.group(2)), float(match.group(3))
    if seconds >= 60 or (hours is not None and minutes >= 60):
        raise SamplingError(f"bad time {text!r}: minutes and seconds go up to 59; {hint}")
    return (int(hours) if hours else 0) * 3600 + minutes * 60 + seconds


def _clock(seconds: float) -> str:
    """1:02:03.250-style time for messages (plain seconds under a minute)."""
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(minutes), 60)
    head = f"{hours}:{minutes:02d}" if hours else f"{minutes}"
    return f"{head}:{rest:06.3f}".rstrip("0").rstrip(".")


# --- results ---------------------------------------------------------------------------


@dataclass
class Media:
    """One decoded image or sampled video, ready for preprocessing."""

    source: str  # the path/URL as given
    kind: str  # "image" or "video"
    frames: np.ndarray  # uint8, (frames, height, width, 3) RGB, upright; an image has one
    frame_indices: list[int]  # indices into the stream in presentation order (image: [0])
    timestamps: list[float]  # seconds of each returned frame from the first (image: [0.0])
    # Frames in the stream (image: 1). Exact when the whole stream was indexed or
    # counted; when a window's end let indexing stop early, the container's own count
    # or, lacking one, duration x rate.
    total_frames: int
    fps: float | None
    notices: list[str] = field(default_factory=list)  # one-line warnings for the user
    # Frames the decoder handed back across all passes; lets tests prove decoding stops
    # after the last sampled frame and skips what seeking skips.
    decoded_frames: int = 0
    decoder: str = "pyav"  # the backend that produced the frames ("pillow" for images)
    seeks: int = 0  # decoding runs started by a seek (0: one pass from the start)

    def describe(self) -> str:
        """One line for --verbose: which frames, at which times, and the decoding cost."""
        if self.kind == "image":
            height, width = self.frames.shape[1:3]
            return f"{self.source}: image {width}x{height}"
        shown = [f"{index}@{time:.2f}s" for index, time in zip(self.frame_indices, self.timestamps)]
        if len(shown) > 12:
            shown = [*shown[:6], "…", *shown[-5:]]
        rate = f", {self.fps:.3g} fps" if self.fps else ""
        cost = self.decoder
        if self.decoded_frames:
            how = f"{self.seeks} seek{'s' if self.seeks != 1 else ''}" if self.seeks else "from the start"
            cost += f", decoded {self.decoded_frames} frames ({how})"
        return (
            f"{self.source}: {len(self.frame_indices)} of {self.total_frames} frames{rate} "
            f"[{' '.join(shown)}]; {cost}"
        )


class _NotRecognised(MediaError):
    """The file is not in a format this loader understands (as opposed to damaged).

    `load_media` uses the distinction to try the other loader before giving up.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # the decoder's own words, for load_media's final message
