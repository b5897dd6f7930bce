"""The optional decord backend (`FrameSpec(decoder="decord")`): decord reads the frames
the PyAV path would choose, and declines (with a notice) wherever it cannot match it.
"""

from __future__ import annotations

import contextlib

import av
import numpy as np

from .index import _index_packets
from .pyav import _AV_ERRORS, _ffmpeg_logs_off, _open_video, _stream_facts
from .sampling import _choose_frames
from .sources import _reason, _Source
from .spec import FrameSpec, Media


def _load_video_decord(src: _Source, spec: FrameSpec, notices: list[str]) -> Media | None:
    """decord's VideoReader.get_batch, on the frame indices the PyAV path would choose.
    None (with a notice) where it cannot serve: not installed, a URL, a rotated video
    (decord 0.6 fails on those), a stream it counts differently, or an error of its own.
    """
    try:
        import decord  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError:
        notices.append(f"{src.source}: decord is not installed (pip install 'llava-cli[decord]'); decoded with PyAV")
        return None
    if src.remote:
        notices.append(f"{src.source}: decord cannot stream URLs; decoded with PyAV")
        return None
    # PyAV vets the file first (a clear error for what is not a video), finds the display
    # matrix, which decord mishandles, and indexes the packets: the frame times come from
    # the same index as on the PyAV path, so both choose the same frames.
    with _ffmpeg_logs_off():
        with _open_video(src) as (container, stream):
            rotated = False
            with contextlib.suppress(*_AV_ERRORS, StopIteration, ValueError):
                first = next(container.decode(stream))
                rotated = first.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX) is not None
        if rotated:
            notices.append(f"{src.source}: decord cannot read videos with rotation metadata; decoded with PyAV")
            return None
        with _open_video(src) as (container, stream):
            facts = _stream_facts(container, stream)
            index, why_not = _index_packets(container, stream, spec.end)
    if index is None:
        notices.append(f"{src.source}: decord was not used ({why_not}); decoded with PyAV")
        return None
    times = (index.sorted_pts - index.sorted_pts[0]).astype(np.float64) * float(facts.time_base)
    wanted = _choose_frames(times, spec, src.source)
    try:
        reader = decord.VideoReader(src.target, ctx=decord.cpu(0), num_threads=0)
        total = len(reader)
        if (index.complete and total != len(index.order)) or total <= wanted[-1]:
            notices.append(
                f"{src.source}: decord counts {total} frames where PyAV counts {len(index.order)}; decoded with PyAV"
            )
            return None
        frames = reader.get_batch(wanted).asnumpy()
    except Exception as error:  # noqa: BLE001 - DECORDError and friends: PyAV will try
        notices.append(f"{src.source}: decord failed ({_reason(error)}); decoded with PyAV")
        return None
    return Media(
        source=src.source,
        kind="video",
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        frame_indices=wanted,
        timestamps=[float(times[i]) for i in wanted],
        total_frames=len(index.order) if index.complete else max(total, facts.header_frames or facts.estimated_frames),
        fps=facts.fps,
        notices=notices,
        decoded_frames=0,  # decord does not say
        decoder="decord",
    )
