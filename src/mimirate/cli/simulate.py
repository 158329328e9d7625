"""``mimirate simulate``: rate controllers over network traces, in the trace-driven simulator."""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any

from mimirate.config import DEFAULT_MODEL
from mimirate.errors import ConfigError

CONTROLLERS = ("adaptive", "throughput", "queue", "fixed-K", "fixed-K+redR", "offline", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run rate controllers over network traces (trace-driven simulator)",
        description=(
            "Stream speech frames through a bottleneck driven by throughput traces "
            "(../shared/data/traces: 'time_s Mbit/s' lines or Mahimahi timestamps) and report "
            "per-frame QoE (measured codec quality per level, E-model delay impairment, "
            "penalties for lost/late frames and switches), late/lost frames and queuing delay."
        ),
    )
    p.add_argument("--trace", required=True, metavar="FILE|DIR", help="a trace file or a folder")
    p.add_argument(
        "--controller",
        default="adaptive",
        metavar="NAME",
        help="adaptive, throughput, queue, fixed-K (K levels), fixed-K+redR (with R levels "
        "of redundancy), offline (dynamic-programming optimum, slow), all, or a comma list "
        "(default: adaptive)",
    )
    p.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="P",
        help="Bernoulli packet loss probability (default 0)",
    )
    p.add_argument(
        "--gilbert",
        metavar="P_GB,P_BG[,LOSS_GOOD,LOSS_BAD]",
        help="Gilbert-Elliott loss instead of --loss (per 80 ms sending slot)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="KBPS",
        help="kbit/s of capacity per Mbit/s of the trace (default 4)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="seconds of each trace to play (default: the whole trace, at most 300)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N traces of a folder",
    )
    p.add_argument("--propagation-ms", type=float, default=40.0, help="one-way (default 40)")
    p.add_argument("--queue-bytes", type=int, default=3000, help="drop-tail buffer (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the loss patterns (default 0)")
    p.add_argument(
        "--quality-table",
        default=None,
        metavar="MODEL|PATH",
        help=f"measured quality per level (default: the {DEFAULT_MODEL} model's, "
        "else any stored one, named on stderr)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write results.json and CDF plots (per-frame delay, QoE, queuing delay)",
    )
    p.set_defaults(func=run)


def _loss(args: argparse.Namespace) -> Any:
    from mimirate.ratecontrol.simulator import BernoulliLoss, GilbertElliottLoss

    if args.gilbert:
        try:
            vals = [float(v) for v in args.gilbert.split(",")]
        except ValueError:
            vals = []
        if len(vals) not in (2, 4):
            raise ConfigError("--gilbert takes P_GB,P_BG or P_GB,P_BG,LOSS_GOOD,LOSS_BAD numbers")
        return GilbertElliottLoss(*vals)
    return BernoulliLoss(args.loss)


def _table(name: str | None) -> Any:
    from mimirate.ratecontrol.qoe import available_tables, load_quality_table

    if name is not None:
        return load_quality_table(name)
    stored = available_tables()
    if DEFAULT_MODEL in stored:
        return load_quality_table(DEFAULT_MODEL)
    if not stored:
        return load_quality_table(DEFAULT_MODEL)  # raises, saying how to measure one
    print(
        f"mimirate simulate: no quality table for {DEFAULT_MODEL!r} yet; using {stored[0]!r}",
        file=sys.stderr,
    )
    return load_quality_table(stored[0])


