"""Corpus tokenization: audio folders to Parquet code shards, on Ray or in one process.

``mimirate tokenize INPUT OUTPUT_DIR`` is the command; :func:`tokenize` the function
behind it; :mod:`mimirate.tokenize.loader` reads the shards back. The shard layout is
specified in docs/shards.md. Importing this package is light: Ray, pyarrow and torch
load when a job runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mimirate.tokenize.loader import TokenItem, get_item, iter_items, row_codes, shard_paths
    from mimirate.tokenize.manifest import Manifest, read_manifest
    from mimirate.tokenize.pipeline import CodecSpec, TokenizeOptions, TokenizeResult, tokenize

__all__ = [
    "CodecSpec",
    "Manifest",
    "TokenItem",
    "TokenizeOptions",
    "TokenizeResult",
    "get_item",
    "iter_items",
    "read_manifest",
    "row_codes",
    "shard_paths",
    "tokenize",
]

_HOME = {
    "CodecSpec": "pipeline",
    "TokenizeOptions": "pipeline",
    "TokenizeResult": "pipeline",
    "tokenize": "pipeline",
    "TokenItem": "loader",
    "get_item": "loader",
    "iter_items": "loader",
    "row_codes": "loader",
    "shard_paths": "loader",
    "Manifest": "manifest",
    "read_manifest": "manifest",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'mimirate.tokenize' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
