"""The impairing relay's trace replay: a bandwidth trace becomes a capacity schedule."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from mimirate.errors import TraceError
from mimirate.transport.relay import OUTAGE_KBPS, trace_schedule


def test_trace_schedule_scales_to_the_mean_and_keeps_outages(tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    # time_s Mbit/s: 2 s at 1, 1 s outage, 1 s at 3 (repeats every 4 s).
    trace.write_text("0 1\n1 1\n2 0\n3 3\n")
    steps = trace_schedule(str(trace), seconds=4.0, mean_kbps=10.0, step_s=1.0)
    assert [t for t, _ in steps] == [0.0, 1.0, 2.0, 3.0]
    kbps = np.array([k for _, k in steps])
    # Mean of (1, 1, 0, 3) is 1.25 Mbit/s -> 10 kbit/s: 8, 8, outage, 24.
    np.testing.assert_allclose(kbps, [8.0, 8.0, OUTAGE_KBPS, 24.0], atol=1e-3)


def test_trace_schedule_refuses_traces_that_carry_nothing(tmp_path: Path) -> None:
    dead = tmp_path / "dead.txt"
    dead.write_text("0 0\n1 0\n")
    with pytest.raises(TraceError):
        trace_schedule(str(dead), seconds=2.0, mean_kbps=10.0)
    # Capacity only after the part that is played.
    late = tmp_path / "late.txt"
    late.write_text("0 0\n5 1\n")
    with pytest.raises(argparse.ArgumentTypeError, match="carries nothing"):
        trace_schedule(str(late), seconds=2.0, mean_kbps=10.0, step_s=1.0)
