"""Invented timelines fed to the controller, with its exact decisions."""

import itertools
import math

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
    cap = C.PROBE_RATIO * options.cheapest.wire_bps
    start = cap - 100.0
    c = AdaptiveController(options, start_rate_bps=start)
    c.update(None, 0.0)
    assert c.rate_bps == start and c.state is ControllerState.STARTUP
    # Nothing sent yet: growth (0.5/s x ~2700 = 135 bit/s in 100 ms) stops at PROBE_RATIO x
    # the cheapest setting.
    assert 0.1 * C.STARTUP_GAIN_PER_S * start > 100.0
    c.update(None, 100.0)
    assert c.rate_bps == pytest.approx(cap)
    # 1000 bytes sent in the last second: cap 2 x 8000 = 16000; growth 0.5/s of the rate.
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
    # The next five 350 ms later than that: one sample over QDELAY_SEVERE_MS, and the
    # bottleneck delivers less than is sent: congestion.
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
    assert c.delivered_rate_bps >= C.BEHIND_RATIO * c.send_rate_bps(1120.0)
    assert c.state is ControllerState.STARTUP and c.rate_bps >= 4000.0


def test_a_link_slower_than_the_cheapest_stream_pauses_the_sender(options):
    # At its floor, with a queue that puts every setting's first frame past the playout
    # deadline: frames are dropped unsent, but for a probe every STALL_PROBE_MS.
    c = AdaptiveController(options, start_rate_bps=options.cheapest.wire_bps)
    fb, now = _acked(c, [0, 1, 2])  # base delay 50 ms
    c.update(fb, now)
    c.on_sent(3, 240.0, 100)
    d = c.update(Feedback((PacketArrival(3, 240.0, 240.0 + 550.0, 100),), 3, 0), 800.0)
    assert c.qdelay_ms == pytest.approx(500.0) and not d.pause
    c.rate_bps, c.state = c.min_rate, ControllerState.HOLD  # as after cuts to the floor
    assert not c._on_time().any()
    assert c.update(None, 240.0 + C.STALL_PROBE_MS - 1.0).pause
    assert not c.update(None, 240.0 + C.STALL_PROBE_MS + 1.0).pause  # the probe
    c.on_sent(4, 240.0 + C.STALL_PROBE_MS + 1.0, 100)
    assert c.update(None, 240.0 + C.STALL_PROBE_MS + 80.0).pause
    # With the rate above the floor, a cheaper setting is still there to take: no pause.
    c.rate_bps = 2 * c.min_rate
    assert not c.update(None, 240.0 + C.STALL_PROBE_MS + 160.0).pause


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
    # The average is bias-corrected: every report showed 10 %, so it reads 10 %, not the
    # 0.1 * (1 - (1 - LOSS_ALPHA) ** 600) of an average started at 0.
    assert c.loss == pytest.approx(0.1, rel=1e-9)
    # What the bottleneck delivered: the receive rate with the loss after it added back.
    assert c.delivered_rate_bps == pytest.approx(c.receive_rate_bps / (1 - c.loss))
    assert d.redundancy > 0


@pytest.mark.parametrize(("owd", "protected"), [(50.0, True), (330.0, False)])
def test_protection_is_required_only_where_a_copy_can_arrive_in_time(options, owd, protected):
    # 10 % loss measured. With 50 ms one way, copies (one packet later) are in time and
    # every setting taken carries one; with 330 ms, the predicted 350 (+ DEADLINE_MARGIN)
    # plus one packet of 80 ms or more is past the deadline: redundancy would protect
    # nothing, so none is forced, and the expected-QoE choice takes none.
    c = AdaptiveController(options, start_rate_bps=8000.0)
    for s in range(10):
        c.on_sent(s, s * 80.0, 100)
    got = tuple(PacketArrival(s, s * 80.0, s * 80.0 + owd, 100) for s in range(10) if s != 3)
    d = c.update(Feedback(got, 9, 1), 9 * 80.0 + owd + 10.0)
    assert c.loss == pytest.approx(0.1) and c.loss >= C.PROTECT_LOSS
    assert (d.redundancy > 0) is protected
    delay = c.predicted_delay_ms()[c.option.index]
    copy_ms = delay + d.frames_per_packet * 80.0
    assert bool(copy_ms <= 400.0) is protected


