import numpy as np
import pytest

from mimirate.bitstream.container import MimiFile
from mimirate.errors import ConfigError
from mimirate.ratecontrol.progressive import (
    coarse_first_file,
    compare,
    deliver,
    in_order_file,
)
from mimirate.ratecontrol.traces import constant_trace


@pytest.fixture(scope="module")
def table(quality_table):
    return quality_table


@pytest.fixture(scope="module")
def message():
    t = 125  # 10 s
    codes = np.random.default_rng(0).integers(0, 2048, (32, t)).astype(np.uint16)
    return MimiFile("tiny", bytes(8), 24000, 12.5, 11, 32, t * 1920, codes)


def test_coarse_first_starts_sooner_and_never_stalls_on_a_thin_link(table, message):
    tr = constant_trace(2000.0)  # half the 4.4 kbit/s the 32 levels need
    a, b = compare(message, tr, table)
    assert a.first_audio_s < b.first_audio_s / 2
    assert a.stall_s == 0.0 and b.stall_s > 5.0
    assert b.played_utility == pytest.approx(table.utility[-1])  # complete frames only
    assert a.played_levels.min() >= 1
    # Quality of the message rises with time and ends complete in both layouts.
    assert np.all(np.diff(a.message_utility) >= -1e-9)
    assert a.message_utility[-1] == pytest.approx(table.utility[-1])
    assert a.complete_s == pytest.approx(b.complete_s, rel=0.05)


def test_fast_link_plays_everything_at_full_quality(table, message):
    a, b = compare(message, constant_trace(200_000.0), table)
    assert a.played_utility == pytest.approx(table.utility[-1], abs=2.0)
    assert b.stall_s == 0.0 and b.first_audio_s < 0.2


def test_layouts_keep_the_codes(message):
    for f in (coarse_first_file(message), in_order_file(message)):
        back = MimiFile.parse(f.to_bytes())
        np.testing.assert_array_equal(back.codes, message.codes)


def test_rejects_partial_files(table, message):
    data = message.to_bytes()
    with pytest.raises(ConfigError):
        deliver(data[: len(data) // 2], constant_trace(1000.0), table, name="x", progressive=True)
