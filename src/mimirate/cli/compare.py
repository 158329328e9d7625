"""``mimirate compare``: two evaluation runs, file by file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two 'mimirate eval --json' runs file by file (paired differences)",
        description=(
            "For every point (codec setting) and metric both runs scored, the mean of the "
            "per-file differences NEW - BASE over the files both scored, with its t "
            "confidence interval, and a verdict: better or worse when the interval "
            "excludes 0, else same. Paired differences are far tighter than the runs' own "
            "intervals, which mostly measure how files differ."
        ),
    )
    p.add_argument("base", metavar="BASE", help="JSON written by mimirate eval --json")
    p.add_argument("new", metavar="NEW", help="JSON of the run to compare with BASE")
    p.add_argument("--confidence", type=float, default=0.95, help="of the intervals (default 0.95)")
    p.add_argument(
        "--pair",
        action="append",
        metavar="BASE_POINT:NEW_POINT",
        help="compare these points (repeatable; e.g. codec2-1200:mimi-8, BASE and NEW "
        "may be one file); default: every point both runs have, with itself",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mimirate.cli import print_json
    from mimirate.errors import ConfigError
    from mimirate.evaluation.compare import compare_runs, read_eval_json

    pairs = None
    if args.pair:
        pairs = [tuple(p.split(":", 1)) for p in args.pair]
        if any(len(p) != 2 or not all(p) for p in pairs):
            raise ConfigError("--pair takes BASE_POINT:NEW_POINT, e.g. codec2-1200:mimi-8")
    rows = compare_runs(
        read_eval_json(args.base),
        read_eval_json(args.new),
        pairs=pairs,
        confidence=args.confidence,
    )
    if args.json:
        print_json({"confidence": args.confidence, "differences": [r.to_dict() for r in rows]})
        return 0
    level = f"{100 * args.confidence:g} %"
    names = [r.point if r.point == r.base_point else f"{r.base_point} -> {r.point}" for r in rows]
    width = max(12, *map(len, names))
    head = f"{'point':<{width}} {'metric':<13} {'files':>5} {'base':>8} {'new':>8}"
    print(f"{head}  difference [{level}]")
    for name, r in zip(names, rows, strict=True):
        d = r.difference
        print(
            f"{name:<{width}} {r.metric:<13} {d.n:>5} {r.base:>8.3f} {r.new:>8.3f}  "
            f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] {r.verdict}"
        )
    return 0
