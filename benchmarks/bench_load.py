"""How many real-time sessions (encode + decode) one machine sustains with the default model.

A session is one 80 ms frame encoded and one decoded per tick, as a call through the server
costs (the sender's encoder, the receiver's decoder). For N = 1, 2, ... sessions the
benchmark runs a real-time schedule for a few seconds and records, for every frame, the
time from its tick to the end of its processing; N is sustained while the p99 of that stays
under 80 ms (one frame). Three ways to serve N sessions are measured in the same run:

- ``separate``: N independent streaming encoders and decoders, processed one after the
  other each tick (what the server did before the pool);
- ``pooled``: the server's path: N independent streams (each its own state, started at
  different frames, decoding different numbers of levels), each session an asyncio task
  pushing through the server's :class:`~mimirate.transport.pool.StreamPool` (one batched
  ``encode_streams`` / ``decode_streams`` call per tick on one codec thread, as
  ``mimirate serve`` runs; ``--workers 2`` splits large ticks over two threads);
- ``batched``: one streaming encoder and decoder over a fixed batch of N streams (the
  bound for pooled: the same model work without the per-tick stacking).

Speed does not depend on the weights' values, so random weights are used unless the
model's weights are installed. The machine is shared: run it alone for figures to quote.

    python benchmarks/bench_load.py [--model small] [--seconds 4] [--max-sessions 32]
        [--threads 1] [--workers 1] [--modes separate,pooled,batched] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

FRAME_BUDGET_MS = 80.0


def load(model: str):
    from mimirate import load_codec
    from mimirate.errors import CheckpointError, ConfigError

    try:
        return load_codec(model), "trained"
    except (CheckpointError, ConfigError, FileNotFoundError):
        return load_codec(model, random_init=True, seed=0), "random"


MODES = ("separate", "pooled", "batched")


def run(
    codec, sessions: int, seconds: float, mode: str, rng: np.random.Generator, workers: int = 1
) -> dict:
    """Real-time schedule with ``sessions`` sessions; per-frame latency figures."""
    n = codec.frame_size
    frames = max(3, int(seconds * codec.frame_rate))
    audio = (0.1 * rng.standard_normal((sessions, n * frames))).astype(np.float32)
    batched = mode == "batched"
    if batched:
        encs, decs = [codec.stream_encoder()], [codec.stream_decoder()]
    else:
        encs = [codec.stream_encoder() for _ in range(sessions)]
        decs = [codec.stream_decoder() for _ in range(sessions)]
    # Listeners cap their levels differently (the server decodes what each one asked for).
    keep = [(4, 8, 16, 32)[s % 4] for s in range(sessions)]
    if mode == "pooled":
        # Sessions joined at different times: their streams are at different positions.
        for s in range(sessions):
            for _ in range(s % 5):
                decs[s].push(encs[s].push(audio[s, :n]).codes[: keep[s]])
    t0 = time.perf_counter()
    if mode == "pooled":
        lat = asyncio.run(_run_pooled(codec, encs, decs, audio, keep, frames, workers))
    else:
        lat = _run_inline(codec, encs, decs, audio, keep, frames, batched)
    wall = time.perf_counter() - t0
    skip = 2 * sessions  # the first two ticks warm caches up
    arr = np.array(lat[skip:])
    return {
        "sessions": sessions,
        "mode": mode,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
        "wall_x_realtime": wall * codec.frame_rate / frames,
    }


def _run_inline(codec, encs, decs, audio, keep, frames: int, batched: bool) -> list[float]:
    """All sessions' work in this thread, one session after the other (or one batch)."""
    n, period = codec.frame_size, 1.0 / codec.frame_rate
    sessions = audio.shape[0]
    lat: list[float] = []
    start = time.perf_counter()
    for t in range(frames):
        tick = start + t * period
        now = time.perf_counter()
        if now < tick:
            time.sleep(tick - now)
        chunk = audio[:, t * n : (t + 1) * n]
        if batched:
            codes = encs[0].push(chunk).codes  # [B, K, 1]
            decs[0].push(codes)
            lat.extend([(time.perf_counter() - tick) * 1000.0] * sessions)
        else:
            for s in range(sessions):
                codes = encs[s].push(chunk[s]).codes  # [K, 1]
                decs[s].push(codes[: keep[s]])
                lat.append((time.perf_counter() - tick) * 1000.0)
    return lat


