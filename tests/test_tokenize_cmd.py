"""``mimirate tokenize`` and ``mimirate tokenize-decode`` from the command line (no Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimirate.cli import main

CLI = Path(__file__).resolve().parents[1] / "src" / "mimirate" / "cli"


def test_tokenize_then_decode_one_item(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "in"
    corpus.mkdir()
    sf.write(corpus / "one.wav", 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
    sf.write(corpus / "two.flac", 0.1 * rng.standard_normal(30000).astype(np.float32), 24000)
    out = tmp_path / "tokens"
    args = ["tokenize", str(corpus), str(out), "--model", "tiny", "--random-init"]
    assert main([*args, "--levels", "4", "--ray", "none", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files_encoded"] == 2 and doc["levels"] == 4 and doc["backend"] == "in-process"
    assert doc["totals"]["frames"] == 13 + 16  # ceil(24000 / 1920) + ceil(30000 / 1920)

    wav = tmp_path / "two.wav"
    decode = ["tokenize-decode", str(out), "two.flac", str(wav), "--random-init", "--json"]
    assert main(decode) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index"] == 1 and info["levels"] == 4
    audio, rate = sf.read(wav)
    assert rate == 24000 and len(audio) == 30000

    # Weights other than those that made the codes (the preset's packaged ones, or none
    # packaged): a clean error, exit code 2, no file.
    assert main(["tokenize-decode", str(out), "0", str(tmp_path / "x.wav"), "--model", "tiny"]) == 2
    assert "tokenize-decode: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_bad_input_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tokenize", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--ray", "none"])
    assert code == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_help_and_stdlib_tokenize_unshadowed() -> None:
    for command in ("tokenize", "tokenize-decode"):
        run = subprocess.run(
            [sys.executable, "-m", "mimirate", command, "--help"], capture_output=True, text=True
        )
        assert run.returncode == 0 and "OUTPUT_DIR" in run.stdout
    # Run from inside the CLI package: the standard library's tokenize must still load.
    run = subprocess.run(
        [sys.executable, "-c", "import tokenize; print(tokenize.__file__)"],
        cwd=CLI,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "mimirate" not in run.stdout
