"""Build small, real media files for tests, so no binary fixtures live in the repository.

Every video frame is different (a gradient that moves with the frame number, plus the
frame number written in large binary blocks), so a test that gets an index wrong sees
different pixels rather than a near-identical neighbour.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
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
    fps: int = 24,
    codec: str | None = None,
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` distinct frames of `size` (width, height); returns the path."""
    path = Path(path)
    codec = codec or best_video_codec()
    width, height = size
    with av.open(str(path), mode="w", format=container_format, options=options or {}) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(index, size), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


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


def full_decode(path: str | Path) -> list[np.ndarray]:
    """What the reference pipeline's tests do: every frame, sequentially, unthreaded."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


__all__ = [
    "best_video_codec",
    "corrupt_copy",
    "frame_pattern",
    "full_decode",
    "make_audio_only",
    "make_image",
    "make_video",
    "random_bytes",
    "read_frame_number",
]