def test_the_loss_estimate_reads_the_first_reports_whole_and_then_averages(options):
    c = AdaptiveController(options)
    c.update(Feedback(arrivals([0, 1, 2, 3]), 4, 1), 500.0)  # 1 of 5 lost
    assert c.loss == pytest.approx(0.2, rel=1e-9)
    c.update(Feedback(arrivals(range(5, 10)), 9, 1), 900.0)  # then 5 of 5 arrive
    # Weights 1 for the new report, k = 0.98**5 for the old one.
    k = (1 - C.LOSS_ALPHA) ** 5
    assert c.loss == pytest.approx(0.2 * k / (1 + k), rel=1e-9) and 0.09 < c.loss < 0.11


def stall_time(c, sent_ms, ack_ms, last_report_ms):
    """When the controller calls the path stalled: the oldest unacknowledged packet (sent
    at ``sent_ms``) is older than the fastest ack + margin + a packet interval, and no
    report acknowledged anything since ``last_report_ms`` for margin + two intervals."""
    interval = c.option.frames_per_packet * 80.0
    return max(
        sent_ms + ack_ms + C.STALL_MARGIN_MS + interval,
        last_report_ms + C.STALL_MARGIN_MS + 2 * interval,
    )


def test_stall_without_acks_cuts_the_rate(options):
    c = AdaptiveController(options, start_rate_bps=6000.0)
    c.on_sent(0, 0.0, 100)
    c.update(Feedback(arrivals([0]), 0, 0), 100.0)  # ack delay 100 ms
    c.on_sent(1, 200.0, 100)
    c.update(None, stall_time(c, 200.0, 100.0, 100.0) - 10)  # not yet
    assert c.state is ControllerState.STARTUP
    rate = c.rate_bps
    c.update(None, stall_time(c, 200.0, 100.0, 100.0) + 10)
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


def _acked(c, seqs, owd=50.0, size=100, step=80.0):
    """Send ``seqs`` every ``step`` ms and return a report acknowledging all of them."""
    for s in seqs:
        c.on_sent(s, s * step, size)
    arr = tuple(PacketArrival(s, s * step, s * step + owd, size) for s in seqs)
    return Feedback(arr, seqs[-1], 0), seqs[-1] * step + owd + 10.0


def test_measured_loss_turns_redundancy_on(options):
    c = AdaptiveController(options, start_rate_bps=2000.0)
    fb, now = _acked(c, list(range(10)))
    d = c.update(fb, now)
    assert c.loss == 0.0 and d.redundancy == 0  # a tight budget buys levels, not copies
    # One packet of the next ten missing: after ten packets without loss, the
    # bias-corrected average gives the new report weight 1 and the old one k = 0.98**10.
    for s in range(10, 20):
        c.on_sent(s, s * 80.0, 100)
    got = tuple(PacketArrival(s, s * 80.0, s * 80.0 + 50.0, 100) for s in range(10, 20) if s != 13)
    d = c.update(Feedback(got, 19, 1), 19 * 80.0 + 60.0)
    k = (1 - C.LOSS_ALPHA) ** 10
    assert c.loss == pytest.approx(0.1 / (1 + k))
    assert c.loss >= C.PROTECT_LOSS and d.redundancy >= 1
    assert options.find(d.levels, d.frames_per_packet, d.redundancy).wire_bps <= max(
        c.rate_bps, min(o.wire_bps for o in options.options if o.redundancy >= 1)
    )


def test_a_growing_queue_is_congestion_even_when_rates_match(options):
    c = AdaptiveController(options, start_rate_bps=4000.0)
    fb, now = _acked(c, list(range(5)))
    c.update(fb, now)
    # A queue over QDELAY_HIGH_MS that stays without growing: not congestion.
    seq = 5
    for _ in range(C.PERSIST_REPORTS + 1):
        fb, now = _acked(c, [seq, seq + 1], owd=120.0)
        seq += 2
        c.update(fb, now)
        assert c.qdelay_ms == pytest.approx(70.0) and c.state is ControllerState.STARTUP
    # Growing by 5 ms a report: congestion on the PERSIST_REPORTS-th report, not before.
    for k in range(1, C.PERSIST_REPORTS + 1):
        fb, now = _acked(c, [seq, seq + 1], owd=120.0 + 5 * k)
        seq += 2
        before = c.rate_bps
        c.update(fb, now)
        assert c.qdelay_ms == pytest.approx(70.0 + 5 * k)
        if k < C.PERSIST_REPORTS:
            assert c.state is ControllerState.STARTUP
    assert c.state is ControllerState.DECREASE
    assert c.ceiling_bps == pytest.approx(c.receive_rate_bps)
    assert c.rate_bps == pytest.approx(min(before, C.BACKOFF * c.receive_rate_bps))


