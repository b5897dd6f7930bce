"""Decode images and sample video frames into uint8 RGB arrays.

Everything that can go wrong with a user's file becomes a one-line `MediaError` naming the
file; nothing here prints. Warnings meant for the user (a truncated video, an unreadable
EXIF block) travel back on `Media.notices` for the CLI to show.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.logging
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava_cli.errors import MediaError

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Media",
    "load_image",
    "load_media",
    "load_video",
    "sample_indices",
]

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".ico", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm", ".png",
     ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTENSIONS = frozenset(
    {".3g2", ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg",
     ".mpg", ".mts", ".mxf", ".ogv", ".ts", ".vob", ".webm", ".wmv"}
)

# FFmpeg demuxers that render text files (ANSI art, .txt, .nfo ...) as video; a notes.txt
# handed to us by mistake must be "not an image or video", not a 5-frame clip.
_TEXT_DEMUXERS = frozenset({"tty", "bin", "xbin", "adf", "idf"})

# Garbage that demuxes into packets the decoder rejects one by one would otherwise be
# walked to the end of the file; a real file with damage recovers well before this.
_MAX_CONSECUTIVE_BAD_PACKETS = 64

# Errors PyAV raises for unreadable input. FFmpegError covers every av.error class in
# PyAV >= 14; older releases also had av.AVError, which is absent there.
_AV_ERRORS: tuple[type[BaseException], ...] = tuple(
    {av.error.FFmpegError, getattr(av, "AVError", av.error.FFmpegError)}
)


@dataclass
class Media:
    """One decoded image or sampled video, ready for preprocessing."""

    source: str  # the path/URL as given
    kind: str  # "image" or "video"
    frames: np.ndarray  # uint8, (frames, height, width, 3) RGB; an image has one frame
    frame_indices: list[int]  # indices into the decoded stream (image: [0])
    timestamps: list[float]  # seconds of each returned frame (image: [0.0])
    total_frames: int  # frames in the stream (image: 1)
    fps: float | None
    notices: list[str] = field(default_factory=list)  # one-line warnings for the user
    # Frames the decoder handed back across all passes; lets tests prove decoding stops
    # after the last sampled frame instead of running to the end of the file.
    decoded_frames: int = 0


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


def load_media(path: str | Path, num_frames: int = 8) -> Media:
    """Load an image or sample `num_frames` frames of a video, deciding which by the name
    and, when the name does not say, by the content."""
    source = str(path)
    file = _check_file(path)
    suffix = file.suffix.lower()
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
                return load_image(path)
            return load_video(path, num_frames)
        except _NotRecognised as error:
            reasons.append(error.reason)
    if suffix in VIDEO_EXTENSIONS:
        # The name promises a video, so the likelier story is a damaged one (an MP4 cut
        # short loses the index FFmpeg needs before it can read a single frame).
        because = f"{reasons[0]}; " if reasons[0] else ""
        raise MediaError(f"not an image or video: {source} ({because}truncated or corrupt?)")
    raise MediaError(f"not an image or video: {source}")


def load_image(path: str | Path) -> Media:
    """Decode an image upright (EXIF orientation applied) as one uint8 RGB frame."""
    source = str(path)
    file = _check_file(path)
    notices: list[str] = []
    try:
        with Image.open(file) as opened:
            opened.load()
            upright = _apply_exif_orientation(opened, source, notices)
            pixels = _to_rgb_array(upright)
    except UnidentifiedImageError:
        raise _NotRecognised(f"not an image: {source}") from None
    except Exception as error:  # noqa: BLE001
        # Pillow's format plugins signal malformed input with whatever they hit
        # (OSError, SyntaxError, struct.error, IndexError, DecompressionBombError ...);
        # to the user they all mean the same thing.
        raise MediaError(f"could not decode image {source}: {_reason(error)}") from None
    return Media(
        source=source,
        kind="image",
        frames=pixels[np.newaxis],
        frame_indices=[0],
        timestamps=[0.0],
        total_frames=1,
        fps=None,
        notices=notices,
        decoded_frames=1,
    )


def load_video(path: str | Path, num_frames: int = 8) -> Media:
    """Sample `num_frames` frames uniformly (see `sample_indices`) from the first video
    stream, decoding only as far as the last sampled frame."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    source = str(path)
    file = _check_file(path)
    notices: list[str] = []
    with _ffmpeg_logs_off():
        with _open_video(file, source) as (container, stream):
            fps = _frame_rate(stream)
            total = _frame_count_from_headers(container, stream, fps)
            wanted = [int(i) for i in sample_indices(total, num_frames)]
            first = _decode_selected(container, stream, wanted) if total else None
        decoded = 0
        if first is None:
            # No header states a length, so the only way to know it is to count.
            total = _count_frames(file, source, notices)
            decoded = total
            wanted = [int(i) for i in sample_indices(total, num_frames)]
            first = _decode_pass(file, source, wanted)
        decoded += first.frames_seen
        kept = first.kept

        if first.frames_seen <= wanted[-1]:
            # The stream ended (or broke) before the last sampled frame: the header
            # overstated the length, or the file is truncated or corrupt. Returning just
            # the frames we reached would silently cluster the sample at the start, so
            # re-sample uniformly over the frames that really exist. Frames already
            # converted are reused; the rest need a second pass from the start, a
            # re-decode paid only in this uncommon case.
            seen = first.frames_seen
            if seen == 0:
                raise MediaError(f"could not decode any frame from {source}{first.why()}")
            notices.append(
                f"{source}: only {seen} of {total} frames could be decoded"
                f"{first.why(prefix=' (', suffix=')')}; sampled from those"
            )
            total = seen
            wanted = [int(i) for i in sample_indices(total, num_frames)]
            missing = [i for i in wanted if i not in kept]
            if missing:
                second = _decode_pass(file, source, missing)
                decoded += second.frames_seen
                kept = {**kept, **second.kept}
            # Decoding is deterministic, so this only trips if the file changed under us.
            lost = [i for i in wanted if i not in kept]
            if lost:
                raise MediaError(f"could not re-read frames {lost} of {source}")

    chosen = [kept[i] for i in wanted]
    return Media(
        source=source,
        kind="video",
        frames=_stack_frames([pixels for pixels, _ in chosen], source),
        frame_indices=wanted,
        timestamps=[
            time if time is not None else _index_time(index, fps)
            for index, (_, time) in zip(wanted, chosen)
        ],
        total_frames=total,
        fps=fps,
        notices=notices,
        decoded_frames=decoded,
    )


