"""Network capacity traces: reading the shared throughput traces, integrating capacity.

Two formats are read (``../shared/data/traces``):

- rate traces (``hsdpa-norway``, ``fcc``, ``oboe``): one ``time_s  Mbit/s`` pair a line;
  the rate holds from its time to the next line's (the last line for the median step);
- Mahimahi traces (``mahimahi-cellular``): one integer millisecond timestamp a line, each
  one delivery opportunity for a 1500-byte packet; the trace repeats after its last
  timestamp. They are binned into :data:`MAHIMAHI_BIN_MS` pieces of constant rate.

A speech codec runs at kbit/s, the traces at Mbit/s: :func:`load_trace` keeps their shape
and maps 1 Mbit/s to ``scale_kbps`` kbit/s. The default, :data:`DEFAULT_SCALE_KBPS`, puts
the median of the HSDPA and FCC traces (about 1 Mbit/s) at 4 kbit/s, where 40-byte packet
headers, 1..32 levels and packetisation all compete; a scale of 1 (Mbit/s read as kbit/s)
leaves less than the cheapest stream (one level, four frames a packet, ~1.3 kbit/s) on half
of them.

A :class:`Trace` is piecewise-constant capacity that repeats with period ``period_s``
(as Mahimahi replays its traces); :meth:`Trace.bytes_by` integrates it and
:meth:`Trace.time_when` inverts that, which is all a FIFO bottleneck needs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimirate.errors import TraceError

#: kbit/s of simulated capacity per Mbit/s of the trace (see the module docstring).
DEFAULT_SCALE_KBPS = 4.0
#: Bytes of one Mahimahi delivery opportunity.
MAHIMAHI_PACKET_BYTES = 1500
#: Width of the constant-rate pieces a Mahimahi trace is binned into.
MAHIMAHI_BIN_MS = 20
#: Largest trace file read (the biggest shared one is ~4 MB).
MAX_TRACE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Trace:
    """Piecewise-constant link capacity that repeats every ``period_s``.

    Attributes:
        name: where it came from (file name).
        starts_s: ``[M]`` float64 start of each piece, ``starts_s[0] == 0``, increasing.
        rate_bps: ``[M]`` float64 capacity of each piece, ``>= 0``.
        period_s: length of one repetition, ``> starts_s[-1]``.
        cum_bytes: ``[M + 1]`` bytes the link can carry from 0 to each piece start, and
            over the whole period at the end (``> 0``).
    """

    name: str
    starts_s: np.ndarray
    rate_bps: np.ndarray
    period_s: float
    cum_bytes: np.ndarray

    @classmethod
    def from_rates(
        cls, name: str, starts_s: np.ndarray, rate_bps: np.ndarray, period_s: float
    ) -> Trace:
        """Build a trace from piece starts ``[M]`` and rates ``[M]`` (bit/s)."""
        starts = np.asarray(starts_s, dtype=np.float64).reshape(-1)
        rates = np.asarray(rate_bps, dtype=np.float64).reshape(-1)
        if starts.size == 0 or starts.shape != rates.shape:
            raise TraceError(f"{name}: a trace needs as many piece starts as rates, at least one")
        if not (np.all(np.isfinite(starts)) and np.all(np.isfinite(rates))):
            raise TraceError(f"{name}: a trace has a NaN or infinite time or rate")
        if starts[0] != 0.0 or np.any(np.diff(starts) <= 0) or not period_s > starts[-1]:
            raise TraceError(f"{name}: trace times must start at 0 and increase strictly")
        if np.any(rates < 0):
            raise TraceError(f"{name}: a trace has a negative rate")
        widths = np.diff(np.append(starts, period_s))
        cum = np.concatenate([[0.0], np.cumsum(rates * widths / 8.0)])
        if not cum[-1] > 0:
            raise TraceError(f"{name}: the trace never carries a byte (all rates are zero)")
        return cls(name, starts, rates, float(period_s), cum)

    @property
    def mean_bps(self) -> float:
        return float(self.cum_bytes[-1] * 8.0 / self.period_s)

    def rate_at(self, t_s: float) -> float:
        """Capacity at time ``t_s`` (bit/s)."""
        r = math.fmod(t_s, self.period_s)
        return float(self.rate_bps[np.searchsorted(self.starts_s, r, side="right") - 1])

    def bytes_by(self, t_s: np.ndarray | float) -> np.ndarray | float:
        """Bytes the link can carry from time 0 to ``t_s`` (any shape, ``t_s >= 0``)."""
        t = np.asarray(t_s, dtype=np.float64)
        n, r = np.divmod(t, self.period_s)
        i = np.searchsorted(self.starts_s, r, side="right") - 1
        out = (
            n * self.cum_bytes[-1]
            + self.cum_bytes[i]
            + self.rate_bps[i] * (r - self.starts_s[i]) / 8.0
        )
        return out if out.ndim else float(out)

    def time_when(self, nbytes: np.ndarray | float) -> np.ndarray | float:
        """The first time by which the link has carried ``nbytes`` bytes (inverse of bytes_by)."""
        c = np.asarray(nbytes, dtype=np.float64)
        total = self.cum_bytes[-1]
        # n whole periods, then the rest r in (0, total]: the first time is inside a piece
        # whose rate is positive (side="left" skips zero-rate pieces ending at r).
        n = np.maximum(np.ceil(c / total) - 1.0, 0.0)
        r = c - n * total
        i = np.clip(np.searchsorted(self.cum_bytes, r, side="left") - 1, 0, self.starts_s.size - 1)
        rate = self.rate_bps[i]
        inside = np.where(
            rate > 0, (r - self.cum_bytes[i]) * 8.0 / np.where(rate > 0, rate, 1.0), 0.0
        )
        out = np.where(c <= 0, 0.0, n * self.period_s + self.starts_s[i] + inside)
        return out if out.ndim else float(out)

    def scaled(self, factor: float) -> Trace:
        """The same shape with every rate multiplied by ``factor``."""
        if not factor > 0:
            raise TraceError(f"a trace scale must be positive, got {factor}")
        return Trace.from_rates(self.name, self.starts_s, self.rate_bps * factor, self.period_s)


def constant_trace(rate_bps: float, period_s: float = 1.0, name: str = "constant") -> Trace:
    """A link of constant capacity (for tests and calibration)."""
    return Trace.from_rates(name, np.array([0.0]), np.array([float(rate_bps)]), period_s)


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise TraceError(f"{path}: {size} bytes is too large for a trace file")
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read the trace ({e}); pass a text trace file") from e


def parse_trace(text: str, name: str, scale_kbps: float = DEFAULT_SCALE_KBPS) -> Trace:
    """Parse a rate trace or a Mahimahi trace (see the module docstring) from its text."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not rows:
        raise TraceError(f"{name}: the trace is empty")
    width = len(rows[0])
    if width not in (1, 2) or any(len(r) != width for r in rows):
        raise TraceError(
            f"{name}: expected 'time_s Mbit/s' lines or one millisecond timestamp a line"
        )
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise TraceError(f"{name}: a trace line is not a number ({e})") from e
    if not np.all(np.isfinite(values)):
        raise TraceError(f"{name}: the trace has NaN or infinite values")
    factor = scale_kbps * 1e3 / 1e6  # bit/s of simulation per bit/s of trace
    if width == 2:
        times, mbps = values[:, 0], values[:, 1]
        if np.any(np.diff(times) <= 0):
            raise TraceError(f"{name}: trace times must increase strictly")
        times = times - times[0]
        step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
        return Trace.from_rates(name, times, mbps * 1e6 * factor, times[-1] + step)
    stamps = values[:, 0]
    if np.any(stamps < 0) or np.any(np.diff(stamps) < 0) or not stamps[-1] > 0:
        raise TraceError(f"{name}: Mahimahi timestamps must be non-negative, sorted, not all 0")
    period_ms = float(stamps[-1])
    bins = max(1, math.ceil(period_ms / MAHIMAHI_BIN_MS))
    counts = np.bincount(
        np.minimum((stamps // MAHIMAHI_BIN_MS).astype(np.int64), bins - 1), minlength=bins
    )
    starts = np.arange(bins, dtype=np.float64) * MAHIMAHI_BIN_MS / 1e3
    widths = np.diff(np.append(starts, period_ms / 1e3))
    rates = counts * MAHIMAHI_PACKET_BYTES * 8.0 / widths * factor
    return Trace.from_rates(name, starts, rates, period_ms / 1e3)


def load_trace(path: str | os.PathLike[str], scale_kbps: float = DEFAULT_SCALE_KBPS) -> Trace:
    """Read one trace file (either format), 1 Mbit/s mapped to ``scale_kbps`` kbit/s."""
    p = Path(path)
    return parse_trace(_read_text(p), p.name, scale_kbps)


def trace_files(path: str | os.PathLike[str]) -> list[Path]:
    """The trace files at ``path``: the file itself, or a folder's files (sorted, recursive),
    leaving out licences and hidden files."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise TraceError(f"{p}: no such trace file or folder")
    files = sorted(
        f
        for f in p.rglob("*")
        if f.is_file()
        and not f.name.startswith(".")
        and not f.name.upper().startswith("LICENSE")
        and f.suffix.lower() not in (".md", ".txt.gz", ".json")
    )
    if not files:
        raise TraceError(f"{p}: the folder holds no trace files")
    return files
