"""media.py: frame sampling parity with the reference recipe, images, and bad input.

Clips are encoded on the fly by media_factory; every frame differs, so an off-by-one in
indexing shows up as a pixel mismatch. Every test runs under a time limit because the
point of half of them is that garbage input must not hang the decoder.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest
from PIL import Image

from llava_cli.errors import MediaError
from llava_cli.media import FrameSpec, Media, load_image, load_media, load_video, sample_indices
from support.media import (  # time_limit: autouse, every test here has a time limit
    corrupt_copy,
    frame_pattern,
    full_decode,
    make_audio_only,
    make_image,
    make_video,
    random_bytes,
    read_frame_number,
    time_limit,  # noqa: F401
)

HAS_X264 = "libx264" in av.codecs_available
VIDEO_CODECS = [
    pytest.param("libx264", marks=pytest.mark.skipif(not HAS_X264, reason="no libx264")),
    "mpeg4",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shared clips, encoded once per module to keep the suite fast."""
    folder = tmp_path_factory.mktemp("clips")
    made = {
        "mpeg4": make_video(folder / "mpeg4.mp4", frames=60, codec="mpeg4"),
        "webm": make_video(folder / "vp8.webm", frames=40, codec="libvpx"),
        "mkv": make_video(folder / "clip.mkv", frames=50, codec="mpeg4"),
        "long": make_video(folder / "long.mp4", frames=240, codec="mpeg4", gop=12),
    }
    if HAS_X264:
        made["libx264"] = make_video(folder / "h264.mp4", frames=60, codec="libx264")
        made["raw_h264"] = make_video(
            folder / "raw.h264", frames=45, codec="libx264", container_format="h264"
        )
    return made


def assert_one_line_naming(error: MediaError, path: Path | str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message


def assert_matches_full_decode(media: Media, path: Path, num_frames: int) -> None:
    reference = full_decode(path)
    expected = sample_indices(len(reference), num_frames).tolist()
    assert media.total_frames == len(reference)
    assert media.frame_indices == expected
    assert media.frames.dtype == np.uint8
    assert media.frames.shape == (len(expected), *reference[0].shape)
    for position, index in enumerate(expected):
        np.testing.assert_array_equal(media.frames[position], reference[index])


# --- sample_indices --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "num_frames"),
    [(50, 8), (60, 12), (240, 8), (9, 8), (100, 16), (1000, 32), (17, 7), (31, 29), (8, 8)],
)
def test_sample_indices_is_the_reference_recipe(total: int, num_frames: int) -> None:
    expected = np.arange(0, total, total / num_frames).astype(int)
    np.testing.assert_array_equal(sample_indices(total, num_frames), expected)


@pytest.mark.parametrize(("total", "num_frames"), [(5, 8), (1, 8), (3, 4)])
def test_sample_indices_takes_every_frame_of_a_short_clip(total: int, num_frames: int) -> None:
    np.testing.assert_array_equal(sample_indices(total, num_frames), np.arange(total))


def test_sample_indices_rejects_zero_frames() -> None:
    with pytest.raises(ValueError):
        sample_indices(10, 0)
    assert sample_indices(0, 8).size == 0


# --- video parity ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", VIDEO_CODECS)
@pytest.mark.parametrize("num_frames", [8, 12])
def test_video_frames_match_a_full_sequential_decode(
    clips: dict[str, Path], codec: str, num_frames: int
) -> None:
    # load_video decodes with frame threading; full_decode does not, so equality here is
    # also the proof that threading leaves the pixels alone.
    path = clips[codec]
    media = load_video(path, num_frames)
    assert media.kind == "video"
    assert media.source == str(path)
    assert_matches_full_decode(media, path, num_frames)
    assert media.fps == pytest.approx(24.0)
    assert len(media.timestamps) == len(media.frame_indices)
    assert all(later > earlier for earlier, later in zip(media.timestamps, media.timestamps[1:]))
    assert media.timestamps[1] == pytest.approx(media.frame_indices[1] / 24, abs=1e-3)
    assert media.notices == []
    # Stops right after the last sampled frame (codec delay costs packets, not frames).
    assert media.decoded_frames == media.frame_indices[-1] + 1


@pytest.mark.parametrize("codec", VIDEO_CODECS)
def test_video_frames_are_the_encoded_ones(clips: dict[str, Path], codec: str) -> None:
    # Guards the parity test itself: each frame carries its own number, so a decode that
    # returned the wrong frame (not merely a different rendering of it) is caught.
    media = load_video(clips[codec], 8)
    numbers = [read_frame_number(pixels) for pixels in media.frames]
    assert numbers == media.frame_indices


def test_decoding_stops_after_the_last_needed_frame(clips: dict[str, Path]) -> None:
    # The sequential path (seek=False; also the fallback for streams the fast path
    # cannot vouch for) decodes from the start and stops right after the last target.
    media = load_video(clips["long"], FrameSpec(frames=2, seek=False))
    assert media.total_frames == 240
    assert media.frame_indices == [0, 120]
    assert media.decoded_frames == 121
    assert media.seeks == 0
    assert_matches_full_decode(media, clips["long"], 2)


