"""Decode images and sample video frames into uint8 RGB arrays.

Everything that can go wrong with a user's file becomes a one-line `MediaError` naming the
file; nothing here prints. Warnings meant for the user (a truncated video, an unreadable
EXIF block, a decoder that was not available) travel back on `Media.notices` for the CLI
to show.

Which frames a video yields is decided by `FrameSpec` (uniform `frames`, or a fixed
`fps` capped by `max_frames`, inside an optional `start`/`end` window) over the stream's
frames in presentation order, counted from the first frame, exactly as a full sequential
decode would number them. How they are decoded never changes which frames come back:

1. One index pass demuxes the video packets without decoding them (bytes are read, no
   pixels made) to learn every frame's timestamp and where the keyframes are. This is
   the frame count too, so a header that states none, or a wrong one, does not matter.
2. Targets are grouped into runs. A run starts at the keyframe at or before its first
   target (one GOP earlier for an open-GOP leading picture) and decodes forward, so
   targets sharing a GOP, or close enough that decoding on beats seeking, share the
   work. Runs are reached by seeking; every seek is verified by matching the packets it
   lands on against the index.
3. While a run decodes, each frame is identified by its timestamp, and the frames must
   come out as consecutive presentation indices. Anything unexpected (a frame the
   index does not know, a gap, a decode error, a seek that lands elsewhere) abandons
   the fast path for the plain sequential decode from the start, which is correct by
   definition. So the fast path returns the sequential decode's frames or nothing.

Memory holds the frames kept (written straight into the result array) plus about 50
bytes of index per frame (16 MB for three hours at 30 fps) and the decoders' own
buffers; decoded frames that are not kept are dropped at once.

The code, by submodule (the names below are imported from them on first use):
`spec` (FrameSpec, parse_time, decoder names, extensions, the Media result; no PyAV,
Pillow or numpy), `sampling` (which frames to take), `sources` (files and URLs),
`images` (Pillow), `pyav` (opening and frame conversion shared by the video paths),
`index` (step 1 above), `seek` (steps 2 and 3), `sequential` (the fallback), `decord`
(the optional decoder) and `load` (the entry points, choosing among all these).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "DECODERS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameSpec",
    "Media",
    "SamplingError",
    "is_url",
    "load_image",
    "load_media",
    "load_video",
    "parse_time",
    "sample_indices",
]

# --- tunables ------------------------------------------------------------------------------
# They live here, not in the submodules that use them, and are read as
# `llava_cli.media.NAME` at call time: setting the package attribute (tests do, with
# monkeypatch) is what takes effect. `_usable_cores` and `_packets_from` (in .seek) are
# looked up here at call time for the same reason.

# Decoding on through this many frames is preferred to a seek: a seek restarts the
# decoder (and its frame-thread pipeline), and a short hop rarely pays for that.
_SEEK_MIN_SKIP = 16

# Limits for http(s) media, so a stalled or trickling server fails instead of hanging:
# connecting (and FFmpeg's probing) and each read may wait _NETWORK_TIMEOUT_S; after
# _MIN_RATE_GRACE_S, the transfer must average at least _MIN_BYTES_PER_S (a server that
# sends one byte a second fails within the grace period plus one read).
_NETWORK_TIMEOUT_S = 30.0
_MIN_RATE_GRACE_S = 20.0
_MIN_BYTES_PER_S = 8 * 1024
_MAX_REMOTE_IMAGE_BYTES = 256 * 1024 * 1024

# --- the package's names, by the submodule that defines them ----------------------------------
# Imported on first use (PEP 562), so `import llava_cli.media.spec` (or reading the decoder
# names) does not import PyAV, Pillow or numpy. Private names are here because other
# modules and tests use them.
_EXPORTS = {
    "spec": ("DECODERS", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "FrameSpec", "Media", "SamplingError",
             "parse_time"),
    "sampling": ("sample_indices",),
    "sources": ("check_sources", "is_url", "looks_like_media", "_source"),
    "load": ("load_image", "load_media", "load_video"),
    "pyav": ("_open_video",),
    "index": ("_index_packets",),
    "seek": ("_SeekFailed", "_decode_runs", "_packets_from", "_usable_cores"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from .index import _index_packets
    from .load import load_image, load_media, load_video
    from .pyav import _open_video
    from .sampling import sample_indices
    from .seek import _decode_runs, _packets_from, _SeekFailed, _usable_cores
    from .sources import _source, check_sources, is_url, looks_like_media
    from .spec import (
        DECODERS,
        IMAGE_EXTENSIONS,
        VIDEO_EXTENSIONS,
        FrameSpec,
        Media,
        SamplingError,
        parse_time,
    )


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once only; a later setattr (monkeypatch) replaces it
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
