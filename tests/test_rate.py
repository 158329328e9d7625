"""Bitrate accounting: every figure matches bytes that were actually built."""

from __future__ import annotations

import numpy as np
import pytest

from mimirate.bitstream import (
    IP_UDP_RTP_HEADER_BYTES,
    MimiFile,
    Packet,
    bitrate_table,
    nominal_bps,
    packet_wire_bytes,
    stream_report,
    wire_bps,
)
from mimirate.bitstream.container import CHUNK_OVERHEAD_BYTES, HEADER_FIXED_BYTES


def test_nominal():
    assert nominal_bps(1) == 137.5
    assert nominal_bps(8) == 1100.0
    assert nominal_bps(32) == 4400.0
    assert nominal_bps(7.5) == pytest.approx(1031.25)
    assert IP_UDP_RTP_HEADER_BYTES == 40


def test_wire_matches_built_packets(rng):
    codes = rng.integers(0, 2048, (8, 4))
    for f in (1, 2, 4):
        p = Packet(0, 0, np.full(f, 8), codes[:, :f])
        assert packet_wire_bytes(p) == len(bytes(p)) + 40
        assert packet_wire_bytes(bytes(p)) == packet_wire_bytes(len(bytes(p)))
        assert wire_bps(8, f) == pytest.approx(packet_wire_bytes(p) * 8 * 12.5 / f)
    # 8 levels, 1 frame a packet: (9 + 1 + 11 + 40) bytes x 12.5 packets/s
    assert wire_bps(8, 1) == 61 * 8 * 12.5


def test_table_container_column_is_a_real_file():
    rows = bitrate_table(range(1, 33))
    assert [r.levels for r in rows] == list(range(1, 33))
    eight = rows[7]
    assert eight.nominal_bps == 1100.0 and eight.duration_s == 10.0
    size = HEADER_FIXED_BYTES + len("small") + 1375 + CHUNK_OVERHEAD_BYTES
    assert eight.container_bps == pytest.approx(size * 8 / 10)
    assert len(MimiFile.blank(num_levels=8, num_frames=125).to_bytes()) == size
    for r in rows:
        assert r.nominal_bps < r.container_bps < r.wire_4_bps < r.wire_2_bps < r.wire_1_bps
        assert r.entropy_bps is None


def test_stream_report_with_per_frame_levels():
    levels = np.array([1, 8, 8, 3])
    r = stream_report(levels, container_bytes=100, side_info_bytes=4)
    assert r.levels == 5.0 and r.num_frames == 4 and r.duration_s == 0.32
    assert r.nominal_bps == nominal_bps(5.0)
    assert r.container_bps == 100 * 8 / 0.32 and r.side_info_bps == 4 * 8 / 0.32
    one = sum(len(bytes(Packet(0, 0, np.array([k]), np.zeros((k, 1), int)))) + 40 for k in levels)
    assert r.wire_1_bps == pytest.approx(one * 8 / 0.32)
    with pytest.raises(ValueError, match="at least one frame"):
        stream_report(np.array([], int))
    assert set(r.as_dict()) >= {"nominal_bps", "wire_4_bps"}
