"""Sender and receiver without sockets: packetisation, redundancy, caps, concealment, reports."""

from __future__ import annotations

import numpy as np
import pytest

from mimirate.errors import ConfigError
from mimirate.transport.jitter import FrameSource, JitterBuffer
from mimirate.transport.session import (
    CONCEAL_GAINS,
    FixedPolicy,
    ReceiveMonitor,
    Receiver,
    SendDecision,
    Sender,
)
from mimirate.transport.wire import FrameCodes, MediaPacket, parse_message


@pytest.fixture(scope="module")
def codec():
    from mimirate import load_codec

    return load_codec("tiny", random_init=True, seed=0)


def frame(i: int, k: int = 32) -> FrameCodes:
    return FrameCodes(i, (np.arange(k, dtype=np.uint16) * 7 + i) % 2048)


def sender(levels=8, fpp=1, red=0, silence_levels=None) -> Sender:
    d = SendDecision(levels, fpp, red, silence_levels=silence_levels)
    return Sender(32, FixedPolicy(d), d)


def test_sender_packetises_at_levels_with_redundancy() -> None:
    s = sender(levels=6, fpp=2, red=2)
    out = [s.push(frame(i), i * 80.0) for i in range(4)]
    assert [len(o) for o in out] == [0, 1, 0, 1]
    first, second = (parse_message(o[0]) for o in (out[1], out[3]))
    assert isinstance(first, MediaPacket) and isinstance(second, MediaPacket)
    assert [f.index for f in first.frames] == [0, 1] and first.redundant == ()
    assert all(f.levels == 6 for f in second.frames)
    np.testing.assert_array_equal(second.frames[0].codes, frame(2).codes[:6])
    # The previous packet's frames ride along at 2 levels.
    assert [(f.index, f.levels) for f in second.redundant] == [(0, 2), (1, 2)]
    np.testing.assert_array_equal(second.redundant[1].codes, frame(1).codes[:2])
    assert (first.seq, second.seq) == (0, 1)


def test_sender_cap_and_gap_flush() -> None:
    s = sender(levels=16, fpp=3)
    s.set_cap(40)
    assert s.levels == 16  # a cap above the model's levels is clamped, not an error
    s.set_cap(3)
    assert s.push(frame(0), 0.0) == []
    # Frame 1 was lost upstream: frame 0 goes out alone, frame 2 starts a new packet.
    out = s.push(frame(2), 160.0)
    pkt = parse_message(out[0])
    assert [(f.index, f.levels) for f in pkt.frames] == [(0, 3)]
    assert s.flush(170.0) and s.flush(171.0) == []
    with pytest.raises(ConfigError):
        sender(levels=0)


class _ScriptedPolicy:
    """Pauses for the frames whose send times are listed; records every update."""

    name = "scripted"

    def __init__(self, paused_ms: set[float]) -> None:
        self.paused_ms = paused_ms
        self.updates: list[tuple[bool, float]] = []  # (had a report, now)

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, report, now_ms: float) -> SendDecision:
        self.updates.append((report is not None, now_ms))
        return SendDecision(8, 2, 2, pause=now_ms in self.paused_ms)


def test_sender_asks_policy_every_frame_and_drops_frames_while_paused() -> None:
    policy = _ScriptedPolicy(paused_ms={160.0, 240.0})
    s = Sender(32, policy, SendDecision(8, 2, 2))
    out = [s.push(frame(i), i * 80.0) for i in range(7)]
    assert policy.updates == [(False, i * 80.0) for i in range(7)]
    # Frames 0-1 go out; frame 2 joins a bundle that the pause at 160 ms drops with it;
    # frame 3 is dropped too; then 4-5 form a packet, 6 waits.
    assert [len(o) for o in out] == [0, 1, 0, 0, 0, 1, 0]
    assert s.paused_frames == 2 and s.packets == 2
    after = parse_message(out[5][0])
    assert [f.index for f in after.frames] == [4, 5]
    # Nothing from before the pause is repeated: those frames are stale.
    assert after.redundant == ()
    assert sum(s.levels_sent.values()) == 5  # frames 0, 1, 2 (dropped in the bundle), 4, 5


