"""Decode images and sample video frames into uint8 RGB arrays.

Everything that can go wrong with a user's file becomes a one-line `MediaError` naming the
file; nothing here prints. Warnings meant for the user (a truncated video, an unreadable
EXIF block, a decoder that was not available) travel back on `Media.notices` for the CLI
to show.

Which frames a video yields is decided by `FrameSpec` (uniform `frames`, or a fixed
`fps` capped by `max_frames`, inside an optional `start`/`end` window) over the stream's
frames in presentation order, counted from the first frame, exactly as a full sequential
decode would number them. How they are decoded never changes which frames come back:

1. One index pass demuxes the video packets without decoding them (bytes are read, no
   pixels made) to learn every frame's timestamp and where the keyframes are. This is
   the frame count too, so a header that states none, or a wrong one, does not matter.
2. Targets are grouped into runs. A run starts at the keyframe at or before its first
   target (one GOP earlier for an open-GOP leading picture) and decodes forward, so
   targets sharing a GOP, or close enough that decoding on beats seeking, share the
   work. Runs are reached by seeking; every seek is verified by matching the packets it
   lands on against the index.
3. While a run decodes, each frame is identified by its timestamp, and the frames must
   come out as consecutive presentation indices. Anything unexpected (a frame the
   index does not know, a gap, a decode error, a seek that lands elsewhere) abandons
   the fast path for the plain sequential decode from the start, which is correct by
   definition. So the fast path returns the sequential decode's frames or nothing.

Memory holds the frames kept (written straight into the result array) plus about 50
bytes of index per frame (16 MB for three hours at 30 fps) and the decoders' own
buffers; decoded frames that are not kept are dropped at once.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.logging
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava_cli.errors import MediaError, UsageError

__all__ = [
    "DECODERS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameSpec",
    "Media",
    "SamplingError",
    "is_url",
    "load_image",
    "load_media",
    "load_video",
    "parse_time",
    "sample_indices",
]

IMAGE_EXTENSIONS = frozenset(
    {".apng", ".bmp", ".gif", ".ico", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm",
     ".png", ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTENSIONS = frozenset(
    {".3g2", ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg",
     ".mpg", ".mts", ".mxf", ".nut", ".ogv", ".ts", ".vob", ".webm", ".wmv", ".y4m"}
)
DECODERS = ("pyav", "decord")

# FFmpeg demuxers that render text files (ANSI art, .txt, .nfo ...) as video; a notes.txt
# handed to us by mistake must be "not an image or video", not a 5-frame clip.
_TEXT_DEMUXERS = frozenset({"tty", "bin", "xbin", "adf", "idf"})

# Garbage that demuxes into packets the decoder rejects one by one would otherwise be
# walked to the end of the file; a real file with damage recovers well before this.
_MAX_CONSECUTIVE_BAD_PACKETS = 64

# Decoding on through this many frames is preferred to a seek: a seek restarts the
# decoder (and its frame-thread pipeline), and a short hop rarely pays for that.
_SEEK_MIN_SKIP = 16

# Codecs reorder frames by at most 16 (H.264/HEVC DPB); a packet this many places past
# the window's end in decode order cannot still hold a frame inside it.
_REORDER_MARGIN = 32

# Limits for http(s) media, so a stalled or trickling server fails instead of hanging:
# connecting (and FFmpeg's probing) and each read may wait _NETWORK_TIMEOUT_S; after
# _MIN_RATE_GRACE_S, the transfer must average at least _MIN_BYTES_PER_S (a server that
# sends one byte a second fails within the grace period plus one read).
_NETWORK_TIMEOUT_S = 30.0
_MIN_RATE_GRACE_S = 20.0
_MIN_BYTES_PER_S = 8 * 1024
_MAX_REMOTE_IMAGE_BYTES = 256 * 1024 * 1024

# Errors PyAV raises for unreadable input. FFmpegError covers every av.error class in
# PyAV >= 14; older releases also had av.AVError, which is absent there.
_AV_ERRORS: tuple[type[BaseException], ...] = tuple(
    {av.error.FFmpegError, getattr(av, "AVError", av.error.FFmpegError)}
)


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
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


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


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread uniformly over `total` frames.

    This is the reference recipe verbatim, because the parity tests feed exactly these
    frames to the reference processor. Note its float-step quirk: for some pairs such as
    (17, 7) `np.arange` yields num_frames + 1 indices; with 4, 8, 12, 16 or 32 frames it
    never does. When num_frames >= total every frame is used once.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if total <= 0:
        return np.zeros(0, dtype=int)
    if num_frames >= total:
        return np.arange(total)
    return np.arange(0, total, total / num_frames).astype(int)


# --- entry points ----------------------------------------------------------------------


def load_media(
    path: str | Path, spec: FrameSpec | int | None = None, *, num_frames: int | None = None
) -> Media:
    """Load an image or sample a video, deciding which by the name and, when the name
    does not say, by the content. `spec` is a FrameSpec or a frame count (also accepted
    as `num_frames=`, the original keyword); the default takes 8 frames. Animated GIF,
    WebP and PNG are videos; `path` may be an http(s) URL."""
    spec = _spec_from(spec, num_frames)
    src = _source(path)
    if src.remote:
        return _load_remote(src, spec)
    suffix = src.suffix
    if suffix in IMAGE_EXTENSIONS:
        # No video fallback: FFmpeg's image2 demuxer "opens" any *.png, so a text file
        # named .png would come back as "could not decode any frame" instead of the truth.
        loaders = ("image",)
    elif suffix in VIDEO_EXTENSIONS:
        loaders = ("video", "image")
    else:
        # Pillow only reads a header to say no, so trying it first costs nothing.
        loaders = ("image", "video")

    reasons: list[str] = []
    for loader in loaders:
        try:
            if loader == "image":
                return _load_picture(src, spec, animated_as_video=True)
            return _load_video(src, spec)
        except _NotRecognised as error:
            reasons.append(error.reason)
    if suffix in VIDEO_EXTENSIONS:
        # The name promises a video, so the likelier story is a damaged one (an MP4 cut
        # short loses the index FFmpeg needs before it can read a single frame).
        because = f"{reasons[0]}; " if reasons[0] else ""
        raise MediaError(f"not an image or video: {src.source} ({because}truncated or corrupt?)")
    raise MediaError(f"not an image or video: {src.source}")


def load_image(path: str | Path) -> Media:
    """Decode an image upright (EXIF orientation applied) as one uint8 RGB frame. Of an
    animated image this is the first frame; `load_media` samples it as a video."""
    return _load_picture(_source(path), FrameSpec(), animated_as_video=False)


def load_video(path: str | Path, spec: FrameSpec | int = 8) -> Media:
    """Sample frames (a FrameSpec, or a frame count for uniform sampling) from the first
    video stream of a file or http(s) URL; see the module notes for how."""
    spec = FrameSpec.of(spec)
    return _load_video(_source(path), spec)


def _spec_from(spec: FrameSpec | int | None, num_frames: int | None) -> FrameSpec:
    if spec is not None and num_frames is not None:
        raise SamplingError("give the frames as spec or as num_frames, not both")
    if spec is None:
        spec = 8 if num_frames is None else num_frames
    return FrameSpec.of(spec)


# --- sources ----------------------------------------------------------------------------


def is_url(path: str | Path) -> bool:
    """True for http(s) URLs, which are streamed rather than opened as files."""
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


class _TooSlow(MediaError):
    """A remote transfer below the minimum rate: no fallback retries it."""


class _Transfer:
    """The bytes of one remote load (every pass over the URL counts), checked against the
    minimum rate."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.started = time.monotonic()
        self.received = 0

    def add(self, count: int) -> None:
        self.received += count
        elapsed = time.monotonic() - self.started
        if elapsed > _MIN_RATE_GRACE_S and self.received < _MIN_BYTES_PER_S * elapsed:
            rate = self.received / elapsed
            raise _TooSlow(f"cannot read {self.source}: the server is too slow ({rate:,.0f} bytes/s "
                           f"after {elapsed:.0f} s; at least {_MIN_BYTES_PER_S:,} bytes/s needed)")

    def watch(self, packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
        try:
            for packet in packets:
                self.add(packet.size)
                yield packet
        finally:
            packets.close()


# The transfer of each open remote container, by id (PyAV containers take no attributes).
_TRANSFERS: dict[int, _Transfer] = {}


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    packets = container.demux(stream)
    transfer = _TRANSFERS.get(id(container))
    return packets if transfer is None else transfer.watch(packets)


@dataclass(frozen=True)
class _Source:
    source: str  # as the user gave it, for messages
    target: str  # what PyAV opens: a path or the URL
    suffix: str  # lower-case extension, from the URL's path for URLs
    remote: bool
    transfer: _Transfer | None = field(default=None, compare=False, hash=False)


_UNDECODABLE = re.compile("[\ud800-\udfff]")


def _check_name(source: str) -> None:
    """A name that is not valid UTF-8 (its bytes held as surrogate escapes, as Python
    decodes file names) cannot be shown, written to JSON or handed to FFmpeg as it is."""
    if _UNDECODABLE.search(source):
        shown = _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xdc00:02x}" if ord(m.group()) >= 0xdc80
                                 else "\\ufffd", source)
        raise MediaError(f"the name is not valid UTF-8: {shown} (rename the file)")


