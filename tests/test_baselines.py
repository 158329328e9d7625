import numpy as np
import pytest

from mimirate.ratecontrol.baselines import (
    FixedController,
    PlanController,
    QueueController,
    ThroughputController,
    late_lost_floor,
    offline_optimum,
)
from mimirate.ratecontrol.controller import AdaptiveController
from mimirate.ratecontrol.options import OptionTable
from mimirate.ratecontrol.simulator import BernoulliLoss, GilbertElliottLoss, LinkConfig, simulate
from mimirate.ratecontrol.traces import Trace
from mimirate.ratecontrol.wire import WireSizer


@pytest.fixture(scope="module")
def table(quality_table):
    return quality_table


def _table8():
    """An invented rising table with 8 levels (a ladder of 1, 2, 3, 4, 6, 8: a fast DP)."""
    from mimirate.ratecontrol.qoe import QualityTable

    k = np.arange(1, 9)
    return QualityTable.from_measurements(
        1.1 + 3.2 * (1 - np.exp(-k / 3)),
        1.0 / k,
        model="t8",
        weights_hash="00",
        dataset="d",
        num_files=1,
        command="c",
        created="now",
    )


TRACES = {
    # fat, thin, fat again
    "step": Trace.from_rates(
        "step", np.array([0.0, 2.0, 3.5]), np.array([6000.0, 1500.0, 5000.0]), 5.0
    ),
    # a 1.5 s outage
    "outage": Trace.from_rates(
        "outage", np.array([0.0, 1.5, 3.0]), np.array([5000.0, 0.0, 5000.0]), 5.0
    ),
}


def _every_controller(opts: OptionTable) -> list:
    """One of each kind, fixed settings across levels, bundling and redundancy."""
    return [FixedController(k) for k in (1, 4, 8)] + [
        FixedController(1, frames_per_packet=1),
        FixedController(4, redundancy=2),
        FixedController(2, frames_per_packet=1, redundancy=1),
        ThroughputController(opts),
        QueueController(max_levels=8),
        AdaptiveController(opts),
    ]


@pytest.mark.parametrize("loss", [0.0, 0.1])
@pytest.mark.parametrize("trace", sorted(TRACES))
def test_offline_optimum_upper_bounds_every_controller(trace, loss):
    table = _table8()
    sizer = WireSizer()
    opts = OptionTable(sizer, table)
    tr = TRACES[trace]
    link = LinkConfig(loss=BernoulliLoss(loss), seed=1, queue_bytes=1500)
    plan = offline_optimum(tr, table, link=link, sizer=sizer, duration_s=5.0)
    assert plan.num_frames == 62
    replay = simulate(tr, PlanController(plan), table, link=link, duration_s=5.0)
    # The schedule is a real one: replayed, it scores no more than the bound.
    assert replay.mean_qoe <= plan.bound + 1e-9
    for c in _every_controller(opts):
        r = simulate(tr, c, table, link=link, duration_s=5.0)
        assert r.mean_qoe <= plan.bound + 1e-9, c.name


def test_offline_optimum_value_is_exact_on_a_constant_link(table):
    from mimirate.ratecontrol.qoe import delay_impairment
    from mimirate.ratecontrol.traces import constant_trace

    sizer = WireSizer()
    link = LinkConfig(propagation_ms=40.0)
    # One choice (8 levels, one frame a packet) on a fat link: each packet leaves at
    # capture, is served at once, crosses in size * 8 / rate + 40 ms.
    plan = offline_optimum(
        constant_trace(64_000.0),
        table,
        sizer=sizer,
        link=link,
        duration_s=0.8,
        frames_per_packet=(1,),
        levels=(8,),
        redundancy=(),
    )
    lat = sizer.packet_bytes((8,)) * 8 / 64.0 + 40.0
    u8 = table.utility[7]
    assert plan.value == pytest.approx(10 * (u8 - delay_impairment(lat + 80.0)), rel=1e-9)
    assert plan.levels.tolist() == [8] * 10 and plan.frames.tolist() == [1] * 10


def test_backlog_rounds_down():
    from mimirate.ratecontrol.baselines import DP_STEP_BYTES, _bin_down, dp_bins

    bins = dp_bins(3000)
    assert bins[0] == 0.0 and bins[-1] >= 3000 and np.all(np.diff(bins) > 0)
    i = _bin_down(bins, np.array([-5.0, 0.0, DP_STEP_BYTES * 1.5, 1e9]))
    assert bins[i].tolist() == [0.0, 0.0, DP_STEP_BYTES, bins[-1]]


def test_plan_controller_replays():
    from mimirate.ratecontrol.baselines import Plan

    plan = Plan(np.array([0, 2]), np.array([2, 1]), np.array([8, 4]), np.array([0, 8]), 0.0)
    c = PlanController(plan)
    assert c.update(None, 80.0).levels == 8 and c.update(None, 160.0).frames_per_packet == 2
    d = c.update(None, 240.0)
    assert (d.levels, d.frames_per_packet, d.redundancy) == (4, 1, 8)
    skip = PlanController(Plan(np.array([0]), np.array([3]), np.array([0]), np.array([0]), 0.0))
    assert skip.update(None, 160.0).pause


