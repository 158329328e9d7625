"""``mimirate eval``: rate-quality of our codec and real baselines on a set of speech files."""

from __future__ import annotations

import argparse
import os

from mimirate.config import DEFAULT_MODEL


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4,8, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one level count")
    return tuple(dict.fromkeys(values))


def _kbps_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected kbit/s like 0.8,1.5, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError("targets must be positive kbit/s")
    return tuple(dict.fromkeys(values))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure quality against real bytes for Mimi levels and Opus/Codec 2 baselines",
        description=(
            "Encode every audio file of SET with the model at each level count (a real "
            ".mimi file, decoded back from its bytes) and with the baselines (real "
            "opusenc/c2enc files), align each output to the original, and score PESQ-WB, "
            "STOI, ViSQOL (speech), mel distance and SI-SDR at 16 kHz. Prints a table of "
            "kbit/s on disk and metric means with 95%% confidence intervals."
        ),
    )
    p.add_argument(
        "set",
        nargs="+",
        metavar="SET",
        help="folders (searched recursively) or audio files, any format libsndfile reads",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"preset name or checkpoint path (default: {DEFAULT_MODEL}); 'none' for "
        "baselines only",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights for the preset (to time the pipeline; scores mean nothing)",
    )
    p.add_argument(
        "--levels",
        type=_int_list,
        default=(1, 2, 4, 8, 16, 32),
        help="level counts to evaluate, comma separated (default 1,2,4,8,16,32)",
    )
    p.add_argument(
        "--adaptive",
        type=_kbps_list,
        default=(),
        metavar="KBPS,...",
        help="also evaluate content-adaptive per-frame levels at these real file bitrates "
        "(kbit/s, container and side information included), e.g. 0.8,1.5",
    )
    p.add_argument(
        "--adaptive-ranking",
        choices=("measured", "latent"),
        default="measured",
        help="rank --adaptive levels by decoding each level count (measured, the default) "
        "or by the encoder's calibrated latent error (latent, free)",
    )
    p.add_argument(
        "--baselines",
        default="opus,codec2",
        help="opus and/or codec2, or settings like opus:6,codec2:1200; 'none' for none "
        "(default: opus at 6, 8, 12 kbit/s and codec2 700C, 1200, 1600, 3200)",
    )
    p.add_argument(
        "--entropy",
        nargs="?",
        const="auto",
        default=None,
        metavar="TABLE",
        help="also size the entropy-coded .mimi file, with the model's packaged table or "
        "the table file TABLE",
    )
    p.add_argument("--json", metavar="OUT", help="write every number as JSON to OUT ('-': stdout)")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write an HTML report (index.html, PNG figures, WAV clips) into DIR",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per core)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N files (sorted by path)")
    p.add_argument("--device", default="cpu", help="torch device of the codec (default cpu)")
    p.set_defaults(func=run)


def _entropy_table_path(
    spec: str | None, model: str | None, random_init: bool = False
) -> str | None:
    from mimirate.errors import ConfigError

    if spec is None:
        return None
    if model is None:
        raise ConfigError("--entropy needs a model (not --model none)")
    if spec != "auto":
        return spec
    from mimirate.bitstream.entropy import table_path
    from mimirate.config import PRESETS

    if model not in PRESETS:
        raise ConfigError(
            f"no packaged entropy table for {model!r}; pass the table file: --entropy TABLE"
        )
    from mimirate.models.loading import load_codec

    # Tables are kept per weights hash, so the packaged weights name theirs.
    codec = load_codec(model, random_init=random_init)
    path = table_path(model, codec.weights_hash)
    if not path.is_file():
        raise ConfigError(
            f"no entropy table for model {model!r} ({path}); fit one with "
            f"`mimirate entropy-fit DIR --model {model}` or pass --entropy TABLE"
        )
    return str(path)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from mimirate.cli import print_json
    from mimirate.evaluation.baselines import parse_baselines
    from mimirate.evaluation.harness import EvalConfig, evaluate, find_audio
    from mimirate.evaluation.metrics import METRICS
    from mimirate.fileio import atomic_write_bytes

    model = None if args.model.lower() == "none" else args.model
    baselines = () if args.baselines.lower() == "none" else parse_baselines(args.baselines)
    files = find_audio(args.set, limit=args.limit)
    report_dir = Path(args.report) if args.report else None
    config = EvalConfig(
        model=model,
        random_init=args.random_init,
        levels=args.levels,
        adaptive_kbps=args.adaptive,
        adaptive_ranking=args.adaptive_ranking,
        baselines=baselines,
        entropy_table=_entropy_table_path(args.entropy, model, args.random_init),
        jobs=args.jobs,
        clip_dir=str(report_dir / "clips") if report_dir else None,
        device=args.device,
    )
    result = evaluate(files, config, progress=True)

    if args.json == "-":
        print_json(result.to_dict())
    else:
        if args.json:
            text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
            atomic_write_bytes(args.json, text.encode())
        out = sys.stdout
        seconds = result.points[0].seconds if result.points else 0.0
        print(
            f"{len(result.files)} files, {seconds / 60:.1f} min of audio, model "
            f"{result.codec_name or 'none'}, {result.elapsed_s:.0f} s with {result.jobs} jobs",
            file=out,
        )
        cols = ["point", "kbps disk", "kbps ent", *(m.name for m in METRICS)]
        print("  ".join(f"{c:>14}" for c in cols), file=out)
        for p in result.points:
            ent = f"{p.entropy_kbps:.3f}" if p.entropy_kbps is not None else "-"
            cells = [p.point.label, f"{p.disk_kbps:.3f}", ent]
            for m in METRICS:
                ci = getattr(p.metrics, m.name)
                cells.append(f"{ci.mean:.3f}±{ci.half_width:.3f}" if ci.n > 1 else f"{ci.mean:.3f}")
            print("  ".join(f"{c:>14}" for c in cells), file=out)
    if report_dir is not None:
        from mimirate.evaluation.report import write_report

        index = write_report(result, report_dir)
        print(f"report: {index}", file=sys.stderr)
    return 0
