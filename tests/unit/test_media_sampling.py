"""media.py: FrameSpec, parse_time, windows (--start/--end), rates (--fps/--max-frames),
timestamps, the sequential and seeking paths agreeing, and the decord backend.

Clips come from media_factory and every frame carries its own number, so a test can
check which frame it got, not just how many.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest

import llava_cli.media as media_module
from llava_cli.errors import LlavaError, MediaError, UsageError
from llava_cli.media import (
    FrameSpec,
    SamplingError,
    load_media,
    load_video,
    parse_time,
    sample_indices,
)
from support.media import (
    full_decode,
    make_video,
    read_frame_number,
    time_limit,  # noqa: F401 - autouse: every test here has a time limit
)

HAS_X264 = "libx264" in av.codecs_available
CODEC = "libx264" if HAS_X264 else "mpeg4"

try:
    import decord  # noqa: F401

    HAS_DECORD = True
except ImportError:
    HAS_DECORD = False
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")

# 10 s at 24 fps: frame i starts at i / 24 s.
FPS = 24
FRAMES = 240
# A variable-frame-rate clip: bursts of fast frames between slow ones.
VFR_TIMES = [round(t, 3) for t in np.cumsum([0.0] + [0.02, 0.02, 0.02, 0.5, 0.1, 0.25] * 8)[:-1]]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sampling")
    return {
        "cfr": make_video(folder / "cfr.mp4", frames=FRAMES, fps=FPS, codec=CODEC, gop=24),
        "vfr": make_video(folder / "vfr.mkv", codec=CODEC, gop=8, times=VFR_TIMES),
        "webm": make_video(folder / "cfr.webm", frames=96, fps=FPS, codec="libvpx", gop=24),
    }


def assert_exact(media: media_module.Media, path: Path) -> None:
    """The frames are those of a full sequential decode at the returned indices."""
    reference = full_decode(path)
    assert media.frames.shape[0] == len(media.frame_indices) == len(media.timestamps)
    for position, index in enumerate(media.frame_indices):
        np.testing.assert_array_equal(media.frames[position], reference[index])
    assert [read_frame_number(pixels) for pixels in media.frames] == media.frame_indices


# --- FrameSpec and parse_time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90.5", 90.5), ("90s", 90.0), (".5", 0.5), ("1:30", 90.0), ("01:30.250", 90.25),
     ("1:02:03.5", 3723.5), ("0:00", 0.0), ("100:00", 6000.0), (12, 12.0), (2.5, 2.5), (" 7 ", 7.0)],
)
def test_parse_time(text: str | float, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-5", "1:60", "1:61:00", "1::2", "1:2:3:4", "5m", -1.0, "nan"])
def test_parse_time_rejects_with_one_line(text: str | float) -> None:
    with pytest.raises(SamplingError) as caught:
        parse_time(text)
    message = str(caught.value)
    assert "\n" not in message and "HH" in message or "0 or more" in message
    # One error family for the CLI (exit 2), and a ValueError for Python callers.
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("options", "words"),
    [({"frames": 0}, "frame count"), ({"frames": 2.5}, "frame count"), ({"frames": None}, "frame count or"),
     ({"fps": 0}, "frame rate"), ({"fps": -1}, "frame rate"), ({"fps": float("inf")}, "frame rate"),
     ({"max_frames": 0}, "maximum"), ({"start": -1}, "start time"), ({"end": float("nan")}, "end time"),
     ({"start": 5, "end": 5}, "window is empty"), ({"start": 6, "end": 2}, "window is empty"),
     ({"decoder": "opencv"}, "unknown decoder")],
)
def test_frame_spec_rejects_bad_options(options: dict, words: str) -> None:
    with pytest.raises(SamplingError, match=words) as caught:
        FrameSpec(**options)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, LlavaError)


def test_plain_frame_counts_still_work(clips: dict[str, Path]) -> None:
    path = clips["cfr"]
    by_count = load_media(path, 8)
    by_keyword = load_media(path, num_frames=8)
    by_spec = load_media(path, FrameSpec(frames=8))
    assert by_count.frame_indices == by_keyword.frame_indices == by_spec.frame_indices
    assert by_count.frame_indices == sample_indices(FRAMES, 8).tolist()
    np.testing.assert_array_equal(by_count.frames, by_spec.frames)
    assert load_media(path).frame_indices == by_count.frame_indices  # 8 by default
    with pytest.raises(SamplingError):
        load_media(path, FrameSpec(frames=8), num_frames=8)


# --- windows --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "first", "stop"),
    [(2.0, 4.0, 48, 96), (None, 1.0, 0, 24), (9.0, None, 216, 240), (2.01, 4.02, 49, 97), (0.5, 30.0, 12, 240)],
)
def test_window_selects_by_timestamp(
    clips: dict[str, Path], start: float | None, end: float | None, first: int, stop: int
) -> None:
    path = clips["cfr"]
    media = load_media(path, FrameSpec(frames=8, start=start, end=end))
    # The reference recipe over the window's frames, offset by its first frame.
    assert media.frame_indices == [first + int(i) for i in sample_indices(stop - first, 8)]
    lower, upper = start or 0.0, end if end is not None else np.inf
    assert all(lower <= time < upper for time in media.timestamps)
    np.testing.assert_allclose(media.timestamps, np.array(media.frame_indices) / FPS, atol=1e-6)
    assert media.total_frames == FRAMES or end is not None
    assert_exact(media, path)


def test_window_end_stops_the_index_pass_early(clips: dict[str, Path]) -> None:
    media = load_media(clips["cfr"], FrameSpec(frames=4, end=1.0))
    assert media.frame_indices == [0, 6, 12, 18]
    assert media.decoded_frames == 19


def test_window_with_no_frames_is_a_clear_error(clips: dict[str, Path]) -> None:
    path = clips["cfr"]
    for spec in (FrameSpec(start=11), FrameSpec(start=2.001, end=2.02)):
        with pytest.raises(MediaError, match="no frames") as caught:
            load_media(path, spec)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message


def test_window_on_a_variable_frame_rate_clip_uses_timestamps(clips: dict[str, Path]) -> None:
    path = clips["vfr"]
    media = load_media(path, FrameSpec(frames=100, start=1.0, end=2.5))
    expected = [i for i, time in enumerate(VFR_TIMES) if 1.0 <= time < 2.5]
    assert media.frame_indices == expected
    np.testing.assert_allclose(media.timestamps, [VFR_TIMES[i] for i in expected], atol=1e-6)
    assert_exact(media, path)


# --- rates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fps", "start", "end", "expected"),
    [
        (2, None, None, list(range(0, 240, 12))),  # 10 s at 2 fps: 20 frames
        (1, 2.0, 5.0, [48, 72, 96]),
        (0.5, None, None, list(range(0, 240, 48))),
        (24, 3.0, 3.5, list(range(72, 84))),  # the native rate: every frame
        (100, 3.0, 3.25, list(range(72, 78))),  # faster than the video: each frame once
        # Moments 0.2, 0.533, 0.867 s: frames 4 (outside the window, so its first, 5), 12, 20.
        (3, 0.2, 1.0, [5, 12, 20]),
    ],
)
def test_fps_returns_the_expected_frames(
    clips: dict[str, Path], fps: float, start: float | None, end: float | None, expected: list[int]
) -> None:
    path = clips["cfr"]
    media = load_media(path, FrameSpec(frames=None, fps=fps, start=start, end=end))
    assert media.frame_indices == expected
    np.testing.assert_allclose(media.timestamps, np.array(expected) / FPS, atol=1e-6)
    assert_exact(media, path)


def test_fps_takes_precedence_over_frames(clips: dict[str, Path]) -> None:
    media = load_media(clips["cfr"], FrameSpec(frames=8, fps=1))
    assert len(media.frame_indices) == 10


def test_max_frames_caps_fps_and_keeps_the_span(clips: dict[str, Path]) -> None:
    path = clips["cfr"]
    media = load_media(path, FrameSpec(frames=None, fps=4, max_frames=5))  # 40 wanted
    # Spread over the whole 10 s instead of the first 1.25 s: a moment every 2 s.
    assert media.frame_indices == [0, 48, 96, 144, 192]
    assert_exact(media, path)


def test_max_frames_caps_frames(clips: dict[str, Path]) -> None:
    media = load_media(clips["cfr"], FrameSpec(frames=32, max_frames=4))
    assert media.frame_indices == sample_indices(FRAMES, 4).tolist()


def test_fps_on_a_variable_frame_rate_clip_uses_timestamps(clips: dict[str, Path]) -> None:
    path = clips["vfr"]
    media = load_media(path, FrameSpec(frames=None, fps=2))
    times = np.array(VFR_TIMES)
    # Until the last frame stops showing, taken as one median frame step after it.
    moments = np.arange(0, times[-1] + np.median(np.diff(times)), 0.5)
    on_screen = [int(np.searchsorted(times, moment + 1e-9, side="right") - 1) for moment in moments]
    expected = [index for n, index in enumerate(on_screen) if n == 0 or index != on_screen[n - 1]]
    assert media.frame_indices == expected
    # Not what a nominal rate would say: indices are not multiples of any step.
    assert media.frame_indices != sample_indices(len(VFR_TIMES), len(expected)).tolist()
    np.testing.assert_allclose(media.timestamps, times[expected], atol=1e-6)
    assert_exact(media, path)


def test_vfr_timestamps_are_the_encoded_ones(clips: dict[str, Path]) -> None:
    media = load_media(clips["vfr"], FrameSpec(frames=len(VFR_TIMES)))
    assert media.frame_indices == list(range(len(VFR_TIMES)))
    np.testing.assert_allclose(media.timestamps, VFR_TIMES, atol=1e-6)


# --- both decoding paths agree ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [FrameSpec(frames=8), FrameSpec(frames=5, start=3, end=7.5), FrameSpec(frames=None, fps=1.5),
     FrameSpec(frames=None, fps=3, start=3)],
)
@pytest.mark.parametrize("name", ["cfr", "vfr", "webm"])
def test_seeking_and_sequential_paths_agree(clips: dict[str, Path], name: str, spec: FrameSpec) -> None:
    path = clips[name]
    fast = load_media(path, spec)
    slow = load_media(path, FrameSpec(**{**spec.__dict__, "seek": False}))
    assert fast.frame_indices == slow.frame_indices
    np.testing.assert_allclose(fast.timestamps, slow.timestamps, atol=1e-6)
    np.testing.assert_array_equal(fast.frames, slow.frames)
    assert fast.total_frames == slow.total_frames or spec.end is not None
    assert slow.seeks == 0


def test_describe_is_one_line(clips: dict[str, Path]) -> None:
    media = load_media(clips["cfr"], FrameSpec(frames=32))
    line = media.describe()
    assert "\n" not in line and "32 of 240 frames" in line and "pyav" in line


# --- decord -----------------------------------------------------------------------------------


def test_missing_decord_falls_back_to_pyav_with_a_notice(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    media = load_media(clips["cfr"], FrameSpec(frames=8, decoder="decord"))
    assert media.decoder == "pyav"
    assert len(media.notices) == 1 and "decord is not installed" in media.notices[0]
    assert "\n" not in media.notices[0]
    assert media.frame_indices == sample_indices(FRAMES, 8).tolist()


@needs_decord
@pytest.mark.parametrize(
    "spec",
    [FrameSpec(frames=8), FrameSpec(frames=6, start=2, end=5), FrameSpec(frames=None, fps=2, max_frames=12)],
)
@pytest.mark.parametrize("name", ["cfr", "vfr", "webm"])
def test_decord_returns_the_same_indices_as_pyav(clips: dict[str, Path], name: str, spec: FrameSpec) -> None:
    path = clips[name]
    ours = load_media(path, spec)
    theirs = load_media(path, FrameSpec(**{**spec.__dict__, "decoder": "decord"}))
    assert theirs.decoder == "decord" and theirs.notices == []
    assert theirs.frame_indices == ours.frame_indices
    if spec.end is None:  # else ours stopped indexing at the window's end
        assert theirs.total_frames == ours.total_frames
    np.testing.assert_allclose(theirs.timestamps, ours.timestamps, atol=2e-3)
    assert theirs.frames.shape == ours.frames.shape
    # decord converts colours with its own filter graph: close, not necessarily equal.
    difference = np.abs(theirs.frames.astype(int) - ours.frames.astype(int))
    assert difference.mean() < 2 and difference.max() <= 16


@needs_decord
def test_decord_hands_rotated_videos_to_pyav(tmp_path: Path) -> None:
    path = make_video(tmp_path / "portrait.mp4", frames=12, codec=CODEC, rotation=-90)
    media = load_media(path, FrameSpec(frames=4, decoder="decord"))
    assert media.decoder == "pyav" and "rotation" in media.notices[0]
    assert media.frames.shape == (4, 64, 48, 3)


@needs_decord
def test_decord_errors_stay_one_line(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(3).bytes(30_000))
    with pytest.raises(MediaError) as caught:
        load_media(path, FrameSpec(decoder="decord"))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_load_video_accepts_a_spec(clips: dict[str, Path]) -> None:
    media = load_video(clips["cfr"], FrameSpec(frames=3, start=1, end=2))
    assert media.frame_indices == [24, 32, 40]
