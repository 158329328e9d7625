"""training/gpu/: the prepared device command and the collection of what it sends back,
run on the CPU with the tiny model (the device machine runs the same script on CUDA)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from mimirate.train import checkpoint

REPO = Path(__file__).resolve().parents[1]


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ)
    # `python3` in the scripts must be this interpreter (the device's is the one with torch).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(kw)
    return env


def test_device_run_resumes_with_a_larger_batch_and_collect_restores_it(tmp_path: Path) -> None:
    data = tmp_path / "data" / "speechy"
    data.mkdir(parents=True)
    t = np.arange(2 * 24_000) / 24_000
    for i in range(10):
        x = 0.2 * np.sin(2 * np.pi * (120 + 10 * i) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        sf.write(data / f"c{i}.wav", x.astype(np.float32), 24_000)
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    common = ["--data-root", str(tmp_path / "data"), "--threads", "1", "--no-progress"]
    first = ["--config", "tiny", "--out", str(run), "--steps", "2", "--batch", "2"]
    started = subprocess.run(
        [sys.executable, "-m", "mimirate", "train", *first, *common, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    )
    summary = json.loads(started.stdout)  # --json: stdout is the summary alone
    assert summary["step"] == 2 and summary["last"]["step"] == 2 and summary["clips"] == 2
    done = subprocess.run(
        ["bash", str(REPO / "training/gpu/run.sh"), "1", "--steps", "4", "--batch", "3", *common],
        capture_output=True,
        text=True,
        env=_env(RUN_DIR=str(run), DEVICE="cpu", OUT=str(out)),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed at step 2" in done.stdout and "stopped at step 4" in done.stdout
    sent = sorted(p.name for p in out.iterdir())
    assert "small-files.tar" in sent and len(sent) <= 8  # the device returns 8 files at most
    assert all(p.stat().st_size < 16 << 20 for p in out.iterdir())
    # Collected into another copy of the run folder, whose old checkpoint it replaces.
    here = tmp_path / "here"
    shutil.copytree(run, here)
    shutil.rmtree(here / "checkpoint")
    (here / "checkpoint").mkdir()
    (here / "checkpoint" / "stale.safetensors").write_bytes(b"old")
    got = subprocess.run(
        ["bash", str(REPO / "training/gpu/collect.sh"), str(out), str(here)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert got.returncode == 0, got.stderr
    assert "checkpoint at step 4" in got.stdout
    assert not (here / "checkpoint" / "stale.safetensors").exists()
    loaded = checkpoint.load(here / "checkpoint")  # shards present, SHA-256 checked
    assert loaded.state["step"] == 4 and loaded.state["train_config"]["batch_size"] == 3
    assert (here / "log.jsonl").read_text() == (run / "log.jsonl").read_text()
