from dataclasses import dataclass

import numpy as np
import pytest

from mimirate.errors import ConfigError
from mimirate.ratecontrol.baselines import FixedController
from mimirate.ratecontrol.controller import AdaptiveController
from mimirate.ratecontrol.options import OptionTable
from mimirate.ratecontrol.qoe import FRAME_MS
from mimirate.ratecontrol.simulator import (
    BernoulliLoss,
    GilbertElliottLoss,
    LinkConfig,
    simulate,
)
from mimirate.ratecontrol.traces import Trace, constant_trace
from mimirate.ratecontrol.wire import WireSizer


@dataclass(frozen=True)
class DropSlots:
    """A fake link that loses the packets sent in the given 80 ms slots."""

    slots: tuple[int, ...]

    def pattern(self, n, rng):
        out = np.zeros(n, bool)
        out[[s for s in self.slots if s < n]] = True
        return out


@pytest.fixture(scope="module")
def table(quality_table):
    return quality_table


def test_fixed_pattern_losses_exact(table):
    sizer = WireSizer()
    link = LinkConfig(propagation_ms=40.0, loss=DropSlots((3, 7)), feedback_loss=False)
    tr = constant_trace(64_000.0)
    r = simulate(tr, FixedController(8, 1), table, link=link, duration_s=1.6)
    size = sizer.packet_bytes((8,))
    assert (r.packets.wire_bytes == size).all()
    played = r.qoe.played_levels
    assert list(np.flatnonzero(played == 0)) == [3, 7]
    assert (played[played > 0] == 8).all()
    # Each frame leaves as soon as it is complete: delay = serialisation + propagation.
    np.testing.assert_allclose(r.frame_delay_ms[played > 0], size * 8 / 64.0 + 40.0)
    assert r.lost_frac == pytest.approx(2 / 20) and r.late_frac == 0.0

    # With one level of redundancy, the next packet brings back frames 3 and 7 at 1 level.
    r2 = simulate(tr, FixedController(8, 1, redundancy=1), table, link=link, duration_s=1.6)
    assert list(r2.qoe.played_levels[[3, 7]]) == [1, 1]
    red_size = sizer.packet_bytes((8,), (1,))
    np.testing.assert_allclose(r2.frame_delay_ms[[3, 7]], FRAME_MS + red_size * 8 / 64.0 + 40.0)
    assert r2.lost_frac == 0.0


def test_conservation_with_drops_and_losses(table):
    # 2 kbit/s with an outage: a fixed 32-level stream overflows the queue.
    tr = Trace.from_rates("step", np.array([0.0, 2.0, 4.0]), np.array([2000.0, 0.0, 3000.0]), 8.0)
    link = LinkConfig(queue_bytes=1500, loss=BernoulliLoss(0.2), seed=3)
    r = simulate(tr, FixedController(32, 2), table, link=link, duration_s=8.0)
    c = r.conservation
    assert c.dropped > 0 and c.lost > 0 and c.delivered > 0
    assert c.sent == c.delivered + c.dropped + c.lost + c.in_network


def test_deterministic(table):
    tr = constant_trace(3000.0, period_s=5.0)
    opts = OptionTable(WireSizer(), table)
    link = LinkConfig(loss=GilbertElliottLoss(0.05, 0.3), seed=7)
    a = simulate(tr, AdaptiveController(opts), table, link=link, duration_s=10.0)
    b = simulate(tr, AdaptiveController(opts), table, link=link, duration_s=10.0)
    assert a.summary() == b.summary()
    np.testing.assert_array_equal(a.qoe.played_levels, b.qoe.played_levels)
    np.testing.assert_array_equal(a.packets.send_ms, b.packets.send_ms)


def test_adaptive_keeps_the_queue_short_on_a_steady_link(table):
    opts = OptionTable(WireSizer(), table)
    r = simulate(constant_trace(6000.0), AdaptiveController(opts), table, duration_s=30.0)
    assert r.p95_queue_ms <= 150.0
    assert r.late_frac + r.lost_frac <= 0.02
    assert r.wire_bps > 3000.0  # it found most of the link


def test_loss_models():
    rng = np.random.default_rng(0)
    ge = GilbertElliottLoss(0.02, 0.2)
    p = ge.pattern(200_000, rng)
    assert p.mean() == pytest.approx(ge.mean_loss, rel=0.05)
    # Losses come in bursts: P(lost | previous lost) is P(stay bad) = 0.8.
    assert p[1:][p[:-1]].mean() == pytest.approx(0.8, abs=0.02)
    assert BernoulliLoss(0.1).pattern(100_000, rng).mean() == pytest.approx(0.1, abs=0.005)
    with pytest.raises(ConfigError):
        BernoulliLoss(1.5)
    with pytest.raises(ConfigError):
        GilbertElliottLoss(0.1, 0.0)


