"""Invented timelines fed to the controller, with its exact decisions."""

import pytest

from mimirate.bitstream.packet import FeedbackReport
from mimirate.ratecontrol import controller as C
from mimirate.ratecontrol.controller import (
    AdaptiveController,
    ControllerState,
    Feedback,
    FeedbackReader,
    PacketArrival,
)
from mimirate.ratecontrol.options import OptionTable
from mimirate.ratecontrol.wire import WireSizer


@pytest.fixture(scope="module")
def options(quality_table):
    return OptionTable(WireSizer(), quality_table)


def arrivals(seqs, send_step=80.0, owd=50.0, size=100, t0=0.0):
    return tuple(PacketArrival(s, t0 + s * send_step, t0 + s * send_step + owd, size) for s in seqs)


def test_startup_growth_is_capped_by_what_is_sent(options):
    c = AdaptiveController(options, start_rate_bps=2000.0)
    c.update(None, 0.0)
    assert c.rate_bps == 2000.0 and c.state is ControllerState.STARTUP
    # Nothing sent yet: growth stops at PROBE_RATIO x the cheapest setting.
    c.update(None, 100.0)
    assert c.rate_bps == pytest.approx(C.PROBE_RATIO * options.cheapest.wire_bps)
    # 1000 bytes sent in the last second: cap 1.5 x 8000 = 12000; growth 0.5/s of the rate.
    for i in range(10):
        c.on_sent(i, 100.0 + i * 80.0, 100)
    before = c.rate_bps
    c.update(None, 1000.0)
    assert c.rate_bps == pytest.approx(
        before + 0.9 * max(C.ADDITIVE_BPS_PER_S, C.STARTUP_GAIN_PER_S * before)
    )


def test_queuing_delay_backs_off_to_receive_rate_once_per_gap(options):
    c = AdaptiveController(options, start_rate_bps=10_000.0)
    for s in range(15):  # 100-byte packets every 80 ms, 0 .. 1120 ms
        c.on_sent(s, s * 80.0, 100)
    # Base delay 50 ms from the first five.
    c.update(Feedback(arrivals(range(5)), 4, 0), 450.0)
    assert c.qdelay_ms == 0.0 and c.state is ControllerState.STARTUP
    # The next five 350 ms later than that: one sample over QDELAY_SEVERE_MS, and less
    # arrives than is sent: congestion.
    late = tuple(PacketArrival(s, s * 80.0, s * 80.0 + 400.0, 100) for s in range(5, 10))
    d = c.update(Feedback(late, 9, 0), 1120.0)
    assert c.qdelay_ms == pytest.approx(350.0)
    assert c.state is ControllerState.DECREASE
    # Received in the second before the last arrival, (120, 1120]: packets 1..9 = 900 bytes,
    # 7200 bit/s; sent in the last second (120, 1120]: packets 2..14 = 10400 bit/s.
    assert c.receive_rate_bps == pytest.approx(7200.0)
    assert c.send_rate_bps(1120.0) == pytest.approx(10_400.0)
    assert c.rate_bps == pytest.approx(C.BACKOFF * 7200.0)
    assert options.find(d.levels, d.frames_per_packet, d.redundancy).wire_bps <= c.rate_bps
    # Still congested 100 ms later: no second cut inside DECREASE_GAP_MS.
    c.update(Feedback((PacketArrival(10, 800.0, 1200.0, 100),), 10, 0), 1220.0)
    assert c.rate_bps == pytest.approx(C.BACKOFF * 7200.0)


def test_delay_that_is_not_self_inflicted_is_not_congestion(options):
    # A cellular-style gap: packets arrive 350 ms late, but everything sent arrives.
    c = AdaptiveController(options, start_rate_bps=4000.0)
    for s in range(10):
        c.on_sent(s, s * 80.0, 100)
    c.update(Feedback(arrivals(range(5)), 4, 0), 450.0)
    late = tuple(PacketArrival(s, s * 80.0, s * 80.0 + 400.0, 100) for s in range(5, 10))
    c.update(Feedback(late, 9, 0), 1120.0)
    assert c.qdelay_ms == pytest.approx(350.0)
    assert c.receive_rate_bps >= C.SELF_INFLICTED_RATIO * c.send_rate_bps(1120.0)
    assert c.state is ControllerState.STARTUP and c.rate_bps >= 4000.0


def test_random_loss_buys_redundancy_not_a_lower_rate(options):
    c = AdaptiveController(options, start_rate_bps=8000.0)
    now, seq = 0.0, 0
    for lost in range(1, 61):  # 60 reports of 10 packets, one lost each, no queuing delay
        got = [s for s in range(seq, seq + 10) if s != seq + 3]
        for s in range(seq, seq + 10):
            c.on_sent(s, s * 80.0, 100)
        seq += 10
        now = seq * 80.0 + 60.0
        d = c.update(Feedback(arrivals(got), seq - 1, lost), now)
        assert c.state is not ControllerState.DECREASE
    assert c.rate_bps >= 8000.0
    assert c.loss == pytest.approx(0.1 * (1 - (1 - C.LOSS_ALPHA) ** 600), rel=1e-6)
    assert d.redundancy > 0


def test_stall_without_acks_cuts_the_rate(options):
    c = AdaptiveController(options, start_rate_bps=6000.0)
    c.on_sent(0, 0.0, 100)
    c.update(Feedback(arrivals([0]), 0, 0), 100.0)  # ack delay 100 ms
    rate = c.rate_bps
    c.on_sent(1, 200.0, 100)
    c.update(None, 200.0 + 100.0 + C.STALL_MARGIN_MS - 10)  # not yet
    assert c.state is ControllerState.STARTUP
    rate = c.rate_bps
    c.update(None, 200.0 + 100.0 + C.STALL_MARGIN_MS + 10)
    assert c.state is ControllerState.DECREASE
    assert c.rate_bps == pytest.approx(max(C.BACKOFF * rate, options.cheapest.wire_bps))


def test_feedback_reader_unwraps():
    r = FeedbackReader()
    for seq in range(65530, 65540):
        r.sent(seq, seq * 1.0, 60)
    rep = FeedbackReport(
        highest_seq=65539 % 65536,
        cumulative_lost=2,
        loss_fraction=0,
        receive_rate_bps=0,
        jitter_us=0,
        arrivals=((65535, (1 << 32) - 1000), (2, 500)),
    )
    fb = r.read(FeedbackReport.parse(bytes(rep)))
    assert fb.highest_seq == 65539 and fb.cumulative_lost == 2
    assert [a.seq for a in fb.arrivals] == [65535, 65538]
    a, b = fb.arrivals
    assert b.arrival_ms - a.arrival_ms == pytest.approx(1.5)  # across the 2**32 us wrap
    assert a.send_ms == 65535.0 and a.wire_bytes == 60
