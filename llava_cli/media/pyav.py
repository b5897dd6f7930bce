"""PyAV code shared by the video paths: opening a container on its first moving video
stream (rejecting text and picture "videos"), demuxing with the remote transfer watched,
the stream's header facts, and turning a decoded frame into upright RGB pixels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import av.logging
import numpy as np

from llava_cli import media as _media
from llava_cli.errors import MediaError

from .sources import _reason, _Source, _Transfer
from .spec import _NotRecognised


# FFmpeg demuxers that render text files (ANSI art, .txt, .nfo ...) as video; a notes.txt
# handed to us by mistake must be "not an image or video", not a 5-frame clip.
_TEXT_DEMUXERS = frozenset({"tty", "bin", "xbin", "adf", "idf"})


# Errors PyAV raises for unreadable input. FFmpegError covers every av.error class in
# PyAV >= 14; older releases also had av.AVError, which is absent there.
_AV_ERRORS: tuple[type[BaseException], ...] = tuple(
    {av.error.FFmpegError, getattr(av, "AVError", av.error.FFmpegError)}
)


# The transfer of each open remote container, by id (PyAV containers take no attributes).
_TRANSFERS: dict[int, _Transfer] = {}


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    packets = container.demux(stream)
    transfer = _TRANSFERS.get(id(container))
    return packets if transfer is None else transfer.watch(packets)


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
    options = {"timeout": (_media._NETWORK_TIMEOUT_S, _media._NETWORK_TIMEOUT_S)} if src.remote else {}
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
                                 f"{_media._NETWORK_TIMEOUT_S:g} s)") from None
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
