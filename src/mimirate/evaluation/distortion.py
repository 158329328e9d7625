"""Measured per-frame distortion (what each level count does to each frame, by decoding),
and content-adaptive files built on it.

The encoder's free estimate (``Encoded.latent_error``, calibrated) ranks a frame's levels
by how much the decoder's input moves; this decodes the file at every level count up to
a cap and measures each frame's log-mel distance to the input, the same mel distance the
evaluation reports (:func:`mimirate.evaluation.metrics.log_mel`). It costs one decode per
level count, which a file encoder can afford and a live sender cannot. On 20 dev files with
the `small` model, allocating on it reaches fixed 8 levels' mel distance with 67 % of
the bytes, where the free estimate does not reach it (`benchmarks/bench_ratecontrol.py
--allocation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mimirate.audio import resample
from mimirate.errors import ConfigError
from mimirate.evaluation.align import DEFAULT_MAX_DELAY_S, estimate_delay, shift
from mimirate.evaluation.metrics import MEL_HOP, METRIC_RATE, log_mel

if TYPE_CHECKING:
    from mimirate.bitstream import EntropyTable, MimiFile
    from mimirate.codec import Codec, Encoded


class FrameMel:
    """One input's log-mel, and per codec frame distances of decodes to it.

    Args:
        codec: the codec that made ``enc``.
        samples: ``[N]`` the input at ``codec.sample_rate``.
        enc: its encoding (all levels wanted later).
        delay: the decoder's delay in samples at 16 kHz (None: estimated once from the
            decode at all levels).
    """

    def __init__(
        self, codec: Codec, samples: np.ndarray, enc: Encoded, delay: int | None = None
    ) -> None:
        if enc.codes.ndim != 2:
            raise ConfigError("measured distortion takes one signal's codes [K, T]")
        self.codec, self.enc = codec, enc
        self.reference = resample(np.asarray(samples, np.float32), codec.sample_rate, METRIC_RATE)
        self.reference_mel = log_mel(self.reference)
        if delay is None:
            full = self._at_16k(codec.decode(enc.codes))
            delay = estimate_delay(self.reference, full, int(DEFAULT_MAX_DELAY_S * METRIC_RATE))
        self.delay = delay
        # Mel frames of one codec frame: 80 ms / 16 ms = 5 for Mimi's geometry.
        self.hop = codec.frame_size * METRIC_RATE / codec.sample_rate / MEL_HOP

    def _at_16k(self, decoded: np.ndarray) -> np.ndarray:
        return resample(decoded[: self.enc.num_samples + 4000], self.codec.sample_rate, METRIC_RATE)

    def degraded(self, levels: np.ndarray) -> np.ndarray:
        """The decode at per-frame ``levels [T]`` at 16 kHz, aligned to the reference."""
        out = self.codec.decode(self.enc.codes, np.asarray(levels))
        return shift(self._at_16k(out), self.delay, self.reference.size)

    def distances(self, degraded: np.ndarray) -> tuple[float, np.ndarray]:
        """The file's mel distance (:func:`~mimirate.evaluation.metrics.mel_distance` of
        aligned signals) and ``[T]`` each codec frame's (NaN past the signal's end)."""
        d = np.abs(log_mel(degraded) - self.reference_mel).mean(axis=0)
        t = self.enc.num_frames
        edges = np.round(np.arange(t + 1) * self.hop).astype(np.int64)
        out = np.full(t, np.nan)
        for i in range(t):
            seg = d[edges[i] : edges[i + 1]]
            if seg.size:
                out[i] = seg.mean()
        return float(d.mean()), out

    def per_level(self, max_levels: int = 16, progress: bool = False) -> np.ndarray:
        """``[K, T]`` per-frame log-mel distance after ``1..K`` levels, measured by decoding.

        Rows past ``max_levels`` repeat its row (those levels are not measured and so never
        bought), rows are made non-increasing (a level never counts as harm: decoder context
        makes single frames noisy), and frames without mel frames take the file's mean. Feed
        it to :func:`mimirate.ratecontrol.allocation.allocate` or ``fit_allocation`` with no
        calibration. ``progress`` shows a bar over the decodes (minutes for a long file).
        """
        from tqdm import tqdm

        k_all, t = self.enc.codes.shape[-2], self.enc.num_frames
        if not 1 <= max_levels <= k_all:
            raise ConfigError(f"max_levels must be in 1..{k_all}, got {max_levels}")
        levels = tqdm(
            range(1, max_levels + 1), desc="decoding each level count", unit="level",
            disable=not progress, leave=False,
        )  # fmt: skip
        rows = np.stack([self.distances(self.degraded(np.full(t, k)))[1] for k in levels])
        fill = np.nanmean(rows) if np.isfinite(rows).any() else 0.0
        rows = np.where(np.isfinite(rows), rows, fill)
        rows = np.concatenate([rows, np.repeat(rows[-1:], k_all - max_levels, axis=0)])
        return np.minimum.accumulate(rows, axis=0)


def measured_distortion(
    codec: Codec, samples: np.ndarray, enc: Encoded, max_levels: int = 16, progress: bool = False
) -> np.ndarray:
    """:meth:`FrameMel.per_level` of ``samples`` coded as ``enc``."""
    return FrameMel(codec, samples, enc).per_level(max_levels, progress)


#: How :func:`adaptive_file` ranks levels: decoding (files) or the free latent error.
RANKINGS = ("measured", "latent")


def adaptive_file(
    codec: Codec,
    samples: np.ndarray,
    enc: Encoded,
    bps: float,
    *,
    ranking: str = "measured",
    chunk_frames: int | None = None,
    entropy_table: EntropyTable | None = None,
    progress: bool = False,
) -> tuple[MimiFile, str]:
    """The ``.mimi`` file of ``enc`` at per-frame levels of at most ``bps`` bit/s on disk
    (its bytes over the input's duration).

    Levels are allocated to minimise the summed distortion, each frame's weighted by its
    loudness (silent frames at one level;
    :func:`mimirate.ratecontrol.allocation.fit_allocation`), ranked by ``ranking``:
    "measured", each frame's mel distance decoded at 1..16 levels (:func:`measured_distortion`);
    or "latent", ``enc.latent_error`` through the model's calibration (raw without one).

    ``progress`` shows a bar over the measured ranking's decodes.

    Returns:
        The file (its level count is the highest level used) and a description of the
        ranking. Raises :class:`~mimirate.errors.ConfigError` when even one level per frame
        does not fit.
    """
    from mimirate.bitstream import MimiFile
    from mimirate.bitstream.container import DEFAULT_CHUNK_FRAMES
    from mimirate.ratecontrol.allocation import (
        Calibration,
        fit_allocation,
        loudness_weights,
        silent_frames,
    )

    if ranking not in RANKINGS:
        raise ConfigError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if enc.codes.ndim != 2:
        raise ConfigError("an adaptive file takes one signal's codes [K, T]")

    def file_of(levels: np.ndarray, cap: int) -> MimiFile:
        uniform = bool(np.all(levels == cap))
        return MimiFile.of_codec(
            codec,
            enc.codes[:cap],
            enc.num_samples,
            levels=None if uniform else levels.astype(np.uint8),
            chunk_frames=DEFAULT_CHUNK_FRAMES if chunk_frames is None else chunk_frames,
            entropy=entropy_table is not None,
            entropy_table=entropy_table,
        )

    calibration: Calibration | None = None
    if ranking == "measured":
        distortion = measured_distortion(
            codec, samples, enc, min(16, enc.num_levels), progress=progress
        )
        source = f"measured mel distance, 1..{min(16, enc.num_levels)} levels"
    else:
        distortion = enc.latent_error
        try:
            calibration = Calibration.load(codec.name)
            source = f"latent error, calibration {codec.name}"
        except ConfigError:
            source = "raw latent error (the model has no calibration)"
    # Over the audio's own duration, not the frames' (the last one is padded): the file
    # then meets the rate by either reckoning.
    budget = int(bps * enc.num_samples / codec.sample_rate)
    alloc = fit_allocation(
        distortion,
        budget,
        lambda levels, cap: 8 * len(file_of(levels, cap).to_bytes()),
        calibration=calibration,
        silent=silent_frames(samples, codec.frame_size),
        weights=loudness_weights(samples, codec.frame_size),
        frame_rate=codec.frame_rate,
        bits=codec.bits_per_code,
    )
    mf = file_of(alloc.levels, int(alloc.levels.max()))
    if 8 * len(mf.to_bytes()) > budget:
        raise ConfigError(f"{bps / 1000:g} kbit/s is below the smallest file (one level per frame)")
    return mf, source
