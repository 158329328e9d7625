"""Packaging a run for load_codec, and the shipped default model's quality floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mimirate.audio import read_audio
from mimirate.models.loading import load_codec
from mimirate.train.data import DEV_FOLDER, Clip
from mimirate.train.losses import mel_distance
from mimirate.train.package import package_run
from mimirate.train.trainer import TrainConfig, Trainer

#: Mel distance (train/losses.py) of the packaged `small` model at 32 levels on the first
#: 3 s of 1688-142285-0000.flac: measured 0.399 (step 57800; 0.414 at step 47800, 0.419 at
#: step 41900, 0.432 at step 34900, 0.446 at step 31000, 0.506 at step 21800, 0.528 at step
#: 15800, 0.672 at step 11100, 0.804 at step 5700, 0.987 at step 2100); the first session's
#: collapsed model gave 1.26 and random weights of the same preset give 1.64. A broken,
#: untrained or collapsed package cannot pass, nor one from step 34900 or before.
SMALL_MEL_FLOOR = 0.43


def test_package_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(model="tiny", steps=0, validate_every=0, holdout_clips=0)
    clip = Clip("c", np.zeros(24_000, np.float32))
    trainer = Trainer(cfg, [clip], [], tmp_path / "run", progress=False)
    trainer.save()
    trainer.save_best({"val_mel_8": 1.0})
    info = package_run(tmp_path / "run", tmp_path / "pkg")
    assert info["model"] == "tiny" and info["step"] == 0
    assert (tmp_path / "pkg" / "PROVENANCE.md").is_file()
    codec = load_codec(path=tmp_path / "pkg")
    assert codec.name == "tiny" and codec.num_levels == 32
    x = (0.1 * np.sin(np.arange(3840) * 0.05)).astype(np.float32)
    assert codec.decode(codec.encode(x).codes).shape == (3840,)


def test_packaged_small_reconstructs_dev_speech(shared_data: Path) -> None:
    codec = load_codec("small")
    assert codec.name == "small" and codec.cardinality == 2048 and codec.num_levels == 32
    f = shared_data / "speech" / DEV_FOLDER / "1688" / "1688-142285-0000.flac"
    x = read_audio(f, 24_000).samples[: 3 * 24_000]
    y = codec.decode(codec.encode(x).codes)[: len(x)]
    mel = float(
        mel_distance(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None], 24_000)[0]
    )
    assert mel < SMALL_MEL_FLOOR


def test_packaged_small_is_under_size_budget() -> None:
    from mimirate.models.loading import ASSETS_DIR

    directory = ASSETS_DIR / "small"
    if not (directory / "manifest.json").is_file():
        pytest.fail("the default model's packaged weights are missing from mimirate/assets/small")
    assert sum(p.stat().st_size for p in directory.iterdir()) < 40 * 10**6


def test_the_committed_eval_baseline_is_of_the_packaged_weights() -> None:
    """training/eval-small-HASH.json is what `mimirate compare` measures new checkpoints
    against: repackaging the model without re-running it leaves a stale baseline."""
    import json

    from mimirate.evaluation.compare import read_eval_json
    from mimirate.models.loading import ASSETS_DIR

    weights_hash = json.loads((ASSETS_DIR / "small" / "manifest.json").read_text())["weights_hash"]
    training = Path(__file__).resolve().parents[1] / "training"
    baselines = sorted(training.glob("eval-small-*.json"))
    assert [p.name for p in baselines] == [f"eval-small-{weights_hash}.json"]
    rows = read_eval_json(baselines[0])
    assert {p for p, _ in rows} >= {"mimi-8", "mimi-32"} and len(rows) >= 100
