"""The transport's view of the bytes on the wire: :mod:`mimirate.bitstream.packet` messages.

Every datagram is one message of docs/format.md ("Packets"), made and parsed by the
bitstream layer; this module only converts between its :class:`~mimirate.bitstream.Packet`
and the transport's :class:`MediaPacket` (frames with their own level counts, redundant
base levels as frames), and unwraps 16-bit sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from mimirate.bitstream.packet import (
    Bye,
    ByeReason,
    FeedbackReport,
    Hello,
    LevelCapRequest,
    Packet,
    Redundancy,
)
from mimirate.bitstream.packet import parse_message as parse_bitstream_message
from mimirate.bitstream.rate import IP_UDP_RTP_HEADER_BYTES
from mimirate.errors import FormatError

#: IPv4/UDP/RTP header bytes counted around every datagram in every rate we report.
HEADER_BYTES = IP_UDP_RTP_HEADER_BYTES
SEQ_MOD = 1 << 16
TIMESTAMP_MOD = 1 << 32


@dataclass(frozen=True)
class FrameCodes:
    """The first ``L`` levels of one frame: ``codes`` ``[L]`` uint16, ``index`` in the stream."""

    index: int
    codes: np.ndarray

    @property
    def levels(self) -> int:
        return int(self.codes.shape[0])


@dataclass(frozen=True)
class MediaPacket:
    """One AUDIO message as the transport sees it.

    Attributes:
        seq: packet sequence number (sent mod 2**16).
        frames: consecutive frames, oldest first, each with its own level count.
        redundant: base levels of consecutive earlier frames (all with the same count),
            for the receiver to use if the packet that carried them was lost.
    """

    seq: int
    frames: tuple[FrameCodes, ...]
    redundant: tuple[FrameCodes, ...] = ()


WireMessage = Union[MediaPacket, FeedbackReport, LevelCapRequest, Hello, Bye]  # noqa: UP007

__all__ = [
    "HEADER_BYTES",
    "Bye",
    "ByeReason",
    "FeedbackReport",
    "FrameCodes",
    "Hello",
    "LevelCapRequest",
    "MediaPacket",
    "WireMessage",
    "encode_media",
    "parse_message",
    "unwrap",
]


def encode_media(packet: MediaPacket) -> bytes:
    """The AUDIO message for ``packet`` (frames must be consecutive, each with >= 1 level)."""
    frames = packet.frames
    if not frames:
        raise FormatError("a media packet needs at least one frame")
    first = frames[0].index
    if any(f.index != first + i for i, f in enumerate(frames)):
        raise FormatError("the frames of one packet must be consecutive")
    levels = np.array([f.levels for f in frames], dtype=np.int64)
    codes = np.zeros((int(levels.max()), len(frames)), dtype=np.uint16)
    for i, f in enumerate(frames):
        codes[: f.levels, i] = f.codes
    redundancy = None
    red = [f for f in packet.redundant if f.levels]
    if red:
        r_levels = min(f.levels for f in red)
        start = red[0].index
        distance = first - start
        ok = all(f.index == start + i for i, f in enumerate(red)) and len(red) <= distance <= 255
        if ok:
            rc = np.stack([f.codes[:r_levels] for f in red], axis=1)
            redundancy = Redundancy(distance, rc)
    return bytes(Packet(packet.seq % SEQ_MOD, first % TIMESTAMP_MOD, levels, codes, redundancy))


def parse_message(data: bytes) -> WireMessage:
    """Parse one datagram (FormatError when it is not a valid message).

    A media packet comes back with its raw 16-bit ``seq``; frame indices are the 32-bit
    timestamps (they wrap after 10 years of one stream).
    """
    msg = parse_bitstream_message(data)
    if not isinstance(msg, Packet):
        return msg
    first = msg.timestamp
    frames = tuple(
        FrameCodes(first + i, msg.codes[: int(lv), i].copy()) for i, lv in enumerate(msg.levels)
    )
    redundant: tuple[FrameCodes, ...] = ()
    if msg.redundancy is not None:
        r = msg.redundancy
        start = first - r.distance
        redundant = tuple(
            FrameCodes(start + j, r.codes[:, j].copy())
            for j in range(r.codes.shape[1])
            if start + j >= 0
        )
    return MediaPacket(msg.seq, frames, redundant)


def unwrap(raw: int, reference: int, modulus: int = SEQ_MOD) -> int:
    """The integer congruent to ``raw`` (mod ``modulus``) nearest to ``reference``."""
    delta = (raw - reference) % modulus
    if delta >= modulus // 2:
        delta -= modulus
    return reference + delta
