"""Content-adaptive level allocation: which levels each frame gets for a target bitrate.

The encoder knows, for free, how far each frame's latent is from its reconstruction after
``k`` levels (``Encoded.latent_error [K, T]``). A :class:`Calibration` maps that to the
distortion we care about (mel distance, fitted on training speech: a monotone map, since
more residual error never means better sound). Minimising the summed distortion under a
bit budget is then a knapsack over frames with one item per extra level; every level
costs the same 11 bits, so after replacing each frame's distortion curve by its lower
convex hull (pool-adjacent-violators on its marginal gains) the Lagrangian / greedy
solution is exact: take the largest marginal gains anywhere until the budget is spent.

The budget counts side information: the per-frame level counts a ``.mimi`` file stores
(``level_width(K)`` bits a frame, packed) come out of the target before codes do.
:func:`fit_allocation` fits a real file instead (headers, padding, and a side information
width that follows the file's level cap, tried at 2, 4, 8, ... levels), and takes any
``[K, T]`` distortion: the calibrated latent error, or per-frame mel distances measured by
decoding (:func:`mimirate.evaluation.distortion.measured_distortion`, for files).

Loudness weighting: each frame's distortion counts in proportion to its RMS to the power
:data:`LOUDNESS_EXPONENT` (:func:`loudness_weights`), since an error in a loud frame is heard
more than the same log-spectral error in a quiet one (PESQ weighs disturbances by loudness
too). The greedy order only compares frames with each other, so the weights' scale is free.

Silence mode: frames the caller marks silent (:func:`silent_frames`: energy below a
threshold) get :data:`SILENCE_LEVELS` and are left out of the auction.

:class:`StreamingAllocator` does the same with a bounded lookahead for live use: it holds
``lookahead`` frames, allocates the window against a bit bucket that carries over- and
under-spending (bounded to :data:`BUCKET_SECONDS`), and releases the oldest frame.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimirate.errors import ConfigError
from mimirate.fileio import atomic_write_bytes
from mimirate.ratecontrol.vad import SILENCE_DBFS, levels_dbfs

#: Levels given to silent frames (a frame cannot have 0 levels in a .mimi file).
SILENCE_LEVELS = 1
#: The streaming allocator's bit bucket holds at most this much over- or under-spending.
BUCKET_SECONDS = 1.0
#: Exponent of :func:`loudness_weights`. Chosen on training speech (16 LibriSpeech
#: train-clean-100 files, mel distance measured at 1..16 levels, at the bytes of fixed 4 / 8
#: levels): exponent 0 / 0.5 / 1 gave PESQ-WB 1.450 / 1.461 / 1.465 and mel distance 0.219 /
#: 0.220 / 0.223 at 0.55 kbit/s, 1.579 / 1.586 / 1.584 and 0.206 / 0.207 / 0.207 at 1.1
#: (fixed levels: 1.433 / 0.223 and 1.584 / 0.205); the latent-error ranking gained PESQ-WB
#: +0.012 and +0.006 from 0.5 as well.
LOUDNESS_EXPONENT = 0.5
#: Floor of the latent error before its logarithm.
ERROR_FLOOR = 1e-12
#: Where fitted calibrations live: ``calibration_<model>.json``.
TABLES_DIR = Path(__file__).resolve().parent / "tables"


def side_bits_per_frame(num_levels: int) -> int:
    """Bits of packed per-frame level side information (as ``mimirate.bitstream`` stores it)."""
    return max(1, (num_levels - 1).bit_length())


@dataclass(frozen=True)
class Calibration:
    """A monotone map from ``log10(latent_error)`` to expected per-frame mel distance.

    Attributes:
        log_error: ``[M]`` increasing knots; mel: ``[M]`` non-decreasing values there
            (linear in between, constant outside).
        model, source, num_frames: provenance.
    """

    log_error: tuple[float, ...]
    mel: tuple[float, ...]
    model: str = ""
    source: str = ""
    num_frames: int = 0

    def __post_init__(self) -> None:
        x, y = np.asarray(self.log_error), np.asarray(self.mel)
        if x.size < 2 or x.shape != y.shape or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
            raise ConfigError("a calibration needs increasing knots and non-decreasing values")

    def __call__(self, latent_error: np.ndarray) -> np.ndarray:
        x = np.log10(np.maximum(np.asarray(latent_error, dtype=np.float64), ERROR_FLOOR))
        return np.interp(x, np.asarray(self.log_error), np.asarray(self.mel))

    @classmethod
    def fit(
        cls, latent_error: np.ndarray, mel: np.ndarray, knots: int = 48, **provenance: str | int
    ) -> Calibration:
        """Least-squares monotone (isotonic) fit of ``mel`` on ``log10(latent_error)``
        (pairs, any shape), summarised at ``knots`` quantiles."""
        x = np.log10(np.maximum(np.asarray(latent_error, np.float64).reshape(-1), ERROR_FLOOR))
        y = np.asarray(mel, np.float64).reshape(-1)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if x.size < knots:
            raise ConfigError(f"a calibration needs at least {knots} (error, mel) pairs")
        order = np.argsort(x, kind="stable")
        x, y = x[order], _isotonic_increasing(y[order])
        qs = np.unique(np.quantile(x, np.linspace(0, 1, knots)))
        ys = np.interp(qs, x, y)
        ys = np.maximum.accumulate(ys)
        return cls(tuple(map(float, qs)), tuple(map(float, ys)), **provenance)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, model_or_path: str | os.PathLike[str]) -> Calibration:
        p = Path(model_or_path)
        if p.suffix != ".json":
            p = TABLES_DIR / f"calibration_{model_or_path}.json"
        try:
            d = json.loads(p.read_text())
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(
                f"no usable calibration at {p} ({e}); fit one with "
                "`python benchmarks/bench_ratecontrol.py --calibrate --model NAME`"
            ) from e


def _isotonic_increasing(y: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators, equal weights (written here: ratecontrol must not need
    scipy, an optional dependency, at run time)."""
    vals: list[float] = []
    counts: list[int] = []
    for v in y.tolist():
        vals.append(v)
        counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            n = counts[-2] + counts[-1]
            vals[-2] = (vals[-2] * counts[-2] + vals[-1] * counts[-1]) / n
            counts[-2] = n
            vals.pop()
            counts.pop()
    return np.repeat(vals, counts)


