"""media.py on the files people really have: many codecs and containers, frame rates,
variable frame rate, rotation metadata, long GOPs, open GOPs, unusual pixel formats and
sizes, animated pictures, damaged and empty files, and http(s) URLs.

Exactness is the point: for every clip, the frames load_media returns must be pixel
for pixel those that a full sequential, unthreaded decode (media_factory.full_decode)
has at the same indices, whatever seeking, GOP reuse and threading did to get them.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import features

import llava_cli.media as media_module
from llava_cli.errors import MediaError
from llava_cli.media import FrameSpec, Media, load_media, sample_indices
from support.media import (
    corrupt_copy,
    frame_pattern,
    full_decode,
    make_animation,
    make_audio_only,
    make_header_only,
    make_image,
    make_raw_video,
    make_video,
    random_bytes,
    read_frame_number,
    serve_folder,
    time_limit,  # noqa: F401 - autouse: every test here has a time limit
)

AVAILABLE = av.codecs_available


def codec_param(name: str, *extra: object) -> object:
    return pytest.param(name, *extra, id=name if not extra else None,
                        marks=pytest.mark.skipif(name not in AVAILABLE, reason=f"no {name} encoder"))


@pytest.fixture
def seek_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seek for every hop, however short, so small clips exercise the seeking path as
    hard as long ones do (the default decodes on through short gaps)."""
    monkeypatch.setattr(media_module, "_SEEK_MIN_SKIP", 0)


def assert_exact(media: Media, reference: list[np.ndarray]) -> None:
    assert media.kind == "video"
    assert media.frames.dtype == np.uint8
    assert media.frames.shape == (len(media.frame_indices), *reference[0].shape)
    for position, index in enumerate(media.frame_indices):
        np.testing.assert_array_equal(media.frames[position], reference[index], err_msg=f"frame {index}")


def exact_everywhere(path: Path, rotation: int = 0, specs: tuple[FrameSpec, ...] | None = None) -> list[Media]:
    """Sample `path` several ways and check each against the sequential decode; also
    check that the fast path served them (seeks > 0), not the sequential fallback."""
    reference = full_decode(path, rotation=rotation)
    total = len(reference)
    specs = specs or (FrameSpec(frames=8), FrameSpec(frames=5, start=total / 3 / 24, end=total * 0.9 / 24),
                      FrameSpec(frames=None, fps=5, max_frames=9), FrameSpec(frames=total))
    results = []
    for spec in specs:
        media = load_media(path, spec)
        assert_exact(media, reference)
        assert media.seeks > 0, "the fast path gave up and decoded sequentially"
        if spec.end is None:
            assert media.total_frames == total
        results.append(media)
    return results


# --- exactness across codecs, rates and structures ------------------------------------------


@pytest.mark.parametrize(
    ("codec", "suffix", "options"),
    [
        codec_param("libx264", ".mp4", {}),
        codec_param("libx264", ".mkv", {"x264-params": "open-gop=1:keyint=15:min-keyint=15:scenecut=0:bframes=3"}),
        codec_param("libx265", ".mp4", {"x265-params": "keyint=15:min-keyint=15:scenecut=0"}),
        codec_param("libx265", ".mkv", {"x265-params": "keyint=15:min-keyint=15:scenecut=0"}),
        codec_param("libvpx-vp9", ".webm", {}),
        codec_param("libvpx", ".webm", {}),
        codec_param("mpeg4", ".avi", {}),
        codec_param("mpeg2video", ".ts", {}),
        codec_param("libsvtav1", ".mp4", {"svtav1-params": "log-level=0"}),
    ],
)
def test_frames_are_exact_across_codecs(
    tmp_path: Path, seek_eagerly: None, codec: str, suffix: str, options: dict
) -> None:
    # B-frames where the codec has them (x264 and x265 by default, mpeg4/mpeg2 here), so
    # decode order differs from display order; the x264 .mkv and x265 clips have open
    # GOPs whose leading pictures need the previous GOP.
    b_frames = 2 if codec in {"mpeg4", "mpeg2video"} else None
    path = make_video(tmp_path / f"clip{suffix}", frames=60, codec=codec, gop=12,
                      codec_options=options, max_b_frames=b_frames)
    if "open-gop" in str(options) or codec in {"libx265", "mpeg4", "mpeg2video"}:
        assert leading_pictures(path), "this clip is meant to have open-GOP leading pictures"
    exact_everywhere(path)