async def _run_pooled(codec, encs, decs, audio, keep, frames: int, workers: int) -> list[float]:
    """Each session a task fed by a ticker (as the server publishes a frame to its
    listeners' queues); it encodes its frame and decodes it, through one StreamPool."""
    from concurrent.futures import ThreadPoolExecutor

    from mimirate.transport.pool import StreamPool

    n, period = codec.frame_size, 1.0 / codec.frame_rate
    lat: list[float] = []
    loop = asyncio.get_running_loop()
    queues: list[asyncio.Queue[tuple[int, float]]] = [asyncio.Queue() for _ in encs]
    with ThreadPoolExecutor(workers) as executor:
        pool = StreamPool(codec, executor, workers=workers)

        async def session(s: int) -> None:
            for _ in range(frames):
                t, tick = await queues[s].get()
                enc = await pool.encode(encs[s], audio[s, t * n : (t + 1) * n])
                await pool.decode(decs[s], enc.codes[: keep[s]])
                lat.append((loop.time() - tick) * 1000.0)

        async def ticker() -> None:
            start = loop.time()
            for t in range(frames):
                tick = start + t * period
                await asyncio.sleep(max(0.0, tick - loop.time()))
                for q in queues:
                    q.put_nowait((t, tick))

        await asyncio.gather(ticker(), *(session(s) for s in range(len(encs))))
    return lat


def per_frame_ms(codec, frames: int = 20) -> float:
    """Median ms to encode and decode one frame of one stream, back to back (no schedule)."""
    enc, dec = codec.stream_encoder(), codec.stream_decoder()
    x = (0.1 * np.random.default_rng(1).standard_normal(codec.frame_size)).astype(np.float32)
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        dec.push(enc.push(x).codes)
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times[2:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="preset (default: the default model)")
    p.add_argument("--seconds", type=float, default=4.0, help="real-time seconds per point")
    p.add_argument("--max-sessions", type=int, default=32)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (mimirate serve uses 1)",
    )
    p.add_argument("--workers", type=int, default=1, help="pooled: codec calls at once (server: 1)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of modes")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from mimirate.config import DEFAULT_MODEL

    torch.set_num_threads(args.threads)
    model = args.model or DEFAULT_MODEL
    codec, weights = load(model)
    rng = np.random.default_rng(0)
    # Reference in the same run: Kyutai's full Mimi configuration (random weights), whose
    # idle-machine speed is known (../shared/MIMI_FACTS.md: 57.6 ms a frame, 2 threads).
    from mimirate import load_codec

    ref_ms = per_frame_ms(load_codec("mimi", random_init=True, seed=0))
    model_ms = per_frame_ms(codec)
    results = []
    best = {}
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= set(MODES):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    for mode in modes:
        n = 1
        bar = tqdm(desc=f"{mode} sessions", unit="step", file=sys.stderr)
        while n <= args.max_sessions:
            r = run(codec, n, args.seconds, mode, rng, args.workers)
            results.append(r)
            bar.update(1)
            bar.set_postfix(n=n, p99=f"{r['p99_ms']:.0f}ms")
            if r["p99_ms"] >= FRAME_BUDGET_MS:
                break
            best[mode] = n
            n = n + 1 if n < 4 else n + 4 if mode == "batched" else n + 2
        bar.close()
    summary = {
        "model": model,
        "weights": weights,
        "threads": args.threads,
        "pool_workers": args.workers,
        "cpu_count": os.cpu_count(),
        "budget_ms": FRAME_BUDGET_MS,
        **{f"max_sessions_{m}": best.get(m, 0) for m in MODES},
        "goal": 8,
        "per_frame_ms": model_ms,
        "reference_mimi_per_frame_ms": ref_ms,
        "ratio_to_mimi": model_ms / ref_ms,
        "points": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"model {model} ({weights} weights), {args.threads} torch threads, "
        f"{os.cpu_count()} CPUs; real-time budget {FRAME_BUDGET_MS:.0f} ms per frame"
    )
    print(
        f"one stream, encode + decode back to back: {model_ms:.1f} ms a frame; reference "
        f"'mimi' (full size) {ref_ms:.1f} ms in this run: ratio {model_ms / ref_ms:.2f}"
    )
    print(f"{'mode':>9} {'sessions':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in results:
        print(
            f"{r['mode']:>9} {r['sessions']:>8} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
            f"{r['max_ms']:8.1f}"
        )
    counts = ", ".join(f"{m} {best.get(m, 0)}" for m in MODES)
    print(f"sustained with p99 < {FRAME_BUDGET_MS:.0f} ms: {counts} (goal: 8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