def test_adaptive_sender_pauses_in_an_outage_and_probes() -> None:
    from mimirate.transport.adapt import make_controller

    policy = make_controller(32, "small")
    assert policy is not None
    s = Sender(32, policy, SendDecision(1, 1, 0))
    mon = ReceiveMonitor()
    outage_ms = 2000.0  # packets sent from then on never arrive, nor do reports
    sent_at, next_report = [], 100.0
    for i in range(125):
        now = i * 80.0
        while next_report <= now and next_report < outage_ms:
            s.on_report(mon.report(next_report), next_report)
            next_report += 100.0
        if now == outage_ms:
            assert s.paused_frames == 0  # a working path is never paused
        for data in s.push(frame(i), now):
            sent_at.append(now)
            if now < outage_ms:  # 30 ms one way
                packet = parse_message(data)
                assert isinstance(packet, MediaPacket)
                mon.on_packet(packet, now + 30.0, len(data))
    # Once the oldest packet has waited far longer than acknowledgements took, the path is
    # stalled: frames are dropped unsent, but for probes, 500 ms or so after the last
    # packet and twice as long after each unanswered one, at most 4 s (100 frames fall in
    # the outage: 3 packets go before the stall shows, then probes 560, 1040, 2000, 4000 ms apart).
    probes = [t for t in sent_at if t >= outage_ms + 500.0]
    gaps = np.diff([max(t for t in sent_at if t < probes[0]), *probes])
    # (The first when the stall shows, past 500 ms; then 1 s on the 80 ms grid: 1040.)
    assert gaps.tolist() == [560.0, 1040.0, 2000.0, 4000.0]
    # Of the 100 frames from the outage on, 5 went in 3 packets and 4 as probes.
    assert len(probes) == 4 and s.paused_frames == 100 - 5 - 4


def test_sequence_numbers_wrap_and_monitor_unwraps() -> None:
    mon = ReceiveMonitor()
    for i, seq in enumerate([65534, 65535, 0, 2]):  # 1 missing after the wrap
        mon.on_packet(MediaPacket(seq, (frame(i),)), i * 80.0, 50)
    rep = mon.report(400.0)
    assert rep.highest_seq == 2
    assert rep.cumulative_lost == 1
    assert rep.loss_fraction == round(65535 / 5)
    assert rep.receive_rate_bps == int(4 * 50 * 8000 / 400)
    assert [a[0] for a in rep.arrivals] == [65534, 65535, 0, 2]
    assert parse_message(bytes(rep)) == rep
    # The next interval starts after the highest seen; nothing new, nothing lost.
    assert mon.report(500.0).cumulative_lost == 1


def test_sender_reads_queuing_delay_from_report() -> None:
    s = sender()
    for i in range(3):
        s.push(frame(i), i * 80.0)
    mon = ReceiveMonitor()
    # Arrivals 30 ms, then 30, then 130 ms after sending: 0, 0, 100 ms above the base.
    for i, extra in enumerate([30.0, 30.0, 130.0]):
        mon.on_packet(MediaPacket(i, (frame(i),)), i * 80.0 + extra, 40)
    s.on_report(mon.report(400.0), 400.0)
    assert s.queuing_delay_ms == pytest.approx(100.0 / 3, abs=0.01)
    assert s.reports == 1


def test_receiver_decodes_conceals_and_uses_redundancy(codec) -> None:
    jitter = JitterBuffer(min_frames=0, target_frames=0)
    rx = Receiver(codec.stream_decoder(), codec.num_levels, codec.frame_size, jitter)
    s = sender(levels=8, red=3)
    packets = [parse_message(s.push(frame(i), i * 80.0)[0]) for i in range(8)]
    # Lose packets 2 (its frame comes back from packet 3's redundancy) and 5, 6 (5 is
    # repeated in 6, also lost: concealed; 6 is redundant in 7).
    for i, p in enumerate(packets):
        if i not in (2, 5, 6):
            rx.on_packet(p, i * 80.0, 40)
    out = [rx.tick() for _ in range(8)]
    assert [o.source for o in out] == [
        FrameSource.FULL,
        FrameSource.FULL,
        FrameSource.REDUNDANT,
        FrameSource.FULL,
        FrameSource.FULL,
        FrameSource.CONCEALED,
        FrameSource.REDUNDANT,
        FrameSource.FULL,
    ]
    assert [o.levels for o in out] == [8, 8, 3, 8, 8, 0, 3, 8]
    assert all(o.audio.shape == (codec.frame_size,) and o.audio.dtype == np.float32 for o in out)
    assert rx.longest_conceal_run == 1
    # The concealed frame fades from full gain to CONCEAL_GAINS[0] over the frame.
    assert np.all(np.isfinite(out[5].audio))


def test_long_loss_fades_to_silence_then_recovers(codec) -> None:
    jitter = JitterBuffer(min_frames=0, target_frames=0)
    rx = Receiver(codec.stream_decoder(), codec.num_levels, codec.frame_size, jitter)
    s = sender(levels=4)
    rng = np.random.default_rng(0)
    for i in range(2):
        rx.on_packet(parse_message(s.push(frame(i), 0.0)[0]), 0.0, 40)
    rx.on_packet(
        MediaPacket(99, (FrameCodes(12, rng.integers(0, 2048, 4).astype(np.uint16)),)), 0.0, 40
    )
    out = [rx.tick() for _ in range(13)]
    run = len(CONCEAL_GAINS) + 2
    concealed = [o for o in out if o.source is FrameSource.CONCEALED]
    assert len(concealed) == 10 and rx.longest_conceal_run == 10
    assert np.all(concealed[run].audio == 0.0)  # beyond the fade: silence
    assert out[-1].source is FrameSource.FULL and out[-1].index == 12