def leading_pictures(path: Path) -> list[int]:
    """Decode positions of packets shown before the keyframe they follow in decode
    order (open-GOP leading pictures, which reference the previous GOP)."""
    with media_module._open_video(media_module._source(path)) as (container, stream):
        index, why_not = media_module._index_packets(container, stream, None)
    assert index is not None, why_not
    keyframes = np.flatnonzero(index.keyframe)
    return [j for j in range(len(index.pts)) if index.pts[j] < index.pts[keyframes[keyframes <= j][-1]]]


@pytest.mark.parametrize("fps", [24, 25, Fraction(30000, 1001), 60, 15])
def test_frames_and_times_are_exact_at_several_frame_rates(tmp_path: Path, seek_eagerly: None, fps: Fraction) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=50, fps=fps, gop=10)
    for media in exact_everywhere(path):
        np.testing.assert_allclose(media.timestamps, np.array(media.frame_indices) / float(fps), atol=2e-3)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_is_exact_and_timed_by_timestamps(tmp_path: Path, seek_eagerly: None, suffix: str) -> None:
    steps = np.random.default_rng(7).choice([0.01, 0.04, 0.1, 0.5], size=59)
    times = [0.0, *np.cumsum(steps).round(3).tolist()]
    path = make_video(tmp_path / f"vfr{suffix}", times=times, gop=10)
    for media in exact_everywhere(path, specs=(FrameSpec(frames=12), FrameSpec(frames=None, fps=2),
                                               FrameSpec(frames=6, start=times[20], end=times[45]))):
        np.testing.assert_allclose(media.timestamps, [times[i] for i in media.frame_indices], atol=1e-6)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path: Path, seek_eagerly: None, rotation: int) -> None:
    path = make_video(tmp_path / "phone.mp4", frames=40, gop=10, rotation=rotation)
    results = exact_everywhere(path, rotation=rotation)
    upright = results[0]
    assert upright.frames.shape[1:3] == ((64, 48) if rotation % 180 else (48, 64))
    # Turned back by the same angle, the frame numbers sit in their stripe again.
    numbers = [read_frame_number(np.rot90(pixels, -rotation // 90)) for pixels in upright.frames]
    assert numbers == upright.frame_indices


@pytest.mark.parametrize(
    ("rotation", "hflip", "vflip"), [(0, True, False), (0, False, True), (90, True, False), (-90, True, False)]
)
def test_mirrored_display_matrices_are_applied(tmp_path: Path, rotation: int, hflip: bool, vflip: bool) -> None:
    # As FFmpeg's own tools show them: turned counter-clockwise, then mirrored.
    path = make_video(tmp_path / "selfie.mp4", frames=6, rotation=rotation, hflip=hflip, vflip=vflip)
    media = load_media(path, FrameSpec(frames=3))
    for position, index in enumerate(media.frame_indices):
        expected = np.rot90(full_decode(path)[index], rotation // 90)
        expected = expected[:, ::-1] if hflip else expected
        expected = expected[::-1] if vflip else expected
        np.testing.assert_array_equal(media.frames[position], expected)


def test_a_long_gop_is_exact_and_decodes_only_what_targets_need(tmp_path: Path) -> None:
    # x264 with a 250-frame GOP and no scene cuts: keyframes at 0 and 250 only.
    path = make_video(tmp_path / "long.mp4", frames=300, gop=250,
                      codec_options={"x264-params": "keyint=250:min-keyint=250:scenecut=0"})
    reference = full_decode(path)
    media = load_media(path, FrameSpec(frames=3, start=240 / 24))  # frames 240..299
    assert media.frame_indices == [240, 260, 280]
    assert_exact(media, reference)
    # One run from the keyframe at 0 to 240 then on to 280 (decoding on beats seeking
    # within a GOP), not three seeks each starting over at frame 0.
    assert media.seeks == 1 and media.decoded_frames == 281
    late = load_media(path, FrameSpec(frames=2, start=255 / 24))  # frames 255, 277: GOP 2
    assert late.frame_indices == [255, 277] and late.decoded_frames == 28
    assert_exact(late, reference)


def test_every_single_frame_is_reachable_by_seeking(tmp_path: Path, seek_eagerly: None) -> None:
    # The strictest form: each frame on its own, through the seeking path, for a clip
    # with B-frames and an open GOP (leading pictures reference the previous GOP).
    path = make_video(tmp_path / "clip.mkv", frames=48,
                      codec_options={"x264-params": "open-gop=1:keyint=15:min-keyint=15:scenecut=0:bframes=3"})
    assert leading_pictures(path), "the clip should have open-GOP leading pictures"
    reference = full_decode(path)
    source = media_module._source(path)
    with media_module._open_video(source) as (container, stream):
        index, why_not = media_module._index_packets(container, stream, None)
        assert index is not None, why_not
        for target in range(len(reference)):
            sink, _, runs = media_module._decode_runs(source, container, stream, index, [target])
            assert runs == 1
            np.testing.assert_array_equal(sink.result()[0], reference[target], err_msg=f"frame {target}")


def test_threaded_workers_and_a_single_decoder_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seek_eagerly: None
) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=120, gop=10)
    spec = FrameSpec(frames=12)
    monkeypatch.setattr(media_module, "_usable_cores", lambda: 4)
    parallel = load_media(path, spec)
    monkeypatch.setattr(media_module, "_usable_cores", lambda: 1)
    single = load_media(path, spec)
    assert parallel.frame_indices == single.frame_indices
    assert parallel.seeks == single.seeks > 1
    np.testing.assert_array_equal(parallel.frames, single.frames)
    assert_exact(parallel, full_decode(path))


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_header_that_misstates_the_length_does_not_matter(tmp_path: Path, factor: float) -> None:
    # Matroska states no frame count, only a duration; make it lie. The index pass counts
    # the frames that are really there.
    import struct

    path = make_video(tmp_path / "clip.mkv", frames=48, codec="mpeg4")
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Segment Info Duration, an 8-byte float (ms)
    assert at > 0
    (duration,) = struct.unpack(">d", data[at + 3 : at + 11])
    data[at + 3 : at + 11] = struct.pack(">d", duration * factor)
    path.write_bytes(bytes(data))
    with av.open(str(path)) as container:
        assert container.duration == pytest.approx(2_000_000 * factor)
    media = load_media(path, FrameSpec(frames=8))
    assert media.total_frames == 48
    assert media.frame_indices == sample_indices(48, 8).tolist()
    assert_exact(media, full_decode(path))
    if factor > 1:  # a header promising more than is there gets a (one-line) notice
        assert len(media.notices) == 1 and "truncated?" in media.notices[0]


def test_a_stream_the_fast_path_cannot_vouch_for_is_decoded_sequentially(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=60, gop=12)

    def refuse(*args: object, **kwargs: object) -> None:
        raise media_module._SeekFailed("simulated surprise")

    monkeypatch.setattr(media_module, "_packets_from", refuse)
    media = load_media(path, FrameSpec(frames=8))
    assert media.seeks == 0 and media.notices == []
    assert media.frame_indices == sample_indices(60, 8).tolist()
    assert_exact(media, full_decode(path))


# --- pixel formats and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "size", "suffix", "lossless"),
    [
        codec_param("libx264", "yuv420p10le", (64, 48), ".mp4", False),
        codec_param("libx265", "yuv420p10le", (64, 48), ".mkv", False),
        codec_param("libx264", "yuv444p", (63, 47), ".mkv", False),
        codec_param("mpeg4", "yuv420p", (63, 47), ".mkv", False),
        codec_param("ffv1", "yuva420p", (64, 48), ".mkv", False),
        codec_param("ffv1", "bgr0", (61, 45), ".mkv", True),
        codec_param("qtrle", "argb", (64, 48), ".mov", True),
        codec_param("png", "rgba", (64, 48), ".mov", True),
        codec_param("png", "pal8", (64, 48), ".mov", False),
        codec_param("prores_ks", "yuva444p10le", (64, 48), ".mov", False),
    ],
)
def test_pixel_formats_and_odd_sizes(
    tmp_path: Path, seek_eagerly: None, codec: str, pix_fmt: str, size: tuple[int, int], suffix: str, lossless: bool
) -> None:
    path = make_video(tmp_path / f"clip{suffix}", frames=30, size=size, codec=codec, pix_fmt=pix_fmt, gop=10)
    width, height = size
    for media in exact_everywhere(path, specs=(FrameSpec(frames=6), FrameSpec(frames=None, fps=4))):
        assert media.frames.shape[1:] == (height, width, 3)
        assert [read_frame_number(pixels) for pixels in media.frames] == media.frame_indices
        if lossless:  # alpha dropped, colours untouched
            for pixels, index in zip(media.frames, media.frame_indices):
                np.testing.assert_array_equal(pixels, frame_pattern(index, size))


# --- animated pictures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix",
    [".gif", ".png", pytest.param(".webp", marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP"))],
)
def test_animated_pictures_are_videos_with_their_own_timing(tmp_path: Path, suffix: str) -> None:
    delays = [100, 250, 50, 500, 100, 100, 300, 200, 100, 400]  # ms
    path = make_animation(tmp_path / f"anim{suffix}", delays)
    starts = np.concatenate([[0], np.cumsum(delays)[:-1]]) / 1000
    media = load_media(path, FrameSpec(frames=5))
    assert media.kind == "video" and media.decoder == "pillow"
    assert media.total_frames == 10 and media.frame_indices == [0, 2, 4, 6, 8]
    assert [read_frame_number(pixels) for pixels in media.frames] == media.frame_indices
    np.testing.assert_allclose(media.timestamps, starts[media.frame_indices])
    if suffix != ".gif":  # lossless formats keep the colours
        np.testing.assert_array_equal(media.frames[1], frame_pattern(2, (64, 48)))
    by_rate = load_media(path, FrameSpec(frames=None, fps=2))  # moments 0, 0.5, ... 2.0
    expected = sorted({int(np.searchsorted(starts, t + 1e-9, side="right") - 1) for t in np.arange(0, 2.1, 0.5)})
    assert by_rate.frame_indices == expected
    windowed = load_media(path, FrameSpec(frames=10, start=0.35, end=1.0))
    assert windowed.frame_indices == [i for i, t in enumerate(starts) if 0.35 <= t < 1.0]


def test_a_single_frame_gif_is_an_image(tmp_path: Path) -> None:
    path = make_animation(tmp_path / "still.gif", [100])
    media = load_media(path)
    assert media.kind == "image" and media.frames.shape == (1, 48, 64, 3)


# --- damaged, empty and wrong files ---------------------------------------------------------------


def assert_one_line(error: MediaError, path: Path | str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".ts", ".avi"])
@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.97])
def test_truncated_videos_decode_what_they_can_or_fail_clearly(tmp_path: Path, suffix: str, keep: float) -> None:
    codec = "libvpx" if suffix == ".webm" else "mpeg4" if suffix == ".avi" else None
    whole = make_video(tmp_path / f"whole{suffix}", frames=48, gop=12, codec=codec)
    path = corrupt_copy(whole, tmp_path / f"cut{suffix}", keep_fraction=keep)
    try:
        media = load_media(path, FrameSpec(frames=8))
    except MediaError as error:
        assert_one_line(error, path)
        return
    assert 0 < media.total_frames <= 48
    assert media.frames.shape[1:] == (48, 64, 3)
    assert all("\n" not in notice and str(path) in notice for notice in media.notices)
    # What it returns is what a sequential decode of the damaged file has there.
    reference = full_decode_tolerant(path)
    for position, index in enumerate(media.frame_indices):
        np.testing.assert_array_equal(media.frames[position], reference[index])


