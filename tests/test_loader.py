"""Reading code shards back with mimirate.tokenize.loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mimirate.errors import ConfigError, FormatError
from mimirate.tokenize.loader import get_item, iter_items, row_codes, shard_paths
from mimirate.tokenize.manifest import Manifest, plan_shards
from mimirate.tokenize.shards import CodecInfo, ItemError, ShardRow, pack_item, write_shard

INFO = CodecInfo("tiny", "0123456789abcdef", 6, 11, 24000, 12.5, 1920)


@pytest.fixture
def corpus(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, dict[int, np.ndarray]]:
    """Two shards of 3 files; file 4 failed. Returns the folder and the codes by index."""
    files = [f"/data/spk{i % 2}/utt{i // 2}.flac" for i in range(6)]
    plans = plan_shards(
        files, model="tiny", weights_hash=INFO.weights_hash, levels=6, shard_files=3
    )
    codes: dict[int, np.ndarray] = {}
    summaries = []
    for plan in plans:
        rows, errors = [], []
        for k, path in enumerate(plan.files):
            index = plan.first_index + k
            if index == 4:
                errors.append(ItemError(index, path, "cannot read audio"))
                continue
            frames = 3 + index
            codes[index] = rng.integers(0, 2048, (6, frames), dtype=np.uint16)
            rows.append(
                ShardRow(
                    index, path, 16000, frames * 1920 - 100, frames, pack_item(codes[index], 11)
                )
            )
        summaries.append(write_shard(tmp_path, plan, INFO, rows, errors))
    manifest = Manifest(
        "tiny",
        INFO.weights_hash,
        6,
        11,
        24000,
        12.5,
        1920,
        "/data",
        3,
        tuple(summaries),
        "errors.jsonl",
    )
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    return tmp_path, codes


def test_iter_items_yields_every_item_in_order(corpus) -> None:
    root, codes = corpus
    items = list(iter_items(root))
    assert [it.index for it in items] == [0, 1, 2, 3, 5]
    for it in items:
        np.testing.assert_array_equal(it.codes, codes[it.index])
        assert it.codes.dtype == np.uint16
        assert it.num_frames == -(-it.num_samples // 1920)
        assert it.source_rate == 16000
        assert it.duration == pytest.approx(it.num_samples / 24000)


def test_levels_cut_and_torch(corpus) -> None:
    root, codes = corpus
    item = next(iter_items(root, levels=2))
    np.testing.assert_array_equal(item.codes, codes[0][:2])
    t = item.torch_codes()
    assert tuple(t.shape) == (2, codes[0].shape[1]) and str(t.dtype) == "torch.int64"
    np.testing.assert_array_equal(t.numpy(), codes[0][:2])
    with pytest.raises(ConfigError, match=r"1\.\.6"):
        next(iter_items(root, levels=7))


def test_get_item_by_index_path_and_suffix(corpus) -> None:
    root, codes = corpus
    np.testing.assert_array_equal(get_item(root, 3).codes, codes[3])
    np.testing.assert_array_equal(get_item(root, "5").codes, codes[5])
    assert get_item(root, "/data/spk1/utt0.flac").index == 1
    assert get_item(root, "spk0/utt1.flac").index == 2
    assert get_item(root, "spk0/utt0.flac", levels=1).codes.shape == (1, 3)
    with pytest.raises(ConfigError, match="failed to encode"):
        get_item(root, 4)
    with pytest.raises(ConfigError, match="no item 6"):
        get_item(root, 6)
    with pytest.raises(ConfigError, match="2 items match"):
        get_item(root, "utt0.flac")
    with pytest.raises(ConfigError, match="no item whose path"):
        get_item(root, "utt9.flac")


def test_shards_read_by_other_tools(corpus) -> None:
    root, codes = corpus
    paths = shard_paths(root)
    assert [p.name.split("-")[1] for p in paths] == ["00000", "00001"]
    for row in pq.read_table(paths).to_pylist():
        np.testing.assert_array_equal(row_codes(row), codes[row["index"]])


def test_not_a_token_folder(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no manifest"):
        list(iter_items(tmp_path))
