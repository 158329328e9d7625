"""``mimirate tokenize`` (a corpus to Parquet code shards) and ``mimirate tokenize-decode``.

(Named ``tokenize_cmd`` so that no ``tokenize.py`` sits beside code that imports the
standard library's ``tokenize``.)
"""

from __future__ import annotations

import argparse

from mimirate.config import DEFAULT_MODEL


def register(sub: argparse._SubParsersAction) -> None:
    from mimirate.tokenize.manifest import DEFAULT_BATCH_SECONDS, DEFAULT_SHARD_FILES

    p = sub.add_parser(
        "tokenize",
        help="encode a corpus of audio files into Parquet code shards (Ray, local or cluster)",
        description=(
            "Encode every audio file of INPUT into Parquet shards of codes under OUTPUT_DIR "
            "(docs/shards.md), with manifest.json and errors.jsonl. Runs on this machine "
            "unless --ray names a cluster. A rerun skips finished shards; files that cannot "
            "be read are recorded in errors.jsonl and do not stop the job."
        ),
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="a folder (searched recursively), a quoted glob ('data/**/*.flac'), a list "
        "file (.txt, one path a line) or a table (.csv/.tsv/.jsonl with a 'path' column)",
    )
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="where shards and manifest go")
    p.add_argument("--levels", type=int, default=None, help="levels to keep (default: all)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"preset name, checkpoint path or hub id (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights for the preset (to test a pipeline; codes mean nothing)",
    )
    p.add_argument(
        "--ray",
        default="auto",
        metavar="auto|local|none|ADDRESS",
        help="auto (default): RAY_ADDRESS if set, else a local Ray on this machine; local: "
        "a local Ray; none: no Ray, one process; ADDRESS: a cluster (ray://head:10001)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per encoder)")
    p.add_argument(
        "--batch-seconds",
        type=float,
        default=DEFAULT_BATCH_SECONDS,
        help=f"audio per encoder batch, padding included (default {DEFAULT_BATCH_SECONDS:g}; "
        "raise it on a GPU). 0: one whole file per call, codes bit-identical to "
        "codec.encode (batching may flip ~0.2%% of codes at float near-ties)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="encoder actors (default: one per GPU with cuda, one on this machine)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU encoder")
    p.add_argument(
        "--shard-files",
        type=int,
        default=DEFAULT_SHARD_FILES,
        help=f"files per shard (default {DEFAULT_SHARD_FILES})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_tokenize)

    d = sub.add_parser(
        "tokenize-decode",
        help="decode one item of a tokenized corpus to a WAV file, to listen to it",
        description="Decode one item of OUTPUT_DIR (from `mimirate tokenize`) to OUT.wav. "
        "The model is the one the manifest names, unless --model gives its weights.",
    )
    d.add_argument("output_dir", metavar="OUTPUT_DIR")
    d.add_argument(
        "item", metavar="ITEM", help="the item's index, its source path, or a unique path end"
    )
    d.add_argument("out", metavar="OUT.wav")
    d.add_argument("--levels", type=int, default=None, help="decode only the first levels")
    d.add_argument(
        "--model",
        default=None,
        help="preset, checkpoint path or hub id (default: the manifest's model)",
    )
    d.add_argument("--random-init", action="store_true", help="seeded random weights (tests only)")
    d.add_argument("--json", action="store_true", help="print what was written as JSON")
    d.set_defaults(func=run_decode)


def _require_pyarrow() -> None:
    import importlib.util

    from mimirate.errors import ConfigError

    if importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("tokenization needs pyarrow (and Ray): pip install 'mimirate[ray]'")


def run_tokenize(args: argparse.Namespace) -> int:
    _require_pyarrow()
    from mimirate.cli import print_json
    from mimirate.tokenize.pipeline import CodecSpec, TokenizeOptions, tokenize

    spec = CodecSpec(model=args.model, device=args.device, random_init=args.random_init)
    options = TokenizeOptions(
        levels=args.levels,
        batch_seconds=args.batch_seconds,
        shard_files=args.shard_files,
        ray=args.ray,
        workers=args.workers,
        threads=args.threads,
        progress=not args.no_progress and not args.json,
    )
    result = tokenize(args.input, args.output_dir, spec, options)
    m = result.manifest
    speed = result.seconds_encoded / result.wall_seconds if result.wall_seconds > 0 else 0.0
    doc = {
        "output_dir": str(result.output_dir),
        "backend": result.backend,
        "model": m.model,
        "weights_hash": m.weights_hash,
        "levels": m.levels,
        "shards": result.shards_total,
        "shards_written": result.shards_written,
        "shards_skipped": result.shards_skipped,
        "files_encoded": result.files_encoded,
        "files_failed": result.files_failed,
        "hours_encoded": round(result.seconds_encoded / 3600, 6),
        "wall_seconds": round(result.wall_seconds, 3),
        "x_real_time": round(speed, 2),
        "totals": {
            "items": m.num_items,
            "errors": m.num_errors,
            "frames": m.num_frames,
            "hours": round(m.seconds / 3600, 6),
        },
        "manifest": str(result.output_dir / "manifest.json"),
        "errors_file": str(result.output_dir / m.errors_file),
    }
    if args.json:
        print_json(doc)
    else:
        print(
            f"{result.output_dir}: {m.num_items} items, {m.seconds / 3600:.3f} h, "
            f"{m.levels} levels of {m.model} ({m.weights_hash}); this run: "
            f"{result.shards_written} shards written, {result.shards_skipped} already done, "
            f"{result.files_encoded} files in {result.wall_seconds:.1f} s "
            f"({speed:.1f}x real time, {result.backend})"
        )
        if m.num_errors:
            print(f"{m.num_errors} files failed: see {result.output_dir / m.errors_file}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    _require_pyarrow()
    from mimirate.audio import write_wav
    from mimirate.cli import print_json
    from mimirate.errors import CheckpointError
    from mimirate.tokenize.loader import get_item
    from mimirate.tokenize.manifest import read_manifest
    from mimirate.tokenize.pipeline import CodecSpec

    manifest = read_manifest(args.output_dir)
    item = get_item(args.output_dir, args.item, levels=args.levels)
    spec = CodecSpec(model=args.model or manifest.model, random_init=args.random_init)
    codec = spec.load()
    if codec.weights_hash.hex() != manifest.weights_hash:
        raise CheckpointError(
            f"the codes were made by weights {manifest.weights_hash}, but model "
            f"{spec.model!r} has weights {codec.weights_hash.hex()}; pass the same weights "
            "with --model PATH"
        )
    audio = codec.decode(item.codes)[: item.num_samples]
    write_wav(args.out, audio, codec.sample_rate)
    if args.json:
        print_json(
            {
                "out": args.out,
                "index": item.index,
                "source": item.path,
                "levels": item.num_levels,
                "frames": item.num_frames,
                "seconds": round(item.num_samples / codec.sample_rate, 3),
            }
        )
    else:
        print(
            f"{args.out}: item {item.index} ({item.path}), {item.num_levels} levels, "
            f"{item.num_samples / codec.sample_rate:.2f} s"
        )
    return 0
