"""Paired comparison of two evaluation runs over the same files.

Two codecs (or two checkpoints of one) scored by ``mimirate eval --json`` on the same files
differ far less between each other than files differ among themselves: ViSQOL's 95 %
interval over 50 LibriSpeech files is about +-0.15, the interval of its per-file *difference*
between two checkpoints about +-0.04. So a comparison takes each file's score under both
runs, and reports the mean of the differences with its t interval
(:func:`mimirate.evaluation.metrics.mean_ci`), per point (codec setting) and metric. Files
and points are matched by name; a value missing (NaN or absent) in either run leaves that
file out of that metric. Points are compared with their namesakes, or as paired explicitly
(``pairs``): two codecs scored in one run, say ``codec2-1200`` against ``mimi-8``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimirate.errors import ConfigError, FormatError
from mimirate.evaluation.metrics import METRICS, MeanCI, MetricInfo, mean_ci

#: Largest evaluation JSON read (a run over 10 000 files at 6 points is ~5 MB).
MAX_BYTES = 256 << 20


@dataclass(frozen=True)
class PairedDifference:
    """One metric at one point (``base_point`` in the base run): the runs' means over the
    shared files and the mean of their per-file differences (``new - base``) with its
    confidence interval."""

    base_point: str
    point: str
    metric: str
    higher_is_better: bool
    base: float
    new: float
    difference: MeanCI

    @property
    def verdict(self) -> str:
        """ "better", "worse" (the interval excludes 0) or "same" (it does not)."""
        d = self.difference
        if d.n < 2 or not (d.low > 0 or d.high < 0):
            return "same"
        return "better" if (d.low > 0) == self.higher_is_better else "worse"

    def to_dict(self) -> dict[str, Any]:
        d = self.difference
        return {
            "base_point": self.base_point,
            "point": self.point,
            "metric": self.metric,
            "files": d.n,
            "base": self.base,
            "new": self.new,
            "difference": d.mean,
            "low": d.low,
            "high": d.high,
            "verdict": self.verdict,
        }


def read_eval_json(path: str | Path) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The per-file rows of a ``mimirate eval --json`` document, by (point, file).

    Raises:
        FormatError: not such a document (unreadable, not JSON, no ``files`` list of rows
            naming their point and file, or one (point, file) twice).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise FormatError(f"{p}: cannot read: {e.strerror or e}") from e
    if len(raw) > MAX_BYTES:
        raise FormatError(f"{p}: larger than {MAX_BYTES >> 20} MiB")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{p}: not JSON ({e})") from e
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise FormatError(f"{p}: no 'files' list (write one with mimirate eval --json)")
    rows: dict[tuple[str, str], Mapping[str, Any]] = {}
    for i, row in enumerate(files):
        if not (
            isinstance(row, dict)
            and isinstance(row.get("point"), str)
            and isinstance(row.get("file"), str)
        ):
            raise FormatError(f"{p}: files[{i}] names no point and file")
        key = (row["point"], row["file"])
        if key in rows:
            raise FormatError(f"{p}: {key[1]} at {key[0]} appears twice")
        rows[key] = row
    return rows


def _score(row: Mapping[str, Any], metric: str) -> float:
    v = row.get(metric)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return math.nan
    return float(v)


def compare_runs(
    base: Mapping[tuple[str, str], Mapping[str, Any]],
    new: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    metrics: Sequence[MetricInfo] = METRICS,
    confidence: float = 0.95,
) -> list[PairedDifference]:
    """Per pair of points (base, new: by default every point both runs scored, with itself)
    and per metric, the paired difference ``new - base`` over the files both scored.

    Raises:
        ConfigError: a pair names a point its run lacks, the runs share no file at any
            pair, or ``confidence`` is not in (0, 1).
    """
    base_points = list(dict.fromkeys(k[0] for k in base))  # in the base run's order
    new_points = set(k[0] for k in new)
    if pairs is None:
        pairs = [(p, p) for p in base_points if p in new_points]
    for b, n in pairs:
        for point, have, which in ((b, base_points, "base"), (n, new_points, "new")):
            if point not in have:
                known = ", ".join(sorted(have))
                raise ConfigError(f"no point {point!r} in the {which} run (it has {known})")
    out = []
    for b_point, n_point in pairs:
        files = [f for p, f in base if p == b_point and (n_point, f) in new]
        for m in metrics:
            a = np.array([_score(base[b_point, f], m.name) for f in files])
            b = np.array([_score(new[n_point, f], m.name) for f in files])
            ok = np.isfinite(a) & np.isfinite(b)
            if not ok.any():
                continue
            diff = mean_ci(b[ok] - a[ok], confidence)
            out.append(
                PairedDifference(
                    b_point,
                    n_point,
                    m.name,
                    m.higher_is_better,
                    float(a[ok].mean()),
                    float(b[ok].mean()),
                    diff,
                )
            )
    if not out:
        raise ConfigError("the two runs share no scored file at any point: nothing to compare")
    return out
