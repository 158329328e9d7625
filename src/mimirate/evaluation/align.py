"""Remove a codec's delay before scoring.

Every codec delays its output: Mimi by its causal convolutions, Opus by its
look-ahead (opusdec removes the pre-skip, not necessarily all of it), Codec 2 by
its analysis window. Metrics that compare sample by sample (SI-SDR, mel distance,
STOI) would charge that delay as distortion, so the harness finds the delay and
shifts the degraded signal back, within a bounded range of lags.

Waveform cross-correlation alone fails on vocoders: Codec 2 does not keep the
waveform's phase, and its correlation peak lands anywhere within ±30 ms (STOI then
drops by up to 0.3). So the delay is found in two steps: the lag that best matches
the two log-magnitude spectrograms (2 ms resolution; phase-blind, so it works for
vocoders and waveform codecs alike), then the waveform cross-correlation peak within
one spectrogram hop of it (sample-exact where the codec keeps the waveform).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import signal

from mimirate.errors import AudioError

#: Largest delay searched by default, in seconds: well above any codec here (Mimi's
#: ~80 ms frame, Opus's 6.5 ms look-ahead, Codec 2's ~20-40 ms).
DEFAULT_MAX_DELAY_S = 0.25


class Aligned(NamedTuple):
    """A reference and a degraded signal of the same length, the delay removed."""

    reference: np.ndarray  # [N] as given
    degraded: np.ndarray  # [N] degraded[n + delay], zero where that is out of range
    delay: int  # samples the degraded signal lagged the reference (negative: it led)


#: Spectrogram used for the coarse step: 512-point frames (32 ms at 16 kHz), hop 32 (2 ms).
SPEC_FFT = 512
SPEC_HOP = 32


def _log_spectrogram(x: np.ndarray) -> np.ndarray:
    """``[F, frames]`` log magnitude, each bin's mean over time removed."""
    _, _, z = signal.stft(
        x, nperseg=SPEC_FFT, noverlap=SPEC_FFT - SPEC_HOP, boundary=None, padded=False
    )
    s = np.log(np.abs(z) + 1e-4)
    return s - s.mean(axis=1, keepdims=True)


def _best_lag(corr: np.ndarray, lags: np.ndarray, lo: int, hi: int) -> int:
    """The lag in ``[lo, hi]`` with the highest correlation (the smallest on ties)."""
    in_range = (lags >= lo) & (lags <= hi)
    return int(lags[in_range][np.argmax(corr[in_range])])


def estimate_delay(reference: np.ndarray, degraded: np.ndarray, max_delay: int) -> int:
    """The delay ``d`` in ``[-max_delay, max_delay]`` such that ``deg[n + d] ~ ref[n]``.

    Coarse: the lag (in hops of :data:`SPEC_HOP`) maximising the correlation of the
    log spectrograms summed over frequency. Fine: the lag maximising
    ``sum ref[n] * deg[n + d]`` within one hop of that.

    Args:
        reference: ``[N]`` samples.
        degraded: ``[M]`` samples at the same rate (any length).
        max_delay: largest ``|d|`` searched, in samples.

    Returns:
        The delay in samples; 0 when either signal is silent. Ties go to the smallest
        lag, so the answer is deterministic.
    """
    ref = np.asarray(reference, dtype=np.float64)
    deg = np.asarray(degraded, dtype=np.float64)
    if ref.ndim != 1 or deg.ndim != 1 or len(ref) == 0 or len(deg) == 0:
        raise AudioError(f"alignment takes non-empty [N] signals, got {ref.shape}, {deg.shape}")
    if max_delay < 0:
        raise AudioError(f"max_delay must be >= 0, got {max_delay}")
    if not (np.any(ref) and np.any(deg)):
        return 0
    lo, hi = -max_delay, max_delay
    if min(len(ref), len(deg)) >= 4 * SPEC_FFT:
        a, b = _log_spectrogram(ref), _log_spectrogram(deg)
        n = a.shape[1] + b.shape[1] - 1
        nfft = 1 << (n - 1).bit_length()
        # Cross-correlation along time of every bin at once, summed over bins.
        spectrum = np.fft.rfft(b, nfft, axis=1) * np.conj(np.fft.rfft(a, nfft, axis=1))
        corr = np.fft.irfft(spectrum.sum(axis=0), nfft)
        lags = np.arange(nfft)
        lags[lags > nfft // 2] -= nfft
        coarse = _best_lag(corr, lags, -(max_delay // SPEC_HOP), max_delay // SPEC_HOP) * SPEC_HOP
        lo, hi = max(lo, coarse - SPEC_HOP), min(hi, coarse + SPEC_HOP)
    # O(N log N) by FFT; only the lags in range are looked at.
    corr = signal.correlate(deg, ref, mode="full", method="fft")
    lags = signal.correlation_lags(len(deg), len(ref), mode="full")
    return _best_lag(corr, lags, lo, hi)


def shift(degraded: np.ndarray, delay: int, length: int) -> np.ndarray:
    """``out[n] = degraded[n + delay]`` for ``n < length``, zero outside ``degraded``."""
    deg = np.asarray(degraded)
    out = np.zeros(length, dtype=deg.dtype)
    src_start = max(delay, 0)
    dst_start = max(-delay, 0)
    count = min(len(deg) - src_start, length - dst_start)
    if count > 0:
        out[dst_start : dst_start + count] = deg[src_start : src_start + count]
    return out


def align(
    reference: np.ndarray, degraded: np.ndarray, max_delay: int, delay: int | None = None
) -> Aligned:
    """Shift ``degraded`` by its delay and cut or zero-pad it to the reference's length.

    The reference is kept whole: a degraded signal that ends early is scored as
    silence over the missing part.

    Args:
        reference: ``[N]`` samples.
        degraded: ``[M]`` samples at the same rate.
        max_delay: bound of the delay search, in samples.
        delay: a known delay to apply instead of estimating one.
    """
    ref = np.asarray(reference)
    if delay is None:
        delay = estimate_delay(ref, degraded, max_delay)
    return Aligned(ref, shift(degraded, delay, len(ref)), delay)