def test_seeking_decodes_only_the_gops_that_hold_targets(clips: dict[str, Path]) -> None:
    # "long" has a keyframe every 12 frames and 120 is one: each target costs one frame.
    media = load_video(clips["long"], 2)
    assert media.total_frames == 240
    assert media.frame_indices == [0, 120]
    assert media.decoded_frames == 2
    assert media.seeks == 2
    assert_matches_full_decode(media, clips["long"], 2)


@pytest.mark.parametrize("name", ["webm", "mkv"])
def test_containers_without_a_frame_count_estimate_it(clips: dict[str, Path], name: str) -> None:
    # VP8 in WebM and mpeg4 in Matroska report stream.frames == 0; the length comes from
    # the durations instead.
    path = clips[name]
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    media = load_video(path, 8)
    assert_matches_full_decode(media, path, 8)
    assert media.decoded_frames == media.frame_indices[-1] + 1


@pytest.mark.skipif(not HAS_X264, reason="no libx264")
def test_raw_stream_without_durations_is_counted_first(clips: dict[str, Path]) -> None:
    path = clips["raw_h264"]
    media = load_video(path, 8)
    assert_matches_full_decode(media, path, 8)
    # One counting pass over all 45 frames, then a decode up to the last sampled one.
    assert media.decoded_frames == 45 + media.frame_indices[-1] + 1
    assert media.timestamps == sorted(media.timestamps)


def test_short_clip_returns_every_frame(tmp_path: Path) -> None:
    path = make_video(tmp_path / "short.mp4", frames=5, codec="mpeg4")
    media = load_video(path, 8)
    assert media.frame_indices == [0, 1, 2, 3, 4]
    assert_matches_full_decode(media, path, 8)


def test_num_frames_must_be_positive(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        load_video(clips["mpeg4"], 0)


# --- images ------------------------------------------------------------------------------


RED = np.array([255, 0, 0])


def red_corner(pixels: np.ndarray) -> str:
    """Which corner of an (H, W, 3) image holds make_image's red marker."""
    corners = {"top-left": (0, 0), "top-right": (0, -1), "bottom-left": (-1, 0),
               "bottom-right": (-1, -1)}
    found = [name for name, (y, x) in corners.items()
             if np.abs(pixels[y, x].astype(int) - RED).max() < 40]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [(1, (48, 64, 3), "top-left"), (3, (48, 64, 3), "bottom-right"),
     (6, (64, 48, 3), "top-right"), (8, (64, 48, 3), "bottom-left")],
)
def test_image_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, shape: tuple[int, int, int], corner: str
) -> None:
    path = make_image(tmp_path / "photo.jpg", size=(64, 48), exif_orientation=orientation)
    media = load_image(path)
    assert media.frames.shape == (1, *shape)
    assert red_corner(media.frames[0]) == corner


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "1"])
def test_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    path = make_image(tmp_path / "picture.png", mode=mode)
    media = load_image(path)
    with Image.open(path) as image:
        # The reference processors call convert("RGB"): alpha is dropped, not blended.
        expected = np.asarray(image.convert("RGB"))
    assert media.kind == "image"
    assert media.frames.dtype == np.uint8
    assert media.frames.shape == (1, 48, 64, 3)
    np.testing.assert_array_equal(media.frames[0], expected)
    assert (media.frame_indices, media.timestamps, media.total_frames) == ([0], [0.0], 1)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    media = load_image(make_image(tmp_path / "print.jpg", mode="CMYK"))
    assert media.frames.shape == (1, 48, 64, 3)
    assert red_corner(media.frames[0]) == "top-left"


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = make_image(tmp_path / "depth.png", mode="I;16")
    media = load_image(path)
    # make_image stores the green channel times 257; the top 8 bits give it back.
    expected = frame_pattern(3, (64, 48))[..., 1].copy()
    expected[:8, :8] = 0
    np.testing.assert_array_equal(media.frames[0, ..., 0], expected)
    np.testing.assert_array_equal(media.frames[0, ..., 0], media.frames[0, ..., 2])


# --- load_media routing ------------------------------------------------------------------


def test_load_media_routes_by_extension(tmp_path: Path, clips: dict[str, Path]) -> None:
    assert load_media(make_image(tmp_path / "a.png")).kind == "image"
    assert load_media(clips["mpeg4"], 8).kind == "video"


def test_load_media_sniffs_unknown_extensions(tmp_path: Path, clips: dict[str, Path]) -> None:
    video = tmp_path / "clip.bin"
    video.write_bytes(clips["mkv"].read_bytes())
    image = tmp_path / "picture.data"
    image.write_bytes(make_image(tmp_path / "p.png").read_bytes())
    media = load_media(video, 8)
    assert media.kind == "video"
    assert_matches_full_decode(media, video, 8)
    assert load_media(image).kind == "image"


