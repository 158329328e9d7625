"""Quality of experience per frame: measured codec quality, E-model delay impairment, penalties.

Everything is on the ITU-T G.107 (E-model) transmission rating scale R (0 .. 100, where
MOS 1 is R 0 and MOS 4.5 is R 100), so that codec quality, delay and losses add up:

    qoe[t] = U(levels[t]) - Idd(Ta[t]) - SWITCH_WEIGHT * |U(levels[t]) - U(levels[t-1])|

(never below ``LOST_UTILITY``) for a frame played from ``levels[t]`` levels, and
``LOST_UTILITY`` (R 0, MOS 1) for a frame lost or later than the playout deadline.
``U`` is a :class:`QualityTable`: PESQ-WB MOS-LQO measured on real speech with the codec
at each level count (``benchmarks/bench_ratecontrol.py --quality-table``), mapped to R
through the inverse of G.107's MOS(R). ``Ta`` is the mouth-to-ear delay of the frame: its
playout delay after capture plus the frame itself. ``Idd`` is G.107's delay impairment
(section 7.4, default ``mT = 100 ms, sT = 1``). The previous level of a switch is the last
frame that played.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mimirate.errors import ConfigError
from mimirate.fileio import atomic_write_bytes

#: R of a lost or late frame (MOS 1: nothing intelligible).
LOST_UTILITY = 0.0
#: Weight of a quality switch, per R point of change between consecutive played frames.
SWITCH_WEIGHT = 0.1
#: Codec frame duration counted in the mouth-to-ear delay (Mimi's only algorithmic delay).
FRAME_MS = 80.0
#: Where the measured tables live, one per model: ``quality_<model>.json``.
TABLES_DIR = Path(__file__).resolve().parent / "tables"


def mos_from_r(r: np.ndarray | float) -> np.ndarray | float:
    """G.107 Annex B: MOS (1 .. 4.5) from the rating R."""
    x = np.asarray(r, dtype=np.float64)
    mos = 1.0 + 0.035 * x + x * (x - 60.0) * (100.0 - x) * 7e-6
    # The cubic dips below 1 for 0 < R < 6.5; MOS 1 is the floor of the scale.
    out = np.where(x >= 100, 4.5, np.maximum(mos, 1.0))
    return out if out.ndim else float(out)


_R_GRID = np.linspace(0.0, 100.0, 10001)
_MOS_GRID = mos_from_r(_R_GRID)


def r_from_mos(mos: np.ndarray | float) -> np.ndarray | float:
    """Inverse of :func:`mos_from_r` (increasing from R 6.5; MOS 1 maps into 0 .. 6.5)."""
    out = np.interp(np.asarray(mos, dtype=np.float64), _MOS_GRID, _R_GRID)
    return out if np.ndim(out) else float(out)


def _idd(ta_ms: np.ndarray) -> np.ndarray:
    ta = np.maximum(ta_ms, 100.0)
    x = np.log2(ta / 100.0)
    idd = 25.0 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)
    return np.maximum(idd, 0.0)


# Idd is smooth: a 0.5 ms table up to 10 s (interpolated) is exact to 1e-6 R and 20x faster
# than the powers, which matters inside the offline optimum's dynamic programme.
_IDD_STEP_MS = 0.5
_IDD_TABLE = _idd(np.arange(0.0, 10_000.0 + _IDD_STEP_MS, _IDD_STEP_MS))


def delay_impairment(ta_ms: np.ndarray | float) -> np.ndarray | float:
    """G.107 Idd for mouth-to-ear delay ``ta_ms`` (no echo), 0 up to 100 ms."""
    ta = np.asarray(ta_ms, dtype=np.float64)
    pos = np.clip(ta / _IDD_STEP_MS, 0.0, _IDD_TABLE.size - 1.0)
    lo = np.minimum(pos.astype(np.int64), _IDD_TABLE.size - 2)
    frac = pos - lo
    out = _IDD_TABLE[lo] * (1 - frac) + _IDD_TABLE[lo + 1] * frac
    far = ta > 10_000.0
    if far.any():
        out = np.where(far, _idd(np.where(far, ta, 100.0)), out)
    return out if out.ndim else float(out)


@dataclass(frozen=True)
class QualityTable:
    """Measured quality of the codec at each level count, and where it came from.

    Attributes:
        model: codec preset name; weights_hash: hex of ``Codec.weights_hash``.
        dataset, num_files, command, created: provenance of the measurement.
        pesq_wb: ``[K]`` mean PESQ-WB MOS-LQO at 1..K levels.
        mel_distance: ``[K]`` mean mel distance (mimirate.evaluation.metrics) at 1..K levels.
        utility: ``[K]`` R per level, non-decreasing: ``r_from_mos`` of the running max of
            ``pesq_wb`` (a noisy dip at one level is not a reason to send fewer bits).
    """

    model: str
    weights_hash: str
    dataset: str
    num_files: int
    command: str
    created: str
    pesq_wb: tuple[float, ...]
    mel_distance: tuple[float, ...]
    utility: tuple[float, ...]

    @classmethod
    def from_measurements(
        cls,
        pesq_wb: np.ndarray,
        mel_distance: np.ndarray,
        **provenance: str | int,
    ) -> QualityTable:
        """Build a table from per-level means ``[K]`` and its provenance fields."""
        pesq = np.asarray(pesq_wb, dtype=np.float64).reshape(-1)
        mel = np.asarray(mel_distance, dtype=np.float64).reshape(-1)
        if pesq.size == 0 or pesq.shape != mel.shape or not np.all(np.isfinite(pesq)):
            raise ConfigError("a quality table needs finite PESQ and mel values for every level")
        utility = r_from_mos(np.maximum.accumulate(pesq))
        return cls(
            pesq_wb=tuple(float(v) for v in pesq),
            mel_distance=tuple(float(v) for v in mel),
            utility=tuple(float(v) for v in np.atleast_1d(utility)),
            **provenance,  # type: ignore[arg-type]
        )

    @property
    def num_levels(self) -> int:
        return len(self.utility)

    def utility_of(self, levels: np.ndarray | int) -> np.ndarray:
        """R of frames played from ``levels`` levels (any shape; 0 = lost or late)."""
        lv = np.asarray(levels, dtype=np.int64)
        table = np.concatenate([[LOST_UTILITY], np.asarray(self.utility)])
        return table[np.clip(lv, 0, self.num_levels)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> QualityTable:
        try:
            d = json.loads(text)
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"not a quality table ({e}); re-measure it with "
                "benchmarks/bench_ratecontrol.py --quality-table"
            ) from e

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_bytes(path, self.to_json().encode())


def table_path(model: str) -> Path:
    return TABLES_DIR / f"quality_{model}.json"


def load_quality_table(model_or_path: str | os.PathLike[str]) -> QualityTable:
    """The stored table for a model name (``tables/quality_<model>.json``) or a JSON file."""
    p = Path(model_or_path)
    if p.suffix != ".json":
        p = table_path(str(model_or_path))
    if not p.is_file():
        raise ConfigError(
            f"no quality table at {p}; measure one with "
            "`python benchmarks/bench_ratecontrol.py --quality-table --model NAME`"
        )
    return QualityTable.from_json(p.read_text())


def available_tables() -> list[str]:
    return sorted(p.stem.removeprefix("quality_") for p in TABLES_DIR.glob("quality_*.json"))


@dataclass(frozen=True)
class QoE:
    """Per-frame QoE of one played stream (all ``[T]``).

    Attributes:
        played_levels: levels the frame was played from, 0 = lost or late.
        mouth_to_ear_ms: ``Ta`` of played frames (NaN for lost or late ones).
        utility: ``U(played_levels)``; delay_penalty: ``Idd(Ta)`` (0 when not played);
        switch_penalty: the switch term; qoe: the total.
    """

    played_levels: np.ndarray
    mouth_to_ear_ms: np.ndarray
    utility: np.ndarray
    delay_penalty: np.ndarray
    switch_penalty: np.ndarray
    qoe: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.qoe.mean()) if self.qoe.size else math.nan


def frame_qoe(
    played_levels: np.ndarray,
    playout_delay_ms: np.ndarray,
    table: QualityTable,
    *,
    switch_weight: float = SWITCH_WEIGHT,
) -> QoE:
    """QoE of each frame from the levels it played with ``[T]`` (0 = lost or late) and its
    playout delay after capture ``[T]`` ms (ignored where not played)."""
    lv = np.asarray(played_levels, dtype=np.int64).reshape(-1)
    played = lv > 0
    ta = np.where(played, np.asarray(playout_delay_ms, dtype=np.float64) + FRAME_MS, np.nan)
    u = table.utility_of(lv)
    idd = np.where(played, delay_impairment(np.where(played, ta, 100.0)), 0.0)
    # The previous level of a switch is the last frame that played (lost frames do not reset).
    idx = np.where(played, np.arange(lv.size), -1)
    last = np.maximum.accumulate(idx)
    prev = np.concatenate([[-1], last[:-1]])
    prev_u = np.where(prev >= 0, u[np.maximum(prev, 0)], u)
    switch = np.where(played, switch_weight * np.abs(u - prev_u), 0.0)
    # A frame that plays never scores below one that does not (a late, poor frame is
    # still better than silence), which keeps "drop it" from ever looking attractive.
    qoe = np.where(played, np.maximum(u - idd - switch, LOST_UTILITY), LOST_UTILITY)
    return QoE(lv, ta, u, idd, switch, qoe)
