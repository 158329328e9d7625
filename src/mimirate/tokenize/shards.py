"""Parquet code shards: the schema, and writing and reading one shard (spec: docs/shards.md).

A shard holds one row per encoded file. Codes are stored as one binary value per
row: the ``[K, T]`` uint16 array in row-major order (level 1's frames, then level
2's, ...) packed at 11 bits a code by :func:`mimirate.bitstream.pack_codes`. That is
11/16 the size of a ``list<uint16>`` column, the same bits the ``.mimi`` format
spends, and the codes are random enough that Parquet's compression would not close
the gap. Files that failed go to a JSONL file beside the shard, never into it.

Every write is atomic (temporary file + rename), and the errors file is written
before the Parquet file, so an existing shard file always means a finished shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mimirate.bitstream import pack_codes, unpack_codes
from mimirate.errors import FormatError
from mimirate.fileio import atomic_write, atomic_write_bytes
from mimirate.tokenize.manifest import FORMAT_NAME, FORMAT_VERSION, ShardPlan, ShardSummary

#: Key of the shard's own record in the Parquet key-value metadata.
METADATA_KEY = b"mimirate"

SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),  # position in the sorted corpus
        pa.field("path", pa.string(), nullable=False),  # absolute source path
        pa.field("duration", pa.float64(), nullable=False),  # seconds, num_samples / 24 kHz
        pa.field("sample_rate", pa.int32(), nullable=False),  # of the source file
        pa.field("num_samples", pa.int64(), nullable=False),  # at the codec's rate
        pa.field("model", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("weights_hash", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("levels", pa.int16(), nullable=False),  # K
        pa.field("num_frames", pa.int32(), nullable=False),  # T
        pa.field("codes", pa.binary(), nullable=False),  # pack_codes([K, T] row-major, 11)
    ]
)


@dataclass(frozen=True)
class CodecInfo:
    """What every row of a job shares: the model and the code layout."""

    model: str
    weights_hash: str  # 16 hex digits
    levels: int
    bits_per_code: int
    sample_rate: int
    frame_rate: float
    frame_size: int


@dataclass(frozen=True)
class ShardRow:
    """One encoded file, its codes already packed (packing happens on the encoders)."""

    index: int
    path: str
    source_rate: int
    num_samples: int
    num_frames: int
    codes: bytes  # pack_codes of [K, T] row-major


@dataclass(frozen=True)
class ItemError:
    """A file that could not be encoded, and why."""

    index: int
    path: str
    reason: str


def pack_item(codes: np.ndarray, bits: int) -> bytes:
    """Pack one item's ``[K, T]`` codes for the ``codes`` column."""
    if codes.ndim != 2:
        raise ValueError(f"pack_item takes [K, T] codes, got shape {codes.shape}")
    return pack_codes(np.ascontiguousarray(codes, dtype=np.uint16).reshape(-1), bits)


