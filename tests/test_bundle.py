"""The Opus data bundle: round trip, integrity checks, and the committed bundle's size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimirate.errors import AudioError, ConfigError
from mimirate.train.bundle import (
    BUNDLE_VERSION,
    MANIFEST,
    build_bundle,
    bundle_bytes,
    read_bundle,
    read_manifest,
)
from mimirate.train.data import DEV_FOLDER

REPO = Path(__file__).resolve().parents[1]


def _speech_like(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    # A vowel-like harmonic series with a slow amplitude envelope.
    x = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 12))
    return (0.2 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "ls").mkdir()
    (tmp_path / "lj").mkdir()
    (tmp_path / DEV_FOLDER).mkdir()
    sf.write(tmp_path / "ls" / "a.flac", _speech_like(16_000, 0.6), 16_000)
    sf.write(tmp_path / "lj" / "b.wav", _speech_like(22_050, 0.4), 22_050)
    sf.write(tmp_path / DEV_FOLDER / "c.flac", _speech_like(16_000, 0.3), 16_000)
    return tmp_path


def test_round_trip(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    m = build_bundle(root, out, folders=("ls", "lj"), compression_level=0.9, progress=False)
    assert [e.source for e in m.entries] == ["lj/b.wav", "ls/a.flac"]
    assert [e.sample_rate for e in m.entries] == [24_000, 16_000]  # Opus rates
    assert read_manifest(out) == m
    clips = read_bundle(out, 24_000, progress=False)
    assert [c.name for c in clips] == ["lj/b.wav", "ls/a.flac"]
    ref = _speech_like(24_000, 0.6)
    got = clips[1].samples
    assert len(got) == len(ref)
    # Lossy but close: Opus at this level keeps the waveform within ~-15 dB.
    err = np.sum((got - ref) ** 2) / np.sum(ref**2)
    assert err < 0.05
    assert bundle_bytes(out) < 0.6 * 16_000 * 2  # far below 16-bit PCM


def test_dev_folder_and_missing_folder_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="evaluation"):
        build_bundle(root, tmp_path / "b1", folders=(DEV_FOLDER,), progress=False)
    with pytest.raises(ConfigError, match="not found"):
        build_bundle(root, tmp_path / "b2", folders=("nope",), progress=False)


def test_corruption_is_detected(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    m = build_bundle(root, out, folders=("ls",), progress=False)
    f = out / m.entries[0].path
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(AudioError, match="checksum"):
        read_bundle(out, 24_000, progress=False)
    (out / MANIFEST).unlink()
    with pytest.raises(ConfigError, match="mimirate train bundle"):
        read_bundle(out, 24_000, progress=False)


def test_malformed_manifest(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"version": BUNDLE_VERSION}))
    with pytest.raises(ConfigError, match="malformed"):
        read_manifest(tmp_path)


def test_committed_bundle_is_small_and_clean() -> None:
    bundle = REPO / "training" / "bundle"
    if not (bundle / MANIFEST).is_file():
        pytest.skip("training/bundle is not in this checkout")
    m = read_manifest(bundle)
    assert len(m.entries) > 100
    assert all(DEV_FOLDER not in e.source for e in m.entries)
    # Bundle + checkpoint + packaged weights + code must fit the 64 MiB a GPU run receives.
    assert bundle_bytes(bundle) < 10 * 2**20
