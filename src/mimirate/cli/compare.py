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
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mimirate.cli import print_json
    from mimirate.evaluation.compare import compare_runs, read_eval_json

    rows = compare_runs(
        read_eval_json(args.base), read_eval_json(args.new), confidence=args.confidence
    )
    if args.json:
        print_json({"confidence": args.confidence, "differences": [r.to_dict() for r in rows]})
        return 0
    level = f"{100 * args.confidence:g} %"
    print(f"{'point':<12} {'metric':<13} {'files':>5} {'base':>8} {'new':>8}  difference [{level}]")
    for r in rows:
        d = r.difference
        print(
            f"{r.point:<12} {r.metric:<13} {d.n:>5} {r.base:>8.3f} {r.new:>8.3f}  "
            f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] {r.verdict}"
        )
    return 0
