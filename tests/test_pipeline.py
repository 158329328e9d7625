"""The tokenization job on a real local Ray cluster (loopback only) and in one process."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mimirate import load_codec, read_audio
from mimirate.errors import ConfigError
from mimirate.tokenize.loader import iter_items
from mimirate.tokenize.manifest import read_manifest
from mimirate.tokenize.pipeline import (
    CodecSpec,
    Encoder,
    TokenizeOptions,
    read_batch,
    tokenize,
)
from mimirate.tokenize.shards import read_errors

ray = pytest.importorskip("ray")

SPEC = CodecSpec(model="tiny", random_init=True, seed=0)
LEVELS = 8
# Small enough that the 3 s clip goes through the stream encoder and the others share
# padded batches of mixed lengths.
OPTIONS = TokenizeOptions(levels=LEVELS, batch_seconds=2.0, shard_files=3, progress=False)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: starting it is the slow part."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=200 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven short clips (rates, formats, stereo, a nested folder) and one corrupt file."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    rng = np.random.default_rng(7)
    clips = [
        ("a.wav", 16000, 0.5, 1),
        ("b.flac", 24000, 1.3, 1),
        ("c.wav", 44100, 0.2, 2),
        ("sub/d.flac", 22050, 0.9, 1),
        ("sub/e.wav", 16000, 0.05, 1),
        ("sub/f.ogg", 24000, 3.0, 1),  # longer than a batch
        ("g.wav", 24000, 0.08, 1),  # exactly one frame
    ]
    for name, rate, seconds, channels in clips:
        x = 0.1 * rng.standard_normal((int(rate * seconds), channels)).astype(np.float32)
        sf.write(root / name, x, rate)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(40))
    return root


@pytest.fixture(scope="module")
def codec():
    return load_codec("tiny", random_init=True, seed=0)


@pytest.fixture(scope="module")
def ray_output(ray_cluster, corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("tokens")
    return out, tokenize(corpus, out, SPEC, OPTIONS)


def test_ray_codes_equal_direct_encode(ray_output, corpus: Path, codec) -> None:
    out, result = ray_output
    assert result.backend == "ray-session"
    assert (result.shards_total, result.shards_written, result.shards_skipped) == (3, 3, 0)
    assert (result.files_encoded, result.files_failed) == (7, 1)
    items = list(iter_items(out))
    assert len(items) == 7
    for item in items:
        audio = read_audio(item.path, codec.sample_rate)
        expected = codec.encode(audio.samples, levels=LEVELS).codes
        assert item.num_samples == len(audio.samples)
        assert item.source_rate == audio.source_rate
        np.testing.assert_array_equal(item.codes, expected, err_msg=item.path)
    manifest = read_manifest(out)
    assert manifest.model == "tiny" and manifest.weights_hash == codec.weights_hash.hex()
    assert manifest.levels == LEVELS and manifest.num_items == 7
    assert manifest.num_frames == sum(it.num_frames for it in items)


def test_corrupt_file_lands_in_errors_table(ray_output, corpus: Path) -> None:
    out, _ = ray_output
    errors = read_errors(out / "errors.jsonl")
    assert [e.path for e in errors] == [str(corpus / "corrupt.wav")]
    assert "cannot read audio" in errors[0].reason
    assert read_manifest(out).num_errors == 1


def test_rerun_does_nothing(ray_output, corpus: Path) -> None:
    out, first = ray_output
    stamps = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = tokenize(corpus, out, SPEC, OPTIONS)
    assert (again.shards_written, again.shards_skipped, again.files_encoded) == (0, 3, 0)
    assert again.backend == "none"
    assert again.manifest == first.manifest
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == stamps


def test_resume_in_process_rewrites_only_the_missing_shard(
    ray_output, corpus: Path, tmp_path: Path
) -> None:
    out, first = ray_output
    copy = tmp_path / "tokens"
    (copy / "shards").mkdir(parents=True)
    for p in (out / "shards").iterdir():
        (copy / "shards" / p.name).write_bytes(p.read_bytes())
    lost = copy / first.manifest.shards[1].file
    ray_table = pq.read_table(lost)
    lost.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (copy / "shards").glob("*.parquet")}
    again = tokenize(corpus, copy, SPEC, replace(OPTIONS, ray="none"))
    assert again.backend == "in-process"
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    assert (again.files_encoded, again.files_failed) == (2, 1)  # shard 1 holds corrupt.wav
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # Without Ray, the same codes, byte for byte.
    assert pq.read_table(lost).equals(ray_table)
    assert again.manifest == first.manifest


def test_encoder_buckets_by_length_within_the_batch_budget(codec) -> None:
    encoder = Encoder(SPEC, LEVELS, batch_seconds=0.4, codec=codec)  # 5 frames
    frame = codec.frame_size
    lengths = {0: 4 * frame, 1: 1, 2: 2 * frame + 1, 3: frame, 4: 9 * frame}
    groups = list(encoder.groups(list(lengths), lengths))
    assert [i for g in groups for i in g] == [1, 3, 2, 0, 4]  # shortest first
    for g in groups:
        padded = max(-(-lengths[i] // frame) for i in g) * frame
        assert len(g) == 1 or len(g) * padded <= encoder.batch_samples


def test_zero_batch_seconds_encodes_each_file_alone(codec) -> None:
    encoder = Encoder(SPEC, LEVELS, batch_seconds=0, codec=codec)
    lengths = {0: 5, 1: 3 * codec.frame_size, 2: 40 * codec.frame_size}
    assert list(encoder.groups(list(lengths), lengths)) == [[0], [1], [2]]
    signal = 0.1 * np.random.default_rng(3).standard_normal(lengths[2]).astype(np.float32)
    (codes,) = encoder.encode_group([signal])  # whole, not through the stream encoder
    np.testing.assert_array_equal(codes, codec.encode(signal, levels=LEVELS).codes)


def test_read_batch_turns_failures_into_records(corpus: Path) -> None:
    paths = [str(corpus / "a.wav"), str(corpus / "missing.wav")]
    out = read_batch({"index": [0, 1], "shard": [0, 0], "path": paths}, 24000)
    assert out["error"][0] == "" and out["num_samples"][0] == 12000
    assert len(out["audio"][0]) == 4 * 12000 and out["source_rate"][0] == 16000
    assert "no such file" in out["error"][1] and out["audio"][1] == b""


def test_bad_settings_are_config_errors(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="levels"):
        tokenize(corpus, tmp_path, SPEC, TokenizeOptions(levels=33, ray="none"))
    with pytest.raises(ConfigError, match="batch-seconds"):
        tokenize(corpus, tmp_path, SPEC, TokenizeOptions(batch_seconds=-1, ray="none"))
    with pytest.raises(ConfigError, match="device"):
        tokenize(corpus, tmp_path, CodecSpec("tiny", device="tpu", random_init=True))
    assert not os.listdir(tmp_path)


def test_manifest_file_is_json_with_totals(ray_output) -> None:
    out, _ = ray_output
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["totals"]["items"] == 7 and doc["totals"]["errors"] == 1
    assert doc["errors_file"] == "errors.jsonl"
