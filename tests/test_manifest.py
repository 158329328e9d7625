"""Input listing, shard planning and the manifest of mimirate.tokenize.manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimirate.errors import AudioError, ConfigError, FormatError
from mimirate.tokenize.manifest import (
    Manifest,
    ShardSummary,
    list_inputs,
    plan_shards,
    read_manifest,
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    for name in ("b.wav", "a.flac", "sub/c.ogg", "sub/deeper/d.WAV"):
        sf.write(root / name, np.zeros(100, np.float32), 16000)
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden.wav").write_bytes(b"")
    return root


def test_folder_is_searched_recursively_for_audio_only(corpus: Path) -> None:
    paths = list_inputs(corpus)
    names = [Path(p).relative_to(corpus).as_posix() for p in paths]
    assert names == ["a.flac", "b.wav", "sub/c.ogg", "sub/deeper/d.WAV"]
    assert all(Path(p).is_absolute() for p in paths)


def test_glob_and_single_file(corpus: Path) -> None:
    assert [Path(p).name for p in list_inputs(f"{corpus}/**/*.wav")] == ["b.wav"]
    assert list_inputs(corpus / "a.flac") == [str(corpus / "a.flac")]


def test_list_files_resolve_relative_paths_and_keep_missing_ones(corpus: Path) -> None:
    (corpus / "list.txt").write_text("# a comment\nb.wav\n\nsub/c.ogg\nmissing.wav\nb.wav\n")
    paths = list_inputs(corpus / "list.txt")
    assert paths == sorted(str(corpus / n) for n in ("b.wav", "sub/c.ogg", "missing.wav"))


def test_csv_and_jsonl_tables(corpus: Path) -> None:
    (corpus / "t.csv").write_text("speaker,audio\n1,a.flac\n2,b.wav\n")
    assert [Path(p).name for p in list_inputs(corpus / "t.csv")] == ["a.flac", "b.wav"]
    lines = [json.dumps({"path": str(corpus / "sub/c.ogg"), "text": "hi"}), ""]
    (corpus / "t.jsonl").write_text("\n".join(lines))
    assert list_inputs(corpus / "t.jsonl") == [str(corpus / "sub/c.ogg")]


def test_bad_inputs_raise_documented_errors(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file or folder"):
        list_inputs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="no audio files"):
        list_inputs(tmp_path / "empty")
    with pytest.raises(AudioError, match="matches no files"):
        list_inputs(f"{corpus}/*.mp3")
    (corpus / "t.csv").write_text("speaker,text\n1,hello\n")
    with pytest.raises(ConfigError, match="no path column"):
        list_inputs(corpus / "t.csv")
    (corpus / "t.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="JSON object"):
        list_inputs(corpus / "t.jsonl")


def test_plan_is_deterministic_and_ids_follow_content() -> None:
    files = [f"/d/{i:03d}.wav" for i in range(10)]
    plan = plan_shards(files, model="tiny", weights_hash="00" * 8, levels=8, shard_files=4)
    assert [len(p.files) for p in plan] == [4, 4, 2]
    assert [p.first_index for p in plan] == [0, 4, 8]
    assert plan == plan_shards(
        list(files), model="tiny", weights_hash="00" * 8, levels=8, shard_files=4
    )
    assert len({p.shard_id for p in plan}) == 3
    other_levels = plan_shards(files, model="tiny", weights_hash="00" * 8, levels=4, shard_files=4)
    assert not {p.shard_id for p in plan} & {p.shard_id for p in other_levels}
    # Adding a file at the end changes the last shard only.
    more = plan_shards(
        [*files, "/d/999.wav"], model="tiny", weights_hash="00" * 8, levels=8, shard_files=4
    )
    assert [p.shard_id for p in more[:2]] == [p.shard_id for p in plan[:2]]
    assert more[2].shard_id != plan[2].shard_id
    assert plan[1].file_name == f"shards/shard-00001-{plan[1].shard_id}.parquet"
    with pytest.raises(ConfigError):
        plan_shards(files, model="tiny", weights_hash="00" * 8, levels=8, shard_files=0)


def _manifest() -> Manifest:
    shard = ShardSummary("shards/x.parquet", "ab" * 8, 0, 5, 4, 1, 100, 8.0)
    return Manifest(
        model="tiny",
        weights_hash="01" * 8,
        levels=8,
        bits_per_code=11,
        sample_rate=24000,
        frame_rate=12.5,
        frame_size=1920,
        input="/data",
        shard_files=5,
        shards=(shard, shard),
        errors_file="errors.jsonl",
    )


def test_manifest_round_trip_and_totals(tmp_path: Path) -> None:
    m = _manifest()
    doc = json.loads(m.to_json())
    assert doc["format"] == "mimirate-tokens"
    assert doc["totals"] == {
        "inputs": 10,
        "items": 8,
        "errors": 2,
        "frames": 200,
        "seconds": 16.0,
        "hours": round(16 / 3600, 6),
    }
    assert Manifest.parse(m.to_json()) == m
    (tmp_path / "manifest.json").write_text(m.to_json())
    assert read_manifest(tmp_path) == m


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not JSON"),
        ('{"format": "other"}', "not a mimirate-tokens manifest"),
        ('{"format": "mimirate-tokens", "version": 99}', "version 99"),
        ('{"format": "mimirate-tokens", "version": 1, "shards": []}', "missing or unknown"),
    ],
)
def test_bad_manifests_raise_format_error(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Manifest.parse(text)


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="OUTPUT_DIR of `mimirate tokenize`"):
        read_manifest(tmp_path)
