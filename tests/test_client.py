"""Python clients: URLs, live sources, progressive voice messages, and the CLI end to end."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mimirate import write_wav
from mimirate.errors import ConfigError
from mimirate.transport.client import command_frames, fetch_message, parse_url

SR = 24_000


@pytest.fixture(scope="module")
def codec():
    import torch

    from mimirate import load_codec

    torch.set_num_threads(1)
    return load_codec("tiny", random_init=True, seed=0)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(
        np.float32
    )


def test_parse_url() -> None:
    assert parse_url("http://h:1/room/a-b").name == "a-b"
    t = parse_url("http://127.0.0.1:8750")
    assert (t.kind, t.name, t.base_url) == ("room", "broadcast", "http://127.0.0.1:8750")
    assert parse_url("http://h/messages/x.mimi").kind == "message"
    for bad in ("ftp://h/room/a", "http:///room/a", "http://h/other/a", "http://h/room/a/b"):
        with pytest.raises(ConfigError):
            parse_url(bad)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_command_frames_reads_a_live_source() -> None:
    # The microphone path (sox -d) with a synthesiser instead of a device.
    argv = [
        "sox",
        "-q",
        "-n",
        "-t",
        "raw",
        "-e",
        "floating-point",
        "-b",
        "32",
        "-c",
        "1",
        "-r",
        str(SR),
        "-",
        "synth",
        "0.2",
        "sine",
        "440",
    ]

    async def run() -> list[np.ndarray]:
        return [f async for f in command_frames(argv, 1920)]

    frames = asyncio.run(run())
    assert len(frames) == 3  # 4800 samples: two whole frames and a padded one
    assert all(f.shape == (1920,) and f.dtype == np.float32 for f in frames)
    assert np.abs(frames[0]).max() > 0.5 and np.all(frames[-1][4800 - 3840 :] == 0)


def test_voice_message_plays_before_it_is_downloaded(codec, tmp_path: Path) -> None:
    from mimirate.bitstream import MimiFile
    from mimirate.transport.server import MimirateServer, ServerConfig

    enc = codec.encode(tone(3.0))
    f = MimiFile(
        codec.name, codec.weights_hash, SR, 12.5, 11, 32, enc.num_samples, enc.codes, chunk_frames=8
    )  # stored in small chunks: the server re-chunks it
    (tmp_path / "hello.mimi").write_bytes(f.to_bytes())

    async def run():
        cfg = ServerConfig(port=0, model="tiny", messages_dir=str(tmp_path))
        async with MimirateServer(cfg, codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/messages/hello.mimi"
            return await fetch_message(url, read_bytes=64, rate_bps=40_000)

    msg = asyncio.run(run())
    np.testing.assert_array_equal(msg.codes, enc.codes)  # everything arrived, exactly
    assert msg.levels.min() == 32
    assert msg.first_audio_s is not None and msg.first_audio_s < 0.25 * msg.complete_s
    # Coarse first: every frame was playable early, and quality rose as bytes came in.
    early = next(p for p in msg.progress if p.frames == 38)
    assert early.bytes < 0.2 * msg.progress[-1].bytes and early.mean_levels < 8
    means = [p.mean_levels for p in msg.progress if p.frames == 38]
    assert means == sorted(means) and means[-1] == 32


def _wait_for_sessions(http_port: int, count: int, timeout_s: float = 60.0) -> None:
    """Poll the server's /api/info until ``count`` sessions exist (then let UDP settle)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/info", timeout=5) as r:
            if json.loads(r.read())["sessions"] >= count:
                time.sleep(0.5)
                return
        time.sleep(0.1)
    raise AssertionError(f"no {count} session(s) on the server after {timeout_s} s")


def test_cli_serve_send_listen_end_to_end(tmp_path: Path) -> None:
    """The three commands as a user runs them: separate processes over loopback."""
    wav = tmp_path / "in.wav"
    write_wav(wav, tone(4.0), SR)
    model = ["--model", "tiny", "--random-init"]
    serve = subprocess.Popen(
        [sys.executable, "-m", "mimirate", "serve", "--port", "0", *model, "--fixed", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(serve.stdout.readline())
        url = f"http://127.0.0.1:{ready['http_port']}/room/demo"
        out = tmp_path / "out.wav"
        listen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mimirate",
                "listen",
                url,
                str(out),
                *model,
                "--jitter-frames",
                "4",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The listener must have joined before the first frame is sent (a process that
        # imports torch can take seconds to start on a busy machine).
        _wait_for_sessions(ready["http_port"], 1)
        send = subprocess.run(
            [
                sys.executable,
                "-m",
                "mimirate",
                "send",
                str(wav),
                url,
                *model,
                "--fixed",
                "--levels",
                "6",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert send.returncode == 0, send.stderr
        lout, lerr = listen.communicate(timeout=60)
        assert listen.returncode == 0, lerr
        sent = json.loads(send.stdout)["send"]
        heard = json.loads(lout)["listen"]
        assert sent["frames"] == 50 and sent["controller"] == "fixed"
        assert sent["wire_bytes"] > 50 * 40  # payload plus 40 header bytes a packet
        assert heard["full"] + heard["redundant"] >= 45, (sent, heard)
        assert heard["mean_levels"] == 6
        assert out.stat().st_size > 44 + 2 * 1920 * 45
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "mimirate",
                "listen",
                url.replace("room/demo", "x"),
                str(out),
                *model,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "path must be" in bad.stderr
    finally:
        serve.terminate()
        serve.wait(20)
    assert serve.returncode == 0  # SIGTERM is a clean stop
