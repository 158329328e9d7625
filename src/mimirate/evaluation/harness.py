"""Rate-quality evaluation over a set of speech files: our codec and the baselines.

For every file and every *point* (Mimi at ``k`` levels, or a baseline setting):

1. encode to real bytes: a ``.mimi`` file (:class:`mimirate.bitstream.MimiFile`) for
   Mimi, cut to ``k`` levels, optionally entropy coded; the codec's own file for a
   baseline (:mod:`mimirate.evaluation.baselines`);
2. decode what those bytes hold (for Mimi, the codes parsed back from the file);
3. resample the output and the original to 16 kHz (soxr), remove the delay
   (:mod:`mimirate.evaluation.align`), and score (:mod:`mimirate.evaluation.metrics`).

Bitrates are bytes x 8 over the audio's duration, pooled over the set (total bytes
over total seconds), never the nominal figure alone. Files are spread over a process
pool, each worker loading the codec once and running torch and numba on one thread;
results come back in file order, so the same inputs give the same numbers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mimirate.audio import read_audio, resample, write_wav
from mimirate.errors import AudioError, ConfigError, FormatError
from mimirate.evaluation import metrics
from mimirate.evaluation.align import DEFAULT_MAX_DELAY_S, align
from mimirate.evaluation.baselines import Baseline, default_baselines, run_baseline
from mimirate.evaluation.metrics import METRIC_RATE, MeanCI, MetricScores, mean_ci

DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
#: Frames per packet that wire rates are given for (each packet pays 40 header bytes).
WIRE_FRAMES: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class Point:
    """One codec setting on the rate-quality plane."""

    codec: str  # "mimi", "opus" or "codec2"
    setting: str  # Mimi: levels ("8"); Opus: kbit/s ("6"); Codec 2: mode ("700C")

    @property
    def key(self) -> str:
        """File-name-safe id: ``mimi-8``, ``opus-6``, ``codec2-700C``."""
        return f"{self.codec}-{self.setting}"

    @property
    def label(self) -> str:
        if self.codec == "mimi":
            return f"Mimi {self.setting} lv"
        if self.codec == "adaptive":
            return f"Mimi adaptive {self.setting}k"
        return Baseline(self.codec, self.setting).label


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        model: preset name or checkpoint path for :func:`mimirate.load_codec`; None
            evaluates no Mimi points.
        random_init, seed: build the preset with random weights (tests, timing).
        levels: level counts to evaluate Mimi at (each a cut of one 32-level encode).
        adaptive_kbps: real file bitrates (kbit/s, container and side information
            included) for content-adaptive per-frame levels
            (:func:`mimirate.evaluation.distortion.adaptive_file`, silent frames at 1 level).
        adaptive_ranking: how those levels are ranked: "measured" (decoding each level
            count) or "latent" (the encoder's calibrated latent error).
        baselines: classical codec settings to run.
        entropy_table: path of an entropy table (``EntropyTable.save``) to also size the
            entropy-coded ``.mimi`` file; None: plain files only.
        jobs: worker processes (1: run in this process).
        max_delay_s: bound of the delay search.
        clip_dir: where to write the 16 kHz signals that were scored (reference and
            every point) for the first ``clip_files`` files; None: write none.
        clip_files: how many files get clips.
        device: torch device of the codec.
    """

    model: str | None = None
    random_init: bool = False
    seed: int = 0
    levels: tuple[int, ...] = DEFAULT_LEVELS
    adaptive_kbps: tuple[float, ...] = ()
    adaptive_ranking: str = "measured"
    baselines: tuple[Baseline, ...] = field(default_factory=default_baselines)
    entropy_table: str | None = None
    jobs: int = 1
    max_delay_s: float = DEFAULT_MAX_DELAY_S
    clip_dir: str | None = None
    clip_files: int = 3
    device: str = "cpu"

    def points(self) -> tuple[Point, ...]:
        if self.model is None:
            return tuple(Point(b.codec, b.setting) for b in self.baselines)
        mimi = tuple(Point("mimi", str(k)) for k in self.levels)
        adaptive = tuple(Point("adaptive", f"{r:g}") for r in self.adaptive_kbps)
        return mimi + adaptive + tuple(Point(b.codec, b.setting) for b in self.baselines)


