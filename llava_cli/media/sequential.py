"""The sequential path: decode from the very first frame, the reference behaviour and
the fallback whenever the seeking path cannot vouch for a stream (raw streams without
timestamps, damage, headers that overstate the length).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import av
import numpy as np

from llava_cli.errors import MediaError

from .pyav import _AV_ERRORS, _demux, _frame_to_rgb, _open_video, _stream_facts
from .sampling import _choose_frames, _stack_frames, sample_indices
from .sources import _reason, _Source
from .spec import FrameSpec, Media


# Garbage that demuxes into packets the decoder rejects one by one would otherwise be
# walked to the end of the file; a real file with damage recovers well before this.
_MAX_CONSECUTIVE_BAD_PACKETS = 64


@dataclass
class _DecodeResult:
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    times: dict[int, float | None] = field(default_factory=dict)  # pts seconds of kept frames
    frames_seen: int = 0  # frames the decoder produced before we stopped or it ended
    error: str | None = None  # the first decode/demux failure, if any
    clock: list[float | None] = field(default_factory=list)  # every frame's time (counting)

    def why(self, prefix: str = ": ", suffix: str = "") -> str:
        return f"{prefix}{self.error}{suffix}" if self.error else ""


def _load_sequentially(src: _Source, spec: FrameSpec, notices: list[str]) -> Media:
    """Decode from the first frame: the reference behaviour, and the fallback whenever
    the fast path cannot vouch for a stream (raw streams without timestamps, damage)."""
    with _open_video(src) as (container, stream):
        facts = _stream_facts(container, stream)
    total = facts.header_frames or facts.estimated_frames
    decoded = 0
    if spec.frame_count is not None and not spec.windowed and total:
        # Uniform frames over the whole stream: the header's length is enough to start,
        # and one pass through the last sampled frame does it when it is right.
        wanted = [int(i) for i in sample_indices(total, spec.frame_count)]
        first = _decode_pass(src, wanted)
        decoded += first.frames_seen
        result = first
        if first.frames_seen <= wanted[-1]:
            # The stream ended (or broke) before the last sampled frame: the header
            # overstated the length, or the file is truncated or corrupt. Returning just
            # the frames we reached would silently cluster the sample at the start, so
            # re-sample uniformly over the frames that really exist. Frames already
            # converted are reused; the rest need a second pass from the start, a
            # re-decode paid only in this uncommon case.
            seen = first.frames_seen
            if seen == 0:
                raise MediaError(f"could not decode any frame from {src.source}{first.why()}")
            notices.append(
                f"{src.source}: only {seen} of {total} frames could be decoded"
                f"{first.why(prefix=' (', suffix=')')}; sampled from those"
            )
            total = seen
            wanted = [int(i) for i in sample_indices(total, spec.frame_count)]
            missing = [i for i in wanted if i not in first.kept]
            if missing:
                second = _decode_pass(src, missing)
                decoded += second.frames_seen
                result = _DecodeResult(kept={**first.kept, **second.kept},
                                       times={**first.times, **second.times})
        base = first.times.get(0)
        times_of = {i: result.times.get(i) for i in wanted}
    else:
        # No usable length, or a window/rate that needs every frame's time: count first
        # (no pixels are converted), then decode through the last chosen frame.
        counted = _decode_pass(src, [], count_only=True)
        decoded += counted.frames_seen
        if counted.frames_seen == 0:
            raise MediaError(f"could not decode any frame from {src.source}{counted.why()}")
        if counted.error:
            notices.append(
                f"{src.source}: decoding stopped after {counted.frames_seen} frames"
                f"{counted.why(prefix=' (', suffix=')')}; sampled from those"
            )
        total = counted.frames_seen
        clock = _fill_clock(counted.clock, facts.fps)
        times = np.asarray(clock) - clock[0]
        wanted = _choose_frames(times, spec, src.source)
        result = _decode_pass(src, wanted)
        decoded += result.frames_seen
        base = clock[0]
        times_of = {i: clock[i] for i in wanted}

    # Decoding is deterministic, so this only trips if the file changed under us.
    lost = [i for i in wanted if i not in result.kept]
    if lost:
        raise MediaError(f"could not re-read frames {lost} of {src.source}")
    return Media(
        source=src.source,
        kind="video",
        frames=_stack_frames([result.kept[i] for i in wanted], src.source),
        frame_indices=wanted,
        timestamps=[
            (time - base) if time is not None and base is not None else _index_time(index, facts.fps)
            for index, time in ((i, times_of[i]) for i in wanted)
        ],
        total_frames=total,
        fps=facts.fps,
        notices=notices,
        decoded_frames=decoded,
        decoder="pyav",
    )


def _fill_clock(clock: list[float | None], fps: float | None) -> list[float]:
    """Every frame's time; frames without a timestamp (raw streams) get index / fps."""
    if all(time is not None for time in clock) and all(b > a for a, b in zip(clock, clock[1:])):
        return [float(time) for time in clock]  # type: ignore[arg-type]
    return [_index_time(i, fps) for i in range(len(clock))]


def _decode_pass(src: _Source, wanted: list[int], *, count_only: bool = False) -> _DecodeResult:
    # A fresh open rather than a seek to 0: seeking is inexact in some containers, and
    # frame indices only mean something when counted from the very first frame.
    with _open_video(src) as (container, stream):
        return _decode_selected(container, stream, wanted, count_only=count_only)


def _decode_selected(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: list[int],
    *,
    count_only: bool = False,
) -> _DecodeResult:
    """Decode from the start, converting only frames in `wanted` (sorted) and stopping
    right after the last of them. `count_only` decodes everything, converting nothing
    and noting every frame's time.
    """
    result = _DecodeResult()
    wanted_set = set(wanted)
    last_wanted = wanted[-1] if wanted and not count_only else None

    def take(frames: list[av.VideoFrame]) -> bool:
        """Record frames; True once the last wanted frame is in hand."""
        for frame in frames:
            index = result.frames_seen
            result.frames_seen += 1
            if count_only:
                result.clock.append(frame.time)
                continue
            if index == 0:
                result.times[0] = frame.time
            if index in wanted_set:
                result.kept[index] = _frame_to_rgb(frame)
                result.times[index] = frame.time
            if last_wanted is not None and index >= last_wanted:
                return True
        return False

    bad_in_a_row = 0
    packets = _demux(container, stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return result
        except (*_AV_ERRORS, OSError) as error:
            # The file ends mid-packet or the container is broken from here on. Frames
            # still inside the decoder (codec delay) are good; flush them out.
            result.error = result.error or _reason(error)
            with contextlib.suppress(*_AV_ERRORS, OSError, ValueError):
                take(stream.codec_context.decode(None))
            return result
        try:
            frames = packet.decode()
        except (*_AV_ERRORS, ValueError) as error:
            # Skip a damaged packet and carry on, as players do; the decoder resyncs at
            # the next keyframe.
            result.error = result.error or _reason(error)
            bad_in_a_row += 1
            if bad_in_a_row >= _MAX_CONSECUTIVE_BAD_PACKETS:
                return result
            continue
        bad_in_a_row = 0
        if take(frames):
            return result


def _index_time(index: int, fps: float | None) -> float:
    # Raw elementary streams carry no timestamps; the frame rate is the next best clock,
    # and with no rate at all one second per frame at least keeps the order.
    return index / fps if fps else float(index)