def full_decode_tolerant(path: Path) -> list[np.ndarray]:
    """full_decode that skips packets the decoder rejects, as players (and we) do."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    frames += [frame.to_ndarray(format="rgb24") for frame in packet.decode()]
                except av.error.FFmpegError:
                    continue
        except av.error.FFmpegError:
            pass
    return frames


@pytest.mark.parametrize("name", ["noise.mp4", "noise.webm", "noise.ts", "noise.mov", "noise.gif"])
def test_random_bytes_fail_with_one_line(tmp_path: Path, name: str) -> None:
    path = random_bytes(tmp_path / name, 200_000, seed=5)
    with pytest.raises(MediaError) as caught:
        load_media(path, FrameSpec(frames=None, fps=1))
    assert_one_line(caught.value, path)


def test_a_video_with_no_frames_is_a_clear_error(tmp_path: Path) -> None:
    path = make_header_only(tmp_path / "nothing.mkv")
    with pytest.raises(MediaError, match="no video frames") as caught:
        load_media(path)
    assert_one_line(caught.value, path)


@pytest.mark.parametrize("name", ["voice.m4a", "voice.mkv"])
def test_audio_only_is_a_clear_error(tmp_path: Path, name: str) -> None:
    path = make_audio_only(tmp_path / name)
    with pytest.raises(MediaError, match="no video stream") as caught:
        load_media(path, FrameSpec(frames=4, decoder="decord"))
    assert_one_line(caught.value, path)


def test_zero_length_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.webm"
    path.touch()
    with pytest.raises(MediaError, match="empty file") as caught:
        load_media(path, FrameSpec(frames=None, fps=2))
    assert_one_line(caught.value, path)


def test_damage_in_the_middle_of_a_long_gop_file(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mkv", frames=120, gop=30)
    data = bytearray(whole.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1500] = np.random.default_rng(2).bytes(1500)
    path = tmp_path / "scratched.mkv"
    path.write_bytes(bytes(data))
    try:
        media = load_media(path, FrameSpec(frames=16))
    except MediaError as error:
        assert_one_line(error, path)
    else:
        assert media.frames.shape[1:] == (48, 64, 3)
        assert all("\n" not in notice for notice in media.notices)


# --- remote media ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("www")
    make_video(folder / "clip.mp4", frames=60, gop=12)  # index (moov) at the end: needs Range
    make_video(folder / "clip.mkv", frames=60, gop=12)
    make_image(folder / "photo.png")
    # Uncompressed 1280x720: 1.4 MB a frame, 66 MB in all, so reading the first quarter
    # second (FFmpeg probes about 10 MB first) is plainly less than reading the file.
    make_raw_video(folder / "raw.mkv", frames=48, size=(1280, 720))
    return folder


@pytest.mark.parametrize(
    "spec", [FrameSpec(frames=8), FrameSpec(frames=3, start=1, end=2), FrameSpec(frames=None, fps=2)]
)
@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv"])
def test_a_url_gives_what_the_local_file_gives(web_folder: Path, name: str, spec: FrameSpec) -> None:
    local = load_media(web_folder / name, spec)
    with serve_folder(web_folder) as served:
        remote = load_media(served.url + name, spec)
    assert remote.source == served.url + name
    assert remote.frame_indices == local.frame_indices
    assert remote.timestamps == local.timestamps
    np.testing.assert_array_equal(remote.frames, local.frames)
    assert any(request.startswith("bytes=") for request in served.requests)  # ranged reads


def test_early_frames_of_a_url_read_only_part_of_it(web_folder: Path) -> None:
    path = web_folder / "raw.mkv"
    size = path.stat().st_size
    spec = FrameSpec(frames=3, end=0.25)
    with serve_folder(web_folder, pace=0.0005) as served:  # paced: bytes sent ~ bytes read
        media = load_media(served.url + "raw.mkv", spec)
        sent = served.bytes_sent
    assert media.frame_indices == [0, 2, 4]
    assert [read_frame_number(pixels) for pixels in media.frames] == [0, 2, 4]
    np.testing.assert_array_equal(media.frames, load_media(path, spec).frames)
    assert sent < size / 2, f"read {sent} of {size} bytes for the first quarter second"


def test_a_server_without_range_support_still_works(web_folder: Path) -> None:
    with serve_folder(web_folder, ranges=False) as served:
        media = load_media(served.url + "clip.mkv", FrameSpec(frames=8))
    assert media.frame_indices == sample_indices(60, 8).tolist()
    assert_exact(media, full_decode(web_folder / "clip.mkv"))


def test_remote_pictures(web_folder: Path) -> None:
    with serve_folder(web_folder) as served:
        media = load_media(served.url + "photo.png")
    assert media.kind == "image"
    np.testing.assert_array_equal(media.frames, load_media(web_folder / "photo.png").frames)


def test_remote_errors_are_one_line_and_quick(web_folder: Path) -> None:
    with serve_folder(web_folder) as served:
        for url in (served.url + "missing.mp4", served.url + "missing.png"):
            with pytest.raises(MediaError) as caught:
                load_media(url)
            assert_one_line(caught.value, url)
        base = served.url
    # The server is gone now: the port refuses connections.
    with pytest.raises(MediaError, match="cannot") as caught:
        load_media(base + "clip.mp4")
    assert_one_line(caught.value, base + "clip.mp4")


def test_pictures_in_disguise_are_read_as_pictures(tmp_path: Path) -> None:
    # A JPEG named .mp4, and the same JPEG behind a URL with no suffix at all: FFmpeg
    # would call either a one-frame video; Pillow reads it, EXIF orientation included.
    photo = make_image(tmp_path / "photo.jpg", exif_orientation=6)
    disguised = tmp_path / "photo.mp4"
    disguised.write_bytes(photo.read_bytes())
    bare = tmp_path / "photo"
    bare.write_bytes(photo.read_bytes())
    expected = load_media(photo).frames
    assert expected.shape == (1, 64, 48, 3)  # upright: EXIF 6 turned it
    for media in (load_media(disguised), load_media(bare)):
        assert media.kind == "image"
        np.testing.assert_array_equal(media.frames, expected)
    with serve_folder(tmp_path) as served:
        remote = load_media(served.url + "photo")
    assert remote.kind == "image"
    np.testing.assert_array_equal(remote.frames, expected)


# --- memory -------------------------------------------------------------------------------------


def test_memory_is_bounded_by_the_frames_kept(tmp_path: Path) -> None:
    # numpy's buffers are traced by tracemalloc (FFmpeg's own are not, and are bounded by
    # the decoder's reference frames). Four times the length must not cost more memory.
    import tracemalloc

    peaks = {}
    for frames in (200, 800):
        path = make_video(tmp_path / f"clip{frames}.mp4", frames=frames, size=(160, 120), codec="mpeg4", gop=50)
        tracemalloc.start()
        media = load_media(path, FrameSpec(frames=4))
        peaks[frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert media.frames.shape == (4, 120, 160, 3)
    kept = 4 * 120 * 160 * 3
    assert peaks[800] < 2 * kept + 512 * 1024, peaks
    assert peaks[800] - peaks[200] < 128 * 1024, peaks
