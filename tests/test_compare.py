"""Paired comparison of two evaluation runs (mimirate.evaluation.compare, mimirate compare)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from mimirate.cli import main
from mimirate.errors import ConfigError, FormatError
from mimirate.evaluation.compare import compare_runs, read_eval_json


def _doc(rows: list[tuple[str, str, dict[str, float | None]]]) -> dict:
    return {"files": [{"point": p, "file": f, **scores} for p, f, scores in rows]}


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


BASE = _doc(
    [
        ("mimi-8", "a.flac", {"pesq_wb": 1.5, "mel_distance": 0.30, "visqol": 1.8}),
        ("mimi-8", "b.flac", {"pesq_wb": 1.7, "mel_distance": 0.20, "visqol": None}),
        ("mimi-8", "c.flac", {"pesq_wb": 1.2, "mel_distance": 0.40, "visqol": 2.0}),
        ("mimi-8", "d.flac", {"pesq_wb": 1.4, "mel_distance": 0.25, "visqol": 1.9}),
        ("opus-6", "a.flac", {"pesq_wb": 2.0}),
    ]
)
NEW = _doc(
    [
        ("mimi-8", "c.flac", {"pesq_wb": 1.3, "mel_distance": 0.41, "visqol": 2.1}),
        ("mimi-8", "a.flac", {"pesq_wb": 1.6, "mel_distance": 0.32, "visqol": 1.7}),
        ("mimi-8", "b.flac", {"pesq_wb": 1.9, "mel_distance": 0.21, "visqol": 1.0}),
        ("mimi-8", "d.flac", {"pesq_wb": 1.5, "mel_distance": 0.27, "visqol": 2.0}),
        ("mimi-32", "a.flac", {"pesq_wb": 2.5}),
    ]
)


def test_paired_differences_their_intervals_and_verdicts(tmp_path: Path) -> None:
    base = read_eval_json(_write(tmp_path / "base.json", BASE))
    new = read_eval_json(_write(tmp_path / "new.json", NEW))
    rows = {(r.point, r.metric): r for r in compare_runs(base, new)}
    # Only the point both runs scored; only metrics with values in both.
    assert {p for p, _ in rows} == {"mimi-8"}
    assert {m for _, m in rows} == {"pesq_wb", "mel_distance", "visqol"}
    pesq = rows["mimi-8", "pesq_wb"]
    diffs = [0.1, 0.2, 0.1, 0.1]  # a, b, c, d
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert pesq.difference.n == 4
    assert pesq.difference.mean == pytest.approx(mean)
    assert (pesq.difference.low, pesq.difference.high) == pytest.approx((mean - half, mean + half))
    assert (pesq.base, pesq.new) == pytest.approx((1.45, 1.575))
    assert pesq.verdict == "better"
    # Mel distance rose on every file: lower is better, so worse.
    assert rows["mimi-8", "mel_distance"].verdict == "worse"
    # b has no ViSQOL in the base: three files, differences -0.1, +0.1, +0.1: not significant.
    visqol = rows["mimi-8", "visqol"]
    assert visqol.difference.n == 3 and visqol.verdict == "same"
    assert visqol.to_dict()["files"] == 3


def test_the_cli_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _write(tmp_path / "a.json", BASE), _write(tmp_path / "b.json", NEW)
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "pesq_wb" in table and "better" in table and "opus-6" not in table
    assert main(["compare", str(a), str(b), "--json", "--confidence", "0.9"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["confidence"] == 0.9
    assert {d["metric"] for d in doc["differences"]} == {"pesq_wb", "mel_distance", "visqol"}


def test_two_points_of_one_run_are_paired_by_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _doc(
        [
            ("codec2-1200", "a.flac", {"stoi": 0.80}),
            ("codec2-1200", "b.flac", {"stoi": 0.70}),
            ("codec2-1200", "c.flac", {"stoi": 0.75}),
            ("mimi-8", "a.flac", {"stoi": 0.85}),
            ("mimi-8", "b.flac", {"stoi": 0.74}),
        ]
    )
    rows = read_eval_json(_write(tmp_path / "run.json", run))
    (r,) = compare_runs(rows, rows, pairs=[("codec2-1200", "mimi-8")])
    assert (r.base_point, r.point, r.metric) == ("codec2-1200", "mimi-8", "stoi")
    assert r.difference.n == 2 and r.difference.mean == pytest.approx(0.045)
    assert (r.base, r.new) == pytest.approx((0.75, 0.795))  # c.flac has no mimi-8 score
    with pytest.raises(ConfigError, match="no point 'opus-6' in the new run"):
        compare_runs(rows, rows, pairs=[("mimi-8", "opus-6")])
    path = str(tmp_path / "run.json")
    assert main(["compare", path, path, "--pair", "codec2-1200:mimi-8"]) == 0
    assert "codec2-1200 -> mimi-8" in capsys.readouterr().out
    assert main(["compare", path, path, "--pair", "mimi-8"]) == 2
    assert "BASE_POINT:NEW_POINT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "no 'files' list"),
        (b'{"files": [{"point": "x"}]}', "names no point and file"),
        (
            b'{"files": [{"point": "x", "file": "a"}, {"point": "x", "file": "a"}]}',
            "appears twice",
        ),
    ],
)
def test_bad_documents_raise_format_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=message):
        read_eval_json(path)


def test_unreadable_or_unrelated_runs_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read_eval_json(tmp_path / "missing.json")
    a = read_eval_json(_write(tmp_path / "a.json", _doc([("p", "x", {"stoi": 0.5})])))
    b = read_eval_json(_write(tmp_path / "b.json", _doc([("p", "y", {"stoi": 0.5})])))
    with pytest.raises(ConfigError, match="share no scored file"):
        compare_runs(a, b)
    with pytest.raises(ConfigError, match="confidence"):
        compare_runs(a, a, confidence=1.5)
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
