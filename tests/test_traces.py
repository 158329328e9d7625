import numpy as np
import pytest

from mimirate.errors import TraceError
from mimirate.ratecontrol.traces import (
    MAHIMAHI_BIN_MS,
    Trace,
    constant_trace,
    load_trace,
    parse_trace,
    trace_files,
)


def test_rate_trace_scaled_and_integrated():
    # 1 Mbit/s for 1 s then 3 Mbit/s for 1 s (last step = median step), scale 4 kbit/s per Mbit/s.
    tr = parse_trace("0.0 1.0\n1.0 3.0\n", "t", scale_kbps=4.0)
    assert tr.period_s == 2.0
    np.testing.assert_allclose(tr.rate_bps, [4000.0, 12000.0])
    assert tr.bytes_by(1.0) == pytest.approx(500.0)
    assert tr.bytes_by(2.0) == pytest.approx(2000.0)
    assert tr.bytes_by(3.0) == pytest.approx(2500.0)  # repeats
    assert tr.mean_bps == pytest.approx(8000.0)


def test_time_when_inverts_and_skips_outages():
    tr = Trace.from_rates("o", np.array([0.0, 1.0, 3.0]), np.array([800.0, 0.0, 1600.0]), 4.0)
    # 100 bytes by t=1, nothing during the outage 1..3, then 200 B/s.
    assert tr.time_when(100.0) == pytest.approx(1.0)  # first time, not the end of the outage
    assert tr.time_when(100.0 + 1e-9) == pytest.approx(3.0, abs=1e-9)
    assert tr.time_when(200.0) == pytest.approx(3.5)
    t = np.linspace(0, 20, 97)
    c = tr.bytes_by(t)
    back = tr.time_when(c)
    np.testing.assert_allclose(tr.bytes_by(back), c, atol=1e-6)


def test_mahimahi_binned():
    # 10 opportunities in the first 20 ms bin, 5 in the second; period 40 ms.
    text = "\n".join(["5"] * 10 + ["25"] * 5 + ["40"])
    tr = parse_trace(text, "m", scale_kbps=1000.0)  # scale 1000: unscaled bit/s
    assert tr.period_s == pytest.approx(0.040)
    assert tr.rate_bps[0] == pytest.approx(10 * 1500 * 8 / (MAHIMAHI_BIN_MS / 1e3))
    assert tr.bytes_by(0.040) == pytest.approx(16 * 1500)


@pytest.mark.parametrize(
    "text",
    ["", "abc def\n", "1 2 3\n", "0 1\n0 2\n", "0 0\n1 0\n", "0 nan\n", "1 2\n3\n"],
)
def test_bad_traces_raise(text):
    with pytest.raises(TraceError):
        parse_trace(text, "bad")


def test_constant_trace_and_scale():
    tr = constant_trace(8000.0)
    assert tr.time_when(1000.0) == pytest.approx(1.0)
    assert tr.scaled(2.0).time_when(1000.0) == pytest.approx(0.5)
    with pytest.raises(TraceError):
        tr.scaled(0.0)


def test_missing_path(tmp_path):
    with pytest.raises(TraceError):
        trace_files(tmp_path / "nope")
    with pytest.raises(TraceError):
        trace_files(tmp_path)  # empty folder
    (tmp_path / "LICENSE").write_text("x")
    (tmp_path / "a").write_text("0 1\n1 2\n")
    assert [p.name for p in trace_files(tmp_path)] == ["a"]


def test_shared_traces_load(shared_data):
    root = shared_data / "traces"
    for family in ("hsdpa-norway", "fcc", "oboe", "mahimahi-cellular"):
        first = trace_files(root / family)[0]
        tr = load_trace(first)
        assert tr.mean_bps > 0 and tr.period_s > 1
