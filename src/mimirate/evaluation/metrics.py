"""Speech quality metrics, and means with confidence intervals.

Every metric compares a reference with a degraded signal that has already been
aligned to it (see :mod:`mimirate.evaluation.align`): both ``[N]`` float mono at
:data:`METRIC_RATE` (16 kHz), the rate PESQ wideband and ViSQOL speech mode are
defined at; STOI resamples to 10 kHz inside itself. Callers resample with soxr.

- PESQ wideband (ITU-T P.862.2, the ``pesq`` package): MOS-LQO, 1.04 .. 4.64.
- STOI (``pystoi``, classic, not extended): 0 .. 1.
- ViSQOL v3 speech mode (``visqol-python``, the deep-lattice mapping of Google's
  ViSQOL 3.3.3 default): MOS-LQO, 1 .. 5 (4.3-4.5 for identical speech).
- Mel distance: the mean, over 80 mel bands and all frames, of the absolute
  difference of ``log10(mel + 1e-5)`` where ``mel`` is the magnitude (power 1)
  mel spectrogram (librosa, Slaney scale, 0-8 kHz, 1024-point FFT, Hann window of
  1024, hop 256 = 16 ms). 0 for identical signals, lower is better.
- SI-SDR (Le Roux et al. 2019), dB, with both signals made zero-mean; ``+inf``
  for identical signals.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mimirate.errors import AudioError, ConfigError

#: The rate every metric runs at.
METRIC_RATE = 16000

#: Mel distance parameters (see the module docstring).
MEL_BANDS = 80
MEL_FFT = 1024
MEL_HOP = 256
MEL_FLOOR = 1e-5

#: Shortest signal scored: PESQ needs a quarter second, STOI 30 frames of 25.6 ms at 10 kHz.
MIN_SAMPLES = METRIC_RATE


@dataclass(frozen=True)
class MetricInfo:
    """How to read one metric."""

    name: str  # field name in MetricScores
    label: str  # for tables and plot axes
    higher_is_better: bool


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("pesq_wb", "PESQ-WB (MOS)", True),
    MetricInfo("stoi", "STOI", True),
    MetricInfo("visqol", "ViSQOL speech (MOS)", True),
    MetricInfo("mel_distance", "mel distance (log10, L1)", False),
    MetricInfo("si_sdr", "SI-SDR (dB)", True),
)


class MetricScores(NamedTuple):
    """All metrics for one (reference, degraded) pair. NaN where a metric is undefined
    (PESQ finds no speech in the reference)."""

    pesq_wb: float
    stoi: float
    visqol: float
    mel_distance: float
    si_sdr: float


def _check_pair(reference: np.ndarray, degraded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    deg = np.asarray(degraded, dtype=np.float64)
    if ref.ndim != 1 or deg.ndim != 1:
        raise AudioError(f"metrics take mono [N] signals, got {ref.shape} and {deg.shape}")
    if ref.shape != deg.shape:
        raise AudioError(
            f"reference and degraded differ in length ({len(ref)} vs {len(deg)}); "
            "align them first (mimirate.evaluation.align.align)"
        )
    if len(ref) < MIN_SAMPLES:
        raise AudioError(
            f"signals of {len(ref)} samples are too short to score; give at least "
            f"{MIN_SAMPLES} samples ({MIN_SAMPLES / METRIC_RATE:.0f} s at {METRIC_RATE} Hz)"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(deg))):
        raise AudioError("signals to score contain NaN or infinite samples")
    return ref, deg


def pesq_wb(reference: np.ndarray, degraded: np.ndarray) -> float:
    """PESQ wideband MOS-LQO of ``[N]`` signals at 16 kHz; NaN if the reference has no speech."""
    from pesq import NoUtterancesError, pesq

    ref, deg = _check_pair(reference, degraded)
    if not np.any(ref):
        return math.nan
    try:
        return float(pesq(METRIC_RATE, ref, deg, "wb"))
    except NoUtterancesError:
        return math.nan


def stoi(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Classic STOI (0..1) of ``[N]`` signals at 16 kHz."""
    from pystoi import stoi as _stoi

    ref, deg = _check_pair(reference, degraded)
    return float(_stoi(ref, deg, METRIC_RATE, extended=False))