def unpack_item(data: bytes, levels: int, num_frames: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_item`: ``[levels, num_frames]`` uint16."""
    count = levels * num_frames
    needed = (count * bits + 7) // 8
    if len(data) != needed:
        raise FormatError(
            f"codes hold {len(data)} bytes, but {levels} levels x {num_frames} frames at "
            f"{bits} bits need {needed}; the shard is damaged, tokenize it again"
        )
    return unpack_codes(data, count, bits).reshape(levels, num_frames)


def write_shard(
    output_dir: str | os.PathLike[str],
    plan: ShardPlan,
    info: CodecInfo,
    rows: Sequence[ShardRow],
    errors: Sequence[ItemError],
) -> ShardSummary:
    """Write one finished shard (rows sorted by corpus index) and its errors file.

    Every file of ``plan`` must be either in ``rows`` or in ``errors``.
    """
    done = sorted([r.index for r in rows] + [e.index for e in errors])
    expected = list(range(plan.first_index, plan.first_index + len(plan.files)))
    if done != expected:
        raise ValueError(f"shard {plan.seq}: results do not cover its files exactly")
    rows = sorted(rows, key=lambda r: r.index)
    root = Path(output_dir)
    if errors:
        atomic_write_bytes(root / plan.errors_name, errors_jsonl(errors))
    n = len(rows)
    columns = {
        "index": [r.index for r in rows],
        "path": [r.path for r in rows],
        "duration": [r.num_samples / info.sample_rate for r in rows],
        "sample_rate": [r.source_rate for r in rows],
        "num_samples": [r.num_samples for r in rows],
        "model": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int8)), pa.array([info.model])
        ),
        "weights_hash": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int8)), pa.array([info.weights_hash])
        ),
        "levels": [info.levels] * n,
        "num_frames": [r.num_frames for r in rows],
        "codes": [r.codes for r in rows],
    }
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "shard_id": plan.shard_id,
        "first_index": plan.first_index,
        "num_inputs": len(plan.files),
        "num_errors": len(errors),
        "model": info.model,
        "weights_hash": info.weights_hash,
        "levels": info.levels,
        "bits_per_code": info.bits_per_code,
        "sample_rate": info.sample_rate,
        "frame_rate": info.frame_rate,
        "frame_size": info.frame_size,
        "codes_layout": "pack_codes(codes[K, T] row-major, bits_per_code), MSB first",
    }
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(record).encode()})
    table = pa.table(columns, schema=schema)
    with atomic_write(root / plan.file_name) as f:
        pq.write_table(table, f, compression="zstd")
    return ShardSummary(
        file=plan.file_name,
        shard_id=plan.shard_id,
        first_index=plan.first_index,
        num_inputs=len(plan.files),
        num_items=n,
        num_errors=len(errors),
        num_frames=sum(r.num_frames for r in rows),
        seconds=sum(r.num_samples for r in rows) / info.sample_rate,
    )


def shard_record(path: str | os.PathLike[str]) -> dict:
    """The ``mimirate`` record of a shard's Parquet metadata (:class:`FormatError` if none)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise FormatError(f"{path}: not a readable Parquet file ({e})") from None
    if METADATA_KEY not in meta:
        raise FormatError(f"{path}: not a mimirate shard (no '{METADATA_KEY.decode()}' metadata)")
    try:
        record = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError:
        raise FormatError(f"{path}: damaged mimirate metadata") from None
    if record.get("format") != FORMAT_NAME or record.get("version") != FORMAT_VERSION:
        raise FormatError(f"{path}: shard format {record.get('version')!r} is not supported")
    return record


def finished_shard(output_dir: str | os.PathLike[str], plan: ShardPlan) -> ShardSummary | None:
    """The summary of ``plan``'s shard if a complete one is on disk, else None."""
    root = Path(output_dir)
    path = root / plan.file_name
    if not path.is_file():
        return None
    try:
        record = shard_record(path)
        if record.get("shard_id") != plan.shard_id:
            return None
        num_errors = int(record["num_errors"])
        if num_errors and len(read_errors(root / plan.errors_name)) != num_errors:
            return None
        table = pq.read_table(path, columns=["num_frames", "num_samples"])
    except (FormatError, OSError, KeyError, ValueError, pa.ArrowException):
        # Something other than a shard we wrote: redo it (the rename replaces it).
        return None
    if table.num_rows + num_errors != len(plan.files):
        return None
    return ShardSummary(
        file=plan.file_name,
        shard_id=plan.shard_id,
        first_index=plan.first_index,
        num_inputs=len(plan.files),
        num_items=table.num_rows,
        num_errors=num_errors,
        num_frames=int(pc.sum(table["num_frames"]).as_py() or 0),
        seconds=int(pc.sum(table["num_samples"]).as_py() or 0) / record["sample_rate"],
    )


def errors_jsonl(errors: Iterable[ItemError]) -> bytes:
    """Error records as JSON lines: ``{"index", "path", "reason"}``."""
    lines = [
        json.dumps({"index": e.index, "path": e.path, "reason": e.reason}, ensure_ascii=False)
        for e in errors
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def read_errors(path: str | os.PathLike[str]) -> list[ItemError]:
    """Read an errors JSONL file (empty list if it does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            out.append(ItemError(int(doc["index"]), str(doc["path"]), str(doc["reason"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FormatError(f"{path}:{number}: not an error record") from None
    return out
