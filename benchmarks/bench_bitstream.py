"""Bitstream benchmark: packing speed, entropy-coding speed and bits per code.

Prints:
1. pack/unpack throughput in MB/s (of packed bytes) on 1 M random 11-bit codes;
2. bits per code per level on the dev set (librispeech-test-other-dev), from an entropy
   table fitted on training speech (librispeech-train-clean-100), against the nominal 11,
   with the file sizes at 8 and 32 levels, plain and entropy coded (real .mimi bytes);
3. entropy encode/decode speed in x real time on one thread.

    .venv/bin/python benchmarks/bench_bitstream.py                       # default model
    .venv/bin/python benchmarks/bench_bitstream.py --model tiny --random-init

Timings depend on how busy the machine is; the ratios are within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mimirate.bitstream import (
    EntropyTable,
    MimiFile,
    fit_table,
    nominal_bps,
    pack_codes,
    unpack_codes,
)
from mimirate.bitstream.entropy import table_path

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_packing() -> None:
    codes = np.random.default_rng(0).integers(0, 2048, 1_000_000).astype(np.uint16)
    packed = pack_codes(codes)
    assert np.array_equal(unpack_codes(packed, codes.size), codes)
    t_pack = best_of(lambda: pack_codes(codes))
    t_unpack = best_of(lambda: unpack_codes(packed, codes.size))
    mb = len(packed) / 1e6
    print("== bit packing, 1 M codes at 11 bits (MSB first)")
    raw = codes.nbytes / 1e6
    print(f"pack    {mb / t_pack:7.1f} MB/s packed  ({raw / t_pack:7.1f} MB/s of uint16)")
    print(f"unpack  {mb / t_unpack:7.1f} MB/s packed  ({raw / t_unpack:7.1f} MB/s of uint16)")
    print("goal    >= 50 MB/s")


def encode_folder(codec, files: list[Path], what: str) -> list[np.ndarray]:
    from mimirate.audio import read_audio

    out = []
    for f in tqdm(files, desc=f"encoding {what}", unit="file", file=sys.stderr):
        out.append(codec.encode(read_audio(f, codec.sample_rate).samples).codes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--train-files", type=int, default=251)
    ap.add_argument("--dev-files", type=int, default=50)
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--refit", action="store_true", help="fit even if a stored table exists")
    ap.add_argument("--plot", default="out/bench_bitstream/bits_per_level.png")
    ap.add_argument("--skip-entropy", action="store_true")
    args = ap.parse_args()

    bench_packing()
    if args.skip_entropy:
        return 0

    import torch

    from mimirate import load_codec

    torch.set_num_threads(2)
    codec = load_codec(args.model, random_init=True) if args.random_init else load_codec(args.model)
    what = (
        f"{codec.name} ({'random weights' if args.random_init else 'trained'}, "
        f"weights {codec.weights_hash.hex()})"
    )
    train = sorted((SPEECH / "librispeech-train-clean-100").rglob("*.flac"))[: args.train_files]
    dev = sorted((SPEECH / "librispeech-test-other-dev").rglob("*.flac"))[: args.dev_files]
    stored = table_path(codec.name, codec.weights_hash)
    if stored.is_file() and not args.refit:
        table = EntropyTable.load(stored)
        print(f"\n== entropy table {table.table_id.hex()} from {stored}")
    else:
        train_codes = encode_folder(codec, train, "train")
        t = time.perf_counter()
        table, _ = fit_table(
            train_codes,
            model=codec.name,
            weights_hash=codec.weights_hash,
            bits=codec.bits_per_code,
            num_contexts=args.contexts,
        )
        print(
            f"\n== entropy table fitted on {len(train)} train files "
            f"({sum(c.shape[1] for c in train_codes)} frames) in {time.perf_counter() - t:.1f} s"
        )
    dev_codes = encode_folder(codec, dev, "dev")
    frames = sum(c.shape[1] for c in dev_codes)
    seconds = frames / codec.frame_rate
    print(f"model {what}; dev set: {len(dev)} files, {frames} frames, {seconds:.1f} s")

    lengths = np.concatenate([table.code_lengths(c) for c in dev_codes], axis=1)  # [32, F]
    per_level = lengths.mean(axis=1)
    print("\nlevel  context     bits/code (ideal, dev)   saving vs 11")
    for j, b in enumerate(per_level):
        src = ["NONE", "PREV_LEVEL", "PREV_FRAME"][int(table.sources[j])]
        print(f"{j + 1:5d}  {src:10s}  {b:8.3f}                 {100 * (1 - b / 11):+6.1f}%")

    print("\nlevels  plain .mimi    entropy .mimi   saving  (real files, dev set, kbit/s)")
    for k in (8, 32):
        plain = ent = 0
        for c in dev_codes:
            mf = MimiFile.of_codec(codec, c[:k], c.shape[1] * codec.frame_size)
            plain += len(mf.to_bytes())
            e = mf.with_entropy(table).to_bytes()
            assert np.array_equal(MimiFile.parse(e, table).codes, c[:k])
            ent += len(e)
        print(
            f"{k:6d}  {plain * 8 / seconds / 1000:11.3f}  {ent * 8 / seconds / 1000:14.3f}  "
            f"{100 * (1 - ent / plain):6.1f}%   (nominal {nominal_bps(k) / 1000:.3f}; "
            "goal >= 15% at 8)"
        )

    print("\n== entropy coding speed, one thread, whole dev set")
    for k in (8, 32):
        streams = [table.encode(c[:k], None) for c in dev_codes]
        t_enc = best_of(lambda k=k: [table.encode(c[:k], None) for c in dev_codes], 3)
        t_dec = best_of(
            lambda k=k, s=streams: [
                table.decode(b, None, k, c.shape[1]) for b, c in zip(s, dev_codes, strict=True)
            ],
            3,
        )
        print(
            f"{k:2d} levels: encode {seconds / t_enc:8.0f} x real time, "
            f"decode {seconds / t_dec:8.0f} x real time (goal >= 200x)"
        )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(np.arange(1, len(per_level) + 1), per_level, color="tab:blue")
        ax.axhline(11, color="k", linestyle="--", label="nominal (11 bits)")
        ax.set_xlabel("level")
        ax.set_ylabel("bits per code (dev set)")
        ax.set_title(f"Entropy-coded bits per code: {what}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
