"""mimirate encode / decode / truncate / info / bitrate / entropy-fit, end to end.

Uses the tiny preset with seeded random weights and a second of synthetic audio.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from mimirate.bitstream import MimiFile, parse_header
from mimirate.cli import main

RANDOM = ["--model", "tiny", "--random-init"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    t = np.arange(24_000) / 24_000
    for i in range(3):
        x = 0.3 * np.sin(
            2 * np.pi * (150 + 40 * i) * t * (1 + 0.3 * t)
        ) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i}.wav", x.astype(np.float32), 24_000)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_info_truncate_decode(clips, tmp_path, capsys):
    src = clips / "clip0.wav"
    a = tmp_path / "a.mimi"
    code, out, _ = run(capsys, "encode", src, a, "--levels", "8", *RANDOM)
    assert code == 0 and "1.100 kbit/s" in out
    code, out, _ = run(capsys, "info", a, "--json")
    info = json.loads(out)
    assert info["num_levels"] == 8 and info["num_frames"] == 13 and info["nominal_bps"] == 1100
    assert info["container_bps"] == pytest.approx(a.stat().st_size * 8 / (13 / 12.5))
    code, out, _ = run(capsys, "info", a)
    assert "nominal    1.100 kbit/s" in out and "at 4 (40-byte IPv4/UDP/RTP" in out

    b = tmp_path / "b.mimi"
    code, out, _ = run(capsys, "truncate", a, b, "--levels", "3", "--json")
    assert code == 0
    assert json.loads(out) == {
        "output": str(b),
        "bytes": b.stat().st_size,
        "bytes_before": a.stat().st_size,
        "levels": 3,
    }
    full, cut = MimiFile.parse(a.read_bytes()), MimiFile.parse(b.read_bytes())
    np.testing.assert_array_equal(cut.codes, full.codes[:3])

    wav = tmp_path / "b.wav"
    code, out, _ = run(capsys, "decode", b, wav, "--random-init", "--json")
    assert code == 0
    got = json.loads(out)
    assert (got["seconds"], got["frames"], got["levels"], got["mean_levels"]) == (1.0, 13, 3, 3.0)
    audio, rate = sf.read(wav)
    assert rate == 24_000 and audio.shape == (24_000,)
    # The decoder in bfloat16: the same file decodes to nearly the same audio.
    half = tmp_path / "half.wav"
    assert run(capsys, "decode", b, half, "--random-init", "--bf16-decoder")[0] == 0
    approx, _ = sf.read(half)
    assert not np.array_equal(approx, audio)
    assert 10 * np.log10(np.sum(audio**2) / np.sum((audio - approx) ** 2)) > 20.0

    # A download still arriving: decode the levels present (here level 1 of every frame).
    part = tmp_path / "part.mimi"
    header = parse_header(a.read_bytes()).size
    part.write_bytes(a.read_bytes()[: header + -(-13 * 11 // 8)])
    code, out, _ = run(capsys, "decode", part, tmp_path / "p.wav", "--partial", "--random-init")
    assert code == 0 and "1.00 (mean of per-frame) levels" in out

    # Other weights than the file's: refused with a clear message, no output file.
    code, _, err = run(capsys, "decode", b, tmp_path / "x.wav", "--random-init", "--seed", "1")
    assert code == 2 and "weights" in err and not (tmp_path / "x.wav").exists()


def test_kbps_picks_levels(clips, tmp_path, capsys):
    out = tmp_path / "k.mimi"
    assert run(capsys, "encode", clips / "clip1.wav", out, "--kbps", "1.2", *RANDOM)[0] == 0
    assert parse_header(out.read_bytes()).num_levels == 8  # 8 x 0.1375 = 1.1 <= 1.2 < 1.2375
    code, _, err = run(capsys, "encode", clips / "clip1.wav", out, "--kbps", "0.1", *RANDOM)
    assert code == 2 and "below one level" in err


def test_entropy_fit_then_entropy_files(clips, tmp_path, capsys):
    table = tmp_path / "t.safetensors"
    code, out, _ = run(capsys, "entropy-fit", clips, *RANDOM, "--out", table, "--contexts", "4")
    assert code == 0 and table.is_file() and "held-out bits/code" in out
    e = tmp_path / "e.mimi"
    assert (
        run(capsys, "encode", clips / "clip2.wav", e, "--entropy", "--table", table, *RANDOM)[0]
        == 0
    )
    assert parse_header(e.read_bytes()).entropy
    code, out, _ = run(capsys, "info", e, "--json", "--table", table)
    assert json.loads(out)["entropy_bps"] == json.loads(out)["container_bps"]
    f = tmp_path / "f.mimi"
    assert run(capsys, "truncate", e, f, "--levels", "2", "--table", table)[0] == 0
    plain = tmp_path / "p.mimi"
    run(capsys, "encode", clips / "clip2.wav", plain, *RANDOM)
    np.testing.assert_array_equal(
        MimiFile.parse(plain.read_bytes()).codes[:2],
        MimiFile.parse(f.read_bytes(), table=_load(table)).codes,
    )
    code, _, err = run(capsys, "info", e)  # no table at the default place
    assert code == 2 and "entropy-fit" in err


def _load(path):
    from mimirate.bitstream import EntropyTable

    return EntropyTable.load(path)


def test_bitrate_table(capsys):
    code, out, _ = run(capsys, "bitrate", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 32
    assert rows[7]["nominal_bps"] == 1100 and rows[31]["nominal_bps"] == 4400
    code, out, _ = run(capsys, "bitrate")
    assert "1.1000" in out


def test_bad_input_is_a_clean_error(tmp_path, capsys):
    junk = tmp_path / "junk.mimi"
    junk.write_bytes(b"RIFF....WAVE")
    code, _, err = run(capsys, "info", junk)
    assert code == 2 and "not a .mimi file" in err
    code, _, err = run(capsys, "truncate", tmp_path / "none.mimi", tmp_path / "o", "--levels", "1")
    assert code == 2 and "no such file" in err
    dev = tmp_path / "librispeech-test-other-dev"
    dev.mkdir()
    code, _, err = run(capsys, "entropy-fit", dev, *RANDOM)
    assert code == 2 and "evaluation set" in err


def test_entropy_fit_takes_folders_and_leaves_the_evaluation_set_out(clips, tmp_path, capsys):
    root = tmp_path / "speech"
    (root / "train").mkdir(parents=True)
    (root / "librispeech-test-other-dev").mkdir()
    (root / "more").mkdir()
    for i, where in enumerate(["train", "librispeech-test-other-dev", "more"]):
        (root / where / f"c{i}.wav").write_bytes((clips / f"clip{i}.wav").read_bytes())
    table = tmp_path / "t.safetensors"
    # The speech root holds the evaluation set: its file is left out, the others fit.
    code, out, err = run(
        capsys, "entropy-fit", root, *RANDOM, "--out", table, "--contexts", "4", "--json"
    )
    assert code == 0 and "left out 1 files of the evaluation set" in err
    assert json.loads(out)["table"] == str(table)
    a = _load(table).table_id
    code, _, _ = run(
        capsys,
        "entropy-fit",
        root / "train",
        root / "more",
        *RANDOM,
        "--out",
        table,
        "--contexts",
        "4",
    )
    # The same two files, the same table (safetensors orders its metadata as it likes).
    assert code == 0 and _load(table).table_id == a


@pytest.mark.parametrize("mode", ["measured", "latent"])
def test_adaptive_encode_fits_the_real_bitrate(clips, tmp_path, capsys, mode):
    pytest.importorskip("librosa")
    out = tmp_path / f"{mode}.mimi"
    code, text, _ = run(
        capsys,
        "encode",
        clips / "clip2.wav",
        out,
        "--kbps",
        "2",
        "--adaptive",
        mode,
        "--json",
        *RANDOM,
    )
    doc = json.loads(text)
    assert code == 0 and doc["adaptive"] == mode and mode in doc["ranking"]
    # --kbps is the real file's rate with --adaptive, over the clip's 1 s.
    assert out.stat().st_size * 8 <= 2000
    mf = MimiFile.parse(out.read_bytes())
    # It spends the budget: one more level on any frame would not fit.
    assert out.stat().st_size * 8 > 2000 - 11 - 8 * 8
    wav = tmp_path / f"{mode}.wav"
    assert run(capsys, "decode", out, wav, *RANDOM)[0] == 0
    assert sf.info(str(wav)).frames == 24_000 and mf.num_frames == 13


def test_adaptive_needs_a_bitrate_the_file_can_meet(clips, tmp_path, capsys):
    out = tmp_path / "x.mimi"
    code, _, err = run(capsys, "encode", clips / "clip1.wav", out, "--adaptive", *RANDOM)
    assert code == 2 and "--adaptive needs --kbps" in err
    code, _, err = run(
        capsys,
        "encode",
        clips / "clip1.wav",
        out,
        "--kbps",
        "0.2",
        "--adaptive",
        "latent",
        *RANDOM,
    )
    assert code == 2 and "below the smallest file" in err and not out.exists()
