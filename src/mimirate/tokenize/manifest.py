"""What a tokenization job reads, how it splits the work, and the manifest it leaves behind.

Three pieces, all plain data and no model:

- :func:`list_inputs` turns the ``INPUT`` argument (a folder, a glob, a list file, a
  CSV/JSONL table with a path column, or one audio file) into a sorted list of paths.
- :func:`plan_shards` cuts that list into fixed-size shards. A shard's id is a hash of
  everything that decides its content (model, weights, levels and its file list), so
  a rerun finds the shards it already wrote, and a changed input only redoes the
  shards whose file lists changed.
- :class:`Manifest` is ``OUTPUT_DIR/manifest.json``: the shards, counts and totals.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from mimirate.errors import AudioError, ConfigError, FormatError

#: Name and version of the output layout, written into every manifest.
FORMAT_NAME = "mimirate-tokens"
FORMAT_VERSION = 1

MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.jsonl"
SHARDS_DIR = "shards"

#: Files per shard unless the user asks otherwise: about 4 hours of LibriSpeech-like
#: clips, a few MB of codes at 32 levels, a minute or so of work for one encoder.
DEFAULT_SHARD_FILES = 1000

#: Audio per encoder call unless told otherwise (padding included). On CPU, batches
#: beyond a few items gain little and cost memory; on a GPU pass more (600).
DEFAULT_BATCH_SECONDS = 60.0

#: Column names accepted as "the path" in CSV and JSONL input lists, first match wins.
PATH_COLUMNS = ("path", "audio_path", "audio", "file", "filename", "wav")

# "raw" is headerless PCM that libsndfile cannot open without being told its layout.
AUDIO_EXTENSIONS = frozenset(
    {fmt.lower() for fmt in sf.available_formats() if fmt != "RAW"} | {"aif", "oga", "opus"}
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".jsonl", ".ndjson"})


def is_audio_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an extension libsndfile reads."""
    return Path(path).suffix.lower().lstrip(".") in AUDIO_EXTENSIONS


def list_inputs(source: str | os.PathLike[str]) -> list[str]:
    """Resolve ``INPUT`` to a sorted, de-duplicated list of absolute paths.

    ``source`` is a folder (searched recursively for audio files), a glob pattern
    (``**`` recurses), a list file (``.txt``/``.lst``: one path per line, ``#``
    comments), a table (``.csv``/``.tsv``/``.jsonl`` with a ``path`` column), or a
    single audio file. Relative paths in list files are relative to the list file.
    Files named by a list need not exist: a missing one becomes an error record of the
    job, not a failure of the listing. Raises :class:`AudioError` when nothing matches.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        found = [
            os.path.join(root, name)
            for root, _dirs, names in os.walk(path, followlinks=True)
            for name in names
            if is_audio_name(name) and not name.startswith(".")
        ]
        what = f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS)[:6])}, ...) under {text}"
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS | TABLE_EXTENSIONS:
        found = _read_list(path)
        what = f"the list {text} names no files"
    elif path.is_file():
        found = [text]
        what = ""
    elif glob.has_magic(text):
        found = [p for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
        what = f"the pattern {text!r} matches no files"
    else:
        raise AudioError(
            f"{text}: no such file or folder; give a folder of audio files, a glob "
            "(quote it), a list file (.txt/.csv/.jsonl) or an audio file"
        )
    paths = sorted({os.path.abspath(p) for p in found})
    if not paths:
        raise AudioError(what)
    return paths


def _read_list(path: Path) -> list[str]:
    base = path.parent
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the input list ({e})") from None
    if suffix in LIST_EXTENSIONS:
        entries = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        column = _path_column(path, reader.fieldnames or [])
        entries = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    else:
        entries = []
        column = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number}: each line must be a JSON object")
            column = column or _path_column(path, list(record))
            value = record.get(column)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{path}:{number}: no {column!r} string in this record")
            entries.append(value.strip())
    return [e if os.path.isabs(e) else str(base / e) for e in entries]


def _path_column(path: Path, columns: list[str]) -> str:
    for name in PATH_COLUMNS:
        if name in columns:
            return name
    raise ConfigError(
        f"{path}: no path column; name one of the columns {', '.join(PATH_COLUMNS)} "
        f"(found: {', '.join(columns) or 'none'})"
    )


@dataclass(frozen=True)
class ShardPlan:
    """One shard to produce: a run of consecutive files of the sorted input list."""

    seq: int  # position of the shard in the plan
    shard_id: str  # 16 hex digits; see plan_shards
    first_index: int  # corpus index of files[0]
    files: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """Path of the shard relative to the output folder."""
        return f"{SHARDS_DIR}/shard-{self.seq:05d}-{self.shard_id}.parquet"

    @property
    def errors_name(self) -> str:
        """Path of the shard's error records relative to the output folder."""
        return f"{SHARDS_DIR}/shard-{self.seq:05d}-{self.shard_id}.errors.jsonl"