def make_controllers(spec: str, options: Any) -> list[Any]:
    """Controller factories (fresh per run) from a comma list of names."""
    from mimirate.ratecontrol.baselines import (
        FIXED_LEVELS,
        FIXED_REDUNDANCY,
        FixedController,
        QueueController,
        ThroughputController,
    )
    from mimirate.ratecontrol.controller import AdaptiveController

    names: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if part == "all":
            names += ["adaptive", "throughput", "queue"]
            names += [f"fixed-{k}" for k in FIXED_LEVELS] + [f"fixed-8+red{FIXED_REDUNDANCY}"]
            names += ["offline"]
        else:
            names.append(part)
    out = []
    for n in dict.fromkeys(names):
        m = re.fullmatch(r"fixed-(\d+)(?:\+red(\d+))?", n)
        if n == "adaptive":
            out.append((n, lambda: AdaptiveController(options)))
        elif n == "throughput":
            out.append((n, lambda: ThroughputController(options)))
        elif n == "queue":
            out.append((n, lambda: QueueController(options.table.num_levels)))
        elif n == "offline":
            out.append((n, None))
        elif m and 1 <= int(m.group(1)) <= options.table.num_levels:
            k, r = int(m.group(1)), int(m.group(2) or 0)
            if r > k:
                raise ConfigError(f"{n}: redundancy cannot exceed the levels")
            out.append((n, lambda k=k, r=r: FixedController(k, redundancy=r)))
        else:
            raise ConfigError(f"unknown controller {n!r}; choose from {', '.join(CONTROLLERS)}")
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mimirate.ratecontrol.baselines import PlanController, offline_bounds
    from mimirate.ratecontrol.options import OptionTable
    from mimirate.ratecontrol.simulator import LinkConfig, simulate
    from mimirate.ratecontrol.traces import DEFAULT_SCALE_KBPS, load_trace, trace_files
    from mimirate.ratecontrol.wire import WireSizer

    if args.duration is not None and not args.duration > 0:
        raise ConfigError("--duration must be positive")
    table = _table(args.quality_table)
    sizer = WireSizer()
    options = OptionTable(sizer, table)
    controllers = make_controllers(args.controller, options)
    link = LinkConfig(
        propagation_ms=args.propagation_ms,
        queue_bytes=args.queue_bytes,
        loss=_loss(args),
        seed=args.seed,
    )
    scale = DEFAULT_SCALE_KBPS if args.scale is None else args.scale
    files = trace_files(args.trace)[: args.limit]
    results = []
    bound_sum, bound_frames = 0.0, 0  # the offline optimum's DP value: an upper bound
    # With random (Bernoulli) loss, also the optimum that does not know which packets are
    # lost (``blind``): the bound in expectation for controllers that cannot know it either.
    # And the least late+lost fraction any sender reaches (frame-weighted over traces).
    blind, expected_sum = False, 0.0
    floor_sum, expected_floor_sum = 0.0, 0.0
    for path in tqdm(files, desc="traces", unit="trace", disable=len(files) < 2, file=sys.stderr):
        trace = load_trace(path, scale)
        dur = args.duration if args.duration is not None else min(trace.period_s, 300.0)
        for name, factory in controllers:
            if factory is None:
                ob = offline_bounds(trace, table, sizer=sizer, link=link, duration_s=dur)
                plan = ob.plan
                bound_sum, bound_frames = bound_sum + plan.value, bound_frames + plan.num_frames
                expected_sum += ob.expected_value
                floor_sum += ob.late_lost_floor * plan.num_frames
                expected_floor_sum += ob.expected_late_lost_floor * plan.num_frames
                blind = ob.blind
                r = simulate(
                    trace, PlanController(plan), table, link=link, duration_s=dur, sizer=sizer
                )
            else:
                r = simulate(trace, factory(), table, link=link, duration_s=dur, sizer=sizer)
            results.append((name, r))
    summary = summarize(results)
    doc = {
        "quality_table": {
            "model": table.model,
            "weights_hash": table.weights_hash,
            "dataset": table.dataset,
        },
        "link": {
            "propagation_ms": link.propagation_ms,
            "queue_bytes": link.queue_bytes,
            "loss": repr(link.loss),
            "seed": link.seed,
            "scale_kbps_per_mbps": scale,
        },
        "controllers": summary,
        "runs": [r.summary() for _, r in results],
    }
    if bound_frames:
        # "offline" above is the optimum's schedule replayed; this bounds every controller.
        doc["offline_bound_qoe"] = bound_sum / bound_frames
        doc["late_lost_floor_pct"] = 100 * floor_sum / bound_frames
        if blind:
            doc["offline_expected_bound_qoe"] = expected_sum / bound_frames
            doc["expected_late_lost_floor_pct"] = 100 * expected_floor_sum / bound_frames
    if args.report:
        write_report(Path(args.report), doc, results)
    if args.json:
        from mimirate.cli import print_json

        print_json(doc)
    else:
        print(f"{len(files)} trace(s), quality table: {table.model} ({table.dataset})")
        print(
            f"{'controller':<16}{'mean QoE':>9}{'late+lost %':>13}{'p95 queue ms':>14}"
            f"{'wire kbit/s':>13}{'levels':>8}"
        )
        for name, s in summary.items():
            print(
                f"{name:<16}{s['mean_qoe']:>9.1f}{s['late_lost_pct']:>13.2f}"
                f"{s['p95_queue_ms']:>14.0f}{s['wire_kbps']:>13.2f}{s['mean_levels']:>8.1f}"
            )
        if bound_frames:
            print(
                f"{'offline bound':<16}{doc['offline_bound_qoe']:>9.1f}  (upper bound on mean QoE)"
            )
        if bound_frames and blind:
            print(
                f"{'expected bound':<16}{doc['offline_expected_bound_qoe']:>9.1f}  (the same "
                "with losses unknown: the bound in expectation)"
            )
        if bound_frames:
            floors = f"{doc['late_lost_floor_pct']:.2f} %"
            if blind:
                floors += f", losses unknown {doc['expected_late_lost_floor_pct']:.2f} %"
            print(f"least late+lost any sender reaches: {floors}")
    return 0


