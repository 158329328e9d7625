"""Tokenization throughput: the pipeline against a plain encode loop, in the same run.

CPU (default): audio hours per hour of

- a plain single-process loop (``read_audio`` + ``codec.encode`` per file), the reference,
  timed before and after the others (the mean is the reference: the machine is shared);
- ``mimirate tokenize`` on a local Ray (Ray start timed apart, and included);
- ``mimirate tokenize --ray none`` (one process, reader threads).

Goal: the Ray pipeline at >= 90% of the plain loop.

``--device cuda`` (for a GPU machine): batch encode throughput of the official ``mimi``
configuration, ours against transformers' ``MimiModel`` (random weights, same batch),
then the pipeline on a local Ray with GPU encoders.

    .venv/bin/python benchmarks/bench_tokenize.py --minutes 10
    .venv/bin/python benchmarks/bench_tokenize.py --device cuda --batch 64 --seconds 10
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "speech" / "librispeech-train-clean-100"


def pick_files(folder: Path, minutes: float) -> tuple[list[str], float]:
    """The first files (sorted) adding up to ``minutes`` of audio; returns them and seconds."""
    from mimirate.tokenize.manifest import list_inputs

    files, total = [], 0.0
    for path in list_inputs(folder):
        if total >= minutes * 60:
            break
        files.append(path)
        total += sf.info(path).duration
    return files, total


def spec_for(model: str, device: str):
    """Packaged weights when present, else seeded random ones (same compute)."""
    from mimirate.errors import CheckpointError
    from mimirate.tokenize.pipeline import CodecSpec

    spec = CodecSpec(model=model, device=device)
    try:
        spec.load()
    except CheckpointError:
        spec = CodecSpec(model=model, device=device, random_init=True)
    return spec


def plain_loop(files: list[str], spec, levels: int) -> float:
    """Seconds for read + encode, file by file, in this process."""
    from mimirate import read_audio

    codec = spec.load()
    start = time.perf_counter()
    for path in tqdm(files, desc="plain loop", unit="file", leave=False):
        audio = read_audio(path, codec.sample_rate)
        codec.encode(audio.samples, levels=levels)
    return time.perf_counter() - start


def cpu_bench(args: argparse.Namespace) -> None:
    import ray
    import torch

    from mimirate.tokenize.pipeline import TokenizeOptions, tokenize

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    files, audio_s = pick_files(Path(args.data), args.minutes)
    spec = spec_for(args.model, "cpu")
    weights = "random weights" if spec.random_init else "packaged weights"
    print(f"{len(files)} files, {audio_s / 60:.1f} min of audio from {args.data}")
    print(f"model {args.model} ({weights}), {args.levels} levels, {threads} CPU threads")
    listing = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    (listing / "files.txt").write_text("\n".join(files) + "\n")
    options = TokenizeOptions(levels=args.levels, batch_seconds=args.batch_seconds, progress=True)

    def run_pipeline(how: str) -> float:
        out = listing / f"out-{how}"
        result = tokenize(listing / "files.txt", out, spec, replace(options, ray=how))
        shutil.rmtree(out)
        assert result.files_encoded == len(files), result
        return result.wall_seconds

    base1 = plain_loop(files, spec, args.levels)
    t0 = time.perf_counter()
    ray.init(
        num_cpus=threads,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=1 << 30,
        logging_level=logging.WARNING,
    )
    ray_start = time.perf_counter() - t0
    ray_run = run_pipeline("auto")  # joins the session just started
    ray.shutdown()
    local_run = run_pipeline("none")
    base2 = plain_loop(files, spec, args.levels)
    shutil.rmtree(listing)

    base = (base1 + base2) / 2
    rows = [
        ("plain loop (reference, mean)", base),
        ("  plain loop, before", base1),
        ("  plain loop, after", base2),
        ("ray local, pipeline", ray_run),
        ("ray local, incl. ray start", ray_run + ray_start),
        ("in-process (--ray none)", local_run),
    ]
    print(f"\n{'':32s} {'wall s':>8s} {'audio h/h':>10s} {'vs loop':>8s}")
    for name, secs in rows:
        print(f"{name:32s} {secs:8.1f} {audio_s / secs:10.1f} {base / secs:8.1%}")
    print(f"(ray start: {ray_start:.1f} s; a shared 2-core machine: timings are noisy)")


def compare_batch(device: str, batch: int, seconds: float, levels: int) -> None:
    """Batch encode of the official config: ours against transformers' MimiModel."""
    import torch
    from transformers import MimiConfig as HFMimiConfig
    from transformers import MimiModel

    from mimirate.tokenize.pipeline import CodecSpec

    n = int(seconds * 24000)
    audio = 0.1 * torch.randn(batch, 1, n, generator=torch.Generator().manual_seed(0))
    ours = CodecSpec(model="mimi", device=device, random_init=True).load()
    theirs = MimiModel(HFMimiConfig()).to(device).eval()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn, reps: int = 5) -> float:
        fn()  # warm-up (kernels, allocator)
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - start) / reps

    audio_np = audio[:, 0].numpy()
    t_ours = timed(lambda: ours.encode(audio_np, levels=levels))
    on_device = audio.to(device)
    with torch.inference_mode():
        t_hf = timed(lambda: theirs.encode(on_device, num_quantizers=levels))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    total = batch * seconds
    print(
        f"mimi (official config, random weights), batch {batch} x {seconds:g} s, "
        f"{levels} levels, fp32, {name}"
    )
    print(
        f"  mimirate      {t_ours * 1000:8.1f} ms  {total / t_ours:9.1f}x real time "
        "(numpy in and out included)"
    )
    print(f"  transformers  {t_hf * 1000:8.1f} ms  {total / t_hf:9.1f}x real time")
    print(f"  throughput mimirate / transformers: {t_hf / t_ours:.2f}")


def gpu_bench(args: argparse.Namespace) -> None:
    import torch

    from mimirate.tokenize.pipeline import CodecSpec, TokenizeOptions, tokenize

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a GPU (torch.cuda.is_available() is False)")
    compare_batch("cuda", args.batch, args.seconds, args.levels)
    if not Path(args.data).is_dir():
        return
    files, total = pick_files(Path(args.data), args.minutes)
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    (work / "files.txt").write_text("\n".join(files) + "\n")
    result = tokenize(
        work / "files.txt",
        work / "out",
        CodecSpec(model="mimi", device="cuda", random_init=True),
        TokenizeOptions(levels=args.levels, batch_seconds=600, ray="local"),
    )
    print(
        f"  pipeline (local Ray, GPU encoder): {total / 60:.1f} min of audio in "
        f"{result.wall_seconds:.1f} s, {total / result.wall_seconds:.0f}x real time "
        "(model load and Ray start included)"
    )
    shutil.rmtree(work)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of audio files")
    p.add_argument("--minutes", type=float, default=10.0, help="audio to tokenize")
    p.add_argument("--model", default="small")
    p.add_argument("--levels", type=int, default=32)
    p.add_argument("--batch-seconds", type=float, default=60.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=64, help="GPU: items per batch")
    p.add_argument("--seconds", type=float, default=10.0, help="GPU: seconds per item")
    args = p.parse_args()
    if args.device == "cuda":
        gpu_bench(args)
    else:
        if not Path(args.data).is_dir():
            print(f"no data at {args.data}; pass --data", file=sys.stderr)
            return 1
        cpu_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
