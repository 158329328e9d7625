"""Corpus tokenization: audio files in, Parquet code shards and a manifest out.

The job, on Ray Data (a laptop or a cluster, the same code) or in one process:

1. list the inputs and cut them into shards (:mod:`mimirate.tokenize.manifest`);
   shards already on disk are skipped, so a rerun resumes or does nothing;
2. read tasks decode and resample each file to the codec rate (``read_audio``); a
   file that fails becomes an error record that flows on with the others;
3. encoder actors hold the model (one GPU each with ``device="cuda"``); each takes a
   window of files, sorts it by length and encodes padded batches of at most
   ``batch_seconds`` of audio, then cuts every item's codes back to its own frame
   count. Mimi is causal, so zero padding after an item cannot change its codes in
   exact arithmetic; in float, another batch shape changes reduction orders, and a
   code whose two nearest centroids are almost tied can flip (measured: 0.2% of codes,
   deep levels mostly, ``small`` at 32 levels). ``batch_seconds=0`` encodes each file
   alone and whole: bit for bit what ``codec.encode`` gives;
4. the driver gathers results per shard and writes a shard as soon as all its files
   are in. Codes are ~1% of the audio's bytes (4.4 kbit/s against 384 kbit/s of
   float32 audio), so funnelling them through the driver costs little and keeps
   every write atomic and in one place.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mimirate.audio import read_audio
from mimirate.codec import Codec
from mimirate.config import DEFAULT_MODEL
from mimirate.errors import ConfigError, MimirateError
from mimirate.fileio import atomic_write_bytes
from mimirate.tokenize.manifest import (
    DEFAULT_BATCH_SECONDS,
    DEFAULT_SHARD_FILES,
    ERRORS_NAME,
    MANIFEST_NAME,
    Manifest,
    ShardPlan,
    ShardSummary,
    list_inputs,
    plan_shards,
)
from mimirate.tokenize.shards import (
    CodecInfo,
    ItemError,
    ShardRow,
    errors_jsonl,
    finished_shard,
    pack_item,
    read_errors,
    write_shard,
)

log = logging.getLogger(__name__)

#: Files an encoder receives at once; it sorts them by length to form batches, so a
#: larger window pads less but holds more audio in memory.
WINDOW_FILES = 32

#: Files per read task (Ray) or per read-ahead step (in-process).
READ_FILES = 4

BACKENDS = ("auto", "local", "none")


@dataclass(frozen=True)
class CodecSpec:
    """How to build the codec; small and picklable, so each encoder actor builds its own."""

    model: str = DEFAULT_MODEL  # preset name, checkpoint path or hub id (see load_codec)
    device: str = "cpu"
    random_init: bool = False  # seeded random weights: tests and benchmarks only
    seed: int = 0

    def load(self) -> Codec:
        from mimirate.models.loading import load_codec

        if self.random_init:
            return load_codec(self.model, device=self.device, random_init=True, seed=self.seed)
        return load_codec(self.model, device=self.device)


@dataclass(frozen=True)
class TokenizeOptions:
    """Settings of a job; the defaults run on this machine with no cluster."""

    levels: int | None = None  # None: all the model has
    batch_seconds: float = DEFAULT_BATCH_SECONDS
    shard_files: int = DEFAULT_SHARD_FILES
    #: "auto": a Ray session already open in this process, else RAY_ADDRESS, else a
    #: local Ray; "local": a fresh local Ray; "none": no Ray, one process; anything
    #: else is a Ray cluster address ("ray://head:10001" or "head:6379").
    ray: str = "auto"
    workers: int | None = None  # encoder actors; None: one per GPU, or one locally
    threads: int | None = None  # torch threads per CPU encoder; None: the CPUs it may use
    progress: bool = True


@dataclass(frozen=True)
class TokenizeResult:
    """What a run did. ``manifest`` describes the whole output, this run or earlier."""

    manifest: Manifest
    output_dir: Path
    backend: str  # "ray-local", "ray-cluster", "ray-session" (Ray already open), "in-process"
    shards_total: int
    shards_written: int  # by this run
    shards_skipped: int  # found finished on disk
    files_encoded: int  # by this run, errors excluded
    files_failed: int  # by this run
    seconds_encoded: float  # audio encoded by this run
    wall_seconds: float  # of this run, listing and model load included


def tokenize(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    spec: CodecSpec = CodecSpec(),
    options: TokenizeOptions = TokenizeOptions(),
) -> TokenizeResult:
    """Tokenize every audio file of ``source`` into Parquet shards under ``output_dir``.

    ``source`` is anything :func:`~mimirate.tokenize.manifest.list_inputs` takes.
    Writes ``shards/*.parquet`` (docs/shards.md), per-shard error files,
    ``errors.jsonl`` (all failures) and ``manifest.json``. Files that cannot be read
    are recorded, not fatal; a rerun with the same arguments writes nothing new.
    """
    start = time.perf_counter()
    _check_options(spec, options)
    root = Path(output_dir)
    files = list_inputs(source)

    # The driver builds the model once on the CPU for its name, hash and sizes (and
    # to fail early on a bad --model); the encoders build their own.
    codec = replace(spec, device="cpu").load()
    levels = codec.num_levels if options.levels is None else options.levels
    if not 1 <= levels <= codec.num_levels:
        raise ConfigError(f"--levels must be in 1..{codec.num_levels}, got {levels}")
    info = CodecInfo(
        model=codec.name,
        weights_hash=codec.weights_hash.hex(),
        levels=levels,
        bits_per_code=codec.bits_per_code,
        sample_rate=codec.sample_rate,
        frame_rate=float(codec.frame_rate),
        frame_size=codec.frame_size,
    )
    plans = plan_shards(
        files,
        model=info.model,
        weights_hash=info.weights_hash,
        levels=levels,
        shard_files=options.shard_files,
    )
    summaries: dict[int, ShardSummary] = {}
    for plan in plans:
        done = finished_shard(root, plan)
        if done is not None:
            summaries[plan.seq] = done
    pending = [p for p in plans if p.seq not in summaries]
    skipped = len(summaries)

    collector = _Collector(root, info, pending, options.progress)
    backend = "none"
    try:
        if pending and options.ray == "none":
            backend = "in-process"
            reuse = codec if spec.device == "cpu" else None
            encoder = Encoder(spec, levels, options.batch_seconds, options.threads, reuse)
            _run_in_process(collector.items(), encoder, collector)
        elif pending:
            backend = _run_ray(collector.items(), spec, info, options, collector)
    finally:
        collector.bar.close()
    collector.close()
    summaries.update(collector.summaries)

    manifest = Manifest(
        model=info.model,
        weights_hash=info.weights_hash,
        levels=levels,
        bits_per_code=info.bits_per_code,
        sample_rate=info.sample_rate,
        frame_rate=info.frame_rate,
        frame_size=info.frame_size,
        input=os.fspath(source),
        shard_files=options.shard_files,
        shards=tuple(summaries[p.seq] for p in plans),
        errors_file=ERRORS_NAME,
    )
    errors = [e for p in plans for e in read_errors(root / p.errors_name)]
    atomic_write_bytes(root / ERRORS_NAME, errors_jsonl(errors))
    atomic_write_bytes(root / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    return TokenizeResult(
        manifest=manifest,
        output_dir=root,
        backend=backend,
        shards_total=len(plans),
        shards_written=len(collector.summaries),
        shards_skipped=skipped,
        files_encoded=collector.files_encoded,
        files_failed=collector.files_failed,
        seconds_encoded=collector.seconds,
        wall_seconds=time.perf_counter() - start,
    )


def _check_options(spec: CodecSpec, options: TokenizeOptions) -> None:
    if spec.device not in ("cpu", "cuda") and not spec.device.startswith("cuda:"):
        raise ConfigError(f"--device must be cpu or cuda, got {spec.device!r}")
    if not options.batch_seconds >= 0 or not math.isfinite(options.batch_seconds):
        raise ConfigError(
            f"--batch-seconds must be 0 (one file per call) or more, got {options.batch_seconds}"
        )
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {options.workers}")
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {options.threads}")
    if not options.ray:
        raise ConfigError("--ray needs a value: auto, local, none or a cluster address")


# -- reading ------------------------------------------------------------------------


def read_batch(batch: dict[str, np.ndarray], sample_rate: int) -> dict[str, np.ndarray]:
    """Read and resample the files of a batch (columns ``index, shard, path``).

    Adds ``audio`` (float32 samples as bytes: Arrow has no ragged float column that
    survives every Ray version, bytes do), ``num_samples``, ``source_rate`` and
    ``error`` (empty when the file was read). Never raises for a bad file.
    """
    audio, num_samples, source_rate, error = [], [], [], []
    for path in batch["path"]:
        try:
            a = read_audio(str(path), sample_rate)
        except MimirateError as e:
            reason = str(e)
        except (OSError, MemoryError, ValueError, RuntimeError) as e:
            reason = f"{path}: {type(e).__name__}: {e}"
        else:
            audio.append(a.samples.tobytes())
            num_samples.append(len(a.samples))
            source_rate.append(a.source_rate)
            error.append("")
            continue
        audio.append(b"")
        num_samples.append(0)
        source_rate.append(0)
        error.append(reason)
    return {
        "index": np.asarray(batch["index"], np.int64),
        "shard": np.asarray(batch["shard"], np.int64),
        "path": np.asarray(batch["path"], dtype=object),
        "audio": np.asarray(audio, dtype=object),
        "num_samples": np.asarray(num_samples, np.int64),
        "source_rate": np.asarray(source_rate, np.int64),
        "error": np.asarray(error, dtype=object),
    }


# -- encoding -----------------------------------------------------------------------


class Encoder:
    """Holds a codec and encodes windows of read files: the body of a Ray actor.

    Called with the columns :func:`read_batch` returns; returns ``index, shard, path,
    source_rate, num_samples, num_frames, codes`` (packed bytes) and ``error``.
    """

    def __init__(
        self,
        spec: CodecSpec,
        levels: int,
        batch_seconds: float,
        threads: int | None = None,
        codec: Codec | None = None,
        weights_hash: str | None = None,
    ) -> None:
        import torch

        if spec.device == "cpu":
            # Ray sets OMP_NUM_THREADS to the actor's logical CPUs (1); the encoder is
            # the only heavy work, so let it use the cores it was given.
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.codec = codec if codec is not None else spec.load()
        if weights_hash is not None and self.codec.weights_hash.hex() != weights_hash:
            # A cluster node with other weights (or another mimirate) would write codes
            # under a hash that does not describe them.
            raise ConfigError(
                f"the encoder built {spec.model!r} with weights {self.codec.weights_hash.hex()}"
                f", the driver with {weights_hash}; install the same mimirate and weights on "
                "every node"
            )
        self.levels = levels
        frame = self.codec.frame_size
        # At least one frame, rounded down to whole frames so chunks stay aligned.
        # 0 means one whole file per call (exact codec.encode codes, unbounded memory).
        self.batch_samples = int(batch_seconds * self.codec.sample_rate) // frame * frame
        if batch_seconds > 0:
            self.batch_samples = max(frame, self.batch_samples)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        codes: list[bytes] = [b""] * n
        frames = [0] * n
        errors = [str(e) for e in batch["error"]]
        ok = [i for i in range(n) if not errors[i]]
        signals = {i: np.frombuffer(batch["audio"][i], dtype=np.float32) for i in ok}
        for group in self.groups(ok, {i: len(signals[i]) for i in ok}):
            try:
                encoded = self.encode_group([signals[i] for i in group])
            except (MimirateError, RuntimeError, ValueError) as e:
                if len(group) > 1:
                    # One bad item must not sink its batch: encode the rest alone.
                    encoded = []
                    for i in group:
                        try:
                            encoded.extend(self.encode_group([signals[i]]))
                        except (MimirateError, RuntimeError, ValueError) as e1:
                            encoded.append(e1)
                else:
                    encoded = [e]
            for i, result in zip(group, encoded, strict=True):
                if isinstance(result, Exception):
                    errors[i] = f"{batch['path'][i]}: encoding failed: {result}"
                else:
                    codes[i] = pack_item(result, self.codec.bits_per_code)
                    frames[i] = int(result.shape[-1])
        return {
            "index": np.asarray(batch["index"], np.int64),
            "shard": np.asarray(batch["shard"], np.int64),
            "path": np.asarray(batch["path"], dtype=object),
            "source_rate": np.asarray(batch["source_rate"], np.int64),
            "num_samples": np.asarray(batch["num_samples"], np.int64),
            "num_frames": np.asarray(frames, np.int64),
            "codes": np.asarray(codes, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }

    def groups(self, items: list[int], lengths: dict[int, int]) -> Iterator[list[int]]:
        """Length buckets: sort by length, then fill batches up to ``batch_samples`` padded."""
        frame = self.codec.frame_size
        group: list[int] = []
        for i in sorted(items, key=lambda j: lengths[j]):
            padded = -(-max(lengths[i], 1) // frame) * frame  # sorted, so this is the max
            if group and (len(group) + 1) * padded > self.batch_samples:
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def encode_group(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """Encode signals together; one ``[K, T_i]`` uint16 array per signal."""
        frame = self.codec.frame_size
        counts = [-(-len(s) // frame) for s in signals]
        if len(signals) == 1 and 0 < self.batch_samples < len(signals[0]):
            return [self.encode_long(signals[0])]
        if len(signals) == 1:
            # Alone: the very call a user would make, so the codes match it bit for bit.
            return [self.codec.encode(signals[0], levels=self.levels).codes[: self.levels]]
        width = max(counts) * frame
        batch = np.zeros((len(signals), width), np.float32)
        for row, s in zip(batch, signals, strict=True):
            row[: len(s)] = s
        codes = self.codec.encode(batch, levels=self.levels).codes
        return [codes[b, : self.levels, :t] for b, t in enumerate(counts)]

    def encode_long(self, signal: np.ndarray) -> np.ndarray:
        """A file longer than a batch, through the stream encoder in batch-sized chunks.

        Streaming gives the offline codes (the codec contract; up to the float near-ties
        that batching also meets) with memory bounded by the chunk, where one offline
        call over an hour of audio might not fit.
        """
        stream = self.codec.stream_encoder()
        parts = [
            stream.push(signal[start : start + self.batch_samples]).codes
            for start in range(0, len(signal), self.batch_samples)
        ]
        parts.append(stream.flush().codes)
        return np.concatenate(parts, axis=-1)[: self.levels]


# -- collecting results into shards -------------------------------------------------


class _Collector:
    """Gathers encoder results per shard on the driver and writes each shard when complete."""

    def __init__(self, root: Path, info: CodecInfo, plans: list[ShardPlan], progress: bool):
        self.root = root
        self.info = info
        self.plans = {p.seq: p for p in plans}
        self.rows: dict[int, list[ShardRow]] = collections.defaultdict(list)
        self.errors: dict[int, list[ItemError]] = collections.defaultdict(list)
        self.summaries: dict[int, ShardSummary] = {}
        self.files_encoded = 0
        self.files_failed = 0
        self.seconds = 0.0
        total = sum(len(p.files) for p in plans)
        self.bar = tqdm(
            total=total, unit="file", desc="tokenize", disable=not progress or total == 0
        )

    def items(self) -> list[dict[str, Any]]:
        """The files to encode, in corpus order: ``{"index", "shard", "path"}``."""
        return [
            {"index": p.first_index + k, "shard": p.seq, "path": path}
            for p in self.plans.values()
            for k, path in enumerate(p.files)
        ]

    def add(self, batch: dict[str, np.ndarray]) -> None:
        touched = set()
        for k in range(len(batch["index"])):
            seq = int(batch["shard"][k])
            index = int(batch["index"][k])
            path = str(batch["path"][k])
            if batch["error"][k]:
                self.errors[seq].append(ItemError(index, path, str(batch["error"][k])))
                self.files_failed += 1
            else:
                row = ShardRow(
                    index=index,
                    path=path,
                    source_rate=int(batch["source_rate"][k]),
                    num_samples=int(batch["num_samples"][k]),
                    num_frames=int(batch["num_frames"][k]),
                    codes=bytes(batch["codes"][k]),
                )
                self.rows[seq].append(row)
                self.files_encoded += 1
                self.seconds += row.num_samples / self.info.sample_rate
            touched.add(seq)
        for seq in touched:
            plan = self.plans[seq]
            if len(self.rows[seq]) + len(self.errors[seq]) == len(plan.files):
                self.summaries[seq] = write_shard(
                    self.root, plan, self.info, self.rows.pop(seq), self.errors.pop(seq, [])
                )
        self.bar.update(len(batch["index"]))
        self.bar.set_postfix_str(f"{self.seconds / 3600:.3f} h audio, {self.files_failed} failed")

    def close(self) -> None:
        self.bar.close()
        missing = [seq for seq in self.plans if seq not in self.summaries]
        if missing:
            raise MimirateError(
                f"{len(missing)} shards did not receive all their files (first: shard "
                f"{missing[0]}); run the same command again to finish them"
            )


# -- backends -----------------------------------------------------------------------


def _run_in_process(items: list[dict[str, Any]], encoder: Encoder, collector: _Collector) -> None:
    """No Ray: two reader threads keep a window ahead of the encoder in this process."""

    def read(chunk: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        columns = {key: np.asarray([item[key] for item in chunk], dtype=object) for key in chunk[0]}
        return read_batch(columns, encoder.codec.sample_rate)

    windows = [items[i : i + WINDOW_FILES] for i in range(0, len(items), WINDOW_FILES)]
    # soundfile and soxr release the GIL, so reading overlaps encoding.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mimirate-read") as pool:
        ahead: collections.deque[Future[dict[str, np.ndarray]]] = collections.deque()
        for window in windows:
            ahead.append(pool.submit(read, window))
            if len(ahead) < 2:
                continue
            collector.add(encoder(ahead.popleft().result()))
        while ahead:
            collector.add(encoder(ahead.popleft().result()))


def _run_ray(
    items: list[dict[str, Any]],
    spec: CodecSpec,
    info: CodecInfo,
    options: TokenizeOptions,
    collector: _Collector,
) -> str:
    """Run the read and encode stages on Ray Data; returns the backend's name."""
    try:
        import ray
        import ray.data
        import ray.exceptions
    except ImportError:
        raise ConfigError(
            "Ray is not installed; pip install 'mimirate[ray]', or pass --ray none"
        ) from None
    owned, backend = _connect(ray, options.ray)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts files and hours
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        workers, actor_cpus, actor_gpus, threads = _resources(ray, spec, options, backend)
        levels, sample_rate, weights_hash = info.levels, info.sample_rate, info.weights_hash
        read_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = read_batch
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // READ_FILES))
        ds = ds.map_batches(
            read_fn,
            fn_kwargs={"sample_rate": sample_rate},
            batch_size=READ_FILES,
            batch_format="numpy",
            # Half a CPU: two reads fit beside an encoder on this machine, and the
            # differing request keeps Ray Data from fusing reads into the encoder actor,
            # where they would stop overlapping with encoding (and idle a GPU).
            num_cpus=0.5,
        )
        ds = ds.map_batches(
            Encoder,
            fn_constructor_kwargs={
                "spec": spec,
                "levels": levels,
                "batch_seconds": options.batch_seconds,
                "threads": threads,
                "weights_hash": weights_hash,
            },
            batch_size=WINDOW_FILES,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=actor_cpus,
            num_gpus=actor_gpus,
        )
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                collector.add(batch)
        except ray.exceptions.RayError as e:
            # A worker's exception arrives wrapped, with a remote traceback; the cause's
            # last line is what the user can act on.
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            raise MimirateError(
                f"the Ray job stopped: {lines[-1] if lines else type(e).__name__}. Finished "
                "shards are kept; fix the cause and run the same command to resume"
            ) from None
    finally:
        if owned:
            ray.shutdown()
    return backend


def _connect(ray: Any, how: str) -> tuple[bool, str]:
    """Join or start Ray; returns (whether we must shut it down, backend name)."""
    if ray.is_initialized():
        return False, "ray-session"
    address = os.environ.get("RAY_ADDRESS") if how == "auto" else None
    if how not in BACKENDS:
        address = how
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"cannot connect to the Ray cluster at {address} ({e}); check the address, "
                "or leave --ray out to run on this machine"
            ) from None
        return True, "ray-cluster"
    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",  # loopback only: nothing is reachable from outside
        object_store_memory=1 << 30,
        logging_level=logging.WARNING,
    )
    return True, "ray-local"


def _resources(
    ray: Any, spec: CodecSpec, options: TokenizeOptions, backend: str
) -> tuple[int, float, float | None, int | None]:
    """Encoder actors: (count, logical CPUs each, GPUs each, torch threads each)."""
    total = ray.cluster_resources()
    if spec.device != "cpu":
        gpus = int(total.get("GPU", 0))
        if gpus < 1:
            raise ConfigError(
                "--device cuda, but the Ray cluster has no GPUs; use --device cpu or "
                "connect to a cluster with GPUs (--ray ADDRESS)"
            )
        return options.workers or gpus, 1, 1, options.threads
    cpus = int(total.get("CPU", 1))
    if backend != "ray-cluster":
        # This machine: one encoder using every core beats several fighting over them.
        # It reserves one logical CPU only, so read tasks are scheduled beside it.
        workers = options.workers or 1
        return workers, 1, None, options.threads or max(1, (os.cpu_count() or 1) // workers)
    threads = options.threads or 4
    return options.workers or max(1, cpus // (threads + 1)), threads, None, threads