def test_the_queue_is_judged_by_its_floor_not_by_bursts(options):
    """A link that delivers in bursts (a cellular schedule) holds some packets back in
    every report while others pass at once: the least delay of the last packets
    stays near zero and the rate keeps growing. A standing queue lifts the floor: growth
    stops."""
    c = AdaptiveController(options, start_rate_bps=3000.0)
    fb, now = _acked(c, list(range(5)))
    c.update(fb, now)
    c.state = ControllerState.INCREASE  # past startup, which grows whatever the delay
    seq = 5

    def report(owds):
        nonlocal seq
        for k in range(len(owds)):
            c.on_sent(seq + k, (seq + k) * 80.0, 100)
        arr = tuple(
            PacketArrival(seq + k, (seq + k) * 80.0, (seq + k) * 80.0 + o, 100)
            for k, o in enumerate(owds)
        )
        seq += len(owds)
        return c.update(Feedback(arr, seq - 1, 0), arr[-1].arrival_ms + 10.0)

    # Each report: one packet held 100 ms by the schedule, one through at once.
    for _ in range(8):
        before = c.rate_bps
        report([150.0, 50.0])
        assert c.qdelay_ms == pytest.approx(100.0)  # over QDELAY_LOW_MS: growth stopped before
        assert c.qdelay_floor_ms == 0.0
        assert c.state is ControllerState.INCREASE and c.rate_bps > before
    # Every packet 80 ms late for longer than the window: the floor rises, growth stops.
    for _ in range(int(C.QUEUE_FLOOR_WINDOW_MS / 160.0) + 2):
        report([130.0, 130.0])
    assert c.qdelay_floor_ms == pytest.approx(80.0)
    before = c.rate_bps
    report([130.0, 130.0])
    assert c.state is ControllerState.HOLD and c.rate_bps == before


def _bursty_then_congested(c: AdaptiveController, held_ms: float) -> tuple[float, float]:
    """Reports of two packets each, one held ``held_ms`` by the link and one not, then a
    a queue. Returns the receive rate at the cut and the time of the cut."""
    sent, acked, now = 0, 0, 0.0

    def report(owds: list[float], send: int) -> None:
        nonlocal sent, acked, now
        for _ in range(send):
            c.on_sent(sent, sent * 80.0, 100)
            sent += 1
        arr = [
            PacketArrival(acked + k, (acked + k) * 80.0, (acked + k) * 80.0 + o, 100)
            for k, o in enumerate(owds)
        ]
        acked += len(owds)
        now = max(now, max(a.arrival_ms for a in arr) + 10.0)
        c.update(Feedback(tuple(arr), acked - 1, 0), now)

    for _ in range(30):
        report([50.0 + held_ms, 50.0], send=2)
    c.state = ControllerState.INCREASE
    # Before the queue, the jitter average reads 150 ms on the bursty path (1 - 0.9**30 of
    # it), 0 on the steady one.
    assert c.jitter_ms == pytest.approx(held_ms * (1 - (1 - C.JITTER_ALPHA) ** 30))
    assert c.bursty is (held_ms > C.BURSTY_JITTER_MS)
    # A queue: 4 packets sent for every 2 out of it, 130 ms late (over QDELAY_SEVERE_MS):
    # congestion once the receive rate falls behind (the second report at the latest).
    for _ in range(2):
        report([180.0, 180.0], send=4)
        if c.state is ControllerState.DECREASE:
            break
    assert c.state is ControllerState.DECREASE
    return c.ceiling_bps, now


