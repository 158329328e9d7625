"""`mimirate demo` end to end on a tiny random model (the packaged-model run is `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimirate.bitstream import MimiFile
from mimirate.cli import main
from mimirate.cli.demo import bundled_clip


def test_bundled_clip_is_packaged() -> None:
    assert bundled_clip().is_file()


def test_demo_writes_files_table_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--model", "tiny", "--random-init", "--levels", "1,8,32"]
    assert main([*argv, "--out", str(out), "--no-report", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = summary["rows"]
    assert [r["levels"] for r in rows] == [1, 8, 32]
    for r in rows:
        data = Path(r["file"]).read_bytes()
        assert len(data) == r["bytes"]
        mf = MimiFile.parse(data)
        assert mf.num_levels == r["levels"]
        # The table's numbers are the real bytes: nominal is exact, the file a bit more.
        assert r["nominal_kbps"] == pytest.approx(r["levels"] * 11 * 12.5 / 1000)
        duration = mf.num_frames / 12.5
        assert r["container_kbps"] == pytest.approx(len(data) * 8 / duration / 1000)
        assert Path(r["wav"]).stat().st_size > 0
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "original.wav").is_file()


def test_demo_rejects_bad_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--model", "tiny", "--random-init", "--levels", "0", "--out", str(tmp_path)]
    assert main([*argv, "--no-report"]) == 2
    assert "levels must be in 1..32" in capsys.readouterr().err