@dataclass(frozen=True)
class FileScore:
    """One file at one point.

    Attributes:
        file: the file's path relative to the set's root.
        point: :attr:`Point.key`.
        duration_s: seconds of input audio.
        disk_bytes: the stored file: plain ``.mimi`` or the baseline's own file.
        entropy_bytes: the entropy-coded ``.mimi`` file (Mimi with a table only).
        wire_bytes: audio packets plus 40 header bytes each, at 1, 2, 4 frames per
            packet (Mimi only; empty for baselines).
        delay: the codec delay removed before scoring, samples at 16 kHz.
        scores: the metrics.
    """

    file: str
    point: str
    duration_s: float
    disk_bytes: int
    entropy_bytes: int | None
    wire_bytes: tuple[int, ...]
    delay: int
    scores: MetricScores


class MetricSummary(NamedTuple):
    """Mean and 95% CI of each metric over the files (fields as :class:`MetricScores`)."""

    pesq_wb: MeanCI
    stoi: MeanCI
    visqol: MeanCI
    mel_distance: MeanCI
    si_sdr: MeanCI


@dataclass(frozen=True)
class PointSummary:
    """One point over the whole set. Rates are pooled: total bytes x 8 / total seconds.

    Attributes:
        nominal_kbps: ``levels x 11 x 12.5`` for Mimi, the target for Opus, the mode's
            rate for Codec 2.
        disk_kbps: stored file (plain ``.mimi``, Ogg Opus, headerless Codec 2 frames).
        entropy_kbps: entropy-coded ``.mimi`` (None without a table, or for baselines).
        wire_kbps: at 1, 2, 4 frames per packet with 40-byte headers (Mimi only).
        median_delay_ms: median delay removed before scoring.
    """

    point: Point
    files: int
    seconds: float
    nominal_kbps: float
    disk_kbps: float
    entropy_kbps: float | None
    wire_kbps: tuple[float, ...]
    median_delay_ms: float
    metrics: MetricSummary