def hull_gains(distortion: np.ndarray) -> np.ndarray:
    """Marginal gains ``[K-1, T]`` of each next level on the lower convex hull of each
    frame's distortion curve ``[K, T]`` (non-increasing down each column)."""
    d = np.asarray(distortion, dtype=np.float64)
    gains = d[:-1] - d[1:]
    # Gains already non-increasing (the common case) need no pooling.
    bad = np.flatnonzero(np.any(np.diff(gains, axis=0) > 1e-12, axis=0))
    for t in bad:
        gains[:, t] = -_isotonic_increasing(-gains[:, t])
    return gains


@dataclass(frozen=True)
class Allocation:
    """Levels per frame ``[T]`` and the bits they cost (codes + side information)."""

    levels: np.ndarray
    code_bits: int
    side_bits: int
    bps: float  # (code_bits + side_bits) / duration


def allocate(
    latent_error: np.ndarray,
    target_bps: float,
    *,
    calibration: Calibration | None = None,
    silent: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    min_levels: int = 1,
    max_levels: int | None = None,
    frame_rate: float = 12.5,
    bits: int = 11,
    side_bits: int | None = None,
) -> Allocation:
    """Levels per frame minimising the summed (calibrated, weighted) distortion within a budget.

    Args:
        latent_error: ``[K, T]`` from ``Encoded.latent_error``.
        target_bps: average bit/s, side information included.
        calibration: latent error -> mel distance (identity order if None).
        silent: ``[T]`` bool, frames sent at :data:`SILENCE_LEVELS`.
        weights: ``[T]`` non-negative factors of each frame's distortion
            (:func:`loudness_weights`; default all 1).
        min_levels, max_levels: bounds for speech frames.
        side_bits: side information bits per frame (default: the container's packed width).

    Returns:
        :class:`Allocation` with ``levels [T]`` in ``min_levels..max_levels`` (silent frames
        at SILENCE_LEVELS). When even ``min_levels`` everywhere exceeds the target, that
        is what comes back (its ``bps`` says so).
    """
    err = np.asarray(latent_error, dtype=np.float64)
    if err.ndim != 2 or err.shape[0] < 1 or err.shape[1] < 1:
        raise ConfigError(f"latent_error must be [K, T] with K, T >= 1, got {err.shape}")
    if not np.all(np.isfinite(err)):
        raise ConfigError("latent_error has NaN or infinite values")
    k, t = err.shape
    hi = k if max_levels is None else max_levels
    if not 1 <= min_levels <= hi <= k:
        raise ConfigError(f"need 1 <= min_levels <= max_levels <= {k}")
    if not target_bps > 0:
        raise ConfigError(f"target bitrate must be positive, got {target_bps}")
    quiet = np.zeros(t, bool) if silent is None else np.asarray(silent, bool).reshape(-1)
    if quiet.shape != (t,):
        raise ConfigError(f"silent must have one flag per frame ({t})")
    w = _frame_weights(weights, t)
    side = side_bits_per_frame(k) if side_bits is None else side_bits
    budget = target_bps * t / frame_rate - side * t
    levels = np.where(quiet, SILENCE_LEVELS, min_levels).astype(np.int64)
    spare = int(budget // bits) - int(levels.sum())
    speech = np.flatnonzero(~quiet)
    if spare > 0 and speech.size and hi > min_levels:
        dist = calibration(err) if calibration is not None else err
        if w is not None:
            dist = dist * w
        gains = hull_gains(dist[min_levels - 1 : hi, speech])  # [hi - min, S]
        flat = gains.reshape(-1)
        take = min(spare, flat.size)
        # Largest gains first; on ties the lower level first, so each frame takes a prefix.
        rank = np.lexsort((np.repeat(np.arange(gains.shape[0]), gains.shape[1]), -flat))
        chosen = rank[:take]
        counts = np.bincount(chosen % gains.shape[1], minlength=gains.shape[1])
        levels[speech] += counts
    code_bits = int(levels.sum()) * bits
    return Allocation(levels, code_bits, side * t, (code_bits + side * t) * frame_rate / t)


def fit_allocation(
    distortion: np.ndarray,
    budget_bits: int,
    file_bits: Callable[[np.ndarray, int], int],
    *,
    calibration: Calibration | None = None,
    silent: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    caps: Sequence[int] | None = None,
    frame_rate: float = 12.5,
    bits: int = 11,
) -> Allocation:
    """The allocation of least (calibrated) distortion whose real file fits ``budget_bits``.

    :func:`allocate` budgets with the nominal side information; the real size also has
    headers, chunking and byte padding, and the side information's width follows the
    file's level count. So this searches, for each level cap (a file holding levels
    ``1..cap``, side information ``side_bits_per_frame(cap)`` wide), the largest
    :func:`allocate` target whose ``file_bits(levels, cap)`` fits, and keeps the cap whose
    fitting allocation has the least summed distortion.

    Args:
        distortion: ``[K, T]``: ``Encoded.latent_error`` (mapped by ``calibration``), or
            any per-frame distortion after ``1..K`` levels.
        budget_bits: the most bits the file may take.
        file_bits: ``(levels [T], cap) -> bits`` of the real file (the caller's format).
        weights: ``[T]`` factors of each frame's distortion (:func:`loudness_weights`).
        caps: level caps to try (default: 2, 4, 8, ... and ``K``).

    Returns:
        The best fitting :class:`Allocation` (``bps`` from the nominal accounting, as
        :func:`allocate`); when nothing fits, one level everywhere.
    """
    err = np.asarray(distortion, dtype=np.float64)
    if err.ndim != 2:
        raise ConfigError(f"distortion must be [K, T], got {err.shape}")
    k, t = err.shape
    if caps is None:
        caps = sorted({c for c in (2, 4, 8, 16, 32, 64) if c < k} | {k})
    # Calibrated and weighted once here, not in each of the searches' hundred allocate() calls.
    dist = calibration(err) if calibration is not None else err
    w = _frame_weights(weights, t)
    if w is not None:
        dist = dist * w
    cols = np.arange(t)
    best: tuple[float, Allocation] | None = None
    for cap in caps:
        if not 1 <= cap <= k:
            raise ConfigError(f"level caps must be in 1..{k}, got {cap}")
        side = side_bits_per_frame(cap)
        lo, hi = 0.0, 2.0 * budget_bits * frame_rate / t + 1.0
        fit: Allocation | None = None
        for _ in range(20):  # bisection: allocate() grows monotonically with its target
            mid = (lo + hi) / 2
            a = allocate(
                dist[:cap],
                mid,
                silent=silent,
                frame_rate=frame_rate,
                bits=bits,
                side_bits=side,
            )
            if file_bits(a.levels, cap) <= budget_bits:
                fit, lo = a, mid
            else:
                hi = mid
        if fit is not None:
            total = float(dist[fit.levels - 1, cols].sum())
            if best is None or total < best[0]:
                best = (total, fit)
    if best is None:
        side = side_bits_per_frame(k)
        ones = np.ones(t, np.int64)
        return Allocation(ones, t * bits, t * side, (bits + side) * frame_rate)
    return best[1]


def _frame_weights(weights: np.ndarray | None, t: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (t,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"weights must be {t} finite non-negative numbers, one per frame")
    return w


def loudness_weights(
    audio: np.ndarray, frame_size: int, exponent: float = LOUDNESS_EXPONENT
) -> np.ndarray:
    """``[T]`` allocation weights of the frames of ``[N]`` audio: RMS ** ``exponent``
    (full scale = 1; the last frame zero-padded, as the encoder pads it)."""
    return 10.0 ** (levels_dbfs(audio, frame_size) * exponent / 20.0)


def silent_frames(
    audio: np.ndarray, frame_size: int, threshold_dbfs: float = SILENCE_DBFS
) -> np.ndarray:
    """``[T]`` bool: frames of ``[N]`` audio whose RMS is under ``threshold_dbfs``
    (the last frame zero-padded, as the encoder pads it)."""
    return levels_dbfs(audio, frame_size) < threshold_dbfs


class StreamingAllocator:
    """Allocation with a bounded lookahead, one frame in, one frame out.

    Args:
        target_bps: average bit/s, side information included.
        lookahead: frames held before the oldest is decided (delay = lookahead x 80 ms).
        calibration, min_levels, max_levels, bits, side_bits, frame_rate: as :func:`allocate`.
    """

    def __init__(
        self,
        target_bps: float,
        lookahead: int = 8,
        *,
        num_levels: int = 32,
        calibration: Calibration | None = None,
        min_levels: int = 1,
        max_levels: int | None = None,
        frame_rate: float = 12.5,
        bits: int = 11,
        side_bits: int | None = None,
    ) -> None:
        if lookahead < 0:
            raise ConfigError("lookahead must be >= 0 frames")
        self.target_bps = target_bps
        self.lookahead = lookahead
        self.num_levels = num_levels
        self.calibration = calibration
        self.min_levels = min_levels
        self.max_levels = max_levels
        self.frame_rate = frame_rate
        self.bits = bits
        self.side_bits = side_bits_per_frame(num_levels) if side_bits is None else side_bits
        self.bucket = 0.0  # bits saved (> 0) or overspent (< 0) so far
        self._limit = BUCKET_SECONDS * target_bps
        self._window: deque[tuple[np.ndarray, bool, float]] = deque()

    def push(
        self, latent_error: np.ndarray, silent: bool = False, weight: float = 1.0
    ) -> list[int]:
        """Add one frame's ``[K]`` errors (and its :func:`loudness_weights` entry); returns
        the levels of frames now decided (0 or 1)."""
        col = np.asarray(latent_error, dtype=np.float64).reshape(-1)
        if col.size != self.num_levels:
            raise ConfigError(f"expected {self.num_levels} latent errors, got {col.size}")
        if not (np.isfinite(weight) and weight >= 0):
            raise ConfigError(f"a frame's weight must be finite and >= 0, got {weight}")
        self._window.append((col, bool(silent), float(weight)))
        return [self._release()] if len(self._window) > self.lookahead else []

    def flush(self) -> list[int]:
        """Decide every frame still held."""
        return [self._release() for _ in range(len(self._window))]

    def _release(self) -> int:
        n = len(self._window)
        per_frame = self.target_bps / self.frame_rate
        # The window may spend its share plus what the bucket saved (or must pay back),
        # spread over the frames it covers.
        target = max(self.target_bps + self.bucket * self.frame_rate / max(n, 1), 1e-9)
        err = np.stack([c for c, _, _ in self._window], axis=1)
        quiet = np.array([q for _, q, _ in self._window])
        alloc = allocate(
            err,
            target,
            calibration=self.calibration,
            silent=quiet,
            weights=np.array([w for _, _, w in self._window]),
            min_levels=self.min_levels,
            max_levels=self.max_levels,
            frame_rate=self.frame_rate,
            bits=self.bits,
            side_bits=self.side_bits,
        )
        level = int(alloc.levels[0])
        self._window.popleft()
        spent = level * self.bits + self.side_bits
        self.bucket = float(np.clip(self.bucket + per_frame - spent, -self._limit, self._limit))
        return level
