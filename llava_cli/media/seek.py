"""The fast, index-guided path (see the package notes): runs of target frames decoded
from their keyframes, reached by verified seeks, in worker threads where there are
several runs and cores. Any surprise raises _SeekFailed and the caller falls back to
the sequential decode.

`_SEEK_MIN_SKIP`, `_usable_cores` and `_packets_from` are read from the package
(`llava_cli.media`) when used, so setting them there takes effect.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import av
import numpy as np

from llava_cli import media as _media
from llava_cli.errors import MediaError

from .index import _NO_TIME, _PacketIndex, _index_packets
from .pyav import _AV_ERRORS, _demux, _frame_to_rgb, _open_video, _StreamFacts
from .sampling import _choose_frames
from .sources import _reason, _Source, _TooSlow
from .spec import FrameSpec, Media, _clock


class _SeekFailed(Exception):
    """The fast path met something it cannot vouch for; decode sequentially instead."""


def _load_by_seeking(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    facts: _StreamFacts,
    src: _Source,
    spec: FrameSpec,
    notices: list[str],
) -> Media | None:
    """The fast path (see the package notes); None when it cannot vouch for the result."""
    index, _why_not = _index_packets(container, stream, spec.end)
    if index is None:
        return None
    time_base = facts.time_base
    assert time_base is not None
    base = int(index.sorted_pts[0])
    times = (index.sorted_pts - base).astype(np.float64) * float(time_base)
    wanted = _choose_frames(times, spec, src.source)

    total = len(index.order)
    if not index.complete:
        total = max(total, facts.header_frames or facts.estimated_frames)
    extra_notices = _shortfall_notice(index, times, facts, src.source)
    try:
        sink, decoded, runs = _decode_runs(src, container, stream, index, wanted)
        frames = sink.result()
    except _SeekFailed:
        return None
    notices.extend(extra_notices)
    return Media(
        source=src.source,
        kind="video",
        frames=frames,
        frame_indices=wanted,
        timestamps=[float(times[i]) for i in wanted],
        total_frames=total,
        fps=facts.fps,
        notices=notices,
        decoded_frames=decoded,
        decoder="pyav",
        seeks=runs,
    )


def _shortfall_notice(index: _PacketIndex, times: np.ndarray, facts: _StreamFacts, source: str) -> list[str]:
    """A notice when the stream holds clearly less than its header promises (a cut
    download); the frames that are there are sampled all the same."""
    if not index.complete:
        return []
    present = len(index.order)
    if facts.header_frames and present < facts.header_frames:
        return [f"{source}: only {present} of {facts.header_frames} frames are present "
                f"(truncated?); sampled from those"]
    if facts.duration and facts.fps and not facts.header_frames:
        frame_time = 1 / facts.fps
        covered = float(times[-1]) + frame_time
        if facts.duration - covered > max(1.5 * frame_time, 0.01 * facts.duration):
            return [f"{source}: only {_clock(covered)} of {_clock(facts.duration)} can be read "
                    f"({present} frames; truncated?); sampled from those"]
    return []


@dataclass
class _Run:
    start: int  # decode position of the keyframe decoding starts at
    first: int  # presentation index of the first frame that run produces in order
    reach: int  # furthest decode position a target of the run needs
    targets: list[int]


def _plan_runs(index: _PacketIndex, wanted: list[int]) -> list[_Run]:
    """Group targets into decoding runs (see the package notes)."""
    keys = np.flatnonzero(index.keyframe)
    runs: list[_Run] = []
    for target in sorted(set(wanted)):
        position = int(index.order[target])
        at = int(np.searchsorted(keys, position, side="right")) - 1
        # An open GOP's leading pictures come after their keyframe in decode order but
        # before it on screen, and reference the previous GOP: start one GOP earlier.
        while at > 0 and index.pts[keys[at]] > index.pts[position]:
            at -= 1
        start = int(keys[max(at, 0)])
        if runs and runs[-1].start <= start <= runs[-1].reach + _media._SEEK_MIN_SKIP:
            runs[-1].targets.append(target)
            runs[-1].reach = max(runs[-1].reach, position)
            continue
        first = int(np.searchsorted(index.sorted_pts, index.pts[start]))
        runs.append(_Run(start=start, first=first, reach=position, targets=[target]))
    return runs


def _decode_runs(
    src: _Source,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _PacketIndex,
    wanted: list[int],
) -> tuple[dict[int, np.ndarray], int, int]:
    """Decode each run from its keyframe; returns the frames (in a sink), the number of
    frames decoded and the number of runs. Raises _SeekFailed on any surprise.

    Runs are independent (each starts at a keyframe with a fresh decoder state), so with
    several runs and cores, worker threads decode different runs at once, each with its
    own container and decoder; FFmpeg's frame threads would instead spend a pipeline
    fill and drain on every short run. One run gets the frame threads.
    """
    runs = _plan_runs(index, wanted)
    sink = _FrameSink(wanted, src.source)
    cores = _media._usable_cores()
    workers = min(len(runs), cores, 2 if src.remote else 8)
    if workers <= 1:
        decoded = sum(_decode_run(container, stream, index, run, sink) for run in runs)
        return sink, decoded, len(runs)

    pending_runs = iter(runs)
    lock = threading.Lock()
    stop = threading.Event()
    threads_each = max(1, cores // workers)

    def work(own_container: bool) -> int:
        opened = _open_video(src) if own_container else contextlib.nullcontext((container, stream))
        decoded_here = 0
        try:
            with opened as (worker_container, worker_stream):
                worker_stream.codec_context.thread_count = threads_each
                while not stop.is_set():
                    with lock:
                        run = next(pending_runs, None)
                    if run is None:
                        break
                    decoded_here += _decode_run(worker_container, worker_stream, index, run, sink, stop)
        except _TooSlow:
            raise
        except MediaError as error:
            raise _SeekFailed(f"could not reopen: {error}") from None
        return decoded_here

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llava-decode") as pool:
        futures = [pool.submit(work, number > 0) for number in range(workers)]
        try:
            decoded = sum(future.result() for future in futures)
        finally:
            stop.set()
    return sink, decoded, len(runs)


class _FrameSink:
    """The (frames, height, width, 3) result, filled in place as runs decode their
    targets, in any order and from any worker: each kept frame is held once, not once
    in a list and again when stacked."""

    def __init__(self, wanted: list[int], source: str) -> None:
        self.slots = {index: slot for slot, index in enumerate(wanted)}
        self.source = source
        self.frames: np.ndarray | None = None
        self.filled: set[int] = set()
        self.lock = threading.Lock()

    def put(self, index: int, frame: av.VideoFrame) -> None:
        pixels = _frame_to_rgb(frame)
        with self.lock:
            if self.frames is None:
                self.frames = np.empty((len(self.slots), *pixels.shape), dtype=np.uint8)
            elif pixels.shape != self.frames.shape[1:]:
                first, now = self.frames.shape[1:3], pixels.shape[:2]
                raise MediaError(f"frame size changes mid-stream in {self.source} "
                                 f"({first[1]}x{first[0]}, {now[1]}x{now[0]})")
            self.frames[self.slots[index]] = pixels
            self.filled.add(index)

    def result(self) -> np.ndarray:
        missing = set(self.slots) - self.filled
        if missing or self.frames is None:
            raise _SeekFailed(f"frames {sorted(missing)} never came")
        return self.frames


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _decode_run(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _PacketIndex,
    run: _Run,
    sink: _FrameSink,
    stop: threading.Event | None = None,
) -> int:
    """Decode one run into `sink`; returns the frames decoded. See _decode_runs."""
    codec = stream.codec_context
    pending = set(run.targets)
    expected: int | None = None  # the presentation index the next frame must have
    decoded = 0
    with contextlib.closing(_media._packets_from(container, stream, index, run.start)) as packets:
        for packet in packets:
            if stop is not None and stop.is_set():
                raise _SeekFailed("another run failed")
            try:
                frames = codec.decode(packet)
            except (*_AV_ERRORS, ValueError) as error:
                raise _SeekFailed(f"decoding failed: {_reason(error)}") from None
            for frame in frames:
                decoded += 1
                if frame.pts is None:
                    raise _SeekFailed("a frame without a timestamp")
                position = index.position_of(frame.pts)
                if position < 0:
                    if index.complete or frame.pts < index.sorted_pts[-1]:
                        raise _SeekFailed("a frame the index does not know")
                    continue  # past the indexed window: not needed
                if expected is None:
                    if position < run.first:
                        continue  # a leading picture of the start keyframe: not ours
                    if position != run.first:
                        raise _SeekFailed("the run did not start at its keyframe")
                    expected = position
                if position != expected:
                    raise _SeekFailed("frames missing or out of order")
                expected += 1
                if position in pending:
                    sink.put(position, frame)
                    pending.discard(position)
            if not pending:
                return decoded
    raise _SeekFailed("frames the run should have produced did not come out")


def _packets_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _PacketIndex,
    start: int,
) -> Iterator[av.Packet | None]:
    """Packets in decode order from decode position `start` (a keyframe), each checked
    against the index, then None (drain the decoder) at the end of the stream."""
    want_pts = int(index.pts[start])
    want_dts = int(index.dts[start])
    # Seek targets, most precise first: index timestamps are pts (Matroska) or dts
    # (MP4); then a second earlier; then the very start, read forward from there.
    one_second = max(1, round(1 / stream.time_base))
    attempts = [want_pts]
    if want_dts != _NO_TIME and want_dts != want_pts:
        attempts.append(want_dts)
    attempts.append(min(attempts) - one_second)
    attempts.append(int(index.dts[0]) if index.dts[0] != _NO_TIME else int(index.pts[0]))
    for offset in attempts:
        try:
            container.seek(offset, stream=stream, backward=True)
        except (*_AV_ERRORS, OSError, ValueError) as error:
            raise _SeekFailed(f"cannot seek: {_reason(error)}") from None
        packets = _demux(container, stream)
        try:
            found = _skip_to(packets, index, start)
            if found is None:
                continue  # landed past the keyframe: try an earlier offset
            yield found
            position = start + 1
            for packet in packets:
                if packet.size == 0:
                    continue
                if position < len(index.pts) and packet.pts != index.pts[position]:
                    raise _SeekFailed("packets differ from the index")
                position += 1
                yield packet
            yield None
            return
        except (*_AV_ERRORS, OSError) as error:
            raise _SeekFailed(f"demuxing failed: {_reason(error)}") from None
        finally:
            packets.close()
    raise _SeekFailed("no seek reached the keyframe")


def _skip_to(packets: Iterator[av.Packet], index: _PacketIndex, start: int) -> av.Packet | None:
    """Read packets until the one at decode position `start`; None if we are past it."""
    want_pts = index.pts[start]
    for packet in packets:
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        if packet.pts == want_pts:
            return packet
        position = index.decode_position_of(packet.pts)
        if position < 0 or position > start:
            return None  # past the keyframe, or somewhere the index never reached
    return None
