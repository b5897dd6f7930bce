"""Build small, real media files for tests, so no binary fixtures live in the repository.

Every video frame is different (a gradient that moves with the frame number, plus the
frame number written in large binary blocks), so a test that gets an index wrong sees
different pixels rather than a near-identical neighbour.
"""

from __future__ import annotations

import contextlib
import faulthandler
import http.server
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

BLOCK = 8  # side of one bit-block in the frame-number stripe; survives lossy coding


def best_video_codec() -> str:
    """libx264 when this PyAV build has it (B-frames, so codec delay is exercised)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def frame_pattern(index: int, size: tuple[int, int]) -> np.ndarray:
    """(height, width, 3) uint8 RGB content of frame `index`; `size` is (width, height)."""
    width, height = size
    x = np.arange(width)[np.newaxis, :]
    y = np.arange(height)[:, np.newaxis]
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = (x * 4 + index * 9) % 256
    pixels[..., 1] = (y * 5 + index * 5) % 256
    pixels[..., 2] = ((x + y) * 2 + index * 31) % 256
    # The frame number in binary, one BLOCK x BLOCK square per bit along the bottom.
    top = max(0, height - BLOCK)
    for bit in range(width // BLOCK):
        on = (index >> bit) & 1
        pixels[top:, bit * BLOCK : (bit + 1) * BLOCK] = 255 if on else 0
    return pixels


def read_frame_number(pixels: np.ndarray) -> int:
    """The frame number `frame_pattern` wrote into (height, width, 3) `pixels`."""
    height, width = pixels.shape[:2]
    top = max(0, height - BLOCK)
    number = 0
    for bit in range(width // BLOCK):
        # Block centres only: lossy codecs smear the edges between blocks.
        centre = pixels[top + 2 : height - 2, bit * BLOCK + 2 : (bit + 1) * BLOCK - 2]
        if centre.mean() > 128:
            number |= 1 << bit
    return number


def make_video(
    path: str | Path,
    frames: int = 24,
    size: tuple[int, int] = (64, 48),
    fps: int | Fraction = 24,
    codec: str | None = None,
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
    times: list[float] | None = None,
    rotation: int | None = None,
    max_b_frames: int | None = None,
    hflip: bool = False,
    vflip: bool = False,
) -> Path:
    """Encode `frames` distinct frames of `size` (width, height); returns the path.

    `times` (seconds, one per frame) makes a variable-frame-rate clip in a millisecond
    time base; `rotation` stores a display matrix (degrees counter-clockwise, as PyAV's
    VideoFrame.rotation reads it back; `hflip`/`vflip` mirror after it); `codec_options` go to the encoder (x264-params,
    crf ...).
    """
    path = Path(path)
    codec = codec or best_video_codec()
    width, height = size
    if times is not None:
        frames = len(times)
    codec_options = dict(codec_options or {})
    if codec == "libx265":
        # x265 prints a banner and statistics to stderr unless told otherwise.
        params = codec_options.get("x265-params", "")
        codec_options["x265-params"] = ":".join(filter(None, [params, "log-level=error"]))
    with av.open(str(path), mode="w", format=container_format, options=options or {}) as output:
        stream = output.add_stream(codec, rate=fps, options=codec_options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for index in range(frames):
            frame = _source_frame(frame_pattern(index, size), pix_fmt)
            if times is not None:
                frame.pts = round(times[index] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def _source_frame(pixels: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    if pix_fmt != "pal8":
        return av.VideoFrame.from_ndarray(pixels, format="rgb24")
    # FFmpeg cannot convert to a palette itself; Pillow picks one (exact for our few colours
    # per block, close elsewhere) and the encoder stores it as is.
    quantized = Image.fromarray(pixels).quantize(colors=256)
    rgb = np.array(quantized.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[:, 0] = 255
    palette[: len(rgb), 1:] = rgb
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


def make_image(
    path: str | Path,
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    exif_orientation: int | None = None,
) -> Path:
    """Save a gradient image of `size` (width, height) in Pillow `mode`.

    The top-left 8x8 corner is pure red, so tests can locate it after an EXIF rotation.
    `mode` may also be "I;16" (16-bit greyscale PNG).
    """
    path = Path(path)
    width, height = size
    rgb = frame_pattern(3, size)
    rgb[:BLOCK, :BLOCK] = (255, 0, 0)
    if mode == "I;16":
        grey = rgb[..., 1].astype(np.uint16) * 257  # full 16-bit range
        image = Image.fromarray(grey)
    elif mode == "RGBA":
        alpha = np.full((height, width, 1), 128, dtype=np.uint8)
        image = Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA")
    else:
        image = Image.fromarray(rgb, mode="RGB").convert(mode)
    save_options: dict[str, object] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation  # Orientation
        save_options["exif"] = exif
    image.save(path, **save_options)
    return path


def make_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A short sine tone with no video stream (.wav → pcm_s16le, .m4a → aac)."""
    path = Path(path)
    codec = "aac" if path.suffix.lower() in {".m4a", ".mp4", ".aac"} else "pcm_s16le"
    sample_format = "fltp" if codec == "aac" else "s16"
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        stream.format = sample_format
        chunk = 1024
        total = int(seconds * rate)
        for start in range(0, total, chunk):
            t = np.arange(start, min(start + chunk, total)) / rate
            wave = np.sin(2 * np.pi * 440 * t)
            if codec == "aac":
                samples = wave.astype(np.float32)[np.newaxis, :]
            else:
                samples = (wave * 12000).astype(np.int16)[np.newaxis, :]
            frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout="mono")
            frame.rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def corrupt_copy(src: str | Path, dst: str | Path, keep_fraction: float) -> Path:
    """Copy the first `keep_fraction` of `src`'s bytes to `dst` (a truncated download)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return Path(dst)


def random_bytes(path: str | Path, n: int, seed: int = 0) -> Path:
    """`n` reproducible random bytes."""
    Path(path).write_bytes(np.random.default_rng(seed).bytes(n))
    return Path(path)


def full_decode(path: str | Path, rotation: int = 0) -> list[np.ndarray]:
    """What the reference pipeline's tests do: every frame, sequentially, unthreaded.

    `rotation` (degrees counter-clockwise, a multiple of 90) turns each frame the way a
    display matrix of that angle asks, for comparing with upright output."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if rotation % 360:
        frames = [np.ascontiguousarray(np.rot90(pixels, rotation // 90)) for pixels in frames]
    return frames


def make_animation(
    path: str | Path,
    durations_ms: list[int],
    size: tuple[int, int] = (64, 48),
) -> Path:
    """An animated GIF/WebP/PNG (by suffix) with one frame_pattern frame per duration."""
    path = Path(path)
    frames = [Image.fromarray(frame_pattern(index, size)) for index in range(len(durations_ms))]
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:],
                                  "duration": durations_ms, "loop": 0}
    if path.suffix.lower() == ".webp":
        options["lossless"] = True
    if path.suffix.lower() == ".gif":
        options["disposal"] = 1
    frames[0].save(path, **options)
    return path


def make_header_only(path: str | Path, codec: str = "mpeg4") -> Path:
    """A Matroska file with a video track and not one frame (a recording stopped at once)."""
    path = Path(path)
    with av.open(str(path), mode="w", format="matroska") as output:
        stream = output.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        output.start_encoding()
    return path


def make_raw_video(path: str | Path, frames: int, size: tuple[int, int] = (320, 240), fps: int = 24) -> Path:
    """Uncompressed video in Matroska: large for its length, so a test can tell reading
    the first second from reading the whole file."""
    path = Path(path)
    with av.open(str(path), mode="w", format="matroska") as output:
        stream = output.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(index, size), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


# --- a local web server ------------------------------------------------------------------


@dataclass
class ServedFolder:
    url: str  # base URL, ending in "/"
    server: http.server.ThreadingHTTPServer

    @property
    def bytes_sent(self) -> int:
        return self.server.bytes_sent  # type: ignore[attr-defined]

    @property
    def requests(self) -> list[str]:
        return self.server.requests  # type: ignore[attr-defined]


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with optional Range support, counting the body bytes it sends."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        file = Path(self.translate_path(self.path))
        if not file.is_file():
            self.send_error(404, "not found")
            return
        size = file.stat().st_size
        first, last = 0, size - 1
        wanted = self.headers.get("Range") if self.server.ranges else None  # type: ignore[attr-defined]
        self.server.requests.append(wanted or "whole")  # type: ignore[attr-defined]
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted or "")
        if match and match.group(1):
            first = int(match.group(1))
            last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if first >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        if self.server.ranges:  # type: ignore[attr-defined]
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        with file.open("rb") as handle:
            handle.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = handle.read(min(left, 64 * 1024))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                self.server.bytes_sent += len(chunk)  # type: ignore[attr-defined]
                left -= len(chunk)
                if self.server.pace:  # type: ignore[attr-defined]
                    time.sleep(self.server.pace)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve_folder(folder: str | Path, ranges: bool = True, pace: float = 0.0) -> Iterator[ServedFolder]:
    """Serve `folder` over http on 127.0.0.1 (with Range requests when `ranges`).

    `pace` seconds of sleep after each 64 KiB keep the server slower than the reader,
    so the socket buffers stay near empty and `bytes_sent` is close to what the client
    actually read (unpaced, loopback buffers soak up several MB per connection)."""

    def handler(*args: object, **kwargs: object) -> _RangeHandler:
        return _RangeHandler(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.ranges = ranges  # type: ignore[attr-defined]
    server.bytes_sent = 0  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    server.pace = pace  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ServedFolder(f"http://127.0.0.1:{server.server_address[1]}/", server)
    finally:
        server.shutdown()
        server.server_close()


# --- a time limit for every media test -------------------------------------------------------

TEST_SECONDS = 10


class DecodeTimeout(BaseException):
    """Not an Exception, so the code under test cannot catch and convert it."""


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Fail a test that runs over TEST_SECONDS: the point of many media tests is that
    garbage input must not hang the decoder. Import it into a test module to apply it."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise DecodeTimeout(f"test took over {TEST_SECONDS}s: decoder hang?")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_SECONDS)
    # The alarm only fires when control returns to Python; a hang inside FFmpeg's C code
    # needs this watchdog thread, which dumps the stacks and ends the run.
    faulthandler.dump_traceback_later(TEST_SECONDS * 3, exit=True)
    try:
        yield
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


__all__ = [
    "TEST_SECONDS",
    "DecodeTimeout",
    "ServedFolder",
    "best_video_codec",
    "corrupt_copy",
    "frame_pattern",
    "full_decode",
    "make_animation",
    "make_audio_only",
    "make_header_only",
    "make_image",
    "make_raw_video",
    "make_video",
    "random_bytes",
    "read_frame_number",
    "serve_folder",
    "time_limit",
]


def image_file(**kwargs):
    """A MEDIA_FILES entry (see build_media): make_image(path, **kwargs)."""
    return lambda path: make_image(path, **kwargs)


def video_file(**kwargs):
    """A MEDIA_FILES entry (see build_media): make_video(path, **kwargs)."""
    return lambda path: make_video(path, **kwargs)


def build_media(folder: str | Path, files: dict) -> Path:
    """Write each of `files` (name → a function that writes that file at a path, e.g.
    image_file(size=...) / video_file(frames=...)) into `folder`, in order; returns the folder.
    conftest's `media_dir` fixture builds a test module's MEDIA_FILES with it."""
    folder = Path(folder)
    for name, write in files.items():
        write(folder / name)
    return folder
