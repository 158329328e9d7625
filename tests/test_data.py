"""Training data: the evaluation folder is never read; crops are deterministic and bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimirate.errors import ConfigError
from mimirate.train.data import (
    DEV_FOLDER,
    Augmentation,
    Clip,
    CropSampler,
    check_not_dev,
    list_audio_files,
    load_clips,
    split_holdout,
    training_folders,
)


def _tree(root: Path) -> Path:
    for folder in ("a", DEV_FOLDER, "b/sub"):
        (root / folder).mkdir(parents=True)
    tone = (0.1 * np.sin(np.arange(1600) * 0.1)).astype(np.float32)
    sf.write(root / "a" / "x.wav", tone, 16_000)
    sf.write(root / "b" / "sub" / "y.flac", tone, 8_000)
    sf.write(root / DEV_FOLDER / "dev.flac", tone, 16_000)
    (root / "a" / "notes.txt").write_text("not audio")
    return root


def test_training_folders_exclude_dev(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    folders = training_folders(root)
    assert [f.name for f in folders] == ["a", "b"]
    files = list_audio_files(folders)
    assert [f.name for f in files] == ["x.wav", "y.flac"]
    assert all(DEV_FOLDER not in f.parts for f in files)


def test_dev_folder_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ConfigError, match="kept for evaluation"):
        list_audio_files([root / DEV_FOLDER])
    with pytest.raises(ConfigError):
        check_not_dev(root / DEV_FOLDER / "dev.flac")
    with pytest.raises(ConfigError, match="not found"):
        training_folders(tmp_path / "missing")


def test_real_training_folders_skip_dev(shared_data: Path) -> None:
    folders = training_folders(shared_data / "speech")
    assert DEV_FOLDER not in [f.name for f in folders]
    assert len(folders) >= 2


def test_load_clips_resamples(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    clips = load_clips(list_audio_files(training_folders(root)), 24_000, root, progress=False)
    assert [c.name for c in clips] == ["a/x.wav", "b/sub/y.flac"]
    assert len(clips[0].samples) == 2400  # 0.1 s at 16 kHz -> 24 kHz
    assert len(clips[1].samples) == 4800  # 0.2 s at 8 kHz
    assert all(c.samples.dtype == np.float32 for c in clips)


def _clips() -> list[Clip]:
    rng = np.random.default_rng(0)
    return [
        Clip("long", (0.3 * rng.standard_normal(5000)).astype(np.float32)),
        Clip("short", (0.3 * rng.standard_normal(300)).astype(np.float32)),
    ]


def test_sampler_shapes_bounds_and_state() -> None:
    s = CropSampler(_clips(), segment=1000, batch_size=4, seed=3, augmentation=Augmentation())
    b = s.batch()
    assert b.shape == (4, 1, 1000) and b.dtype == np.float32
    assert np.abs(b).max() <= 0.99 + 1e-6
    state = s.state()
    again = [s.batch() for _ in range(3)]
    s.set_state(state)
    replay = [s.batch() for _ in range(3)]
    for a, r in zip(again, replay, strict=True):
        np.testing.assert_array_equal(a, r)


def test_sampler_pads_short_clips_and_applies_gain() -> None:
    clip = Clip("c", np.full(100, 0.1, dtype=np.float32))
    aug = Augmentation(gain_db=(-6.0, -6.0), noise_probability=0.0)
    crop = CropSampler([clip], segment=400, batch_size=1, seed=0, augmentation=aug).crop()
    nonzero = crop[crop != 0]
    assert len(nonzero) == 100
    np.testing.assert_allclose(nonzero, 0.1 * 10 ** (-6 / 20), rtol=1e-5)


def test_sampler_rejects_empty() -> None:
    with pytest.raises(ConfigError):
        CropSampler([], segment=10, batch_size=1, seed=0)


def test_split_holdout_is_deterministic_and_disjoint() -> None:
    clips = [Clip(str(i), np.zeros(10, np.float32)) for i in range(10)]
    train, held = split_holdout(clips, 3, seed=1)
    _, held2 = split_holdout(clips, 3, seed=1)
    assert [c.name for c in held] == [c.name for c in held2]
    assert len(train) == 7 and len(held) == 3
    assert not {c.name for c in train} & {c.name for c in held}
    with pytest.raises(ConfigError):
        split_holdout(clips, 10, seed=1)