def test_queue_rule_maps_delay_to_levels():
    from mimirate.ratecontrol.controller import Feedback, PacketArrival

    q = QueueController(max_levels=32)
    fb = Feedback((PacketArrival(0, 0.0, 50.0, 80),), 0, 0)
    assert q.update(fb, 100.0).levels == 2  # climbs one step of the ladder per report
    fb = Feedback((PacketArrival(1, 80.0, 130.0, 80),), 1, 0)
    assert q.update(fb, 180.0).levels == 3
    deep = Feedback((PacketArrival(1, 80.0, 80.0 + 50.0 + 200.0, 80),), 1, 0)
    assert q.update(deep, 400.0).levels == 1  # past the cushion: the least


def test_expected_loss_optimum_is_exact_on_a_constant_link(table):
    from mimirate.ratecontrol.qoe import delay_impairment
    from mimirate.ratecontrol.traces import constant_trace

    sizer = WireSizer()
    p = 0.1
    link = LinkConfig(propagation_ms=40.0, loss=BernoulliLoss(p))
    kw = dict(sizer=sizer, duration_s=0.8, frames_per_packet=(1,), levels=(8,))
    fat = constant_trace(64_000.0)
    # Without redundancy each frame scores (1 - p) of its QoE, whatever the seed's draws.
    plain = offline_optimum(fat, table, link=link, redundancy=(), losses="expected", **kw)
    lat = sizer.packet_bytes((8,)) * 8 / 64.0 + 40.0
    q8 = table.utility[7] - delay_impairment(lat + 80.0)
    assert plain.value == pytest.approx(10 * (1 - p) * q8, rel=1e-9)
    # Repeating each frame at 8 levels in the next packet (bytes always paid) adds
    # p (1 - p) of its QoE one packet later, for the 9 frames that have a next packet.
    red = offline_optimum(fat, table, link=link, redundancy=(8,), losses="expected", **kw)
    lat_red = sizer.packet_bytes((8,), (8,)) * 8 / 64.0 + 40.0
    q_red = table.utility[7] - delay_impairment(lat_red + 80.0 + 80.0)
    q_first = q8  # the first packet has nothing to repeat: the smaller packet
    q_rest = table.utility[7] - delay_impairment(lat_red + 80.0)
    want = (1 - p) * (q_first + 9 * q_rest) + 9 * p * (1 - p) * q_red
    assert red.value == pytest.approx(want, rel=1e-9)
    assert red.redundancy.tolist() == [0] + [8] * 9


def test_expected_loss_optimum_matches_the_oracle_without_loss_and_stays_under_it():
    table = _table8()
    sizer = WireSizer()
    tr = TRACES["step"]
    for p in (0.0, 0.1):
        link = LinkConfig(loss=BernoulliLoss(p), seed=1, queue_bytes=1500)
        known = offline_optimum(tr, table, link=link, sizer=sizer, duration_s=5.0)
        blind = offline_optimum(
            tr, table, link=link, sizer=sizer, duration_s=5.0, losses="expected"
        )
        if p == 0.0:
            assert blind.value == pytest.approx(known.value, rel=1e-12)
        else:
            assert blind.value < known.value
        # Its schedule is a real one: replayed, it keeps the frames it plans.
        assert blind.num_frames == 62
    ge = LinkConfig(loss=GilbertElliottLoss(0.1, 0.5))
    with pytest.raises(ValueError, match="Bernoulli"):
        offline_optimum(tr, table, link=ge, sizer=sizer, duration_s=1.0, losses="expected")
    with pytest.raises(ValueError, match="losses"):
        offline_optimum(tr, table, sizer=sizer, duration_s=1.0, losses="maybe")


@pytest.mark.parametrize("loss", [0.0, 0.1])
@pytest.mark.parametrize("trace", sorted(TRACES))
def test_late_lost_floor_is_under_every_controller(trace, loss):
    table = _table8()
    sizer = WireSizer()
    opts = OptionTable(sizer, table)
    tr = TRACES[trace]
    link = LinkConfig(loss=BernoulliLoss(loss), seed=1, queue_bytes=1500)
    floor = late_lost_floor(tr, sizer=sizer, link=link, duration_s=5.0)
    if trace == "outage":
        # 1.5 s of 5 without a link: the frames captured early in it cannot make the
        # 400 ms deadline, whatever is sent.
        assert 0.1 < floor < 0.3
    for c in _every_controller(opts):
        r = simulate(tr, c, table, link=link, duration_s=5.0)
        assert r.late_frac + r.lost_frac >= floor - 1e-6, c.name


def test_late_lost_floor_on_constant_links():
    sizer = WireSizer()
    ample = Trace.from_rates("ample", np.array([0.0]), np.array([20_000.0]), 5.0)
    assert late_lost_floor(ample, sizer=sizer, duration_s=5.0) == 0.0
    # 300 bit/s: less than the headers of the cheapest stream (a 4-frame packet a 320 ms).
    thin = Trace.from_rates("thin", np.array([0.0]), np.array([300.0]), 5.0)
    assert late_lost_floor(thin, sizer=sizer, duration_s=5.0) > 0.99
    # A sender that does not know which packets are lost repeats every packet's frames
    # in the next and still misses those whose two packets are both lost: p**2 = 4 %.
    lossy = LinkConfig(loss=BernoulliLoss(0.2), seed=3)
    known = late_lost_floor(ample, sizer=sizer, link=lossy, duration_s=5.0)
    blind = late_lost_floor(ample, sizer=sizer, link=lossy, duration_s=5.0, losses="expected")
    assert known <= blind and 0.03 < blind < 0.06
