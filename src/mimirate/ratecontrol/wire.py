"""Packet sizes on the wire, measured by building real ``mimirate.bitstream`` packets."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mimirate.bitstream.packet import Packet, Redundancy
from mimirate.bitstream.rate import IP_UDP_RTP_HEADER_BYTES, packet_wire_bytes


def build_packet(
    seq: int,
    timestamp: int,
    levels: tuple[int, ...],
    redundancy: tuple[int, ...] = (),
    codes: np.ndarray | None = None,
    redundant_codes: np.ndarray | None = None,
    bits: int = 11,
) -> Packet:
    """An AUDIO packet for frames with ``levels`` ``[F]``, carrying the first levels of the
    ``len(redundancy)`` frames just before it (one level count for all of them, the
    smallest of ``redundancy``: the format sends a rectangle). Codes default to zeros
    (a packet's size does not depend on them unless it is entropy coded)."""
    lv = np.asarray(levels, dtype=np.uint8)
    if codes is None:
        codes = np.zeros((int(lv.max()), lv.size), dtype=np.uint16)
    red = None
    if redundancy:
        r = min(redundancy)
        if redundant_codes is None:
            redundant_codes = np.zeros((r, len(redundancy)), dtype=np.uint16)
        red = Redundancy(len(redundancy), redundant_codes[:r])
    return Packet(seq % 65536, timestamp % (1 << 32), lv, codes, red, bits=bits)


class WireSizer:
    """Wire bytes of audio packets: ``len(bytes(Packet))`` + IPv4/UDP/RTP headers."""

    def __init__(self, header: int = IP_UDP_RTP_HEADER_BYTES, bits: int = 11) -> None:
        self.header = header
        self.bits = bits
        self._size = lru_cache(maxsize=65536)(self._measure)

    def _measure(self, levels: tuple[int, ...], redundancy: tuple[int, ...]) -> int:
        packet = build_packet(0, 0, levels, redundancy, bits=self.bits)
        return packet_wire_bytes(packet, self.header)

    def packet_bytes(self, levels: tuple[int, ...], redundancy: tuple[int, ...] = ()) -> int:
        """Wire bytes of a packet of frames with ``levels``, plus redundancy for frames
        with ``redundancy`` levels (see :func:`build_packet`)."""
        return self._size(tuple(int(v) for v in levels), tuple(int(v) for v in redundancy))