def test_a_bursty_path_backs_off_less_and_probes_faster(options):
    """Packets held 150 ms in every report without a standing queue make a path bursty:
    its cut is to BURSTY_BACKOFF of the receive rate and it grows past the last capacity
    seen by BURSTY_ADDITIVE_BPS_PER_S; a steady path (nothing held) keeps BACKOFF and
    ADDITIVE_BPS_PER_S."""
    for held, backoff, additive in (
        (150.0, C.BURSTY_BACKOFF, C.BURSTY_ADDITIVE_BPS_PER_S),
        (0.0, C.BACKOFF, C.ADDITIVE_BPS_PER_S),
    ):
        c = AdaptiveController(options, start_rate_bps=12_000.0)
        received, now = _bursty_then_congested(c, held)
        assert c.rate_bps == pytest.approx(backoff * received)
        # Past the last capacity (the receive rate at the cut) only the additive probe.
        c.state = ControllerState.INCREASE
        c.rate_bps = received
        c.update(None, now)
        c.update(None, now + 500.0)
        assert c.rate_bps == pytest.approx(received + 0.5 * additive)
    assert C.BURSTY_BACKOFF > C.BACKOFF and C.BURSTY_ADDITIVE_BPS_PER_S > C.ADDITIVE_BPS_PER_S


def test_serialisation_of_a_bigger_packet_is_not_queuing(options):
    c = AdaptiveController(options, start_rate_bps=4000.0)
    c.on_sent(0, 0.0, 60)
    c.update(Feedback((PacketArrival(0, 0.0, 50.0, 60),), 0, 0), 60.0)
    # 100 bytes more take 100 * 8000 / 1760 ms at the receive rate ((60 + 160) * 8 bit/s).
    extra = 100 * 8000.0 / 1760.0
    c.on_sent(1, 80.0, 160)
    c.update(Feedback((PacketArrival(1, 80.0, 80.0 + 50.0 + extra + 10.0, 160),), 1, 0), 700.0)
    assert c.receive_rate_bps == pytest.approx(1760.0)
    assert c.qdelay_ms == pytest.approx(10.0)


def test_rate_resumes_after_a_stall(options):
    c = AdaptiveController(options, start_rate_bps=8000.0)
    c.on_sent(0, 0.0, 100)
    c.update(Feedback(arrivals([0]), 0, 0), 100.0)  # acks take 100 ms
    c.on_sent(1, 200.0, 100)
    r0 = c.rate_bps
    # An outage: nothing acknowledged for seconds; a cut every DECREASE_GAP_MS.
    t = stall_time(c, 200.0, 100.0, 100.0) + 10.0
    times = [t + k * C.DECREASE_GAP_MS for k in range(4)]
    pauses = [c.update(None, now).pause for now in times]
    assert c.state is ControllerState.DECREASE
    assert c.rate_bps == pytest.approx(max(C.BACKOFF**4 * r0, options.cheapest.wire_bps))
    # Frames are dropped unsent, but for a probe once STALL_PROBE_MS passed since a send
    # (none is sent here: the last was packet 1 at 200 ms).
    assert pauses == [now - 200.0 < C.STALL_PROBE_MS for now in times]
    # Packet 1 is acknowledged with no queuing delay: the rate comes back to
    # RESUME_FRACTION of what it was (same instant: no growth on top).
    c.update(Feedback(arrivals([1]), 1, 0), t + 3 * C.DECREASE_GAP_MS)
    assert c.rate_bps == pytest.approx(C.RESUME_FRACTION * r0)


def test_probes_into_an_outage_back_off_until_the_newest_is_answered(options):
    c = AdaptiveController(options, start_rate_bps=8000.0)
    c.on_sent(0, 0.0, 100)
    c.update(Feedback(arrivals([0]), 0, 0), 100.0)  # acks take 100 ms
    c.on_sent(1, 200.0, 100)
    t = stall_time(c, 200.0, 100.0, 100.0) + 10.0
    assert t - 200.0 >= C.STALL_PROBE_MS  # the first probe goes as the stall is seen
    # A decision every 80 ms frame; a probe whenever the wait since the last packet has
    # passed: STALL_PROBE_MS, then twice as long after each unanswered probe, at most
    # STALL_PROBE_MAX_MS (1000, 2000, 4000, 4000 ms; 1000 lands on the next frame, 1040).
    probes, seq = [], 2
    for k in range(150):
        now = t + 80.0 * k
        d = c.update(None, now)
        if not d.pause:
            # The probe: this one frame, alone, without redundancy.
            assert (d.frames_per_packet, d.redundancy) == (1, 0)
            probes.append(now)
            c.on_sent(seq, now, 60)
            seq += 1
    assert probes[0] == t
    assert [b - a for a, b in itertools.pairwise(probes)] == [1040.0, 2000.0, 4000.0, 4000.0]
    # An old packet trickling out of the queue answers nothing: the wait stays 4 s ...
    last = probes[-1]
    c.update(Feedback((PacketArrival(1, 200.0, last + 100.0, 100),), 1, 0), last + 150.0)
    assert c.update(None, last + 2000.0).pause
    # ... the newest one's arrival does: the next probe goes STALL_PROBE_MS after it.
    c.update(Feedback((PacketArrival(seq - 1, last, last + 900.0, 60),), seq - 1, 0), last + 950.0)
    assert c._unanswered_probes == 0