def summarize(results: list[tuple[str, Any]]) -> dict[str, dict[str, float]]:
    """Per controller, over all its runs: mean QoE, late+lost % and levels (frame-weighted),
    p95 of all packets' queuing delays, mean wire kbit/s."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(n for n, _ in results):
        runs = [r for n, r in results if n == name]
        q = np.concatenate([r.qoe.qoe[r.speech] for r in runs])
        bad = sum((r.late_frac + r.lost_frac) * r.speech.sum() for r in runs)
        frames = sum(int(r.speech.sum()) for r in runs)
        qd = np.concatenate([r.packets.queue_delay_ms[~r.packets.dropped] for r in runs])
        played = np.concatenate([r.qoe.played_levels[r.speech] for r in runs])
        out[name] = {
            "runs": len(runs),
            "mean_qoe": float(q.mean()),
            "late_lost_pct": float(100 * bad / max(frames, 1)),
            "p95_queue_ms": float(np.percentile(qd, 95)) if qd.size else float("nan"),
            "wire_kbps": float(np.mean([r.wire_bps for r in runs]) / 1e3),
            "mean_levels": float(played[played > 0].mean()) if (played > 0).any() else 0.0,
        }
    return out


def write_report(out: Path, doc: dict[str, Any], results: list[tuple[str, Any]]) -> None:
    """results.json and cdf.png (per-frame delay, per-frame QoE, packet queuing delay)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mimirate.fileio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", json.dumps(doc, indent=2).encode())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(n for n, _ in results):
        runs = [r for n, r in results if n == name]
        delay = np.concatenate([r.frame_delay_ms[r.speech] for r in runs])
        delay = np.where(np.isnan(delay), np.inf, delay)  # lost/late frames at the top
        qoe = np.concatenate([r.qoe.qoe[r.speech] for r in runs])
        qd = np.concatenate([r.packets.queue_delay_ms[~r.packets.dropped] for r in runs])
        for ax, v in zip(axes, (delay, qoe, qd), strict=True):
            v = np.sort(v)
            ax.plot(v, np.arange(1, v.size + 1) / max(v.size, 1), label=name)
    axes[0].set(
        xlabel="frame playout delay after capture (ms; lost/late = never)",
        ylabel="CDF",
        xlim=(0, 500),
    )
    axes[1].set(xlabel="per-frame QoE (R scale)", ylabel="CDF")
    axes[2].set(xlabel="packet queuing delay (ms)", ylabel="CDF", xscale="symlog")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out / "cdf.png", buf.getvalue())
