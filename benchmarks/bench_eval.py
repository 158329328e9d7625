"""Time the evaluation harness on the dev set and check the baselines against the anchors.

Runs ``evaluate`` on ../shared/data/speech/librispeech-test-other-dev (50 files) at six
level settings plus Opus and Codec 2, prints the wall time against the 10-minute
budget and each baseline's figures next to the issue's anchors (measured elsewhere).

    .venv/bin/python benchmarks/bench_eval.py [--model small] [--random-init] [--jobs 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mimirate.evaluation.harness import EvalConfig, evaluate, find_audio

DEV = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "speech"
    / "librispeech-test-other-dev"
)
BUDGET_S = 600.0
#: Issue 5's anchors: kbit/s on disk, PESQ-WB, STOI, ViSQOL.
ANCHORS = {
    "codec2-1200": (1.20, 1.38, 0.810, 1.98),
    "codec2-3200": (3.20, 1.47, 0.848, 2.14),
    "opus-6": (6.32, 2.00, 0.889, 2.07),
    "opus-8": (8.04, 2.59, 0.935, 2.67),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--model", default="small", help="preset or checkpoint ('none': baselines only)"
    )
    ap.add_argument("--random-init", action="store_true", help="random weights (timing only)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    files = find_audio([DEV], limit=args.limit)
    model = None if args.model == "none" else args.model
    config = EvalConfig(model=model, random_init=args.random_init, jobs=args.jobs)
    result = evaluate(files, config)
    seconds = result.points[0].seconds
    print(f"{len(files)} files ({seconds / 60:.1f} min), {len(result.points)} points, "
          f"{args.jobs} jobs: {result.elapsed_s:.0f} s, {result.elapsed_s / BUDGET_S:.2f} of the "
          f"{BUDGET_S:.0f} s budget, {result.elapsed_s / len(files):.1f} s per file")  # fmt: skip
    print(
        f"{'point':>14} {'kbps':>7} {'PESQ':>6} {'STOI':>6} {'ViSQOL':>6}"
        "   anchor (kbps PESQ STOI ViSQOL)"
    )
    for p in result.points:
        m = p.metrics
        row = (
            f"{p.point.label:>14} {p.disk_kbps:7.3f} {m.pesq_wb.mean:6.2f}"
            f" {m.stoi.mean:6.3f} {m.visqol.mean:6.2f}"
        )
        anchor = ANCHORS.get(p.point.key)
        print(row + (f"   {anchor}" if anchor else ""))


if __name__ == "__main__":
    main()
