"""Resumable training checkpoints without pickle: safetensors shards + one JSON state file.

A checkpoint is a folder::

    state.json                          scalars, optimizer hyper-parameters, RNG states,
                                        the shard list with SHA-256 (written last: the commit point)
    step0001200-00-of-03.safetensors    tensors, each shard below ``max_shard_bytes``

Shards carry the step in their name, so a crash while writing leaves the previous
``state.json`` and its shards intact; shards no longer listed are removed after the new
state is in place. Shards stay below 16 MiB so a GPU machine can return each one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mimirate.errors import CheckpointError
from mimirate.fileio import atomic_write_bytes

STATE_FILE = "state.json"
FORMAT = "mimirate-train-checkpoint"
VERSION = 1
#: Below the 16 MiB a GPU machine returns per file, with room for the header.
MAX_SHARD_BYTES = 15 * 1024 * 1024


@dataclass(frozen=True)
class LoadedCheckpoint:
    """``tensors`` by name (on the CPU) and the JSON ``state`` saved with them."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def _shard(tensors: Mapping[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        n = t.numel() * t.element_size()
        if n > limit:
            raise CheckpointError(f"tensor {name} ({n} bytes) exceeds the shard limit {limit}")
        if groups[-1] and size + n > limit:
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += n
    return groups


def save(
    directory: Path,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    tag: str,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write ``tensors`` (sharded) and ``state`` (JSON) into ``directory``; return state.json.

    ``tag`` (e.g. ``step0001200``) prefixes the shard names. Tensors are copied to the
    CPU and made contiguous; ``state`` must be JSON-serialisable.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Leave room for the safetensors header (names + offsets) under the limit.
    groups = _shard(tensors, max_shard_bytes - 256 * 1024)
    shards = []
    for i, group in enumerate(groups):
        name = f"{tag}-{i:02d}-of-{len(groups):02d}.safetensors"
        cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in group.items()}
        data = safetensors.torch.save(cpu)
        atomic_write_bytes(directory / name, data)
        shards.append({"file": name, "sha256": hashlib.sha256(data).hexdigest()})
    doc = {"format": FORMAT, "version": VERSION, "shards": shards, **state}
    path = directory / STATE_FILE
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
    keep = {s["file"] for s in shards}
    for old in directory.glob("*.safetensors"):
        if old.name not in keep:
            old.unlink()
    return path


def exists(directory: Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file()


def load(directory: Path) -> LoadedCheckpoint:
    """Read a folder written by :func:`save`, checking every shard's SHA-256."""
    directory = Path(directory)
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: no checkpoint in {directory}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} file")
    tensors: dict[str, torch.Tensor] = {}
    for shard in state.pop("shards"):
        file = directory / shard["file"]
        try:
            data = file.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{file} listed in {path} cannot be read ({e})") from None
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise CheckpointError(f"{file} is corrupt (SHA-256 differs from {STATE_FILE})")
        tensors.update(safetensors.torch.load(data))
    return LoadedCheckpoint(tensors, state)


def size_bytes(directory: Path) -> int:
    """Bytes on disk of the files a checkpoint lists (shards + state.json)."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    files = [directory / s["file"] for s in state["shards"]] + [directory / STATE_FILE]
    return sum(f.stat().st_size for f in files)


# -- optimizer state as tensors + JSON -------------------------------------------------


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``prefix/<param>/<key>``) and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    prefix: str,
) -> None:
    """Inverse of :func:`optimizer_to_tensors`: load the state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    head = prefix + "/"
    for name, value in tensors.items():
        if name.startswith(head):
            idx, key = name[len(head) :].split("/", 1)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state {prefix} does not fit the model ({e})") from None
