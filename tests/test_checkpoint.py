"""Sharded safetensors checkpoints: round trip, shard limit, stale shards, corruption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mimirate.errors import CheckpointError
from mimirate.train import checkpoint


def test_round_trip_sharded(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.full((300_000,), float(i)) for i in range(4)}  # 1.2 MB each
    limit = 2 * 2**20 + 256 * 1024
    checkpoint.save(tmp_path, tensors, {"step": 7, "x": [1, 2]}, "step0000007", limit)
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) == 4  # two 1.2 MB tensors do not fit one 2 MiB shard
    assert all(s.stat().st_size < limit for s in shards)
    loaded = checkpoint.load(tmp_path)
    assert loaded.state["step"] == 7 and loaded.state["x"] == [1, 2]
    for k, v in tensors.items():
        assert torch.equal(loaded.tensors[k], v)
    # A newer save replaces the old shards.
    checkpoint.save(tmp_path, {"a": torch.ones(3)}, {"step": 8}, "step0000008")
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["step0000008-00-of-01.safetensors"]
    assert checkpoint.size_bytes(tmp_path) > 0


def test_corrupt_and_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path)
    checkpoint.save(tmp_path, {"a": torch.arange(100.0)}, {"step": 1}, "s")
    shard = next(tmp_path.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path)


def test_tensor_above_limit_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="shard limit"):
        checkpoint.save(tmp_path, {"big": torch.zeros(500_000)}, {}, "s", max_shard_bytes=2**20)


def test_optimizer_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.5, 0.9))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, meta = checkpoint.optimizer_to_tensors(opt, "opt")
    checkpoint.save(tmp_path, tensors, {"opt": meta}, "s")
    loaded = checkpoint.load(tmp_path)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1.0)
    checkpoint.optimizer_from_tensors(opt2, loaded.tensors, loaded.state["opt"], "opt")
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx in a["state"]:
        for key in a["state"][idx]:
            assert torch.equal(a["state"][idx][key], b["state"][idx][key])
