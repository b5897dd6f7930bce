"""The pure parts of `llava serve`, in-process: stop strings, --keep-alive durations, the
request checks, data: URLs and file:// confinement."""

from __future__ import annotations

import os

import pytest

from llava_cli.server.api import ApiError, StopText, parse_chat, parse_duration
from llava_cli.server.sources import MAX_MEDIA_BYTES, Sources, frame_spec
from llava_cli.server.api import MediaPart


def _through(stops, pieces):
    stopper = StopText(stops)
    out = [stopper.push(piece) for piece in pieces]
    out.append(stopper.flush())
    return out, stopper.stopped


def test_stop_strings_cut_and_hold_back():
    out, stopped = _through(["END"], ["The ans", "wer E", "N", "D and more"])
    assert "".join(out) == "The answer " and stopped
    assert out[1] == "wer ", "text that may start a stop string must be held back"
    out, stopped = _through(["END"], ["an E", "NTRY"])
    assert "".join(out) == "an ENTRY" and not stopped  # held back, then released
    out, stopped = _through(["b", "abc"], ["xxab", "c"])
    assert "".join(out) == "xxa" and stopped  # the earliest stop wins
    assert _through([], ["a", "b"]) == (["a", "b", ""], False)
    out, stopped = _through(["\n\n"], ["one\n", "\ntwo"])
    assert "".join(out) == "one" and stopped


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("30s", 30), ("1h", 3600), ("1h30m", 5400), ("0", 0),
                                           ("250ms", 0.25), ("90", 90), ("1.5", 1.5), ("-1", None), ("-5m", None)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "inf", "nan", "5 m", "1d"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_request_becomes_template_messages():
    chat = parse_chat({"model": "x", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                                     {"type": "video_url", "video_url": "https://example.com/v.mp4"}]},
        {"role": "assistant", "content": None}, {"role": "user", "content": "and?"}],
        "max_completion_tokens": 9, "max_tokens": 3, "stop": "END", "seed": 5, "llava": {"frames": 4, "start": "0:01"}})
    assert [m.part for m in chat.media] == ["image_url", "video_url"]
    assert chat.media[1].param == "messages[1].content[2].video_url.url"
    assert chat.max_tokens == 9 and chat.stop == ["END"] and chat.seed == 5
    assert chat.frames == {"frames": 4, "start": "0:01"}
    messages = chat.template_messages(["image", "video"], system="ignored: the request has its own")
    assert messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "video"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": [{"type": "text", "text": "and?"}]}]
    plain = parse_chat({"messages": [{"role": "user", "content": "hi"}]})
    assert plain.template_messages([], system="Server default.")[0]["role"] == "system"


def test_frame_settings_are_checked_like_the_cli():
    from llava_cli.media import FrameSpec

    base = FrameSpec(frames=8, decoder="pyav")
    assert frame_spec(base, {}) == base
    assert frame_spec(base, {"fps": 2.0, "max_frames": 6}) == FrameSpec(frames=8, fps=2.0, max_frames=6)
    assert frame_spec(base, {"start": "1:30", "end": 100}).start == 90.0
    for given, param in (({"frames": 0}, "llava.frames"), ({"fps": -1.0}, "llava.fps"),
                         ({"start": "x"}, "llava.start"), ({"start": 9, "end": 3}, "llava")):
        with pytest.raises(ApiError) as caught:
            frame_spec(base, given)
        assert caught.value.status == 400 and caught.value.param == param


def test_file_urls_are_confined_after_resolving_links(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "outside.mp4", allowed / "link.mp4")
    os.symlink(tmp_path, allowed / "up")
    (tmp_path / "allowed-twin").mkdir()  # a prefix of the name is not the folder
    (tmp_path / "allowed-twin" / "b.mp4").write_bytes(b"x")
    sources = Sources([str(allowed)], str(tmp_path))

    def path(url):
        return sources.local_path(MediaPart(url, "video_url", "p"))

    assert path(f"file://{allowed}/sub/a.mp4") == str(allowed / "sub" / "a.mp4")
    assert path(f"file://localhost{allowed}/sub/../sub/a.mp4") == str(allowed / "sub" / "a.mp4")
    assert path(f"file://{allowed}/sub%2Fa.mp4") == str(allowed / "sub" / "a.mp4")
    for url in (f"file://{tmp_path}/outside.mp4", f"file://{allowed}/link.mp4", f"file://{allowed}/up/outside.mp4",
                f"file://{allowed}/../outside.mp4", f"file://{tmp_path}/allowed-twin/b.mp4"):
        with pytest.raises(ApiError) as caught:
            path(url)
        assert caught.value.status == 403, url
    for url in ("file://otherhost/etc/passwd", "file:relative.mp4", f"file://{allowed}/sub/a.mp4?x=1"):
        with pytest.raises(ApiError) as caught:
            path(url)
        assert caught.value.status == 400, url
    with pytest.raises(ApiError) as caught:
        Sources([], str(tmp_path)).local_path(MediaPart(f"file://{allowed}/sub/a.mp4", "video_url", "p"))
    assert caught.value.status == 403 and "--allowed-media-path" in caught.value.message


def test_inline_media_has_a_size_limit(tmp_path):
    from llava_cli.media import FrameSpec

    big = "A" * (MAX_MEDIA_BYTES * 4 // 3 + 8)
    with pytest.raises(ApiError) as caught:
        Sources([], str(tmp_path)).load(MediaPart("data:video/mp4;base64," + big, "video_url", "p"), FrameSpec())
    assert caught.value.status == 413 and caught.value.code == "media_too_large"