@dataclass(frozen=True)
class EvalResult:
    """Everything an evaluation measured."""

    root: str  # the set (common folder of the files)
    files: tuple[str, ...]
    model: str | None  # as asked for
    codec_name: str | None  # the loaded preset's name
    points: tuple[PointSummary, ...]
    scores: tuple[FileScore, ...]
    elapsed_s: float
    jobs: int
    clip_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None)."""
        return _jsonable(
            {
                "root": self.root,
                "model": self.model,
                "codec_name": self.codec_name,
                "num_files": len(self.files),
                "seconds": self.points[0].seconds if self.points else 0.0,
                "elapsed_s": self.elapsed_s,
                "jobs": self.jobs,
                "metric_rate_hz": METRIC_RATE,
                "points": [_point_dict(p) for p in self.points],
                "files": [_file_dict(f) for f in self.scores],
            }
        )


def _point_dict(p: PointSummary) -> dict[str, Any]:
    return {
        "key": p.point.key,
        "label": p.point.label,
        "codec": p.point.codec,
        "setting": p.point.setting,
        "files": p.files,
        "seconds": p.seconds,
        "nominal_kbps": p.nominal_kbps,
        "disk_kbps": p.disk_kbps,
        "entropy_kbps": p.entropy_kbps,
        "wire_kbps": dict(zip(map(str, WIRE_FRAMES), p.wire_kbps, strict=False)),
        "median_delay_ms": p.median_delay_ms,
        "metrics": {name: ci._asdict() for name, ci in p.metrics._asdict().items()},
    }


def _file_dict(f: FileScore) -> dict[str, Any]:
    return {
        "file": f.file,
        "point": f.point,
        "duration_s": f.duration_s,
        "disk_bytes": f.disk_bytes,
        "entropy_bytes": f.entropy_bytes,
        "wire_bytes": dict(zip(map(str, WIRE_FRAMES), f.wire_bytes, strict=False)),
        "delay_samples_16k": f.delay,
        **f.scores._asdict(),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- the set


def find_audio(inputs: Sequence[str | os.PathLike[str]], limit: int | None = None) -> list[Path]:
    """The audio files of ``inputs`` (files, or folders searched recursively), sorted.

    In folders, files libsndfile cannot open (licences, transcripts) are skipped; a
    file named directly must be audio. Raises :class:`AudioError` when none is found.
    """
    import soundfile as sf

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            try:
                sf.info(str(p))
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(f"{p}: not an audio file libsndfile can read ({e})") from None
            found.append(p)
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                try:
                    sf.info(str(f))
                except (sf.LibsndfileError, RuntimeError):
                    continue
                found.append(f)
        else:
            raise AudioError(f"{p}: no such file or folder")
    found = sorted(dict.fromkeys(found))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        found = found[:limit]
    if not found:
        raise AudioError(
            f"no audio files in {', '.join(map(str, inputs))}; give folders or files "
            "in a format libsndfile reads (wav, flac, ogg, mp3, ...)"
        )
    return found


def _common_root(files: Sequence[Path]) -> Path:
    parents = [f.resolve().parent for f in files]
    return Path(os.path.commonpath([str(p) for p in parents]))


# ---------------------------------------------------------------------- the work


class _Worker:
    """Per-process state: the codec (loaded once) and the entropy table."""

    def __init__(self, config: EvalConfig) -> None:
        from mimirate.evaluation.distortion import RANKINGS

        if config.adaptive_ranking not in RANKINGS:
            raise ConfigError(
                f"adaptive_ranking must be one of {RANKINGS}, got {config.adaptive_ranking!r}"
            )
        self.config = config
        self.codec = None
        self.table = None
        if config.model is not None:
            import torch

            import mimirate

            torch.set_num_threads(1)
            self.codec = mimirate.load_codec(
                config.model,
                device=config.device,
                random_init=config.random_init,
                seed=config.seed,
            )
            for k in config.levels:
                if not 1 <= k <= self.codec.num_levels:
                    raise ConfigError(
                        f"levels must be in 1..{self.codec.num_levels} for this model, got {k}"
                    )
        if config.entropy_table is not None:
            from mimirate.bitstream import EntropyTable

            self.table = EntropyTable.load(config.entropy_table)
            if self.codec is None:
                raise ConfigError("an entropy table needs a model to evaluate")
            if self.table.weights_hash != self.codec.weights_hash:
                raise ConfigError(
                    f"the entropy table {config.entropy_table} was fitted for weights "
                    f"{self.table.weights_hash.hex()}, not this model's "
                    f"{self.codec.weights_hash.hex()}; refit it with `mimirate entropy-fit`"
                )

    def run(self, path: Path, name: str, write_clips: bool) -> list[FileScore]:
        cfg = self.config
        ref = read_audio(path, METRIC_RATE).samples
        duration = len(ref) / METRIC_RATE
        if len(ref) < metrics.MIN_SAMPLES:
            raise AudioError(f"{path}: {duration:.2f} s is too short to score; give >= 1 s")
        max_delay = round(cfg.max_delay_s * METRIC_RATE)
        clips = Path(cfg.clip_dir) if (write_clips and cfg.clip_dir) else None
        stem = _clip_stem(name)
        if clips is not None:
            write_wav(clips / f"{stem}__reference.wav", ref, METRIC_RATE)

        out: list[FileScore] = []

        def finish(point: Point, decoded: np.ndarray, rate: int, **sizes: Any) -> None:
            deg = resample(np.asarray(decoded, dtype=np.float32), rate, METRIC_RATE)
            a = align(ref, deg, max_delay)
            if clips is not None:
                write_wav(clips / f"{stem}__{point.key}.wav", a.degraded, METRIC_RATE)
            scores = metrics.score(a.reference, a.degraded)
            out.append(FileScore(name, point.key, duration, delay=a.delay, scores=scores, **sizes))

        if self.codec is not None:
            self._run_mimi(path, finish)
        for b in cfg.baselines:
            x = read_audio(path, b.input_rate).samples
            coded = run_baseline(b, x, b.input_rate)
            finish(
                Point(b.codec, b.setting),
                coded.samples,
                coded.sample_rate,
                disk_bytes=coded.num_bytes,
                entropy_bytes=None,
                wire_bytes=(),
            )
        return out

    def _run_mimi(self, path: Path, finish: Any) -> None:
        from mimirate.bitstream import MimiFile
        from mimirate.bitstream.rate import IP_UDP_RTP_HEADER_BYTES, wire_bytes_for

        codec = self.codec
        assert codec is not None
        levels = self.config.levels
        x = read_audio(path, codec.sample_rate).samples
        adaptive = self.config.adaptive_kbps
        enc = codec.encode(x, levels=codec.num_levels if adaptive else max(levels))
        for k in levels:
            mf = MimiFile.of_codec(codec, enc.codes[:k], enc.num_samples)
            data = mf.to_bytes()
            # Decode what the file holds, not the codes we meant to write.
            stored = MimiFile.parse(data).codes
            entropy_bytes = None
            if self.table is not None:
                coded = mf.with_entropy(self.table).to_bytes()
                if not np.array_equal(MimiFile.parse(coded, self.table).codes, stored):
                    raise FormatError("entropy-coded .mimi did not decode to the plain codes")
                entropy_bytes = len(coded)
            wire = tuple(
                wire_bytes_for(
                    np.full(mf.num_frames, k),
                    f,
                    bits=codec.bits_per_code,
                    header=IP_UDP_RTP_HEADER_BYTES,
                )
                for f in WIRE_FRAMES
            )
            # One decode per level count: on CPU a batch of them is slower than a loop.
            finish(
                Point("mimi", str(k)),
                codec.decode(stored),
                codec.sample_rate,
                disk_bytes=len(data),
                entropy_bytes=entropy_bytes,
                wire_bytes=wire,
            )
        for kbps in adaptive:
            from mimirate.evaluation.distortion import adaptive_file

            mf, _ = adaptive_file(codec, x, enc, kbps * 1000, ranking=self.config.adaptive_ranking)
            data = mf.to_bytes()
            parsed = MimiFile.parse(data)
            entropy_bytes = None
            if self.table is not None:
                entropy_bytes = len(mf.with_entropy(self.table).to_bytes())
            wire = tuple(
                wire_bytes_for(
                    parsed.frame_levels(), f, bits=codec.bits_per_code,
                    header=IP_UDP_RTP_HEADER_BYTES,
                )
                for f in WIRE_FRAMES
            )  # fmt: skip
            finish(
                Point("adaptive", f"{kbps:g}"),
                codec.decode(parsed.codes, parsed.frame_levels()),
                codec.sample_rate,
                disk_bytes=len(data),
                entropy_bytes=entropy_bytes,
                wire_bytes=wire,
            )


def _clip_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(Path(name).with_suffix("")))


_worker: _Worker | None = None


def _limit_threads() -> None:
    # Parallelism is over processes: every library gets one thread per worker. Set before
    # numpy, torch and numba load in the fresh (spawned) worker, so they take effect.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"


def _run_one(
    config: EvalConfig, path: str, name: str, write_clips: bool
) -> tuple[str | None, list[FileScore]]:
    """One file in a worker: the loaded codec's name and the file's scores.

    The worker's codec is loaded on its first file (not in a pool initializer, whose
    errors would surface as a broken pool instead of the MimirateError itself).
    """
    global _worker
    if _worker is None or _worker.config != config:
        _worker = _Worker(config)
    name_of_codec = _worker.codec.name if _worker.codec is not None else None
    return name_of_codec, _worker.run(Path(path), name, write_clips)


# ------------------------------------------------------------------------- summary


#: The rate each Codec 2 mode is named for, kbit/s (700C and 450 are not in their names).
_CODEC2_NOMINAL_KBPS = {"700C": 0.7, "450": 0.45, "450PWB": 0.45}


def _nominal_kbps(point: Point, bits: int, frame_rate: float) -> float:
    if point.codec == "mimi":
        from mimirate.bitstream import nominal_bps

        return nominal_bps(int(point.setting), frame_rate, bits) / 1000
    if point.codec in ("opus", "adaptive"):
        return float(point.setting)
    return _CODEC2_NOMINAL_KBPS.get(point.setting) or int(point.setting) / 1000


def summarize(
    points: Sequence[Point], scores: Sequence[FileScore], bits: int = 11, frame_rate: float = 12.5
) -> tuple[PointSummary, ...]:
    """Pool the per-file scores of each point: rates over total duration, metric CIs."""
    out = []
    for point in points:
        rows = [s for s in scores if s.point == point.key]
        if not rows:
            continue
        seconds = sum(r.duration_s for r in rows)
        ent = [r.entropy_bytes for r in rows]
        entropy_kbps = None if any(e is None for e in ent) else sum(ent) * 8 / seconds / 1000  # type: ignore[arg-type]
        wire = ()
        if rows[0].wire_bytes:
            wire = tuple(
                sum(r.wire_bytes[i] for r in rows) * 8 / seconds / 1000
                for i in range(len(rows[0].wire_bytes))
            )
        summary = MetricSummary(
            *(mean_ci([getattr(r.scores, m.name) for r in rows]) for m in metrics.METRICS)
        )
        out.append(
            PointSummary(
                point=point,
                files=len(rows),
                seconds=seconds,
                nominal_kbps=_nominal_kbps(point, bits, frame_rate),
                disk_kbps=sum(r.disk_bytes for r in rows) * 8 / seconds / 1000,
                entropy_kbps=entropy_kbps,
                wire_kbps=wire,
                median_delay_ms=float(np.median([r.delay for r in rows])) * 1000 / METRIC_RATE,
                metrics=summary,
            )
        )
    return tuple(out)


def evaluate(
    files: Sequence[str | os.PathLike[str]], config: EvalConfig, *, progress: bool = True
) -> EvalResult:
    """Evaluate every point of ``config`` on ``files`` (see the module docstring).

    Raises:
        ConfigError: a missing baseline tool, bad levels, an unloadable model.
        AudioError: an unreadable or too-short file.
    """
    from tqdm import tqdm

    from mimirate.evaluation.baselines import require_tools

    if config.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {config.jobs}")
    if not config.points():
        raise ConfigError("nothing to evaluate: give levels with a model, or baselines")
    for k in config.levels:
        if k < 1:
            raise ConfigError(f"levels must be >= 1, got {k}")
    require_tools(config.baselines)
    paths = [Path(f) for f in files]
    root = _common_root(paths)
    names = [os.path.relpath(p.resolve(), root) for p in paths]
    start = time.perf_counter()
    per_file: list[list[FileScore] | None] = [None] * len(paths)
    bar = tqdm(total=len(paths), desc="eval", unit="file", disable=not progress)
    clip = [i < config.clip_files for i in range(len(paths))]
    codec_name: str | None = None
    import multiprocessing

    # Always worker processes, even for one job: every score is then computed under the
    # same one-thread settings, so --jobs never changes a number. spawn: a fresh
    # interpreter, no torch or thread-pool state copied by fork.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(config.jobs, len(paths)), mp_context=ctx, initializer=_limit_threads
    ) as pool:
        futures = {
            pool.submit(_run_one, config, str(p), names[i], clip[i]): i for i, p in enumerate(paths)
        }
        try:
            for fut in as_completed(futures):
                codec_name, per_file[futures[fut]] = fut.result()
                bar.update()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    bar.close()
    scores = tuple(s for rows in per_file for s in (rows or []))
    return EvalResult(
        root=str(root),
        files=tuple(names),
        model=config.model,
        codec_name=codec_name,
        points=summarize(config.points(), scores),
        scores=scores,
        elapsed_s=time.perf_counter() - start,
        jobs=config.jobs,
        clip_dir=config.clip_dir,
    )
