"""The packet index behind the seeking path (and decord's frame times): one demux pass,
no decoding, that records every video packet's timestamps, keyframe flag and
visibility, and so every frame's presentation index and time.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import av
import numpy as np

from .pyav import _AV_ERRORS, _demux
from .sources import _reason


# Codecs reorder frames by at most 16 (H.264/HEVC DPB); a packet this many places past
# the window's end in decode order cannot still hold a frame inside it.
_REORDER_MARGIN = 32


@dataclass
class _PacketIndex:
    """Every video packet up to where the index pass stopped, in decode order."""

    pts: np.ndarray  # int64
    dts: np.ndarray  # int64; _NO_TIME where the container gave none
    keyframe: np.ndarray  # bool
    shown: np.ndarray  # bool: False for packets decoded only as references (edit lists)
    complete: bool  # True when the pass reached the end of the stream
    # Derived: presentation order.
    order: np.ndarray = field(init=False)  # presentation index -> decode position
    sorted_pts: np.ndarray = field(init=False)  # pts of shown frames, in presentation order
    packet_order: np.ndarray = field(init=False)  # like order, over every packet
    packet_sorted_pts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        visible = np.flatnonzero(self.shown)
        self.order = visible[np.argsort(self.pts[visible], kind="stable")]
        self.sorted_pts = self.pts[self.order]
        self.packet_order = np.argsort(self.pts, kind="stable")
        self.packet_sorted_pts = self.pts[self.packet_order]

    def position_of(self, pts: int) -> int:
        """Presentation index of the frame with this pts, or -1."""
        at = int(np.searchsorted(self.sorted_pts, pts))
        return at if at < len(self.sorted_pts) and self.sorted_pts[at] == pts else -1

    def decode_position_of(self, pts: int) -> int:
        """Decode position of the packet (shown or not) with this pts, or -1."""
        at = int(np.searchsorted(self.packet_sorted_pts, pts))
        found = at < len(self.packet_sorted_pts) and self.packet_sorted_pts[at] == pts
        return int(self.packet_order[at]) if found else -1


_NO_TIME = np.iinfo(np.int64).min


def _index_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, stop_after: float | None
) -> tuple[_PacketIndex | None, str | None]:
    """Demux (not decode) the video packets, from the start or up to a little past
    `stop_after` seconds. Returns the index, or None and why the fast path cannot be
    trusted with this stream."""
    time_base = stream.time_base
    if not time_base:
        return None, "no time base"
    pts, dts = array("q"), array("q")
    keys, shown = bytearray(), bytearray()
    complete = True
    stop_ticks = None if stop_after is None else math.ceil(stop_after / time_base)
    earliest: int | None = None
    beyond = 0
    packets = _demux(container, stream)
    try:
        for packet in packets:
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.is_corrupt:
                return None, "damaged packet"
            if packet.pts is None:
                return None, "packets without timestamps"
            pts.append(packet.pts)
            dts.append(_NO_TIME if packet.dts is None else packet.dts)
            keys.append(bool(packet.is_keyframe))
            shown.append(not packet.is_discard)
            if stop_ticks is None:
                continue
            # The window's end counts from the first frame, whose pts is at most the
            # earliest seen so far; so once even a dts (and with it every later pts)
            # reaches `earliest + stop`, no later packet can fall inside the window.
            earliest = packet.pts if earliest is None else min(earliest, packet.pts)
            if packet.dts is not None and packet.dts >= earliest + stop_ticks:
                complete = False
                break
            # Without dts, allow for reordering: stop after a run of packets past the end.
            beyond = beyond + 1 if packet.pts >= earliest + stop_ticks else 0
            if beyond >= _REORDER_MARGIN:
                complete = False
                break
    except (*_AV_ERRORS, OSError) as error:
        return None, f"demuxing failed ({_reason(error)})"
    finally:
        packets.close()
    if not pts:
        return None, "no packets"
    index = _PacketIndex(
        pts=np.frombuffer(pts, dtype=np.int64).copy(),
        dts=np.frombuffer(dts, dtype=np.int64).copy(),
        keyframe=np.frombuffer(bytes(keys), dtype=bool).copy(),
        shown=np.frombuffer(bytes(shown), dtype=bool).copy(),
        complete=complete,
    )
    if not index.keyframe[0]:
        return None, "the stream does not start with a keyframe"
    if len(index.sorted_pts) == 0:
        return None, "no frames shown"
    if np.any(np.diff(index.sorted_pts) == 0):
        return None, "frames share a timestamp"
    return index, None