def _source(path: str | Path) -> _Source:
    source = str(path)
    _check_name(source)
    if is_url(path):
        suffix = Path(urllib.parse.urlsplit(source).path).suffix.lower()
        return _Source(source, source, suffix, remote=True, transfer=_Transfer(source))
    file = _check_file(path)
    return _Source(source, str(file), file.suffix.lower(), remote=False)


def check_sources(paths) -> None:
    """Check that local media exist and can be read, before anything slow (resolving or
    downloading the model) happens: the first bad one is a MediaError. URLs are left to
    the loader."""
    for path in paths:
        _check_name(str(path))
        if not is_url(path):
            _check_file(path)


def looks_like_media(text: str) -> bool:
    """An argument that names a media file rather than asking a question: an existing
    file, a URL, or a single word ending in an image or video extension."""
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        return False
    if is_url(text) or Path(text).suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        return True
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):
        return False


def _check_file(path: str | Path) -> Path:
    """Reject what no decoder should be handed, before FFmpeg or Pillow sees it."""
    source = str(path)
    file = Path(path)
    try:
        status = file.stat()
    except FileNotFoundError:
        raise MediaError(f"no such file: {source}") from None
    except OSError as error:
        raise MediaError(f"cannot read {source}: {_reason(error)}") from None
    if file.is_dir():
        raise MediaError(f"is a directory, not a file: {source}")
    if not file.is_file():
        # FIFOs and devices can block forever or never end.
        raise MediaError(f"not a regular file: {source}")
    if status.st_size == 0:
        raise MediaError(f"empty file: {source}")
    try:
        # FFmpeg would report an unreadable file as "invalid data"; say what it is.
        with file.open("rb"):
            pass
    except OSError as error:
        raise MediaError(f"cannot read {source}: {_reason(error)}") from None
    return file


def _load_remote(src: _Source, spec: FrameSpec) -> Media:
    """http(s): pictures are small and fetched whole; videos stream through FFmpeg,
    which reads (with Range requests where it seeks) only the parts it needs."""
    if src.suffix in IMAGE_EXTENSIONS:
        return _load_picture(src, spec, animated_as_video=True)
    try:
        return _load_video(src, spec)
    except _NotRecognised as error:
        reason = error.reason
    try:
        return _load_picture(src, spec, animated_as_video=True)
    except _NotRecognised:
        raise MediaError(f"not an image or video: {src.source} ({reason})") from None


