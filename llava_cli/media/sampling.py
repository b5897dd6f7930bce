"""Which frames to take: the reference uniform recipe (`sample_indices`), a FrameSpec's
window and rate applied to every frame's timestamp (`_choose_frames`), and stacking the
chosen frames into the result array. Shared by every decoder path; numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from llava_cli.errors import MediaError

from .spec import FrameSpec, _clock


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


def _stack_frames(frames: list[np.ndarray], source: str) -> np.ndarray:
    shapes = {pixels.shape for pixels in frames}
    if len(shapes) > 1:
        sizes = ", ".join(sorted(f"{shape[1]}x{shape[0]}" for shape in shapes))
        raise MediaError(f"frame size changes mid-stream in {source} ({sizes})")
    return np.stack(frames).astype(np.uint8, copy=False)
