"""Reading code shards back: items with ``[K, T]`` codes, for training loops and listening.

>>> from mimirate.tokenize.loader import iter_items
>>> for item in iter_items("tokens/", levels=8):  # doctest: +SKIP
...     item.codes            # [8, T] uint16 numpy
...     item.torch_codes()    # [8, T] torch.long, ready for an embedding table

The shards are plain Parquet, so Hugging Face ``datasets`` reads them directly; the
``codes`` column holds packed bytes, which :func:`row_codes` unpacks::

    from datasets import load_dataset
    from mimirate.tokenize.loader import row_codes, shard_paths
    files = [str(p) for p in shard_paths("tokens/")]
    ds = load_dataset("parquet", data_files=files, split="train")
    ds = ds.map(lambda row: {"codes": row_codes(row)})  # [K][T] lists of ints
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from mimirate.errors import ConfigError, FormatError
from mimirate.tokenize.manifest import Manifest, read_manifest
from mimirate.tokenize.shards import unpack_item

if TYPE_CHECKING:
    import torch

#: Bits per code of Mimi's 2048-entry codebooks; shards record theirs (manifest).
MIMI_BITS = 11

_COLUMNS = ["index", "path", "duration", "sample_rate", "num_samples", "levels", "num_frames"]


@dataclass(frozen=True)
class TokenItem:
    """One encoded file read back from a shard."""

    index: int  # position in the sorted corpus
    path: str  # source file
    duration: float  # seconds
    source_rate: int  # sample rate of the source file
    num_samples: int  # at the codec rate; the codes cover ceil(num_samples / frame_size) frames
    codes: np.ndarray  # [K, T] uint16

    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    def torch_codes(self) -> torch.Tensor:
        """The codes as a ``[K, T]`` ``torch.long`` tensor (what embedding layers take)."""
        import torch

        return torch.from_numpy(self.codes.astype(np.int64))


def shard_paths(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a tokenized corpus, in corpus order (from its manifest).

    Use this rather than a ``*.parquet`` glob: a folder reused with other inputs or
    another model may also hold shards of the earlier plan.
    """
    root = Path(output_dir)
    return [root / s.file for s in read_manifest(root).shards]


def iter_items(
    output_dir: str | os.PathLike[str], levels: int | None = None
) -> Iterator[TokenItem]:
    """Yield every item of a tokenized corpus in corpus order, codes cut to ``levels``.

    Reads one Parquet record batch at a time, so memory stays bounded by a batch.
    """
    root = Path(output_dir)
    manifest = read_manifest(root)
    keep = _check_levels(manifest, levels)
    for summary in manifest.shards:
        if summary.num_items == 0:
            continue
        try:
            shard = pq.ParquetFile(root / summary.file)
            batches = shard.iter_batches(batch_size=256, columns=[*_COLUMNS, "codes"])
            for batch in batches:
                for row in batch.to_pylist():
                    yield _item(row, manifest.bits_per_code, keep)
        except OSError as e:
            raise FormatError(
                f"{root / summary.file}: cannot read the shard ({e}); run `mimirate "
                "tokenize` again with the same arguments to rewrite it"
            ) from None


def get_item(
    output_dir: str | os.PathLike[str], key: int | str, levels: int | None = None
) -> TokenItem:
    """One item by corpus index, source path, or a unique end of a path (``"84-121123-0001.flac"``).

    Raises :class:`ConfigError` when nothing, or more than one item, matches.
    """
    root = Path(output_dir)
    manifest = read_manifest(root)
    keep = _check_levels(manifest, levels)
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        index = int(key)
        for summary in manifest.shards:
            if summary.first_index <= index < summary.first_index + summary.num_inputs:
                rows = _read_rows(root / summary.file, ("index", "==", index))
                if rows:
                    return _item(rows[0], manifest.bits_per_code, keep)
                raise ConfigError(
                    f"item {index} failed to encode; see {root / manifest.errors_file}"
                )
        raise ConfigError(f"no item {index}; the corpus has items 0..{manifest.num_inputs - 1}")
    wanted = str(key)
    absolute = os.path.abspath(wanted)
    matches = []
    for summary in manifest.shards:
        if summary.num_items == 0:
            continue
        paths = pq.read_table(root / summary.file, columns=["path"])["path"].to_pylist()
        for path in paths:
            if path == absolute or path.endswith(os.sep + wanted.lstrip(os.sep)):
                matches.append((summary.file, path))
    if not matches:
        raise ConfigError(f"no item whose path is or ends with {wanted!r}")
    if len(matches) > 1:
        raise ConfigError(
            f"{len(matches)} items match {wanted!r} (e.g. {matches[0][1]}, {matches[1][1]}); "
            "give more of the path or the item's index"
        )
    file, path = matches[0]
    rows = _read_rows(root / file, ("path", "==", path))
    return _item(rows[0], manifest.bits_per_code, keep)


def row_codes(row: Mapping[str, Any], bits: int = MIMI_BITS) -> np.ndarray:
    """``[K, T]`` uint16 codes of one Parquet row (a dict with ``codes, levels, num_frames``).

    For rows read by other tools (pyarrow, pandas, Hugging Face ``datasets``).
    """
    return unpack_item(bytes(row["codes"]), int(row["levels"]), int(row["num_frames"]), bits)


def _check_levels(manifest: Manifest, levels: int | None) -> int:
    if levels is None:
        return manifest.levels
    if not 1 <= levels <= manifest.levels:
        raise ConfigError(
            f"levels must be in 1..{manifest.levels} (the corpus was tokenized with "
            f"{manifest.levels}), got {levels}"
        )
    return levels


def _read_rows(path: Path, condition: tuple[str, str, Any]) -> list[dict[str, Any]]:
    table = pq.read_table(path, columns=[*_COLUMNS, "codes"], filters=[condition])
    return table.to_pylist()


def _item(row: dict[str, Any], bits: int, keep: int) -> TokenItem:
    codes = row_codes(row, bits)
    return TokenItem(
        index=int(row["index"]),
        path=str(row["path"]),
        duration=float(row["duration"]),
        source_rate=int(row["sample_rate"]),
        num_samples=int(row["num_samples"]),
        codes=np.ascontiguousarray(codes[:keep]),
    )
