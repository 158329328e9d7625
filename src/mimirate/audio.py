"""Reading and writing audio: any format libsndfile reads, any rate, mono out.

Input is validated once here so the layers above can trust it: finite float32
samples, one channel, at the rate the codec wants. Problems raise
:class:`~mimirate.errors.AudioError` with a message that says what to do.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mimirate.errors import AudioError
from mimirate.fileio import atomic_write

#: Longest input read in one piece (samples at the source rate, all channels): about
#: 6 hours of 48 kHz stereo. Longer inputs must be streamed; this bounds allocation.
MAX_INPUT_SAMPLES = 2_000_000_000


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples at ``sample_rate``, with where they came from."""

    samples: np.ndarray  # [N] float32
    sample_rate: int
    source_rate: int
    source_channels: int
    clipped_fraction: float  # share of source samples at or beyond full scale

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``[N]`` or ``[N, C]`` (soundfile's layout) to ``[N]`` by averaging channels."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise AudioError(f"expected [samples] or [samples, channels] audio, got {samples.shape}")
    return samples.mean(axis=1)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample ``[N]`` float32 with soxr's high-quality (VHQ) filter."""
    if source_rate <= 0 or target_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    if source_rate == target_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    out = soxr.resample(samples.astype(np.float32, copy=False), source_rate, target_rate, "VHQ")
    return np.asarray(out, dtype=np.float32)


def prepare(samples: np.ndarray, source_rate: int, target_rate: int) -> Audio:
    """Validate, downmix and resample raw samples (``[N]`` or ``[N, C]``)."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "fiu":
        raise AudioError(f"audio samples must be numbers, got dtype {samples.dtype}")
    if samples.dtype.kind in "iu":
        # Integer PCM: scale to [-1, 1) as soundfile does for files.
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float64) - (info.max + info.min + 1) / 2) / (
            (info.max - info.min + 1) / 2
        )
    channels = 1 if samples.ndim == 1 else int(samples.shape[1]) if samples.ndim == 2 else 0
    mono = to_mono(samples).astype(np.float32, copy=False)
    if len(mono) == 0:
        raise AudioError("the audio is empty (0 samples); give at least one sample")
    if not np.all(np.isfinite(mono)):
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise AudioError(f"the audio has {bad} NaN or infinite samples; fix or remove them")
    clipped = float(np.mean(np.abs(mono) >= 1.0))
    out = resample(mono, source_rate, target_rate)
    return Audio(out, target_rate, source_rate, channels, clipped)


def read_audio(source: str | os.PathLike[str] | bytes, target_rate: int) -> Audio:
    """Read a file (wav, flac, ogg, ... anything libsndfile reads) or its bytes.

    Returns mono float32 at ``target_rate``. Raises :class:`AudioError` for a
    missing, unreadable, empty or non-finite input.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    handle: object = io.BytesIO(source) if isinstance(source, bytes) else source
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioError(f"{name}: no such file")
    try:
        with sf.SoundFile(handle) as f:  # type: ignore[arg-type]
            total = f.frames * f.channels
            if total > MAX_INPUT_SAMPLES:
                raise AudioError(
                    f"{name}: {f.frames} frames x {f.channels} channels is too long to read "
                    "at once; split the file or use the streaming API"
                )
            rate = int(f.samplerate)
            data = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{name}: cannot read audio ({e})") from None
    try:
        return prepare(data, rate, target_rate)
    except AudioError as e:
        raise AudioError(f"{name}: {e}") from None


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write ``[N]`` float32 samples as 16-bit PCM WAV, atomically (temp file + rename).

    Samples beyond full scale are clipped, as any 16-bit writer must.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise AudioError(f"write_wav takes mono [N] samples, got shape {samples.shape}")
    pcm = np.clip(samples, -1.0, 1.0)
    with atomic_write(path) as f:
        sf.write(f, pcm, sample_rate, format="WAV", subtype="PCM_16")
