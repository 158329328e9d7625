"""Jitter buffer: reordering, loss, late frames, redundancy, bounds, on invented timelines."""

from __future__ import annotations

import numpy as np

from mimirate.transport.jitter import FrameSource, JitterBuffer, PutResult


def codes(levels: int, value: int = 1) -> np.ndarray:
    return np.full(levels, value, dtype=np.uint16)


def test_waits_for_target_then_plays_in_order_despite_reordering() -> None:
    jb = JitterBuffer(target_frames=2)
    assert jb.next().source is FrameSource.WAITING
    assert jb.put(0, codes(8, 0), 0.0) is PutResult.ACCEPTED
    jb.put(2, codes(8, 2), 10.0)
    # The first frame waits two ticks after its arrival, however many frames are held.
    assert [jb.next().source for _ in range(2)] == [FrameSource.WAITING] * 2
    jb.put(1, codes(8, 1), 11.0)
    out = [jb.next() for _ in range(3)]
    assert [p.index for p in out] == [0, 1, 2]
    assert all(p.source is FrameSource.FULL for p in out)
    assert [int(p.frame.codes[0]) for p in out] == [0, 1, 2]


def test_lost_frame_is_concealed_and_redundant_copy_used() -> None:
    jb = JitterBuffer(min_frames=0, target_frames=0)
    jb.put(0, codes(8), 0.0)
    jb.put(2, codes(8), 0.0)
    jb.put(3, codes(2), 0.0, redundant=True)
    jb.put(3, codes(8), 0.0, redundant=True)  # a second redundant copy is a duplicate
    sources = [jb.next().source for _ in range(4)]
    assert sources == [
        FrameSource.FULL,
        FrameSource.CONCEALED,
        FrameSource.FULL,
        FrameSource.REDUNDANT,
    ]
    st = jb.stats()
    assert (st.concealed, st.redundant_used, st.duplicates) == (1, 1, 1)


def test_full_copy_upgrades_redundant_but_not_the_reverse() -> None:
    jb = JitterBuffer(min_frames=0, target_frames=0)
    assert jb.put(5, codes(2), 0.0, redundant=True) is PutResult.ACCEPTED
    assert jb.put(5, codes(16), 1.0) is PutResult.UPGRADED
    assert jb.put(5, codes(2), 2.0, redundant=True) is PutResult.DUPLICATE
    p = jb.next()
    assert p.source is FrameSource.FULL and p.frame.levels == 16


def test_late_frame_stretches_delay_by_one_frame() -> None:
    jb = JitterBuffer(min_frames=0, target_frames=0, max_frames=3)
    jb.put(0, codes(4), 0.0)
    assert jb.next().index == 0
    assert jb.next().source is FrameSource.CONCEALED  # frame 1 missing at its turn
    assert jb.put(1, codes(4), 90.0) is PutResult.LATE
    assert jb.target_frames == 1
    jb.put(2, codes(4), 100.0)
    # The stretch: one concealed tick without advancing, then frame 2 in order.
    assert jb.next().source is FrameSource.CONCEALED
    assert jb.next().index == 2
    assert jb.stats().stretches == 1


def test_capacity_bounds_memory_and_resyncs_on_jump() -> None:
    jb = JitterBuffer(min_frames=0, target_frames=0, max_frames=4, capacity=8)
    jb.put(0, codes(4), 0.0)
    assert jb.put(100, codes(4), 0.0) is PutResult.TOO_FAR
    assert jb.put(101, codes(4), 0.0) is PutResult.TOO_FAR
    assert jb.put(102, codes(4), 0.0) is PutResult.RESYNC
    assert jb.next().index == 102
    for i in range(10_000):
        jb.put(103 + i, codes(4), 0.0)
    assert len(jb._frames) <= jb.capacity


def test_deep_buffer_skips_to_shrink_delay() -> None:
    jb = JitterBuffer(target_frames=0, min_frames=0, shrink_after=3)
    for i in range(10):
        jb.put(i, codes(4), 0.0)
    played = [jb.next().index for _ in range(4)]
    assert played == [0, 1, 3, 4]  # frame 2 skipped on the third deep tick
    assert jb.stats().skips == 1
