"""Delay estimation and removal: a delayed copy scores as the original after alignment."""

from __future__ import annotations

import numpy as np
import pytest

from mimirate.errors import AudioError
from mimirate.evaluation import metrics
from mimirate.evaluation.align import align, estimate_delay, shift

RATE = metrics.METRIC_RATE


@pytest.mark.parametrize("delay", [0, 1, 37, 1234, -250])
def test_estimates_a_known_delay(rng, delay):
    x = rng.standard_normal(RATE)
    y = shift(x, -delay, len(x) + 100)  # y[n] = x[n - delay]
    assert estimate_delay(x, y, max_delay=2000) == delay


def test_a_delayed_copy_scores_as_aligned_after_alignment(rng):
    x = rng.standard_normal(2 * RATE) * np.hanning(2 * RATE)
    delayed = np.concatenate([np.zeros(480), x])[: len(x)]
    assert metrics.si_sdr(x, delayed) < 0  # unaligned, the delay reads as distortion
    a = align(x, delayed, max_delay=RATE // 4)
    assert a.delay == 480
    assert len(a.degraded) == len(x)
    # The tail the delay pushed out is lost; the rest matches sample for sample.
    np.testing.assert_array_equal(a.degraded[: len(x) - 480], x[: len(x) - 480])
    assert metrics.si_sdr(a.reference, a.degraded) > 30


def test_search_is_bounded(rng):
    x = rng.standard_normal(RATE)
    y = shift(x, -3000, len(x))
    assert abs(estimate_delay(x, y, max_delay=100)) <= 100


def test_short_output_is_padded_with_silence_and_known_delay_is_used(rng):
    x = rng.standard_normal(1000)
    a = align(x, x[:600], max_delay=0, delay=0)
    assert len(a.degraded) == 1000
    assert not np.any(a.degraded[600:])
    a = align(x, x, max_delay=10, delay=-5)
    np.testing.assert_array_equal(a.degraded[:5], 0)
    np.testing.assert_array_equal(a.degraded[5:], x[:-5])


def test_silence_and_bad_input():
    assert estimate_delay(np.zeros(100), np.ones(100), 10) == 0
    with pytest.raises(AudioError):
        estimate_delay(np.zeros(0), np.ones(10), 10)
    with pytest.raises(AudioError):
        estimate_delay(np.ones(10), np.ones(10), -1)


def test_finds_the_delay_of_a_phase_blind_vocoder(rng):
    """Codec 2 keeps the spectral envelope, not the waveform: re-synthesise a harmonic
    signal with random phases, delay it 320 samples, and the delay is still found."""
    from scipy import signal as sig

    t = np.arange(3 * RATE) / RATE
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * (np.sin(2 * np.pi * 2 * t) > 0)
    _, _, z = sig.stft(x, nperseg=256)
    z = np.abs(z) * np.exp(2j * np.pi * rng.random(z.shape))
    _, y = sig.istft(z, nperseg=256)
    y = shift(y, -320, len(x))
    assert abs(estimate_delay(x, y, max_delay=RATE // 4) - 320) <= 32