def test_growth_past_the_last_congestion_is_additive(options):
    def grown(ceiling):
        c = AdaptiveController(options, start_rate_bps=5000.0)
        c.state = ControllerState.INCREASE
        c.ceiling_bps = ceiling
        for s in range(10):  # 8000 bit/s sent in the last second: the probe cap is far
            c.on_sent(s, 1000.0 + 80.0 * s, 100)
        c.update(None, 1000.0)
        c.update(None, 2000.0)
        return c.rate_bps

    assert grown(5000.0) == pytest.approx(5000.0 + C.ADDITIVE_BPS_PER_S)
    assert grown(math.inf) == pytest.approx(5000.0 * (1 + C.STARTUP_GAIN_PER_S))


def test_silent_frames_are_not_sent(options):
    d = AdaptiveController(options).update(None, 0.0)
    assert d.silence_levels == 0 == C.SILENCE_LEVELS


@pytest.mark.parametrize("bursty", [False, True])
def test_a_failed_probe_blocks_its_rate_for_a_doubling_hold(options, bursty):
    """On a steady path, an upgrade of more than UPGRADE_STEP followed by congestion
    within UPGRADE_FAIL_MS blocks settings that cost as much for UPGRADE_HOLD_MS; the
    next probe failing too doubles the hold. A bursty path blocks nothing (its
    congestion signals are mostly bursts)."""
    jitter = 2 * C.BURSTY_JITTER_MS if bursty else 0.0
    c = AdaptiveController(options, start_rate_bps=3000.0)
    seq, now = 0, 0.0

    def report(owd: float) -> None:
        nonlocal seq, now
        fb, now = _acked(c, [seq, seq + 1], owd=owd)
        seq += 2
        c.update(fb, now)

    def choose(at: float, budget: float):
        c.update(None, at)  # the growth since the last update, then the budget set
        c.rate_bps = budget
        c.update(None, at)  # same instant: no growth
        return c.option

    def climb(at: float):
        """From the low setting, a budget 2.2 times its rate."""
        assert choose(at, low.wire_bps) == low
        return choose(at, 2.2 * low.wire_bps)

    for _ in range(3):
        report(50.0)
    c.state = ControllerState.INCREASE
    low = c.option
    probe = climb(now)
    assert probe.wire_bps > (1 + C.UPGRADE_STEP) * low.wire_bps

    def fail() -> float:
        """The time of the cut."""
        # A queue over QDELAY_HIGH_MS growing for PERSIST_REPORTS reports: congestion.
        start = now
        c.jitter_ms = jitter
        for k in range(1, C.PERSIST_REPORTS + 1):
            report(120.0 + 10 * k)
        assert c.state is ControllerState.DECREASE
        assert now - start < C.UPGRADE_FAIL_MS
        cut = now
        for _ in range(12):  # the queue drains: delay predictions back to the base
            report(50.0)
        c.jitter_ms = jitter
        return cut

    failed = fail()
    held = climb(now)
    if bursty:  # nothing blocked
        assert held == probe
        return
    assert held.wire_bps < probe.wire_bps
    # Still blocked just before the hold ends; taken again after it: a new probe ...
    assert climb(failed + C.UPGRADE_HOLD_MS - 1.0) == held
    assert climb(failed + C.UPGRADE_HOLD_MS + 1.0) == probe
    # ... that fails too: twice the hold.
    failed = fail()
    assert climb(failed + 2 * C.UPGRADE_HOLD_MS - 1.0) == held
    assert climb(failed + 2 * C.UPGRADE_HOLD_MS + 1.0) == probe
