"""The HTML report: figures, table, spectrograms and players from an evaluation result."""

from __future__ import annotations

import re

import numpy as np

from mimirate.audio import write_wav
from mimirate.evaluation.harness import EvalResult, FileScore, Point, summarize
from mimirate.evaluation.metrics import METRIC_RATE, METRICS, MetricScores

POINTS = (Point("mimi", "1"), Point("mimi", "8"), Point("mimi", "32"),
          Point("opus", "6"), Point("codec2", "1200"))  # fmt: skip


def fake_result(tmp_path, rng) -> EvalResult:
    """Scores for 3 files x 5 points, and clips for one file (what the harness writes)."""
    scores = []
    for i, name in enumerate(["a.flac", "b.flac", "c.flac"]):
        for j, p in enumerate(POINTS):
            q = 1.0 + j * 0.5 + 0.1 * i
            scores.append(
                FileScore(name, p.key, 2.0, disk_bytes=100 * (j + 1), entropy_bytes=None,
                          wire_bytes=(500, 300, 200) if p.codec == "mimi" else (), delay=16,
                          scores=MetricScores(q, 0.5 + 0.1 * j, q, 1.0 / q, 5.0 * j))
            )  # fmt: skip
    clips = tmp_path / "out" / "clips"
    t = np.arange(2 * METRIC_RATE) / METRIC_RATE
    write_wav(clips / "a__reference.wav", 0.3 * np.sin(2 * np.pi * 220 * t), METRIC_RATE)
    for p in POINTS:
        noisy = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))
        write_wav(clips / f"a__{p.key}.wav", noisy, METRIC_RATE)
    return EvalResult(
        root=str(tmp_path), files=("a.flac", "b.flac", "c.flac"), model="small",
        codec_name="small", points=summarize(POINTS, scores), scores=tuple(scores),
        elapsed_s=12.0, jobs=2, clip_dir=str(clips),
    )  # fmt: skip


def test_report_has_every_part(tmp_path, rng):
    from mimirate.evaluation.report import write_report

    result = fake_result(tmp_path, rng)
    index = write_report(result, tmp_path / "out")
    page = index.read_text()
    for m in METRICS:
        assert (tmp_path / "out" / f"rate_{m.name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "spectrograms.png").is_file()
    # Figures are embedded: the page reads on its own.
    assert page.count('src="data:image/png;base64,') == len(METRICS) + 1
    # One table row per point, with the real on-disk rate and CI cells.
    for p in result.points:
        assert p.point.label in page
        assert f"{p.disk_kbps:.3f}" in page
    assert "±" in page
    # Every player points at a clip that exists beside the page.
    sources = re.findall(r'<audio controls preload="none" src="([^"]+)"', page)
    assert sources and all((tmp_path / "out" / s).is_file() for s in sources)
    assert "16 kHz" in page and "cross-correlation" in page


def test_report_without_clips_says_so(tmp_path, rng):
    from dataclasses import replace

    from mimirate.evaluation.report import write_report

    result = replace(fake_result(tmp_path, rng), clip_dir=None)
    page = write_report(result, tmp_path / "bare").read_text()
    assert "No clips were written" in page
    assert "<audio" not in page
