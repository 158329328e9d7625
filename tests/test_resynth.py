"""``mimirate resynth``: encode, decode K levels, trim, write atomically, report figures."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from mimirate.cli import main


def _wav(path, seconds: float = 0.3, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


def test_resynth_writes_input_length_and_reports(tmp_path, capsys) -> None:
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    _wav(src)
    argv = [str(src), str(out), "--levels", "8", "--model", "tiny", "--random-init", "--json"]
    assert main(["resynth", *argv]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["levels"] == 8 and figures["nominal_kbps"] == 1.1
    audio, rate = sf.read(out)
    assert rate == 24_000 and len(audio) == 7200 and np.isfinite(audio).all()


def test_resynth_bad_levels_and_missing_input(tmp_path, capsys) -> None:
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    _wav(src)
    args = ["--model", "tiny", "--random-init"]
    assert main(["resynth", str(src), str(out), "--levels", "33", *args]) == 2
    assert main(["resynth", str(tmp_path / "no.wav"), str(out), "--levels", "4", *args]) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()
