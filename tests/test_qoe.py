import numpy as np
import pytest

from mimirate.errors import ConfigError
from mimirate.ratecontrol.qoe import (
    FRAME_MS,
    SWITCH_WEIGHT,
    QualityTable,
    delay_impairment,
    frame_qoe,
    load_quality_table,
    mos_from_r,
    r_from_mos,
)


def table(pesq=(1.5, 2.5, 2.4, 3.5)):
    return QualityTable.from_measurements(
        np.array(pesq),
        np.ones(len(pesq)),
        model="t",
        weights_hash="00",
        dataset="d",
        num_files=1,
        command="c",
        created="now",
    )


def test_mos_r_inverse():
    r = np.linspace(7, 99, 50)
    np.testing.assert_allclose(r_from_mos(mos_from_r(r)), r, atol=0.02)
    assert mos_from_r(0.0) == 1.0 and mos_from_r(100.0) == 4.5
    assert mos_from_r(93.2) == pytest.approx(4.41, abs=0.01)  # G.107 default rating


def test_delay_impairment_g107():
    def idd(ta):  # G.107 (7-29) with mT = 100 ms, sT = 1
        x = np.log2(ta / 100)
        return 25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)

    assert delay_impairment(80.0) == 0.0
    for ta in (150.0, 200.0, 333.3, 400.0, 800.0, 12_000.0):
        assert delay_impairment(ta) == pytest.approx(idd(ta), abs=1e-4)


def test_table_monotone_and_roundtrip(tmp_path):
    t = table()
    assert t.utility[2] == t.utility[1]  # the dip at level 3 is not trusted
    assert t.utility_of(np.array([0, 1, 4, 9]))[0] == 0.0
    path = tmp_path / "q.json"
    t.save(path)
    assert load_quality_table(path) == t
    with pytest.raises(ConfigError):
        load_quality_table(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError):
        load_quality_table(tmp_path / "bad.json")


def test_frame_qoe_penalties():
    t = table()
    u = np.array(t.utility)
    played = np.array([2, 0, 4, 4])
    delay = np.array([20.0, 0.0, 20.0, 320.0])
    q = frame_qoe(played, delay, t)
    assert q.qoe[1] == 0.0  # lost
    assert q.qoe[0] == pytest.approx(u[1])  # Ta = 100 ms: no delay impairment, no switch
    # The switch from level 2 to 4 is measured against the last frame played (frame 0).
    assert q.qoe[2] == pytest.approx(u[3] - SWITCH_WEIGHT * (u[3] - u[1]))
    assert q.qoe[3] == pytest.approx(u[3] - delay_impairment(320.0 + FRAME_MS))