def _fetch(url: str, transfer: _Transfer | None = None) -> bytes:
    """The whole body, read in pieces: each read waits at most _NETWORK_TIMEOUT_S, and the
    transfer must keep the minimum rate."""
    transfer = transfer or _Transfer(url)
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=_NETWORK_TIMEOUT_S) as response:  # noqa: S310
            while size <= _MAX_REMOTE_IMAGE_BYTES:
                chunk = response.read1(min(1 << 16, _MAX_REMOTE_IMAGE_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                transfer.add(len(chunk))
        data = b"".join(chunks)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
        raise MediaError(f"cannot fetch {url}: {_reason(getattr(error, 'reason', error))}") from None
    if len(data) > _MAX_REMOTE_IMAGE_BYTES:
        raise MediaError(f"image too large to fetch: {url} (over {_MAX_REMOTE_IMAGE_BYTES >> 20} MiB)")
    if not data:
        raise MediaError(f"empty file: {url}")
    return data


def _reason(error: BaseException | str) -> str:
    """The error's own words, squeezed onto one line."""
    if isinstance(error, str):
        text = error
    else:
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return re.sub(r"\s+", " ", str(text)).strip()


# --- images ---------------------------------------------------------------------------


def _load_picture(src: _Source, spec: FrameSpec, *, animated_as_video: bool) -> Media:
    """A still image as one frame; an animated one as a video when asked to."""
    notices: list[str] = []
    opened_from: str | io.BytesIO = io.BytesIO(_fetch(src.target, src.transfer)) if src.remote else src.target
    try:
        with Image.open(opened_from) as opened:
            if animated_as_video and getattr(opened, "n_frames", 1) > 1:
                return _load_animation(opened, src, spec)
            opened.load()
            upright = _apply_exif_orientation(opened, src.source, notices)
            pixels = _to_rgb_array(upright)
    except UnidentifiedImageError:
        raise _NotRecognised(f"not an image: {src.source}") from None
    except MediaError:
        raise
    except Exception as error:  # noqa: BLE001
        # Pillow's format plugins signal malformed input with whatever they hit
        # (OSError, SyntaxError, struct.error, IndexError, DecompressionBombError ...);
        # to the user they all mean the same thing.
        raise MediaError(f"could not decode image {src.source}: {_reason(error)}") from None
    return Media(
        source=src.source,
        kind="image",
        frames=pixels[np.newaxis],
        frame_indices=[0],
        timestamps=[0.0],
        total_frames=1,
        fps=None,
        notices=notices,
        decoded_frames=1,
        decoder="pillow",
    )


def _apply_exif_orientation(image: Image.Image, source: str, notices: list[str]) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001
        # A mangled EXIF block should not cost the user the picture itself.
        notices.append(f"{source}: ignored unreadable EXIF orientation ({_reason(error)})")
        return image


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """(height, width, 3) uint8 RGB from any Pillow mode."""
    if image.mode.startswith("I"):
        # 16-bit greyscale (PNG/TIFF open as "I;16" or "I"): Pillow's convert() clips at
        # 255 instead of scaling, which turns most of the picture white.
        values = np.asarray(image).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., np.newaxis], 3, axis=2))
    # Alpha is dropped, not composited, exactly as the reference processors do with
    # convert("RGB"), so our pixels match theirs.
    return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8)


# Browsers show GIF frames with a delay of 10 ms or less for 100 ms; so do we.
_MIN_GIF_DELAY_MS = 10
_DEFAULT_GIF_DELAY_MS = 100


def _load_animation(image: Image.Image, src: _Source, spec: FrameSpec) -> Media:
    """Animated GIF/WebP/PNG as a video: Pillow composites each frame (disposal,
    blending), timestamps add up the per-frame delays, and the same FrameSpec rules
    as for video pick the frames."""
    total = int(image.n_frames)
    starts: list[float] = []
    clock_ms = 0.0
    for index in range(total):
        image.seek(index)
        image.load()
        starts.append(clock_ms / 1000)
        delay = image.info.get("duration") or 0
        clock_ms += delay if delay > _MIN_GIF_DELAY_MS else _DEFAULT_GIF_DELAY_MS
    times = np.asarray(starts)
    duration = clock_ms / 1000
    # An animation states every frame's delay, the last one's included.
    wanted = _choose_frames(times, spec, src.source, end_of_video=duration)
    frames = []
    for index in wanted:
        image.seek(index)
        frames.append(_to_rgb_array(image))
    return Media(
        source=src.source,
        kind="video",
        frames=_stack_frames(frames, src.source),
        frame_indices=wanted,
        timestamps=[float(times[i]) for i in wanted],
        total_frames=total,
        fps=total / duration if duration else None,
        decoded_frames=total + wanted[-1] + 1,
        decoder="pillow",
    )


# --- choosing frames ---------------------------------------------------------------------


def _choose_frames(
    times: np.ndarray, spec: FrameSpec, source: str, *, end_of_video: float | None = None
) -> list[int]:
    """Presentation indices to take, given every frame's time in seconds from the first
    (`times`, ascending; it may stop early when a window end made the rest irrelevant).

    `end_of_video`, when the last frame stops showing, matters to `fps` over a whole
    video; by default it is one typical (median) frame step after the last frame, which
    every decoder path can compute alike, so all of them choose the same frames."""
    total = len(times)
    if total == 0:
        raise MediaError(f"no video frames in {source}")
    first, stop = _window(times, spec)
    if first >= stop:
        last_shown = float(times[-1])
        where = f"between {_clock(spec.start or 0)} and {_clock(spec.end)}" if spec.end is not None \
            else f"from {_clock(spec.start or 0)} on"
        raise MediaError(
            f"no frames {where} in {source} (its last frame is at {_clock(last_shown)})"
        )
    count = spec.frame_count
    if count is not None:
        return [first + int(i) for i in sample_indices(stop - first, count)]

    assert spec.fps is not None
    window_start = spec.start or 0.0
    if end_of_video is None or end_of_video <= times[-1]:
        step = float(np.median(np.diff(times))) if total > 1 else 1.0 / spec.fps
        end_of_video = float(times[-1]) + step
    window_end = min(spec.end, end_of_video) if spec.end is not None else end_of_video
    span = max(window_end - window_start, 0.0)
    wanted_count = max(1, math.ceil(span * spec.fps - 1e-9))
    step = 1.0 / spec.fps
    if spec.max_frames and wanted_count > spec.max_frames:
        wanted_count = spec.max_frames
        step = span / wanted_count
    moments = window_start + step * np.arange(wanted_count)
    inside = times[first:stop]
    # The frame on screen at each moment: the last one that started at or before it.
    picks = np.searchsorted(inside, moments + _TIME_EPS, side="right") - 1
    picks = np.clip(picks, 0, len(inside) - 1) + first
    chosen: list[int] = []
    for index in picks.tolist():
        if not chosen or index != chosen[-1]:
            chosen.append(int(index))
    return chosen


