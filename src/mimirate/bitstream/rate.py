"""Bitrate accounting: every bitrate mimirate prints comes from these functions.

Three kinds of figures (docs/format.md, "Bitrate accounting"):

- nominal: ``levels x bits x frame_rate`` (1.1 kbit/s for 8 levels of Mimi);
- container: the bytes of an actual ``.mimi`` file (header, side information, CRCs and
  all) over its duration, plain or entropy-coded;
- wire: audio packets (docs/format.md, "Packets") with ``header`` bytes of IPv4/UDP/RTP
  headers each, at ``F`` frames per packet, sized by building the packets.

Durations are ``num_frames / frame_rate``: a file covers whole frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mimirate.bitstream.packet import Packet

#: IPv4 (20) + UDP (8) + RTP (12) header bytes around every packet on the wire.
IP_UDP_RTP_HEADER_BYTES = 40
#: Frames per packet that reports and tables show wire rates for.
WIRE_FRAMES_PER_PACKET = (1, 2, 4)


def nominal_bps(levels: float, frame_rate: float = 12.5, bits: int = 11) -> float:
    """Bits per second of codes stored at exactly ``bits`` bits: ``levels x bits x frame_rate``."""
    return float(levels) * bits * frame_rate


def packet_wire_bytes(packet_or_payload_len: Packet | bytes | int, header: int = 40) -> int:
    """Bytes one packet takes on the wire: its payload plus ``header`` bytes of headers."""
    if isinstance(packet_or_payload_len, int):
        payload = packet_or_payload_len
    elif isinstance(packet_or_payload_len, bytes | bytearray):
        payload = len(packet_or_payload_len)
    else:
        payload = len(bytes(packet_or_payload_len))
    return payload + header


def wire_bytes_for(
    levels: np.ndarray, frames_per_packet: int, *, bits: int = 11, header: int = 40
) -> int:
    """Total wire bytes for frames with per-frame level counts ``levels`` ``[T]``.

    The frames are cut into packets of ``frames_per_packet`` frames (the last may hold
    fewer), each one built as a real :class:`Packet` (plain, no redundancy) and measured.
    """
    lv = np.asarray(levels, dtype=np.int64).reshape(-1)
    if frames_per_packet < 1:
        raise ValueError("frames_per_packet must be >= 1")
    total = 0
    for start in range(0, lv.size, frames_per_packet):
        chunk = lv[start : start + frames_per_packet]
        k = int(chunk.max())
        packet = Packet(
            seq=0,
            timestamp=start,
            levels=chunk.astype(np.uint8),
            codes=np.zeros((k, chunk.size), dtype=np.uint16),
            bits=bits,
        )
        total += packet_wire_bytes(packet, header)
    return total


def wire_bps(
    levels: int,
    frames_per_packet: int = 1,
    *,
    frame_rate: float = 12.5,
    bits: int = 11,
    header: int = 40,
) -> float:
    """Wire bits per second for a steady stream at ``levels`` levels, ``F`` frames a packet."""
    one = wire_bytes_for(
        np.full(frames_per_packet, levels), frames_per_packet, bits=bits, header=header
    )
    return one * 8 * frame_rate / frames_per_packet


@dataclass(frozen=True)
class BitrateReport:
    """Every bitrate of one stream, all in bit/s, from actual bytes where bytes exist.

    Attributes:
        levels: mean levels per frame.
        num_frames, duration_s: the stream (``duration_s = num_frames / frame_rate``).
        nominal_bps: ``levels x bits x frame_rate``.
        container_bps: bytes of the ``.mimi`` file x 8 / duration, or None without a file.
        entropy_bps: bytes of the entropy-coded ``.mimi`` file x 8 / duration, or None
            when no entropy table was available.
        side_info_bps: per-frame level side information included in ``container_bps``.
        wire_1_bps, wire_2_bps, wire_4_bps: plain audio packets at 1, 2, 4 frames each,
            plus ``IP_UDP_RTP_HEADER_BYTES`` per packet.
    """

    levels: float
    num_frames: int
    duration_s: float
    nominal_bps: float
    container_bps: float | None
    entropy_bps: float | None
    side_info_bps: float
    wire_1_bps: float
    wire_2_bps: float
    wire_4_bps: float

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def stream_report(
    levels: np.ndarray,
    *,
    frame_rate: float = 12.5,
    bits: int = 11,
    container_bytes: int | None = None,
    entropy_bytes: int | None = None,
    side_info_bytes: int = 0,
    header: int = IP_UDP_RTP_HEADER_BYTES,
) -> BitrateReport:
    """Build a :class:`BitrateReport` for frames with level counts ``levels`` ``[T]``.

    ``container_bytes`` / ``entropy_bytes`` are the sizes of real files (None when there
    is none); the wire figures come from building the packets.
    """
    lv = np.asarray(levels, dtype=np.int64).reshape(-1)
    t = int(lv.size)
    if t == 0:
        raise ValueError("a bitrate needs at least one frame")
    duration = t / frame_rate
    wire = [
        wire_bytes_for(lv, f, bits=bits, header=header) * 8 / duration
        for f in WIRE_FRAMES_PER_PACKET
    ]
    return BitrateReport(
        levels=float(lv.mean()),
        num_frames=t,
        duration_s=duration,
        nominal_bps=nominal_bps(float(lv.mean()), frame_rate, bits),
        container_bps=None if container_bytes is None else container_bytes * 8 / duration,
        entropy_bps=None if entropy_bytes is None else entropy_bytes * 8 / duration,
        side_info_bps=side_info_bytes * 8 / duration,
        wire_1_bps=wire[0],
        wire_2_bps=wire[1],
        wire_4_bps=wire[2],
    )


def bitrate_table(
    levels_range: Iterable[int] = range(1, 33),
    *,
    frame_rate: float = 12.5,
    bits: int = 11,
    seconds: float = 10.0,
) -> list[BitrateReport]:
    """The bitrate table without a file: one report per level count.

    ``container_bps`` is the size of a real ``.mimi`` file of ``seconds`` seconds at that
    many levels (built, serialised and measured, with the default chunking and a model
    name of ``"small"``); ``entropy_bps`` is None (it depends on the speech).
    """
    from mimirate.bitstream.container import MimiFile  # container imports this module

    frames = max(1, round(seconds * frame_rate))
    reports = []
    for k in levels_range:
        mf = MimiFile.blank(num_levels=k, num_frames=frames, frame_rate=frame_rate, bits=bits)
        size = len(mf.to_bytes())
        reports.append(
            stream_report(
                np.full(frames, k), frame_rate=frame_rate, bits=bits, container_bytes=size
            )
        )
    return reports
