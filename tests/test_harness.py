"""The evaluation harness end to end on short real clips (tiny random model, real tools)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimirate.bitstream import MimiFile
from mimirate.errors import AudioError, ConfigError
from mimirate.evaluation import harness
from mimirate.evaluation.baselines import Baseline
from mimirate.evaluation.harness import EvalConfig, Point, evaluate, find_audio

have_tools = shutil.which("opusenc") and shutil.which("c2enc")
needs_tools = pytest.mark.skipif(
    not have_tools, reason="opus-tools/codec2 missing (make system-deps)"
)


@pytest.fixture(scope="module")
def clip_set(shared_data, tmp_path_factory):
    """Two 2-second clips of real speech in odd formats: 22.05 kHz stereo FLAC and 16 kHz
    WAV in a subfolder, plus a file that is not audio."""
    src = [
        f
        for f in sorted((shared_data / "speech" / "ljspeech-excerpt").glob("*.wav"))
        if sf.info(f).duration >= 2.0
    ][:2]
    if len(src) < 2:
        pytest.skip("ljspeech-excerpt clips missing")
    root = tmp_path_factory.mktemp("set")
    a, rate = sf.read(src[0], dtype="float32")
    sf.write(root / "a.flac", np.stack([a, a], axis=1)[: 2 * rate], rate)
    b, rate = sf.read(src[1], dtype="float32")
    (root / "sub").mkdir()
    sf.write(root / "sub" / "b.wav", b[: 2 * rate], rate)
    (root / "LICENSE.TXT").write_text("not audio")
    return root


def test_find_audio_searches_folders_and_skips_non_audio(clip_set):
    files = find_audio([clip_set])
    assert [f.name for f in files] == ["a.flac", "b.wav"]
    assert find_audio([clip_set], limit=1) == files[:1]
    with pytest.raises(AudioError, match="not an audio file"):
        find_audio([clip_set / "LICENSE.TXT"])
    with pytest.raises(AudioError, match="no such file"):
        find_audio([clip_set / "missing"])
    with pytest.raises(ConfigError):
        find_audio([clip_set], limit=0)


@pytest.fixture(scope="module")
def tiny_result(clip_set, tmp_path_factory):
    baselines = (Baseline("opus", "8"), Baseline("codec2", "1200")) if have_tools else ()
    clips = tmp_path_factory.mktemp("clips")
    config = EvalConfig(
        model="tiny", random_init=True, levels=(1, 4), baselines=baselines, jobs=1,
        clip_dir=str(clips), clip_files=1,
    )  # fmt: skip
    return evaluate(find_audio([clip_set]), config, progress=False), config


def test_every_file_gets_every_point(tiny_result):
    result, config = tiny_result
    keys = [p.key for p in config.points()]
    assert [p.point.key for p in result.points] == keys
    assert len(result.scores) == 2 * len(keys)
    assert result.files == ("a.flac", "sub/b.wav")
    assert result.codec_name == "tiny"
    for s in result.scores:
        assert s.duration_s == pytest.approx(2.0, abs=1e-3)
        assert all(np.isfinite(v) or name == "pesq_wb" for name, v in s.scores._asdict().items())


def test_mimi_rates_come_from_real_file_bytes(tiny_result):
    result, _ = tiny_result
    row = next(s for s in result.scores if s.point == "mimi-4")
    frames = 25  # 2 s at 12.5 Hz
    # A plain .mimi file of 4 levels x 25 frames: its size, built independently.
    expected = len(MimiFile.blank(num_levels=4, num_frames=frames, model="tiny").to_bytes())
    assert row.disk_bytes == expected
    assert len(row.wire_bytes) == 3
    assert row.wire_bytes[0] > row.wire_bytes[1] > row.wire_bytes[2]  # fewer headers
    assert row.wire_bytes[0] >= frames * 40  # one 40-byte header per packet at least
    p = next(p for p in result.points if p.point.key == "mimi-4")
    assert p.nominal_kbps == pytest.approx(0.55)
    assert p.disk_kbps == pytest.approx(2 * expected * 8 / 4.0 / 1000)
    assert p.disk_kbps > p.nominal_kbps  # header and CRCs are paid for
    assert p.entropy_kbps is None


@needs_tools
def test_baseline_rates_match_their_modes(tiny_result):
    result, _ = tiny_result
    by_key = {p.point.key: p for p in result.points}
    assert by_key["codec2-1200"].disk_kbps == pytest.approx(1.2, abs=0.02)
    assert 6.0 < by_key["opus-8"].disk_kbps < 11.0  # Ogg headers weigh on 2 s clips
    assert by_key["opus-8"].wire_kbps == ()
    # Real speech through a real codec: intelligible once aligned.
    assert by_key["opus-8"].metrics.stoi.mean > 0.75


def test_clips_written_for_the_first_file_only(tiny_result):
    _, config = tiny_result
    names = sorted(p.name for p in Path(config.clip_dir).iterdir())
    assert names == sorted(["a__reference.wav"] + [f"a__{p.key}.wav" for p in config.points()])


def test_json_is_strict_and_complete(tiny_result):
    result, config = tiny_result
    text = json.dumps(result.to_dict(), allow_nan=False)
    d = json.loads(text)
    assert d["num_files"] == 2 and d["metric_rate_hz"] == 16000
    assert {p["key"] for p in d["points"]} == {p.key for p in config.points()}
    assert set(d["points"][0]["metrics"]) == {"pesq_wb", "stoi", "visqol", "mel_distance", "si_sdr"}


@needs_tools
def test_worker_pool_gives_the_same_numbers(clip_set):
    config = EvalConfig(model=None, baselines=(Baseline("codec2", "700C"),), jobs=1)
    one = evaluate(find_audio([clip_set]), config, progress=False)
    two = evaluate(
        find_audio([clip_set]), EvalConfig(model=None, baselines=config.baselines, jobs=2),
        progress=False,
    )  # fmt: skip
    assert one.scores == two.scores


def test_bad_configs_are_refused(clip_set):
    files = find_audio([clip_set])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate(files, EvalConfig(model=None, baselines=()), progress=False)
    with pytest.raises(ConfigError, match="jobs"):
        evaluate(files, EvalConfig(model=None, jobs=0), progress=False)
    with pytest.raises(ConfigError, match="levels"):
        evaluate(files, EvalConfig(model="tiny", random_init=True, levels=(40,), baselines=()),
                 progress=False)  # fmt: skip


def test_point_labels():
    assert Point("mimi", "8").label == "Mimi 8 lv"
    assert Point("opus", "6").label == "Opus 6k"
    assert harness._nominal_kbps(Point("codec2", "700C"), 11, 12.5) == 0.7
    assert harness._nominal_kbps(Point("codec2", "3200"), 11, 12.5) == 3.2


@pytest.mark.parametrize("ranking", ["measured", "latent"])
def test_adaptive_points_use_per_frame_levels_within_target(clip_set, ranking):
    config = EvalConfig(
        model="tiny",
        random_init=True,
        levels=(2,),
        adaptive_kbps=(1.0,),
        adaptive_ranking=ranking,
        baselines=(),
    )
    result = evaluate(find_audio([clip_set]), config, progress=False)
    p = next(p for p in result.points if p.point.codec == "adaptive")
    assert p.point.label == "Mimi adaptive 1k"
    # The target is the real file's rate (header, CRCs and side information included),
    # and the allocation spends most of it.
    assert 0.8 < p.disk_kbps <= 1.0
    assert len(p.wire_kbps) == 3


def test_unknown_adaptive_ranking_is_a_config_error(clip_set):
    config = EvalConfig(
        model="tiny",
        random_init=True,
        levels=(2,),
        adaptive_kbps=(1.0,),
        adaptive_ranking="oracle",
        baselines=(),
    )
    with pytest.raises(ConfigError, match="adaptive_ranking"):
        evaluate(find_audio([clip_set]), config, progress=False)


@needs_tools
def test_cli_writes_json_and_report(clip_set, tmp_path, capsys):
    from mimirate.cli import main

    out = tmp_path / "r.json"
    report = tmp_path / "report"
    code = main([
        "eval", str(clip_set), "--model", "none", "--baselines", "codec2:700C", "--limit", "1",
        "--jobs", "1", "--json", str(out), "--report", str(report),
    ])  # fmt: skip
    assert code == 0
    d = json.loads(out.read_text())
    assert [p["key"] for p in d["points"]] == ["codec2-700C"]
    assert "Codec 2 700C" in capsys.readouterr().out
    assert (report / "index.html").is_file() and (report / "clips" / "a__reference.wav").is_file()
    assert main(["eval", str(clip_set / "missing")]) == 2  # a clean MimirateError


def test_cli_entropy_finds_the_packaged_table_by_weights_hash(monkeypatch, tmp_path):
    from mimirate.bitstream import entropy
    from mimirate.cli.eval import _entropy_table_path
    from mimirate.errors import ConfigError
    from mimirate.models.loading import load_codec

    monkeypatch.setattr(entropy, "ASSETS", tmp_path)
    with pytest.raises(ConfigError, match="entropy-fit"):
        _entropy_table_path("auto", "tiny", random_init=True)
    codec = load_codec("tiny", random_init=True)
    path = tmp_path / "tiny" / f"entropy-{codec.weights_hash.hex()}.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"")
    assert _entropy_table_path("auto", "tiny", random_init=True) == str(path)
    assert _entropy_table_path("given.safetensors", "tiny") == "given.safetensors"
    assert _entropy_table_path(None, "tiny") is None