def test_animated_gif_is_a_video(tmp_path: Path) -> None:
    # Issue 5: animated GIF/WebP are videos (this test used to pin "a still image for
    # now"). FFmpeg's own GIF encoder and decoder give the reference frames here.
    path = make_video(tmp_path / "anim.gif", frames=5, codec="gif", pix_fmt="rgb8")
    media = load_media(path)
    assert media.kind == "video"
    assert media.frames.shape == (5, 48, 64, 3)
    assert media.frame_indices == [0, 1, 2, 3, 4]
    assert [read_frame_number(pixels) for pixels in media.frames] == [0, 1, 2, 3, 4]
    for pixels, reference in zip(media.frames, full_decode(path)):
        np.testing.assert_array_equal(pixels, reference)
    # load_image still gives the first frame of an animation as a picture.
    still = load_image(path)
    assert still.kind == "image" and still.frames.shape == (1, 48, 64, 3)
    np.testing.assert_array_equal(still.frames[0], media.frames[0])


# --- bad input ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match="no such file") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="directory") as caught:
        load_media(tmp_path)
    assert_one_line_naming(caught.value, tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.mp4"
    os.mkfifo(path)
    with pytest.raises(MediaError, match="not a regular file") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


@pytest.mark.parametrize("name", ["empty.mp4", "empty.png", "empty"])
def test_zero_length_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    with pytest.raises(MediaError, match="empty file") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


@pytest.mark.parametrize("name", ["noise.mp4", "noise.mkv", "noise.bin", "noise.jpg"])
def test_random_bytes(tmp_path: Path, name: str) -> None:
    path = random_bytes(tmp_path / name, 50_000)
    with pytest.raises(MediaError) as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


@pytest.mark.parametrize("name", ["notes.png", "notes.txt", "notes.mp4"])
def test_text_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not a picture\n" * 50)
    with pytest.raises(MediaError, match="not an image or video") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


@pytest.mark.parametrize("name", ["tone.m4a", "tone.wav", "tone.mp4"])
def test_audio_only_file(tmp_path: Path, name: str) -> None:
    path = make_audio_only(tmp_path / name)
    with pytest.raises(MediaError, match="no video stream") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_image(tmp_path: Path, name: str) -> None:
    whole = make_image(tmp_path / f"whole{Path(name).suffix}", size=(256, 192))
    path = corrupt_copy(whole, tmp_path / name, keep_fraction=0.5)
    with pytest.raises(MediaError, match="could not decode image") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


def test_truncated_video_resamples_over_what_decodes(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    # Matroska keeps its header (with the full duration) at the front, so a cut file
    # still opens and claims 50 frames but delivers only the first part.
    path = corrupt_copy(clips["mkv"], tmp_path / "cut.mkv", keep_fraction=0.3)
    media = load_media(path, 8)
    seen = len(full_decode(path))
    assert 0 < seen < 50
    assert media.total_frames == seen
    assert media.frame_indices == sample_indices(seen, 8).tolist()
    assert_matches_full_decode(media, path, 8)
    assert len(media.notices) == 1
    assert "\n" not in media.notices[0] and str(path) in media.notices[0]


def test_truncated_mp4_is_a_clear_error(tmp_path: Path, clips: dict[str, Path]) -> None:
    # PyAV's MP4 muxer writes the index (moov) last; cut it off and nothing is readable.
    path = corrupt_copy(clips["mpeg4"], tmp_path / "cut.mp4", keep_fraction=0.3)
    with pytest.raises(MediaError, match="truncated or corrupt") as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


def test_almost_nothing_left_of_a_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    path = corrupt_copy(clips["webm"], tmp_path / "stub.webm", keep_fraction=0.05)
    with pytest.raises(MediaError) as caught:
        load_media(path)
    assert_one_line_naming(caught.value, path)


def test_damage_in_the_middle_never_escapes_as_a_traceback(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    data = bytearray(clips["long"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(1).bytes(4000)
    path = tmp_path / "scratched.mp4"
    path.write_bytes(bytes(data))
    try:
        media = load_media(path, 8)
    except MediaError as error:
        assert_one_line_naming(error, path)
    else:
        assert media.frames.shape[1:] == (48, 64, 3)
        assert all("\n" not in notice for notice in media.notices)


def test_ffmpeg_stays_quiet_and_log_level_is_restored(
    tmp_path: Path, clips: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    before = av.logging.get_level()
    for path in (
        random_bytes(tmp_path / "noise.mp4", 20_000),
        corrupt_copy(clips["mkv"], tmp_path / "cut.mkv", keep_fraction=0.3),
    ):
        try:
            load_media(path)
        except MediaError:
            pass
    captured = capfd.readouterr()
    assert captured.err == ""
    assert av.logging.get_level() == before