def test_bad_arguments(table):
    with pytest.raises(ConfigError):
        simulate(constant_trace(1000.0), FixedController(1), table, duration_s=0.01)
    with pytest.raises(ConfigError):
        simulate(
            constant_trace(1000.0),
            FixedController(1),
            table,
            duration_s=1.0,
            activity=np.ones(3, bool),
        )


def test_adaptive_pauses_into_an_outage(table):
    # 6 kbit/s, a 3 s outage, 6 kbit/s again.
    tr = Trace.from_rates(
        "outage", np.array([0.0, 4.0, 7.0]), np.array([6000.0, 0.0, 6000.0]), 12.0
    )
    opts = OptionTable(WireSizer(), table)
    a = simulate(tr, AdaptiveController(opts), table, duration_s=12.0)
    f = simulate(tr, FixedController(4), table, duration_s=12.0)
    outage = slice(int(4.6 / 0.08), int(7.0 / 0.08))
    assert (a.sent_levels[outage] == 0).mean() > 0.5  # it stopped sending, but for probes
    assert (f.sent_levels[outage] > 0).all()
    after = slice(int(8.0 / 0.08), None)  # a second after the outage
    assert (a.qoe.played_levels[after] > 0).mean() > (f.qoe.played_levels[after] > 0).mean()


class _Always:
    """A controller that makes the same decision every time."""

    name = "always"

    def __init__(self, decision):
        self.decision = decision

    def on_sent(self, seq, send_ms, wire_bytes):
        pass

    def update(self, feedback, now_ms):
        return self.decision


def test_a_talkspurts_last_packet_is_copied_by_a_keepalive_the_frame_after(table, monkeypatch):
    import mimirate.ratecontrol.simulator as simulator
    from mimirate.ratecontrol.controller import Decision

    # 8 levels, 2 frames a packet, 2 levels copied, silence not sent.
    dtx_protected = Decision(8, 2, 2, 0)

    @dataclass(frozen=True)
    class LoseSlot:  # loss is drawn per 80 ms slot (a packet's last frame)
        slot: int

        def pattern(self, n, rng):
            lost = np.zeros(n, bool)
            lost[self.slot] = True
            return lost

    speech = np.ones(16, bool)
    speech[5:11] = False
    link = LinkConfig(loss=LoseSlot(4), feedback_loss=False)

    def run():
        return simulate(
            constant_trace(64_000.0),
            _Always(dtx_protected),
            table,
            link=link,
            duration_s=1.28,
            activity=speech,
        )

    r = run()
    # Frame 4 goes alone when silence starts (its packet is lost); frame 6 goes at once as
    # a keep-alive carrying frame 4's copy, so frame 4 plays at 2 levels. The next
    # keep-alive is DTX_KEEPALIVE_FRAMES after it (frame 11 is speech again).
    assert r.packets.frames.tolist() == [2, 2, 1, 1, 2, 2, 1]
    assert r.sent_levels[5:11].tolist() == [0, 1, 0, 0, 0, 0]
    assert r.qoe.played_levels[4] == 2 and r.lost_frac == 0.0 and r.late_frac == 0.0
    # Without the early keep-alive its copy rides the next one, 400 ms on: too late.
    monkeypatch.setattr(simulator, "PROTECT_TALKSPURT_END", False)
    r = run()
    assert r.sent_levels[5:11].tolist() == [0, 0, 0, 0, 1, 0]
    assert r.qoe.played_levels[4] == 0 and r.late_frac == pytest.approx(1 / 10)


def test_silent_frames_are_not_sent_with_dtx(table):
    from mimirate.ratecontrol.controller import Decision

    speech = np.ones(16, bool)
    speech[5:11] = False
    r = simulate(
        constant_trace(64_000.0),
        _Always(Decision(8, 2, 0, 0)),
        table,
        duration_s=1.28,
        activity=speech,
    )
    # Frame 4 waits for frame 5, which is silent: it goes alone, at once. Frames 5-8 and
    # 10 are not sent; frame 9, DTX_KEEPALIVE_FRAMES after the last one sent, goes alone
    # at 1 level to keep the stream alive.
    assert r.packets.frames.tolist() == [2, 2, 1, 1, 2, 2, 1]
    assert r.sent_levels[5:11].tolist() == [0, 0, 0, 0, 1, 0]
    assert (r.qoe.played_levels[[5, 6, 7, 8, 10]] == 0).all()
    assert r.lost_frac == 0.0 and r.late_frac == 0.0  # silent frames are not counted
    fixed = simulate(
        constant_trace(64_000.0), FixedController(8), table, duration_s=1.28, activity=speech
    )
    assert fixed.packets.frames.sum() == 16  # no DTX: silence goes at the fixed levels
