"""Metrics with known answers: identical signals, known SNR, constant values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mimirate.errors import AudioError, ConfigError
from mimirate.evaluation import metrics
from mimirate.evaluation.metrics import METRIC_RATE, mean_ci


def speechlike(rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """Harmonic bursts with a syllable-rate envelope: enough 'speech' for PESQ's VAD."""
    t = np.arange(int(seconds * METRIC_RATE)) / METRIC_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / METRIC_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    noise = 0.02 * rng.standard_normal(len(t))
    return (0.2 * voiced * envelope + noise * envelope).astype(np.float64)


def test_identical_signals_score_each_metrics_ideal(rng):
    x = speechlike(rng)
    s = metrics.score(x, x)
    assert s.pesq_wb == pytest.approx(4.64, abs=0.01)  # P.862.2's ceiling
    assert s.stoi == pytest.approx(1.0, abs=1e-6)
    # ViSQOL speech's lattice maps identical signals to ~3.9-4.5 (its ceiling is
    # below 5 and depends on the signal), so check it against a degraded copy too.
    assert s.visqol > 3.5
    assert s.mel_distance == 0.0
    assert s.si_sdr == math.inf


def test_degradation_lowers_every_score(rng):
    x = speechlike(rng)
    y = x + 0.05 * rng.standard_normal(len(x))
    clean, noisy = metrics.score(x, x), metrics.score(x, y)
    assert noisy.pesq_wb < clean.pesq_wb - 1.0
    assert noisy.stoi < clean.stoi
    assert noisy.visqol < clean.visqol - 0.5
    assert noisy.mel_distance > 0.1
    assert noisy.si_sdr < 20


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_si_sdr_of_a_known_snr(rng, snr_db):
    x = rng.standard_normal(METRIC_RATE * 2)
    x -= x.mean()
    n = rng.standard_normal(len(x))
    n -= n.mean()
    n -= (n @ x) / (x @ x) * x  # orthogonal to the target, so SNR == SI-SDR exactly
    n *= np.sqrt((x @ x) / (n @ n) / 10 ** (snr_db / 10))
    assert metrics.si_sdr(x, x + n) == pytest.approx(snr_db, abs=1e-9)
    # Scale invariance: a gain on the degraded signal changes nothing.
    assert metrics.si_sdr(x, 0.3 * (x + n)) == pytest.approx(snr_db, abs=1e-9)


def test_mel_distance_is_the_documented_log_mel_l1(rng):
    x = 0.1 * rng.standard_normal(METRIC_RATE * 2)  # loud in every bin: the floor never binds
    # A gain g moves every log10-mel bin by log10(g) except where the 1e-5 floor binds.
    d = metrics.mel_distance(x, 0.5 * x)
    assert d == pytest.approx(np.log10(2.0), rel=0.01)
    assert metrics.log_mel(x).shape[0] == metrics.MEL_BANDS


def test_bad_pairs_raise_audio_error(rng):
    x = speechlike(rng)
    with pytest.raises(AudioError, match="align them first"):
        metrics.score(x, x[:-1])
    with pytest.raises(AudioError, match="too short"):
        metrics.si_sdr(x[:100], x[:100])
    y = x.copy()
    y[5] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        metrics.stoi(x, y)


def test_silent_reference_gives_nan_pesq_not_a_crash():
    z = np.zeros(METRIC_RATE * 2)
    assert math.isnan(metrics.pesq_wb(z, z))
    assert math.isnan(metrics.si_sdr(z, z))


def test_ci_of_constant_values_has_zero_width():
    ci = mean_ci([2.5] * 10)
    assert (ci.mean, ci.low, ci.high, ci.n) == (2.5, 2.5, 2.5, 10)


def test_ci_matches_the_t_distribution():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    ci = mean_ci(v)
    # t_{0.975, 3} = 3.182446; sd = 1.290994; sem = 0.645497
    assert ci.mean == 2.5
    assert ci.half_width == pytest.approx(3.182446 * 0.645497, rel=1e-5)


def test_ci_leaves_out_non_finite_values():
    ci = mean_ci([1.0, math.nan, 3.0, math.inf])
    assert ci.n == 2 and ci.mean == 2.0
    assert math.isnan(mean_ci([7.0]).low)
    assert mean_ci([]).n == 0
    with pytest.raises(ConfigError):
        mean_ci([1.0, 2.0], confidence=1.5)
