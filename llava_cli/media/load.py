"""The entry points (`load_media`, `load_image`, `load_video`) and the choice between
loaders: image or video by name and content, local or remote, decord or PyAV, the
seeking path or the sequential one.
"""

from __future__ import annotations

from pathlib import Path

from llava_cli.errors import MediaError

from .decord import _load_video_decord
from .images import _load_picture
from .pyav import _ffmpeg_logs_off, _open_video, _stream_facts
from .seek import _load_by_seeking
from .sequential import _load_sequentially
from .sources import _Source, _source
from .spec import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, FrameSpec, Media, SamplingError, _NotRecognised


def load_media(
    path: str | Path, spec: FrameSpec | int | None = None, *, num_frames: int | None = None
) -> Media:
    """Load an image or sample a video, deciding which by the name and, when the name
    does not say, by the content. `spec` is a FrameSpec or a frame count (also accepted
    as `num_frames=`, the original keyword); the default takes 8 frames. Animated GIF,
    WebP and PNG are videos; `path` may be an http(s) URL."""
    spec = _spec_from(spec, num_frames)
    src = _source(path)
    if src.remote:
        return _load_remote(src, spec)
    suffix = src.suffix
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
                return _load_picture(src, spec, animated_as_video=True)
            return _load_video(src, spec)
        except _NotRecognised as error:
            reasons.append(error.reason)
    if suffix in VIDEO_EXTENSIONS:
        # The name promises a video, so the likelier story is a damaged one (an MP4 cut
        # short loses the index FFmpeg needs before it can read a single frame).
        because = f"{reasons[0]}; " if reasons[0] else ""
        raise MediaError(f"not an image or video: {src.source} ({because}truncated or corrupt?)")
    raise MediaError(f"not an image or video: {src.source}")


def load_image(path: str | Path) -> Media:
    """Decode an image upright (EXIF orientation applied) as one uint8 RGB frame. Of an
    animated image this is the first frame; `load_media` samples it as a video."""
    return _load_picture(_source(path), FrameSpec(), animated_as_video=False)


def load_video(path: str | Path, spec: FrameSpec | int = 8) -> Media:
    """Sample frames (a FrameSpec, or a frame count for uniform sampling) from the first
    video stream of a file or http(s) URL; see the package notes (`llava_cli.media`) for how."""
    spec = FrameSpec.of(spec)
    return _load_video(_source(path), spec)


def _spec_from(spec: FrameSpec | int | None, num_frames: int | None) -> FrameSpec:
    if spec is not None and num_frames is not None:
        raise SamplingError("give the frames as spec or as num_frames, not both")
    if spec is None:
        spec = 8 if num_frames is None else num_frames
    return FrameSpec.of(spec)


# --- which loader ------------------------------------------------------------------------


def _load_remote(src: _Source, spec: FrameSpec) -> Media:
    """http(s): pictures are small and fetched whole; videos stream through FFmpeg,
    which reads (with Range requests where it seeks) only the parts it needs."""
    if src.suffix in IMAGE_EXTENSIONS:
        return _load_picture(src, spec, animated_as_video=True)
    try:
        return _load_video(src, spec)
    except _NotRecognised as error:
        reason = error.reason
    try:
        return _load_picture(src, spec, animated_as_video=True)
    except _NotRecognised:
        raise MediaError(f"not an image or video: {src.source} ({reason})") from None


def _load_video(src: _Source, spec: FrameSpec) -> Media:
    notices: list[str] = []
    if spec.decoder == "decord":
        media = _load_video_decord(src, spec, notices)
        if media is not None:
            return media
    return _load_video_pyav(src, spec, notices)


def _load_video_pyav(src: _Source, spec: FrameSpec, notices: list[str]) -> Media:
    with _ffmpeg_logs_off():
        if spec.seek:
            with _open_video(src) as (container, stream):
                facts = _stream_facts(container, stream)
                media = _load_by_seeking(container, stream, facts, src, spec, notices)
            if media is not None:
                return media
        return _load_sequentially(src, spec, notices)
