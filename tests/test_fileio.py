from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mimirate.fileio import atomic_write, atomic_write_bytes


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "a" / "file.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_uses_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(target, b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"original")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
