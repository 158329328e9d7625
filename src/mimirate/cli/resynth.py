"""``mimirate resynth IN OUT.wav --levels K``: hear what K levels give.

Reads any audio libsndfile reads (resampled to the codec's rate, downmixed), encodes
it, decodes the first K levels, trims to the input length and writes a WAV atomically.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mimirate.cli import BF16_DECODER_HELP, load_cli_codec
from mimirate.config import DEFAULT_MODEL


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "resynth",
        help="encode and decode a file at K levels (to listen to a bitrate)",
        description="Encode IN with the codec, decode its first K levels, write OUT.wav.",
    )
    p.add_argument("input", metavar="IN", help="audio file (wav, flac, ogg, ...; any rate)")
    p.add_argument("output", metavar="OUT.wav", help="where to write the resynthesis")
    p.add_argument(
        "--levels", type=int, required=True, metavar="K", help="levels to decode (1..32)"
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help=f"preset name, checkpoint path or hub id (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights for the preset (tests only: the sound means nothing)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--bf16-decoder", action="store_true", help=BF16_DECODER_HELP)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mimirate.audio import read_audio, write_wav
    from mimirate.cli import print_json
    from mimirate.errors import ConfigError

    codec = load_cli_codec(args.model, args.random_init, args.seed, args.bf16_decoder)
    if not 1 <= args.levels <= codec.num_levels:
        raise ConfigError(f"--levels must be in 1..{codec.num_levels}, got {args.levels}")
    audio = read_audio(args.input, codec.sample_rate)
    start = time.perf_counter()
    encoded = codec.encode(audio.samples, levels=args.levels)
    decoded = codec.decode(encoded.codes)[: len(audio.samples)]
    elapsed = time.perf_counter() - start
    write_wav(args.output, decoded, codec.sample_rate)
    kbps = args.levels * codec.bits_per_code * codec.frame_rate / 1000
    figures = {
        "input": str(args.input),
        "output": str(args.output),
        "model": codec.name,
        "levels": args.levels,
        "nominal_kbps": kbps,
        "duration_s": audio.duration,
        "frames": encoded.num_frames,
        "processing_s": elapsed,
        "real_time_factor": audio.duration / elapsed if elapsed > 0 else float("inf"),
    }
    if args.json:
        print_json(figures)
    else:
        print(
            f"{args.output}: {args.levels} levels, {kbps:.4g} kbit/s nominal, "
            f"{audio.duration:.2f} s of audio in {elapsed:.2f} s "
            f"({figures['real_time_factor']:.1f}x real time)"
        )
    return 0