def test_sender_leaves_silent_frames_out_under_dtx_and_receiver_counts_them() -> None:
    s = sender(fpp=2, red=0, silence_levels=0)
    speech = [True, True, True, False, False, False, True, True]
    out = [s.push(frame(i), i * 80.0, speech[i]) for i in range(len(speech))]
    # Frames 0-1 form a packet; frame 2 waits for a partner, but frame 3 is silent: 2 goes
    # out alone at once; 3-5 are not sent; 6-7 form the next packet.
    assert [len(o) for o in out] == [0, 1, 0, 1, 0, 0, 0, 1]
    packets = [parse_message(o[0]) for o in out if o]
    assert [[f.index for f in p.frames] for p in packets] == [[0, 1], [2], [6, 7]]
    assert s.dtx_frames == 3 and sum(s.levels_sent.values()) == 5
    # The receiver tells frames never sent from frames lost: no sequence gap, index gap.
    mon = ReceiveMonitor()
    for p, o in zip(packets, [o for o in out if o], strict=True):
        mon.on_packet(p, 0.0, len(o[0]))
    assert mon.unsent_frames == 3 and mon.report(100.0).loss_fraction == 0
    # Packet 1 lost: frames 2-5 are a loss and a gap the monitor does not call unsent.
    mon = ReceiveMonitor()
    mon.on_packet(packets[0], 0.0, 10)
    mon.on_packet(packets[2], 0.0, 10)
    assert mon.unsent_frames == 0 and mon.report(100.0).loss_fraction > 0


def test_sender_sends_silent_frames_at_silence_levels_or_like_speech() -> None:
    s = sender(red=2, silence_levels=2)
    (data,) = s.push(frame(0), 0.0, speech=False)
    pkt = parse_message(data)
    assert [f.levels for f in pkt.frames] == [2] and s.dtx_frames == 0
    s = sender(red=2)
    (data,) = s.push(frame(0), 0.0, speech=False)
    assert [f.levels for f in parse_message(data).frames] == [8]


def test_adaptive_policy_suppresses_silence() -> None:
    from mimirate.ratecontrol.controller import SILENCE_LEVELS
    from mimirate.transport.adapt import make_controller

    policy = make_controller(32, "small")
    assert policy is not None
    assert policy.update(None, 0.0).silence_levels == SILENCE_LEVELS == 0


def test_dtx_sends_a_keepalive_frame_every_few_frames_of_silence() -> None:
    from mimirate.ratecontrol.controller import DTX_KEEPALIVE_FRAMES

    s = sender(fpp=3, red=0, silence_levels=0)
    sent = []
    for i in range(12):
        for data in s.push(frame(i), i * 80.0, speech=i == 0):
            sent.append([(f.index, f.levels) for f in parse_message(data).frames])
    # Frame 0 (speech) goes when silence starts; then one frame alone at 1 level every
    # DTX_KEEPALIVE_FRAMES, not held back for the 3-frame packets speech uses.
    k = DTX_KEEPALIVE_FRAMES
    assert sent == [[(0, 8)], [(k, 1)], [(2 * k, 1)]]
    assert s.dtx_frames == 12 - 3


def test_dtx_copies_a_talkspurts_last_packet_in_a_keepalive_the_frame_after() -> None:
    from mimirate.ratecontrol.controller import DTX_KEEPALIVE_FRAMES

    s = sender(fpp=2, red=2, silence_levels=0)
    speech = [True] * 3 + [False] * 9 + [True] * 2
    sent = []
    for i, is_speech in enumerate(speech):
        for data in s.push(frame(i), i * 80.0, speech=is_speech):
            p = parse_message(data)
            sent.append(([(f.index, f.levels) for f in p.frames], [f.index for f in p.redundant]))
    k = DTX_KEEPALIVE_FRAMES
    assert sent == [
        ([(0, 8), (1, 8)], []),
        ([(2, 8)], [0, 1]),  # silence begins: frame 2 goes at once
        ([(4, 1)], [2]),  # the frame after: a keep-alive with frame 2's copy
        ([(4 + k, 1)], [4]),  # then the usual cadence
        ([(12, 8), (13, 8)], [4 + k]),
    ]
    # Without redundancy there is no copy to carry: keep-alives keep their cadence.
    s = sender(fpp=2, red=0, silence_levels=0)
    indices = []
    for i, is_speech in enumerate(speech):
        indices += [
            [f.index for f in parse_message(d).frames]
            for d in s.push(frame(i), i * 80.0, is_speech)
        ]
    assert indices == [[0, 1], [2], [2 + k], [12, 13]]


def test_monitor_measures_queuing_delay_against_the_fastest_packet() -> None:
    mon = ReceiveMonitor()
    assert mon.queuing_delay_ms == 0.0
    # Frame i is captured at (i + 1) * 80 ms; a 1000 ms clock offset plus 30 ms of path.
    for i, queued in enumerate((0.0, 0.0, 45.0, 120.0, 10.0)):
        mon.on_packet(MediaPacket(i, (frame(i),)), 1030.0 + (i + 1) * 80.0 + queued, 20)
        assert mon.queuing_delay_ms == pytest.approx(queued)