def plan_shards(
    files: list[str], *, model: str, weights_hash: str, levels: int, shard_files: int
) -> list[ShardPlan]:
    """Cut the sorted ``files`` into shards of ``shard_files`` files each (the last may be short).

    The id hashes the model name, weights hash, levels and the shard's file list, so
    the same inputs always give the same shards and a finished shard is recognised on
    a rerun, while any change that would change its content gives it a new id.
    """
    if shard_files < 1:
        raise ConfigError(f"--shard-files must be at least 1, got {shard_files}")
    plans = []
    for seq, start in enumerate(range(0, len(files), shard_files)):
        chunk = tuple(files[start : start + shard_files])
        key = json.dumps(
            {
                "format": FORMAT_VERSION,
                "model": model,
                "weights_hash": weights_hash,
                "levels": levels,
                "first_index": start,
                "files": chunk,
            },
            separators=(",", ":"),
        )
        shard_id = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        plans.append(ShardPlan(seq, shard_id, start, chunk))
    return plans


@dataclass(frozen=True)
class ShardSummary:
    """What one finished shard holds (an entry of the manifest)."""

    file: str  # parquet path relative to the output folder
    shard_id: str
    first_index: int
    num_inputs: int  # files assigned to the shard
    num_items: int  # rows in the parquet (files encoded)
    num_errors: int  # files that failed (rows in the errors file)
    num_frames: int
    seconds: float  # audio duration of the items


@dataclass(frozen=True)
class Manifest:
    """``OUTPUT_DIR/manifest.json``: everything needed to find and trust the shards."""

    model: str
    weights_hash: str  # 16 hex digits
    levels: int
    bits_per_code: int
    sample_rate: int  # of the codec (the audio the codes describe)
    frame_rate: float
    frame_size: int
    input: str
    shard_files: int
    shards: tuple[ShardSummary, ...]
    errors_file: str  # relative path of the merged error records
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def num_inputs(self) -> int:
        return sum(s.num_inputs for s in self.shards)

    @property
    def num_items(self) -> int:
        return sum(s.num_items for s in self.shards)

    @property
    def num_errors(self) -> int:
        return sum(s.num_errors for s in self.shards)

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.shards)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.shards)

    def to_json(self) -> str:
        doc: dict[str, Any] = asdict(self)
        doc["shards"] = [asdict(s) for s in self.shards]
        doc["totals"] = {
            "inputs": self.num_inputs,
            "items": self.num_items,
            "errors": self.num_errors,
            "frames": self.num_frames,
            "seconds": round(self.seconds, 3),
            "hours": round(self.seconds / 3600, 6),
        }
        # Layout fields first so a person reading the file sees what it is.
        head = {"format": doc.pop("format"), "version": doc.pop("version")}
        return json.dumps({**head, **doc}, indent=2) + "\n"

    @classmethod
    def parse(cls, text: str | bytes) -> Manifest:
        """Read a manifest; :class:`FormatError` if it is not one this version writes."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"the manifest is not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError(f"not a {FORMAT_NAME} manifest (no 'format': '{FORMAT_NAME}')")
        if doc.get("version") != FORMAT_VERSION:
            raise FormatError(
                f"manifest version {doc.get('version')!r} is not {FORMAT_VERSION}; "
                "use the mimirate version that wrote it, or tokenize again"
            )
        doc.pop("totals", None)
        try:
            shards = tuple(ShardSummary(**s) for s in doc.pop("shards"))
            return cls(shards=shards, **doc)
        except (TypeError, KeyError) as e:
            raise FormatError(f"the manifest has missing or unknown fields ({e})") from None


def read_manifest(output_dir: str | os.PathLike[str]) -> Manifest:
    """Read ``output_dir/manifest.json`` (:class:`FormatError` when absent or invalid)."""
    path = Path(output_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except OSError:
        raise FormatError(
            f"{path}: no manifest; is {output_dir} the OUTPUT_DIR of `mimirate tokenize`?"
        ) from None
    return Manifest.parse(data)
