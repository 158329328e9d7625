"""Parquet code shards: schema, atomic writes, finished-shard detection, error records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mimirate.bitstream import unpack_codes
from mimirate.errors import FormatError
from mimirate.tokenize.manifest import plan_shards
from mimirate.tokenize.shards import (
    SCHEMA,
    CodecInfo,
    ItemError,
    ShardRow,
    finished_shard,
    pack_item,
    read_errors,
    shard_record,
    unpack_item,
    write_shard,
)

INFO = CodecInfo("tiny", "0123456789abcdef", 4, 11, 24000, 12.5, 1920)


def _rows(rng: np.random.Generator, first: int, n: int) -> list[tuple[ShardRow, np.ndarray]]:
    out = []
    for k in range(n):
        frames = int(rng.integers(1, 30))
        codes = rng.integers(0, 2048, size=(INFO.levels, frames), dtype=np.uint16)
        row = ShardRow(
            first + k, f"/d/{first + k}.wav", 16000, frames * 1920 - 7, frames, pack_item(codes, 11)
        )
        out.append((row, codes))
    return out


def _plan(n: int = 5):
    files = [f"/d/{i}.wav" for i in range(n)]
    return plan_shards(
        files, model="tiny", weights_hash=INFO.weights_hash, levels=4, shard_files=n
    )[0]


def test_pack_item_round_trip_and_size(rng: np.random.Generator) -> None:
    codes = rng.integers(0, 2048, size=(8, 13), dtype=np.uint16)
    data = pack_item(codes, 11)
    assert len(data) == (8 * 13 * 11 + 7) // 8
    np.testing.assert_array_equal(unpack_item(data, 8, 13, 11), codes)
    # Row-major: the first level's frames come first.
    np.testing.assert_array_equal(unpack_codes(data, 13, 11), codes[0])
    with pytest.raises(FormatError, match="damaged"):
        unpack_item(data[:-1], 8, 13, 11)


def test_write_then_read_shard(tmp_path: Path, rng: np.random.Generator) -> None:
    plan = _plan()
    pairs = _rows(rng, 0, 4)
    errors = [ItemError(4, "/d/4.wav", "cannot read audio")]
    summary = write_shard(tmp_path, plan, INFO, [r for r, _ in reversed(pairs)], errors)
    assert summary.num_items == 4 and summary.num_errors == 1 and summary.num_inputs == 5
    assert summary.num_frames == sum(r.num_frames for r, _ in pairs)

    table = pq.read_table(tmp_path / plan.file_name)
    assert table.schema.remove_metadata() == SCHEMA
    assert table["index"].to_pylist() == [0, 1, 2, 3]  # sorted by corpus index
    assert set(table["model"].to_pylist()) == {"tiny"}
    assert set(table["weights_hash"].to_pylist()) == {INFO.weights_hash}
    for (row, codes), got in zip(pairs, table.to_pylist(), strict=True):
        assert got["duration"] == pytest.approx(row.num_samples / 24000)
        np.testing.assert_array_equal(
            unpack_item(got["codes"], got["levels"], got["num_frames"], 11), codes
        )
    record = shard_record(tmp_path / plan.file_name)
    assert record["shard_id"] == plan.shard_id and record["num_errors"] == 1
    assert read_errors(tmp_path / plan.errors_name) == errors
    assert finished_shard(tmp_path, plan) == summary


def test_results_must_cover_the_shard(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="cover"):
        write_shard(tmp_path, _plan(), INFO, [r for r, _ in _rows(rng, 0, 3)], [])
    assert not (tmp_path / _plan().file_name).exists()


def test_failed_write_leaves_no_file(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_half_then_fail(table, where, **kwargs):  # a disk that fills up mid-write
        where.write(b"PAR1" + b"x" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_shard(tmp_path, _plan(2), INFO, [r for r, _ in _rows(rng, 0, 2)], [])
    assert list((tmp_path / "shards").iterdir()) == []


def test_finished_shard_rejects_what_is_not_a_complete_shard(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    plan = _plan()
    assert finished_shard(tmp_path, plan) is None
    write_shard(
        tmp_path, plan, INFO, [r for r, _ in _rows(rng, 0, 4)], [ItemError(4, "/d/4.wav", "x")]
    )
    # Its errors file lost: the shard is not trusted and will be redone.
    (tmp_path / plan.errors_name).unlink()
    assert finished_shard(tmp_path, plan) is None
    # Garbage under the shard's name.
    (tmp_path / plan.file_name).write_bytes(b"PAR1 garbage")
    assert finished_shard(tmp_path, plan) is None
    with pytest.raises(FormatError):
        shard_record(tmp_path / plan.file_name)
    # A shard of another plan under this name.
    other = plan_shards(
        [f"/d/{i}.wav" for i in range(5)],
        model="tiny",
        weights_hash="f" * 16,
        levels=4,
        shard_files=5,
    )[0]
    write_shard(tmp_path, other, INFO, [r for r, _ in _rows(rng, 0, 5)], [])
    (tmp_path / other.file_name).rename(tmp_path / plan.file_name)
    assert finished_shard(tmp_path, plan) is None


def test_errors_file_format(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    assert read_errors(path) == []
    path.write_text(json.dumps({"index": 3, "path": "/x é.wav", "reason": "bad"}) + "\n")
    assert read_errors(path) == [ItemError(3, "/x é.wav", "bad")]
    path.write_text("{}\n")
    with pytest.raises(FormatError, match=":1:"):
        read_errors(path)
