import numpy as np
import pytest

from mimirate.ratecontrol.baselines import (
    FIXED_LEVELS,
    FixedController,
    PlanController,
    QueueController,
    ThroughputController,
    offline_optimum,
)
from mimirate.ratecontrol.options import OptionTable
from mimirate.ratecontrol.simulator import BernoulliLoss, LinkConfig, simulate
from mimirate.ratecontrol.traces import Trace
from mimirate.ratecontrol.wire import WireSizer


@pytest.fixture(scope="module")
def table(quality_table):
    return quality_table


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_offline_optimum_bounds_every_baseline(table, loss):
    sizer = WireSizer()
    opts = OptionTable(sizer, table)
    # 8 s: a fat link, a thin stretch, fat again.
    tr = Trace.from_rates(
        "step", np.array([0.0, 3.0, 5.0]), np.array([7000.0, 1800.0, 5000.0]), 8.0
    )
    link = LinkConfig(loss=BernoulliLoss(loss), seed=1)
    plan = offline_optimum(tr, table, link=link, sizer=sizer, duration_s=8.0)
    best = simulate(tr, PlanController(plan), table, link=link, duration_s=8.0)
    # The DP's own delays are rounded up: replaying the plan does at least as well,
    # up to the switch penalties it approximates.
    assert best.mean_qoe >= plan.value / 100 - 0.5
    baselines = [FixedController(k) for k in FIXED_LEVELS] + [
        FixedController(8, redundancy=2),
        ThroughputController(opts),
        QueueController(),
    ]
    for c in baselines:
        r = simulate(tr, c, table, link=link, duration_s=8.0)
        assert best.mean_qoe >= r.mean_qoe, c.name


def test_plan_controller_replays():
    from mimirate.ratecontrol.baselines import Plan

    plan = Plan(np.array([0, 2]), np.array([2, 1]), np.array([8, 4]), np.array([0, 8]), 0.0)
    c = PlanController(plan)
    assert c.update(None, 80.0).levels == 8 and c.update(None, 160.0).frames_per_packet == 2
    d = c.update(None, 240.0)
    assert (d.levels, d.frames_per_packet, d.redundancy) == (4, 1, 8)


def test_queue_rule_maps_delay_to_levels():
    from mimirate.ratecontrol.controller import Feedback, PacketArrival

    q = QueueController(max_levels=32)
    fb = Feedback((PacketArrival(0, 0.0, 50.0, 80),), 0, 0)
    assert q.update(fb, 100.0).levels == 2  # climbs one level per report
    deep = Feedback((PacketArrival(1, 80.0, 80.0 + 50.0 + 200.0, 80),), 1, 0)
    assert q.update(deep, 400.0).levels == 1  # past the cushion: the least
