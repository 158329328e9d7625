"""mimirate.evaluation.distortion: per-frame mel distance of decodes, measured."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("librosa")

from mimirate import load_codec
from mimirate.errors import ConfigError
from mimirate.evaluation.distortion import FrameMel, measured_distortion


@pytest.fixture(scope="module")
def coded():
    codec = load_codec("tiny", random_init=True, seed=0)
    rng = np.random.default_rng(1)
    t = np.arange(36_000) / 24_000
    x = 0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * t)) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return codec, x, codec.encode(x)


def test_the_reference_is_at_zero_distance(coded):
    codec, x, enc = coded
    fm = FrameMel(codec, x, enc, delay=0)
    mean, per = fm.distances(fm.reference)
    assert mean == 0 and per.shape == (enc.num_frames,) and np.all(per[np.isfinite(per)] == 0)


def test_measured_rows_are_monotone_and_capped(coded):
    codec, x, enc = coded
    d = measured_distortion(codec, x, enc, max_levels=4)
    assert d.shape == (32, enc.num_frames) and np.all(np.isfinite(d))
    assert np.all(np.diff(d, axis=0) <= 0)
    assert np.array_equal(d[4:], np.repeat(d[3:4], 28, axis=0))  # unmeasured levels buy nothing
    # A frame's row is the running minimum of what decoding measured at 1..4 levels.
    fm = FrameMel(codec, x, enc)
    first = fm.distances(fm.degraded(np.full(enc.num_frames, 1)))[1]
    ok = np.isfinite(first)
    np.testing.assert_allclose(d[0, ok], first[ok])
    with pytest.raises(ConfigError):
        measured_distortion(codec, x, enc, max_levels=0)