# --- files --------------------------------------------------------------------------


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


def _reason(error: BaseException) -> str:
    """The error's own words, squeezed onto one line."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return re.sub(r"\s+", " ", str(text)).strip()


# --- images ---------------------------------------------------------------------------


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


# --- video ----------------------------------------------------------------------------


@dataclass
class _DecodeResult:
    kept: dict[int, tuple[np.ndarray, float | None]] = field(default_factory=dict)
    frames_seen: int = 0  # frames the decoder produced before we stopped or it ended
    error: str | None = None  # the first decode/demux failure, if any

    def why(self, prefix: str = ": ", suffix: str = "") -> str:
        return f"{prefix}{self.error}{suffix}" if self.error else ""


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
def _open_video(
    file: Path, source: str
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    try:
        container = av.open(str(file), mode="r")
    except _AV_ERRORS as error:
        raise _NotRecognised(f"not a video: {source} ({_reason(error)})", _reason(error)) from None
    except OSError as error:
        raise MediaError(f"cannot read {source}: {_reason(error)}") from None
    with container:
        if container.format.name in _TEXT_DEMUXERS:
            raise _NotRecognised(f"not a video: {source}")
        if not container.streams.video:
            raise MediaError(f"no video stream in {source}")
        stream = container.streams.video[0]
        # Frame threading changes only when frames come out, not what they contain (the
        # parity tests compare against an unthreaded decode).
        stream.thread_type = "AUTO"
        yield container, stream


def _frame_rate(stream: av.video.stream.VideoStream) -> float | None:
    # average_rate is what the reference uses; raw elementary streams (.h264) lack it or
    # carry FFmpeg's default 25, and guessed_rate reads the codec's own timing instead.
    rate: Fraction | None = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _frame_count_from_headers(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float | None
) -> int:
    """Frames in the stream according to its metadata; 0 when nothing states a length.

    Estimates from durations are rounded to the nearest frame. If one overshoots, the
    decode notices the early end and re-samples; if one undershoots, the tail beyond the
    estimate is never sampled, which is the price of not decoding every file twice.
    """
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    if fps:
        if stream.duration and stream.time_base:
            return max(1, round(float(stream.duration * stream.time_base) * fps))
        if container.duration:
            return max(1, round(container.duration / av.time_base * fps))
    return 0


def _count_frames(file: Path, source: str, notices: list[str]) -> int:
    """Decode the whole stream without converting anything, to learn its length."""
    with _open_video(file, source) as (container, stream):
        result = _decode_selected(container, stream, [])
    if result.frames_seen == 0:
        raise MediaError(f"could not decode any frame from {source}{result.why()}")
    if result.error:
        notices.append(
            f"{source}: decoding stopped after {result.frames_seen} frames"
            f"{result.why(prefix=' (', suffix=')')}; sampled from those"
        )
    return result.frames_seen


def _decode_pass(file: Path, source: str, wanted: list[int]) -> _DecodeResult:
    # A fresh open rather than a seek to 0: seeking is inexact in some containers, and
    # frame indices only mean something when counted from the very first frame.
    with _open_video(file, source) as (container, stream):
        return _decode_selected(container, stream, wanted)


def _decode_selected(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, wanted: list[int]
) -> _DecodeResult:
    """Decode from the start, converting only frames in `wanted` (sorted) and stopping
    right after the last of them. An empty `wanted` decodes everything (a counting pass).
    """
    result = _DecodeResult()
    wanted_set = set(wanted)
    last_wanted = wanted[-1] if wanted else None
    bad_in_a_row = 0

    def take(frames: list[av.VideoFrame]) -> bool:
        """Record frames; True once the last wanted frame is in hand."""
        for frame in frames:
            index = result.frames_seen
            result.frames_seen += 1
            if index in wanted_set:
                result.kept[index] = (frame.to_ndarray(format="rgb24"), frame.time)
            if last_wanted is not None and index >= last_wanted:
                return True
        return False

    packets = container.demux(stream)
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


def _stack_frames(frames: list[np.ndarray], source: str) -> np.ndarray:
    shapes = {pixels.shape for pixels in frames}
    if len(shapes) > 1:
        sizes = ", ".join(sorted(f"{shape[1]}x{shape[0]}" for shape in shapes))
        raise MediaError(f"frame size changes mid-stream in {source} ({sizes})")
    return np.stack(frames).astype(np.uint8, copy=False)
