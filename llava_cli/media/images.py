"""Pictures through Pillow: stills (EXIF orientation applied, any mode to RGB) and
animated GIF/WebP/PNG sampled as videos by the same FrameSpec rules.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava_cli.errors import MediaError

from .sampling import _choose_frames, _stack_frames
from .sources import _fetch, _reason, _Source
from .spec import FrameSpec, Media, _NotRecognised


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