def _window(times: np.ndarray, spec: FrameSpec) -> tuple[int, int]:
    """[first, stop) presentation indices of frames with start <= time < end."""
    first = int(np.searchsorted(times, spec.start - _TIME_EPS, side="left")) if spec.start else 0
    stop = int(np.searchsorted(times, spec.end - _TIME_EPS, side="left")) if spec.end is not None else len(times)
    return first, stop


# Timestamps are rationals rounded to floats: a frame at 1/3 s is "at" a moment of 1/3 s.
# A tenth of a millisecond is far below any real frame duration.
_TIME_EPS = 1e-4


# --- video: common -------------------------------------------------------------------------


def _load_video(src: _Source, spec: FrameSpec) -> Media:
    notices: list[str] = []
    if spec.decoder == "decord":
        media = _load_video_decord(src, spec, notices)
        if media is not None:
            return media
    return _load_video_pyav(src, spec, notices)


@contextlib.contextmanager
def _ffmpeg_logs_off() -> Iterator[None]:
    """Keep FFmpeg from printing its own complaints about damaged input while we decode.

    Level None installs PyAV's no-op callback. Any numeric level instead installs a
    callback that takes the GIL from decoder threads and forwards to Python `logging`,
    which both prints (logging's last-resort handler) and is the cause of PyAV's known
    deadlocks with threaded decoding. The caller's setting is put back afterwards.
    """
    previous = av.logging.get_level()
    av.logging.set_level(None)
    try:
        yield
    finally:
        av.logging.set_level(previous)


@contextlib.contextmanager
def _forget_transfer(container: av.container.InputContainer) -> Iterator[None]:
    try:
        yield
    finally:
        _TRANSFERS.pop(id(container), None)