_visqol_api = None  # one per process: building the lattice model costs ~0.1 s


def _visqol() -> object:
    global _visqol_api
    if _visqol_api is None:
        # numba parallelises ViSQOL's inner loops; one thread per worker process, since
        # the harness parallelises over processes.
        os.environ.setdefault("NUMBA_NUM_THREADS", "1")
        # visqol logs a warning per call for 16 kHz input in speech mode and for length
        # mismatches: both expected here.
        logging.getLogger("visqol").setLevel(logging.ERROR)
        try:
            from visqol import VisqolApi

            api = VisqolApi()
            api.create(mode="speech", use_lattice_model=True)
        except ImportError as e:
            raise ConfigError(
                f"ViSQOL's lattice model needs ai-edge-litert ({e}); install the evaluation "
                "extras: .venv/bin/pip install -e '.[eval]'"
            ) from None
        _visqol_api = api
    return _visqol_api


def visqol(reference: np.ndarray, degraded: np.ndarray) -> float:
    """ViSQOL v3 speech-mode MOS-LQO (lattice mapping) of ``[N]`` signals at 16 kHz.

    The first call in a process compiles numba kernels (cached on disk afterwards).
    """
    ref, deg = _check_pair(reference, degraded)
    api = _visqol()
    result = api.measure_from_arrays(ref, deg, METRIC_RATE)  # type: ignore[attr-defined]
    return float(result.moslqo)


def log_mel(samples: np.ndarray) -> np.ndarray:
    """``log10(mel + 1e-5)`` of ``[N]`` samples at 16 kHz -> ``[80, frames]`` float64."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=np.asarray(samples, dtype=np.float64),
        sr=METRIC_RATE,
        n_fft=MEL_FFT,
        hop_length=MEL_HOP,
        win_length=MEL_FFT,
        window="hann",
        center=True,
        power=1.0,
        n_mels=MEL_BANDS,
        fmin=0.0,
        fmax=METRIC_RATE / 2,
    )
    return np.log10(mel + MEL_FLOOR)


def mel_distance(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Mean absolute log10-mel difference (80 bands) of ``[N]`` signals at 16 kHz; 0 is ideal."""
    ref, deg = _check_pair(reference, degraded)
    return float(np.mean(np.abs(log_mel(ref) - log_mel(deg))))


def si_sdr(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Scale-invariant SDR in dB of ``[N]`` signals; ``+inf`` when they are identical.

    The reference is scaled to best fit the degraded signal (both zero-mean); the
    rest of the degraded signal is the distortion.
    """
    ref, deg = _check_pair(reference, degraded)
    ref = ref - ref.mean()
    deg = deg - deg.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy == 0.0:
        return math.nan  # a silent reference has no target to measure against
    target = (np.dot(deg, ref) / ref_energy) * ref
    noise = deg - target
    noise_energy = float(np.dot(noise, noise))
    if noise_energy == 0.0:
        return math.inf
    return float(10.0 * np.log10(float(np.dot(target, target)) / noise_energy))


def score(reference: np.ndarray, degraded: np.ndarray) -> MetricScores:
    """Every metric for aligned ``[N]`` signals at 16 kHz (see the module docstring)."""
    ref, deg = _check_pair(reference, degraded)
    return MetricScores(
        pesq_wb=pesq_wb(ref, deg),
        stoi=stoi(ref, deg),
        visqol=visqol(ref, deg),
        mel_distance=mel_distance(ref, deg),
        si_sdr=si_sdr(ref, deg),
    )


class MeanCI(NamedTuple):
    """A mean with its two-sided confidence interval (t-distribution) over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: np.ndarray | list[float], confidence: float = 0.95) -> MeanCI:
    """Mean of the finite values and its ``confidence`` interval from Student's t.

    NaN and infinite values are left out (``n`` counts the rest). With one value the
    interval is undefined (NaN bounds); with none everything is NaN.
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1)
    sem = float(v.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    return MeanCI(mean, mean - half, mean + half, n)
