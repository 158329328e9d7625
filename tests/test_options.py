import numpy as np
import pytest

from mimirate.ratecontrol.options import OptionTable, expected_frame_qoe
from mimirate.ratecontrol.qoe import delay_impairment
from mimirate.ratecontrol.wire import WireSizer


@pytest.fixture(scope="module")
def table(quality_table):
    return quality_table


def test_wire_rates_come_from_packet_bytes(table):
    sizer = WireSizer()
    opts = OptionTable(sizer, table)
    o = opts.find(8, 2, 0)
    assert o.wire_bps == pytest.approx(sizer.packet_bytes((8, 8)) * 8 * 12.5 / 2)
    # Bundling frames saves headers.
    assert opts.find(8, 4, 0).wire_bps < opts.find(8, 1, 0).wire_bps
    assert opts.find(8, 1, 2).wire_bps > opts.find(8, 1, 0).wire_bps


def test_expected_qoe_counts_loss_delay_and_redundancy(table):
    u = np.array(table.utility)
    # One frame a packet, no loss, 20 ms network delay: U - Idd(20 + 80).
    q = expected_frame_qoe(table, np.array([8]), np.array([1]), np.array([0]), 0.0, 20.0)
    assert q[0] == pytest.approx(u[7] - delay_impairment(100.0))
    # 10% loss: redundancy of 2 levels adds p(1-p) U(2) at one more packet of delay.
    q0 = expected_frame_qoe(table, np.array([8]), np.array([1]), np.array([0]), 0.1, 20.0)[0]
    q2 = expected_frame_qoe(table, np.array([8]), np.array([1]), np.array([2]), 0.1, 20.0)[0]
    assert q0 == pytest.approx(0.9 * u[7])
    assert q2 == pytest.approx(0.9 * u[7] + 0.09 * (u[1] - delay_impairment(180.0)))


def test_best_respects_the_budget(table):
    opts = OptionTable(WireSizer(), table)
    for rate in (1500.0, 3000.0, 6000.0):
        o = opts.best(rate, 0.0, 50.0)
        assert o.wire_bps <= rate
    assert opts.best(10.0, 0.0, 0.0) is opts.cheapest


def test_level_ladder_and_redundancy_floor(table):
    from mimirate.ratecontrol.options import LEVEL_LADDER, level_ladder

    assert level_ladder(32) == LEVEL_LADDER
    assert level_ladder(10) == (1, 2, 3, 4, 6, 8, 10)
    assert level_ladder(1) == (1,)
    opts = OptionTable(WireSizer(), table)
    assert set(opts.levels.tolist()) == set(range(1, 33))
    # With a floor of one redundant level, the best option carries redundancy; under a
    # budget nothing fits, it is the cheapest option that does.
    o = opts.best(6000.0, 0.0, 50.0, min_redundancy=1)
    assert o.redundancy >= 1 and o.wire_bps <= 6000.0
    c = opts.best(10.0, 0.0, 0.0, min_redundancy=1)
    with_red = [x for x in opts.options if x.redundancy >= 1]
    assert c.redundancy >= 1 and c.wire_bps == min(x.wire_bps for x in with_red)


def test_allowed_narrows_the_choice_while_something_fits(table):
    opts = OptionTable(WireSizer(), table)
    single = opts.fpp == 1
    o = opts.best(6000.0, 0.0, 50.0, allowed=single)
    assert o.frames_per_packet == 1 and o.wire_bps <= 6000.0
    # Nothing of one frame a packet fits 1500 bit/s: the mask is set aside.
    assert opts.best(1500.0, 0.0, 50.0, allowed=single) == opts.best(1500.0, 0.0, 50.0)