@contextlib.contextmanager
def _open_video(
    src: _Source,
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    options = {"timeout": (_NETWORK_TIMEOUT_S, _NETWORK_TIMEOUT_S)} if src.remote else {}
    try:
        if src.transfer is not None:
            src.transfer.add(0)  # a later pass (a fallback) still counts from the first
        container = av.open(src.target, mode="r", **options)
    except EOFError:
        # FFmpeg hit the end of the data before finding one frame: a header and nothing
        # else (a recording stopped at once) or a file cut right after its header.
        raise MediaError(f"no video frames in {src.source} (the file ends before its first frame)") from None
    except _AV_ERRORS as error:
        if src.remote and not isinstance(error, av.error.InvalidDataError):
            if isinstance(error, av.error.ExitError):  # PyAV's timeout interrupted FFmpeg
                raise MediaError(f"cannot read {src.source}: timed out (no answer within "
                                 f"{_NETWORK_TIMEOUT_S:g} s)") from None
            raise MediaError(f"cannot read {src.source}: {_reason(error)}") from None
        raise _NotRecognised(f"not a video: {src.source} ({_reason(error)})", _reason(error)) from None
    except OSError as error:
        raise MediaError(f"cannot read {src.source}: {_reason(error)}") from None
    if src.transfer is not None:
        _TRANSFERS[id(container)] = src.transfer
    with container, _forget_transfer(container):
        if container.format.name in _TEXT_DEMUXERS:
            raise _NotRecognised(f"not a video: {src.source}")
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            # A picture (a JPEG named .mp4, a URL without a suffix): Pillow reads it
            # better, EXIF orientation and animation included.
            raise _NotRecognised(f"a picture, not a video: {src.source}", "a picture")
        # Cover art (an MP3's or M4A's picture) is a "video" stream of one still frame.
        moving = [s for s in container.streams.video
                  if not s.disposition & av.stream.Disposition.attached_pic]
        if not moving:
            raise MediaError(f"no video stream in {src.source}")
        stream = moving[0]
        for other in container.streams:
            if other.index != stream.index:
                # The demuxer can skip other streams' packets instead of handing them up.
                with contextlib.suppress(AttributeError, ValueError):
                    other.discard = av.stream.Discard.all
        # Frame threading changes only when frames come out, not what they contain (the
        # parity tests compare against an unthreaded decode).
        stream.thread_type = "AUTO"
        yield container, stream


@dataclass(frozen=True)
class _StreamFacts:
    fps: float | None
    time_base: Fraction | None
    header_frames: int  # the container's own frame count; 0 when it has none
    estimated_frames: int  # from duration x rate; 0 when unknown
    duration: float | None  # seconds, from the stream or container header


def _stream_facts(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _StreamFacts:
    # average_rate is what the reference uses; raw elementary streams (.h264) lack it or
    # carry FFmpeg's default 25, and guessed_rate reads the codec's own timing instead.
    rate: Fraction | None = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    estimated = max(1, round(duration * fps)) if duration and fps else 0
    header = int(stream.frames) if stream.frames and stream.frames > 0 else 0
    return _StreamFacts(fps, stream.time_base, header, estimated, duration)


def _frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(height, width, 3) uint8 RGB, turned upright by the stream's display matrix."""
    pixels = frame.to_ndarray(format="rgb24")
    matrix = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if matrix is None:
        return pixels
    return np.ascontiguousarray(_apply_display_matrix(pixels, np.frombuffer(bytes(matrix), dtype="<i4")))


def _apply_display_matrix(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """What FFmpeg's own player and CLI do with a display matrix (fftools' autorotate):
    right angles, with the mirror images a flipped matrix asks for."""
    a, b, c, d = (float(matrix[i]) / 65536 for i in (0, 1, 3, 4))
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if not scale_x or not scale_y:
        return pixels
    # av_display_rotation_get() is the counter-clockwise angle; fftools negates it.
    theta = -round(-math.degrees(math.atan2(b / scale_y, a / scale_x)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # transpose: clock, or cclock_flip when mirrored
        return pixels.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(pixels, -1)
    if abs(theta - 180) < 1:
        if matrix[0] < 0:
            pixels = pixels[:, ::-1]
        if matrix[4] < 0:
            pixels = pixels[::-1]
        return pixels
    if abs(theta - 270) < 1:  # transpose: cclock, or clock_flip when mirrored
        return np.rot90(pixels, -1)[::-1] if matrix[3] < 0 else np.rot90(pixels, 1)
    if abs(theta) < 1 and matrix[4] < 0:
        return pixels[::-1]
    return pixels  # other angles: left as stored rather than guessed at


def _stack_frames(frames: list[np.ndarray], source: str) -> np.ndarray:
    shapes = {pixels.shape for pixels in frames}
    if len(shapes) > 1:
        sizes = ", ".join(sorted(f"{shape[1]}x{shape[0]}" for shape in shapes))
        raise MediaError(f"frame size changes mid-stream in {source} ({sizes})")
    return np.stack(frames).astype(np.uint8, copy=False)


# --- video: PyAV ------------------------------------------------------------------------------


def _load_video_pyav(src: _Source, spec: FrameSpec, notices: list[str]) -> Media:
    with _ffmpeg_logs_off():
        if spec.seek:
            with _open_video(src) as (container, stream):
                facts = _stream_facts(container, stream)
                media = _load_by_seeking(container, stream, facts, src, spec, notices)
            if media is not None:
                return media
        return _load_sequentially(src, spec, notices)


class _SeekFailed(Exception):
    """The fast path met something it cannot vouch for; decode sequentially instead."""


@dataclass
class _PacketIndex:
    """Every video packet up to where the index pass stopped, in decode order."""

    pts: np.ndarray  # int64
    dts: np.ndarray  # int64; _NO_TIME where the container gave none
    keyframe: np.ndarray  # bool
    shown: np.ndarray  # bool: False for packets decoded only as references (edit lists)
    complete: bool  # True when the pass reached the end of the stream
    # Derived: presentation order.
    order: np.ndarray = field(init=False)  # presentation index -> decode position
    sorted_pts: np.ndarray = field(init=False)  # pts of shown frames, in presentation order
    packet_order: np.ndarray = field(init=False)  # like order, over every packet
    packet_sorted_pts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        visible = np.flatnonzero(self.shown)
        self.order = visible[np.argsort(self.pts[visible], kind="stable")]
        self.sorted_pts = self.pts[self.order]
        self.packet_order = np.argsort(self.pts, kind="stable")
        self.packet_sorted_pts = self.pts[self.packet_order]

    def position_of(self, pts: int) -> int:
        """Presentation index of the frame with this pts, or -1."""
        at = int(np.searchsorted(self.sorted_pts, pts))
        return at if at < len(self.sorted_pts) and self.sorted_pts[at] == pts else -1

    def decode_position_of(self, pts: int) -> int:
        """Decode position of the packet (shown or not) with this pts, or -1."""
        at = int(np.searchsorted(self.packet_sorted_pts, pts))
        found = at < len(self.packet_sorted_pts) and self.packet_sorted_pts[at] == pts
        return int(self.packet_order[at]) if found else -1


_NO_TIME = np.iinfo(np.int64).min


def _index_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, stop_after: float | None
) -> tuple[_PacketIndex | None, str | None]:
    """Demux (not decode) the video packets, from the start or up to a little past
    `stop_after` seconds. Returns the index, or None and why the fast path cannot be
    trusted with this stream."""
    time_base = stream.time_base
    if not time_base:
        return None, "no time base"
    pts, dts = array("q"), array("q")
    keys, shown = bytearray(), bytearray()
    complete = True
    stop_ticks = None if stop_after is None else math.ceil(stop_after / time_base)
    earliest: int | None = None
    beyond = 0
    packets = _demux(container, stream)
    try:
        for packet in packets:
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.is_corrupt:
                return None, "damaged packet"
            if packet.pts is None:
                return None, "packets without timestamps"
            pts.append(packet.pts)
            dts.append(_NO_TIME if packet.dts is None else packet.dts)
            keys.append(bool(packet.is_keyframe))
            shown.append(not packet.is_discard)
            if stop_ticks is None:
                continue
            # The window's end counts from the first frame, whose pts is at most the
            # earliest seen so far; so once even a dts (and with it every later pts)
            # reaches `earliest + stop`, no later packet can fall inside the window.
            earliest = packet.pts if earliest is None else min(earliest, packet.pts)
            if packet.dts is not None and packet.dts >= earliest + stop_ticks:
                complete = False
                break
            # Without dts, allow for reordering: stop after a run of packets past the end.
            beyond = beyond + 1 if packet.pts >= earliest + stop_ticks else 0
            if beyond >= _REORDER_MARGIN:
                complete = False
                break
    except (*_AV_ERRORS, OSError) as error:
        return None, f"demuxing failed ({_reason(error)})"
    finally:
        packets.close()
    if not pts:
        return None, "no packets"
    index = _PacketIndex(
        pts=np.frombuffer(pts, dtype=np.int64).copy(),
        dts=np.frombuffer(dts, dtype=np.int64).copy(),
        keyframe=np.frombuffer(bytes(keys), dtype=bool).copy(),
        shown=np.frombuffer(bytes(shown), dtype=bool).copy(),
        complete=complete,
    )
    if not index.keyframe[0]:
        return None, "the stream does not start with a keyframe"
    if len(index.sorted_pts) == 0:
        return None, "no frames shown"
    if np.any(np.diff(index.sorted_pts) == 0):
        return None, "frames share a timestamp"
    return index, None


def _load_by_seeking(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    facts: _StreamFacts,
    src: _Source,
    spec: FrameSpec,
    notices: list[str],
) -> Media | None:
    """The fast path (see the module notes); None when it cannot vouch for the result."""
    index, _why_not = _index_packets(container, stream, spec.end)
    if index is None:
        return None
    time_base = facts.time_base
    assert time_base is not None
    base = int(index.sorted_pts[0])
    times = (index.sorted_pts - base).astype(np.float64) * float(time_base)
    wanted = _choose_frames(times, spec, src.source)

    total = len(index.order)
    if not index.complete:
        total = max(total, facts.header_frames or facts.estimated_frames)
    extra_notices = _shortfall_notice(index, times, facts, src.source)
    try:
        sink, decoded, runs = _decode_runs(src, container, stream, index, wanted)
        frames = sink.result()
    except _SeekFailed:
        return None
    notices.extend(extra_notices)
    return Media(
        source=src.source,
        kind="video",
        frames=frames,
        frame_indices=wanted,
        timestamps=[float(times[i]) for i in wanted],
        total_frames=total,
        fps=facts.fps,
        notices=notices,
        decoded_frames=decoded,
        decoder="pyav",
        seeks=runs,
    )


def _shortfall_notice(index: _PacketIndex, times: np.ndarray, facts: _StreamFacts, source: str) -> list[str]:
    """A notice when the stream holds clearly less than its header promises (a cut
    download); the frames that are there are sampled all the same."""
    if not index.complete:
        return []
    present = len(index.order)
    if facts.header_frames and present < facts.header_frames:
        return [f"{source}: only {present} of {facts.header_frames} frames are present "
                f"(truncated?); sampled from those"]
    if facts.duration and facts.fps and not facts.header_frames:
        frame_time = 1 / facts.fps
        covered = float(times[-1]) + frame_time
        if facts.duration - covered > max(1.5 * frame_time, 0.01 * facts.duration):
            return [f"{source}: only {_clock(covered)} of {_clock(facts.duration)} can be read "
                    f"({present} frames; truncated?); sampled from those"]
    return []


@dataclass
class _Run:
    start: int  # decode position of the keyframe decoding starts at
    first: int  # presentation index of the first frame that run produces in order
    reach: int  # furthest decode position a target of the run needs
    targets: list[int]


def _plan_runs(index: _PacketIndex, wanted: list[int]) -> list[_Run]:
    """Group targets into decoding runs (see the module notes)."""
    keys = np.flatnonzero(index.keyframe)
    runs: list[_Run] = []
    for target in sorted(set(wanted)):
        position = int(index.order[target])
        at = int(np.searchsorted(keys, position, side="right")) - 1
        # An open GOP's leading pictures come after their keyframe in decode order but
        # before it on screen, and reference the previous GOP: start one GOP earlier.
        while at > 0 and index.pts[keys[at]] > index.pts[position]:
            at -= 1
        start = int(keys[max(at, 0)])
        if runs and runs[-1].start <= start <= runs[-1].reach + _SEEK_MIN_SKIP:
            runs[-1].targets.append(target)
            runs[-1].reach = max(runs[-1].reach, position)
            continue
        first = int(np.searchsorted(index.sorted_pts, index.pts[start]))
        runs.append(_Run(start=start, first=first, reach=position, targets=[target]))
    return runs


def _decode_runs(
    src: _Source,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _PacketIndex,
    wanted: list[int],
) -> tuple[dict[int, np.ndarray], int, int]:
    """Decode each run from its keyframe; returns the frames (in a sink), the number of
    frames decoded and the number of runs. Raises _SeekFailed on any surprise.

    Runs are independent (each starts at a keyframe with a fresh decoder state), so with
    several runs and cores, worker threads decode different runs at once, each with its
    own container and decoder; FFmpeg's frame threads would instead spend a pipeline
    fill and drain on every short run. One run gets the frame threads.
    """
    runs = _plan_runs(index, wanted)
    sink = _FrameSink(wanted, src.source)
    cores = _usable_cores()
    workers = min(len(runs), cores, 2 if src.remote else 8)
    if workers <= 1:
        decoded = sum(_decode_run(container, stream, index, run, sink) for run in runs)
        return sink, decoded, len(runs)

    pending_runs = iter(runs)
    lock = threading.Lock()
    stop = threading.Event()
    threads_each = max(1, cores // workers)

    def work(own_container: bool) -> int:
        opened = _open_video(src) if own_container else contextlib.nullcontext((container, stream))
        decoded_here = 0
        try:
            with opened as (worker_container, worker_stream):
                worker_stream.codec_context.thread_count = threads_each
                while not stop.is_set():
                    with lock:
                        run = next(pending_runs, None)
                    if run is None:
                        break
                    decoded_here += _decode_run(worker_container, worker_stream, index, run, sink, stop)
        except _TooSlow:
            raise
        except MediaError as error:
            raise _SeekFailed(f"could not reopen: {error}") from None
        return decoded_here

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llava-decode") as pool:
        futures = [pool.submit(work, number > 0) for number in range(workers)]
        try:
            decoded = sum(future.result() for future in futures)
        finally:
            stop.set()
    return sink, decoded, len(runs)


class _FrameSink:
    """The (frames, height, width, 3) result, filled in place as runs decode their
    targets, in any order and from any worker: each kept frame is held once, not once
    in a list and again when stacked."""

    def __init__(self, wanted: list[int], source: str) -> None:
        self.slots = {index: slot for slot, index in enumerate(wanted)}
        self.source = source
        self.frames: np.ndarray | None = None
        self.filled: set[int] = set()
        self.lock = threading.Lock()

    def put(self, index: int, frame: av.VideoFrame) -> None:
        pixels = _frame_to_rgb(frame)
        with self.lock:
            if self.frames is None:
                self.frames = np.empty((len(self.slots), *pixels.shape), dtype=np.uint8)
            elif pixels.shape != self.frames.shape[1:]:
                first, now = self.frames.shape[1:3], pixels.shape[:2]
                raise MediaError(f"frame size changes mid-stream in {self.source} "
                                 f"({first[1]}x{first[0]}, {now[1]}x{now[0]})")
            self.frames[self.slots[index]] = pixels
            self.filled.add(index)

    def result(self) -> np.ndarray:
        missing = set(self.slots) - self.filled
        if missing or self.frames is None:
            raise _SeekFailed(f"frames {sorted(missing)} never came")
        return self.frames


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _decode_run(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _PacketIndex,
    run: _Run,
    sink: _FrameSink,
    stop: threading.Event | None = None,
) -> int:
    """Decode one run into `sink`; returns the frames decoded. See _decode_runs."""
    codec = stream.codec_context
    pending = set(run.targets)
    expected: int | None = None  # the presentation index the next frame must have
    decoded = 0
    with contextlib.closing(_packets_from(container, stream, index, run.start)) as packets:
        for packet in packets:
            if stop is not None and stop.is_set():
                raise _SeekFailed("another run failed")
            try:
                frames = codec.decode(packet)
            except (*_AV_ERRORS, ValueError) as error:
                raise _SeekFailed(f"decoding failed: {_reason(error)}") from None
            for frame in frames:
                decoded += 1
                if frame.pts is None:
                    raise _SeekFailed("a frame without a timestamp")
                position = index.position_of(frame.pts)
                if position < 0:
                    if index.complete or frame.pts < index.sorted_pts[-1]:
                        raise _SeekFailed("a frame the index does not know")
                    continue  # past the indexed window: not needed
                if expected is None:
                    if position < run.first:
                        continue  # a leading picture of the start keyframe: not ours
                    if position != run.first:
                        raise _SeekFailed("the run did not start at its keyframe")
                    expected = position
                if position != expected:
                    raise _SeekFailed("frames missing or out of order")
                expected += 1
                if position in pending:
                    sink.put(position, frame)
                    pending.discard(position)
            if not pending:
                return decoded
    raise _SeekFailed("frames the run should have produced did not come out")


def _packets_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _PacketIndex,
    start: int,
) -> Iterator[av.Packet | None]:
    """Packets in decode order from decode position `start` (a keyframe), each checked
    against the index, then None (drain the decoder) at the end of the stream."""
    want_pts = int(index.pts[start])
    want_dts = int(index.dts[start])
    # Seek targets, most precise first: index timestamps are pts (Matroska) or dts
    # (MP4); then a second earlier; then the very start, read forward from there.
    one_second = max(1, round(1 / stream.time_base))
    attempts = [want_pts]
    if want_dts != _NO_TIME and want_dts != want_pts:
        attempts.append(want_dts)
    attempts.append(min(attempts) - one_second)
    attempts.append(int(index.dts[0]) if index.dts[0] != _NO_TIME else int(index.pts[0]))
    for offset in attempts:
        try:
            container.seek(offset, stream=stream, backward=True)
        except (*_AV_ERRORS, OSError, ValueError) as error:
            raise _SeekFailed(f"cannot seek: {_reason(error)}") from None
        packets = _demux(container, stream)
        try:
            found = _skip_to(packets, index, start)
            if found is None:
                continue  # landed past the keyframe: try an earlier offset
            yield found
            position = start + 1
            for packet in packets:
                if packet.size == 0:
                    continue
                if position < len(index.pts) and packet.pts != index.pts[position]:
                    raise _SeekFailed("packets differ from the index")
                position += 1
                yield packet
            yield None
            return
        except (*_AV_ERRORS, OSError) as error:
            raise _SeekFailed(f"demuxing failed: {_reason(error)}") from None
        finally:
            packets.close()
    raise _SeekFailed("no seek reached the keyframe")


def _skip_to(packets: Iterator[av.Packet], index: _PacketIndex, start: int) -> av.Packet | None:
    """Read packets until the one at decode position `start`; None if we are past it."""
    want_pts = index.pts[start]
    for packet in packets:
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        if packet.pts == want_pts:
            return packet
        position = index.decode_position_of(packet.pts)
        if position < 0 or position > start:
            return None  # past the keyframe, or somewhere the index never reached
    return None


# --- video: sequential ---------------------------------------------------------------------


@dataclass
class _DecodeResult:
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    times: dict[int, float | None] = field(default_factory=dict)  # pts seconds of kept frames
    frames_seen: int = 0  # frames the decoder produced before we stopped or it ended
    error: str | None = None  # the first decode/demux failure, if any
    clock: list[float | None] = field(default_factory=list)  # every frame's time (counting)

    def why(self, prefix: str = ": ", suffix: str = "") -> str:
        return f"{prefix}{self.error}{suffix}" if self.error else ""


def _load_sequentially(src: _Source, spec: FrameSpec, notices: list[str]) -> Media:
    """Decode from the first frame: the reference behaviour, and the fallback whenever
    the fast path cannot vouch for a stream (raw streams without timestamps, damage)."""
    with _open_video(src) as (container, stream):
        facts = _stream_facts(container, stream)
    total = facts.header_frames or facts.estimated_frames
    decoded = 0
    if spec.frame_count is not None and not spec.windowed and total:
        # Uniform frames over the whole stream: the header's length is enough to start,
        # and one pass through the last sampled frame does it when it is right.
        wanted = [int(i) for i in sample_indices(total, spec.frame_count)]
        first = _decode_pass(src, wanted)
        decoded += first.frames_seen
        result = first
        if first.frames_seen <= wanted[-1]:
            # The stream ended (or broke) before the last sampled frame: the header
            # overstated the length, or the file is truncated or corrupt. Returning just
            # the frames we reached would silently cluster the sample at the start, so
            # re-sample uniformly over the frames that really exist. Frames already
            # converted are reused; the rest need a second pass from the start, a
            # re-decode paid only in this uncommon case.
            seen = first.frames_seen
            if seen == 0:
                raise MediaError(f"could not decode any frame from {src.source}{first.why()}")
            notices.append(
                f"{src.source}: only {seen} of {total} frames could be decoded"
                f"{first.why(prefix=' (', suffix=')')}; sampled from those"
            )
            total = seen
            wanted = [int(i) for i in sample_indices(total, spec.frame_count)]
            missing = [i for i in wanted if i not in first.kept]
            if missing:
                second = _decode_pass(src, missing)
                decoded += second.frames_seen
                result = _DecodeResult(kept={**first.kept, **second.kept},
                                       times={**first.times, **second.times})
        base = first.times.get(0)
        times_of = {i: result.times.get(i) for i in wanted}
    else:
        # No usable length, or a window/rate that needs every frame's time: count first
        # (no pixels are converted), then decode through the last chosen frame.
        counted = _decode_pass(src, [], count_only=True)
        decoded += counted.frames_seen
        if counted.frames_seen == 0:
            raise MediaError(f"could not decode any frame from {src.source}{counted.why()}")
        if counted.error:
            notices.append(
                f"{src.source}: decoding stopped after {counted.frames_seen} frames"
                f"{counted.why(prefix=' (', suffix=')')}; sampled from those"
            )
        total = counted.frames_seen
        clock = _fill_clock(counted.clock, facts.fps)
        times = np.asarray(clock) - clock[0]
        wanted = _choose_frames(times, spec, src.source)
        result = _decode_pass(src, wanted)
        decoded += result.frames_seen
        base = clock[0]
        times_of = {i: clock[i] for i in wanted}

    # Decoding is deterministic, so this only trips if the file changed under us.
    lost = [i for i in wanted if i not in result.kept]
    if lost:
        raise MediaError(f"could not re-read frames {lost} of {src.source}")
    return Media(
        source=src.source,
        kind="video",
        frames=_stack_frames([result.kept[i] for i in wanted], src.source),
        frame_indices=wanted,
        timestamps=[
            (time - base) if time is not None and base is not None else _index_time(index, facts.fps)
            for index, time in ((i, times_of[i]) for i in wanted)
        ],
        total_frames=total,
        fps=facts.fps,
        notices=notices,
        decoded_frames=decoded,
        decoder="pyav",
    )


def _fill_clock(clock: list[float | None], fps: float | None) -> list[float]:
    """Every frame's time; frames without a timestamp (raw streams) get index / fps."""
    if all(time is not None for time in clock) and all(b > a for a, b in zip(clock, clock[1:])):
        return [float(time) for time in clock]  # type: ignore[arg-type]
    return [_index_time(i, fps) for i in range(len(clock))]


def _decode_pass(src: _Source, wanted: list[int], *, count_only: bool = False) -> _DecodeResult:
    # A fresh open rather than a seek to 0: seeking is inexact in some containers, and
    # frame indices only mean something when counted from the very first frame.
    with _open_video(src) as (container, stream):
        return _decode_selected(container, stream, wanted, count_only=count_only)


def _decode_selected(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: list[int],
    *,
    count_only: bool = False,
) -> _DecodeResult:
    """Decode from the start, converting only frames in `wanted` (sorted) and stopping
    right after the last of them. `count_only` decodes everything, converting nothing
    and noting every frame's time.
    """
    result = _DecodeResult()
    wanted_set = set(wanted)
    last_wanted = wanted[-1] if wanted and not count_only else None

    def take(frames: list[av.VideoFrame]) -> bool:
        """Record frames; True once the last wanted frame is in hand."""
        for frame in frames:
            index = result.frames_seen
            result.frames_seen += 1
            if count_only:
                result.clock.append(frame.time)
                continue
            if index == 0:
                result.times[0] = frame.time
            if index in wanted_set:
                result.kept[index] = _frame_to_rgb(frame)
                result.times[index] = frame.time
            if last_wanted is not None and index >= last_wanted:
                return True
        return False

    bad_in_a_row = 0
    packets = _demux(container, stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return result
        except (*_AV_ERRORS, OSError) as error:
            # The file ends mid-packet or the container is broken from here on. Frames
            # still inside the decoder (codec delay) are good; flush them out.
            result.error = result.error or _reason(error)
            with contextlib.suppress(*_AV_ERRORS, OSError, ValueError):
                take(stream.codec_context.decode(None))
            return result
        try:
            frames = packet.decode()
        except (*_AV_ERRORS, ValueError) as error:
            # Skip a damaged packet and carry on, as players do; the decoder resyncs at
            # the next keyframe.
            result.error = result.error or _reason(error)
            bad_in_a_row += 1
            if bad_in_a_row >= _MAX_CONSECUTIVE_BAD_PACKETS:
                return result
            continue
        bad_in_a_row = 0
        if take(frames):
            return result


def _index_time(index: int, fps: float | None) -> float:
    # Raw elementary streams carry no timestamps; the frame rate is the next best clock,
    # and with no rate at all one second per frame at least keeps the order.
    return index / fps if fps else float(index)


# --- video: decord ----------------------------------------------------------------------------


def _load_video_decord(src: _Source, spec: FrameSpec, notices: list[str]) -> Media | None:
    """decord's VideoReader.get_batch, on the frame indices the PyAV path would choose.
    None (with a notice) where it cannot serve: not installed, a URL, a rotated video
    (decord 0.6 fails on those), a stream it counts differently, or an error of its own.
    """
    try:
        import decord  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError:
        notices.append(f"{src.source}: decord is not installed (pip install 'llava-cli[decord]'); decoded with PyAV")
        return None
    if src.remote:
        notices.append(f"{src.source}: decord cannot stream URLs; decoded with PyAV")
        return None
    # PyAV vets the file first (a clear error for what is not a video), finds the display
    # matrix, which decord mishandles, and indexes the packets: the frame times come from
    # the same index as on the PyAV path, so both choose the same frames.
    with _ffmpeg_logs_off():
        with _open_video(src) as (container, stream):
            rotated = False
            with contextlib.suppress(*_AV_ERRORS, StopIteration, ValueError):
                first = next(container.decode(stream))
                rotated = first.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX) is not None
        if rotated:
            notices.append(f"{src.source}: decord cannot read videos with rotation metadata; decoded with PyAV")
            return None
        with _open_video(src) as (container, stream):
            facts = _stream_facts(container, stream)
            index, why_not = _index_packets(container, stream, spec.end)
    if index is None:
        notices.append(f"{src.source}: decord was not used ({why_not}); decoded with PyAV")
        return None
    times = (index.sorted_pts - index.sorted_pts[0]).astype(np.float64) * float(facts.time_base)
    wanted = _choose_frames(times, spec, src.source)
    try:
        reader = decord.VideoReader(src.target, ctx=decord.cpu(0), num_threads=0)
        total = len(reader)
        if (index.complete and total != len(index.order)) or total <= wanted[-1]:
            notices.append(
                f"{src.source}: decord counts {total} frames where PyAV counts {len(index.order)}; decoded with PyAV"
            )
            return None
        frames = reader.get_batch(wanted).asnumpy()
    except Exception as error:  # noqa: BLE001 - DECORDError and friends: PyAV will try
        notices.append(f"{src.source}: decord failed ({_reason(error)}); decoded with PyAV")
        return None
    return Media(
        source=src.source,
        kind="video",
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        frame_indices=wanted,
        timestamps=[float(times[i]) for i in wanted],
        total_frames=len(index.order) if index.complete else max(total, facts.header_frames or facts.estimated_frames),
        fps=facts.fps,
        notices=notices,
        decoded_frames=0,  # decord does not say
        decoder="decord",
    )
