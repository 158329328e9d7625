from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimirate.audio import prepare, read_audio, resample, to_mono, write_wav
from mimirate.errors import AudioError, MimirateError

CLIP = Path(__file__).resolve().parents[1] / "src/mimirate/assets/clips/LJ001-0001.flac"


def tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_reads_formats_and_resamples(tmp_path: Path, fmt: str, subtype: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, tone(16_000, 1.0), 16_000, format=fmt, subtype=subtype)
    audio = read_audio(path, 24_000)
    assert audio.sample_rate == 24_000 and audio.source_rate == 16_000
    assert audio.samples.dtype == np.float32
    assert abs(len(audio.samples) - 24_000) <= 1
    # The resampled tone keeps its frequency: the spectrum peaks at 440 Hz.
    segment = audio.samples[:24_000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 24_000 / len(segment)
    assert abs(peak_hz - 440) <= 2


def test_stereo_is_downmixed(tmp_path: Path) -> None:
    left, right = tone(24_000, 0.5, 300), tone(24_000, 0.5, 700)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 24_000, subtype="FLOAT")
    audio = read_audio(path, 24_000)
    assert audio.source_channels == 2
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-6)


def test_reads_bytes_and_bundled_clip() -> None:
    audio = read_audio(CLIP.read_bytes(), 24_000)
    assert 9.5 < audio.duration < 9.8
    assert 0.01 < float(np.sqrt(np.mean(audio.samples**2))) < 0.5


def test_resample_identity_and_empty() -> None:
    x = tone(24_000, 0.1)
    assert resample(x, 24_000, 24_000) is not None
    np.testing.assert_array_equal(resample(x, 24_000, 24_000), x)
    assert len(resample(np.zeros(0, np.float32), 16_000, 24_000)) == 0
    with pytest.raises(AudioError):
        resample(x, 0, 24_000)


def test_integer_pcm_is_scaled() -> None:
    pcm = np.array([0, 16384, -32768], dtype=np.int16)
    audio = prepare(pcm, 24_000, 24_000)
    np.testing.assert_allclose(audio.samples, [0.0, 0.5, -1.0])


def test_clipped_fraction_is_reported() -> None:
    x = np.array([0.0, 1.0, -1.5, 0.2], dtype=np.float32)
    assert prepare(x, 24_000, 24_000).clipped_fraction == 0.5


@pytest.mark.parametrize(
    "samples,match",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
        (np.zeros((2, 2, 2), np.float32), "expected"),
        (np.array(["a"]), "numbers"),
    ],
)
def test_bad_samples_raise_audio_error(samples: np.ndarray, match: str) -> None:
    with pytest.raises(AudioError, match=match):
        prepare(samples, 24_000, 24_000)


def test_missing_corrupt_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "missing.wav", 24_000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(AudioError, match="cannot read"):
        read_audio(corrupt, 24_000)
    with pytest.raises(MimirateError):
        read_audio(b"not audio at all", 24_000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 24_000)
    with pytest.raises(AudioError, match="empty"):
        read_audio(empty, 24_000)


def test_very_short_input_is_kept() -> None:
    audio = prepare(np.array([0.1], np.float32), 24_000, 24_000)
    assert audio.samples.shape == (1,)


def test_write_wav_is_atomic_and_clips(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.wav"
    write_wav(out, np.array([0.0, 2.0, -2.0, 0.5], np.float32), 24_000)
    data, rate = sf.read(out, dtype="float32")
    assert rate == 24_000
    np.testing.assert_allclose(data, [0.0, 1.0, -1.0, 0.5], atol=1e-4)
    with pytest.raises(AudioError):
        write_wav(tmp_path / "bad.wav", np.zeros((2, 3), np.float32), 24_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.wav"]


def test_to_mono_rejects_zero_channels() -> None:
    with pytest.raises(AudioError):
        to_mono(np.zeros((10, 0), np.float32))
