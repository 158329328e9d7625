"""Rate control figures: the codec's quality per level, the latent-error calibration, content-
adaptive allocation vs fixed levels, controllers over real traces, progressive delivery,
the senders' VAD and what DTX saves.

    python benchmarks/bench_ratecontrol.py --quality-table --model small      # stores tables/
    python benchmarks/bench_ratecontrol.py --calibrate --model small          # stores tables/
    python benchmarks/bench_ratecontrol.py --allocation --model small
    python benchmarks/bench_ratecontrol.py --network [--traces-per-family 4] [--seconds 60]
    python benchmarks/bench_ratecontrol.py --network --held-out 8   # 8 other traces a family
    python benchmarks/bench_ratecontrol.py --network --scale 16     # 1 Mbit/s of trace = 16 kbit/s
    python benchmarks/bench_ratecontrol.py --progressive --model small
    python benchmarks/bench_ratecontrol.py --dtx [--files 40]

``--random-init`` uses seeded random weights (pipeline checks only: the figures mean
nothing). Quality figures come from ../shared/data/speech/librispeech-test-other-dev only;
the calibration is fitted on ljspeech-excerpt (training data). Each section prints its table
and, with --out DIR, writes JSON and plots there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
TRACES = REPO.parent / "shared" / "data" / "traces"
DEV = SPEECH / "librispeech-test-other-dev"
TRAIN = SPEECH / "ljspeech-excerpt"
#: Levels measured for the quality table; the others are interpolated (linear in PESQ).
MEASURED_LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
TARGETS_BPS = (550.0, 1100.0, 2200.0)
FIXED_FOR_TARGET = {550.0: 4, 1100.0: 8, 2200.0: 16}


def load(args: argparse.Namespace):  # -> Codec
    import torch

    from mimirate import load_codec

    torch.set_num_threads(1)
    if args.random_init:
        return load_codec(args.model, random_init=True, seed=0)
    return load_codec(args.model)


def files_of(folder: Path, n: int | None) -> list[Path]:
    if not folder.is_dir():
        sys.exit(f"{folder} not found: the shared speech data is needed")
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".flac", ".wav"))
    return files[:n] if n else files


class Scored:
    """One dev file: encoded once at all levels; decoded at any per-frame levels and scored
    (:class:`mimirate.evaluation.distortion.FrameMel` does the decoding and the mel)."""

    def __init__(self, codec, path: Path) -> None:
        from mimirate.audio import read_audio
        from mimirate.evaluation.distortion import FrameMel

        self.codec = codec
        self.audio = read_audio(path, codec.sample_rate).samples
        self.enc = codec.encode(self.audio)
        self.frames = FrameMel(codec, self.audio, self.enc)
        self.ref16 = self.frames.reference

    def degraded(self, levels: np.ndarray) -> np.ndarray:
        return self.frames.degraded(levels)

    def score(self, levels: np.ndarray, pesq: bool = True) -> tuple[float, float, np.ndarray]:
        """(PESQ-WB, mel distance, per-codec-frame mel distance [T])."""
        from mimirate.evaluation.metrics import pesq_wb

        deg = self.degraded(levels)
        d, per = self.frames.distances(deg)
        return (pesq_wb(self.ref16, deg) if pesq else float("nan")), d, per


# -- the quality table -------------------------------------------------------------------------
def quality_table(args: argparse.Namespace) -> None:
    from mimirate.ratecontrol.qoe import QualityTable, table_path

    codec = load(args)
    files = files_of(DEV, args.files)
    pesq = np.zeros((len(files), len(MEASURED_LEVELS)))
    mel = np.zeros_like(pesq)
    for i, f in enumerate(tqdm(files, desc="quality per level", unit="file")):
        s = Scored(codec, f)
        for j, k in enumerate(MEASURED_LEVELS):
            p, m, _ = s.score(np.full(s.enc.num_frames, k))
            pesq[i, j], mel[i, j] = p, m
    lv = np.arange(1, codec.num_levels + 1)
    p_mean = np.interp(lv, MEASURED_LEVELS, np.nanmean(pesq, axis=0))
    m_mean = np.interp(lv, MEASURED_LEVELS, np.nanmean(mel, axis=0))
    name = args.model + ("-random" if args.random_init else "")
    table = QualityTable.from_measurements(
        p_mean,
        m_mean,
        model=name,
        weights_hash=codec.weights_hash.hex(),
        dataset=f"{DEV.name} ({len(files)} files); levels {MEASURED_LEVELS} measured, "
        "others interpolated",
        num_files=len(files),
        command="python benchmarks/bench_ratecontrol.py --quality-table --model "
        + args.model
        + (" --random-init" if args.random_init else "")
        + (f" --files {args.files}" if args.files else ""),
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ"),
    )
    table.save(table_path(name))
    print(f"quality table for {name} ({len(files)} dev files) -> {table_path(name)}")
    print(f"{'levels':>6}{'PESQ-WB':>9}{'mel dist':>10}{'utility R':>11}")
    for k in MEASURED_LEVELS:
        print(f"{k:>6}{p_mean[k - 1]:>9.3f}{m_mean[k - 1]:>10.3f}{table.utility[k - 1]:>11.1f}")


# -- calibration -------------------------------------------------------------------------------
def calibrate(args: argparse.Namespace) -> None:
    from mimirate.ratecontrol.allocation import TABLES_DIR, Calibration

    codec = load(args)
    errs, mels = [], []
    for f in tqdm(files_of(TRAIN, args.files), desc="calibration (training speech)", unit="file"):
        s = Scored(codec, f)
        for k in MEASURED_LEVELS:
            _, _, per = s.score(np.full(s.enc.num_frames, k), pesq=False)
            errs.append(s.enc.latent_error[k - 1])
            mels.append(per)
    e, m = np.concatenate(errs), np.concatenate(mels)
    name = args.model + ("-random" if args.random_init else "")
    cal = Calibration.fit(
        e, m, model=name, source=f"{TRAIN.name}, levels {MEASURED_LEVELS}", num_frames=int(e.size)
    )
    path = TABLES_DIR / f"calibration_{name}.json"
    cal.save(path)
    r = np.corrcoef(np.log10(np.maximum(e, 1e-12))[np.isfinite(m)], m[np.isfinite(m)])[0, 1]
    print(
        f"calibration for {name}: {e.size} (frame, level) pairs, corr(log error, mel) = "
        f"{r:.3f} -> {path}"
    )


# -- allocation --------------------------------------------------------------------------------
def container_bytes(codec, enc, levels: np.ndarray | None, k: int | None = None) -> int:
    """Bytes of the .mimi file of ``enc``'s first ``k`` levels (all by default), at
    per-frame ``levels`` (stored only when they are not all ``k``)."""
    from mimirate.bitstream.container import MimiFile

    kk = codec.num_levels if k is None else k
    if levels is not None and np.all(levels == kk):
        levels = None
    codes = enc.codes[:kk]
    levels = None if levels is None else levels.astype(np.uint8)
    return len(MimiFile.of_codec(codec, codes, enc.num_samples, levels=levels).to_bytes())


def adaptive_levels(codec, s: Scored, budget_bytes: int, distortion, cal, silent) -> np.ndarray:
    """The least-distortion allocation whose real .mimi file fits ``budget_bytes``."""
    from mimirate.ratecontrol.allocation import fit_allocation, loudness_weights

    return fit_allocation(
        distortion,
        budget_bytes * 8,
        lambda lv, cap: 8 * container_bytes(codec, s.enc, lv, cap),
        calibration=cal,
        silent=silent,
        weights=loudness_weights(s.audio, codec.frame_size),
    ).levels


#: The two rankings compared: the encoder's free estimate, and decoding every level count.
RANKINGS = ("latent", "measured")


def allocation(args: argparse.Namespace) -> dict:
    from mimirate.ratecontrol.allocation import Calibration, silent_frames

    codec = load(args)
    name = args.model + ("-random" if args.random_init else "")
    try:
        cal = Calibration.load(name)
    except Exception as e:
        print(f"no calibration ({e}); allocating on raw latent error", file=sys.stderr)
        cal = None
    files = files_of(DEV, args.files)
    rows: dict[tuple[str, float], list] = {}
    curve_targets = np.linspace(500, 1300, 9)
    curve = {r: np.zeros((len(files), curve_targets.size, 2)) for r in RANKINGS}
    for i, f in enumerate(tqdm(files, desc="allocation (dev set)", unit="file")):
        s = Scored(codec, f)
        dur = s.enc.num_frames / codec.frame_rate
        quiet = silent_frames(s.audio, codec.frame_size)
        ranking = {
            "latent": (s.enc.latent_error, cal),
            "measured": (s.frames.per_level(16), None),
        }
        for target in TARGETS_BPS:
            k = FIXED_FOR_TARGET[target]
            fixed_bytes = container_bytes(codec, s.enc, None, k)
            p_f, m_f, _ = s.score(np.full(s.enc.num_frames, k))
            for r, (dist, c) in ranking.items():
                lv = adaptive_levels(codec, s, fixed_bytes, dist, c, quiet)
                p_a, m_a, _ = s.score(lv)
                a_bytes = container_bytes(codec, s.enc, lv, int(lv.max()))
                rows.setdefault((r, target), []).append(
                    (fixed_bytes * 8 / dur, p_f, m_f, a_bytes * 8 / dur, p_a, m_a, lv.mean())
                )
            for r, (dist, c) in ranking.items():  # for "bits saved at fixed-8 quality"
                for j, tgt in enumerate(curve_targets):
                    lv = adaptive_levels(codec, s, int(tgt * dur / 8), dist, c, quiet)
                    _, m, _ = s.score(lv, pesq=False)
                    bps = container_bytes(codec, s.enc, lv, int(lv.max())) * 8 / dur
                    curve[r][i, j] = (bps, m)
    print(
        f"\n(1) content-adaptive vs fixed levels at equal real bitrate (.mimi container "
        f"bytes, side information included), {len(files)} dev files, model {name}; levels "
        "ranked by the calibrated latent error (free) or by decoding (measured)"
    )
    print(
        f"{'target':>7} | {'fixed':>6}{'kbit/s':>8}{'PESQ':>7}{'mel':>7} | {'ranking':>9}"
        f"{'kbit/s':>8}{'PESQ':>7}{'mel':>7}{'levels':>8}"
    )
    keys = ["bps", "pesq", "mel"]
    out: dict = {"model": name, "files": len(files), "rows": {}, "bits_saved_at_fixed8_mel": {}}
    for target in TARGETS_BPS:
        k = FIXED_FOR_TARGET[target]
        row: dict = {}
        for r in RANKINGS:
            mean = np.nanmean(np.array(rows[(r, target)], dtype=np.float64), axis=0)
            row["fixed"] = dict(zip(keys, map(float, mean[:3]), strict=True)) | {"levels": k}
            row[r] = dict(zip(keys, map(float, mean[3:6]), strict=True)) | {
                "levels": float(mean[6])
            }
            head = (
                f"{target / 1e3:>6.2f}k | {k:>6}{mean[0] / 1e3:>8.3f}{mean[1]:>7.3f}{mean[2]:>7.3f}"
                if r == RANKINGS[0]
                else " " * 36
            )
            print(
                f"{head} | {r:>9}{mean[3] / 1e3:>8.3f}{mean[4]:>7.3f}{mean[5]:>7.3f}{mean[6]:>8.2f}"
            )
        out["rows"][str(target)] = row
    fixed8 = out["rows"]["1100.0"]["fixed"]
    print(f"fixed 8 levels: {fixed8['bps'] / 1e3:.3f} kbit/s, mel {fixed8['mel']:.3f}")
    for r in RANKINGS:
        c = curve[r].mean(axis=0)
        head = (
            f"  {r}: curve {c[:, 0].min() / 1e3:.2f}-{c[:, 0].max() / 1e3:.2f} kbit/s, mel "
            f"{c[:, 1].min():.3f}-{c[:, 1].max():.3f};"
        )
        # Where the curve first comes down to that mel distance: linear between the two
        # points around the crossing (the points are 0.1 kbit/s apart), never past the
        # curve's ends (a curve that never gets there reports no saving).
        reached = np.flatnonzero(c[:, 1] <= fixed8["mel"])
        saved: float | None = None
        if reached.size:
            j = int(reached[0])
            bps = c[j, 0]
            if j > 0:
                (b0, m0), (b1, m1) = c[j - 1], c[j]
                bps = b0 + (b1 - b0) * (m0 - fixed8["mel"]) / (m0 - m1)
            saved = float(1 - bps / fixed8["bps"])
            print(
                f"{head} reaches it at {bps / 1e3:.3f} kbit/s: {100 * saved:.1f}% fewer bits"
                + (
                    f" (between the points at {c[j - 1, 0] / 1e3:.2f} and {c[j, 0] / 1e3:.2f})"
                    if j
                    else ""
                )
            )
        else:
            print(f"{head} does not reach it")
        out["bits_saved_at_fixed8_mel"][r] = saved
        out.setdefault("curve", {})[r] = c.tolist()
    return out


# -- network -----------------------------------------------------------------------------------
def network_traces(family: str, per_family: int, held_out: int = 0) -> list[Path]:
    """The traces of a family the network figures use: ``per_family`` evenly spaced ones
    (Mahimahi: uplinks only), the set the controller's constants were measured on; or, with
    ``held_out`` > 0, that many evenly spaced among all the others (Mahimahi downlinks
    included), to check that what was tuned on the first set holds beyond it."""
    from mimirate.ratecontrol.traces import trace_files

    files = trace_files(TRACES / family)
    tuned = files
    if family == "mahimahi-cellular":
        tuned = [f for f in files if f.name.endswith(".up")] or files
    step = max(1, len(tuned) // per_family)
    chosen = tuned[::step][:per_family]
    if not held_out:
        return chosen
    rest = [f for f in files if f not in chosen]
    k = max(1, len(rest) // held_out)
    return rest[k // 2 :: k][:held_out]


def network(args: argparse.Namespace) -> dict:
    """Every controller over the chosen traces, 0% and 10% random loss; the offline optimum
    as a bound (its DP value, an upper bound) and as a replayed schedule. With loss, also
    the optimum that does not know which packets are lost (``losses="expected"``): the
    bound in expectation for controllers that cannot know it either."""
    from mimirate.cli.simulate import make_controllers, summarize
    from mimirate.ratecontrol.baselines import PlanController, offline_bounds
    from mimirate.ratecontrol.options import OptionTable
    from mimirate.ratecontrol.qoe import load_quality_table
    from mimirate.ratecontrol.simulator import BernoulliLoss, LinkConfig, simulate
    from mimirate.ratecontrol.traces import DEFAULT_SCALE_KBPS, load_trace
    from mimirate.ratecontrol.wire import WireSizer

    table = load_quality_table(args.table)
    sizer = WireSizer()
    options = OptionTable(sizer, table)
    controllers = make_controllers("all", options)
    scale = DEFAULT_SCALE_KBPS if args.scale is None else args.scale
    out: dict = {"table": table.model, "scale_kbps_per_mbps": scale, "families": {}, "traces": []}
    for family in ("hsdpa-norway", "fcc", "mahimahi-cellular"):
        chosen = network_traces(family, args.traces_per_family, args.held_out)
        for loss in (0.0, 0.1):
            link = LinkConfig(loss=BernoulliLoss(loss), seed=1)
            results = []
            bound_sum, expected_sum, frames = 0.0, 0.0, 0
            floor_sum, blind_floor_sum = 0.0, 0.0
            for path in tqdm(chosen, desc=f"{family} loss {loss}", unit="trace"):
                tr = load_trace(path, scale)
                dur = min(args.seconds, tr.period_s)
                per: dict[str, object] = {"trace": tr.name, "family": family, "loss": loss}
                for name, factory in controllers:
                    if factory is None:
                        # The least late+lost any sender reaches comes with the bounds: how
                        # far the 2 % target is reachable at all.
                        ob = offline_bounds(tr, table, sizer=sizer, link=link, duration_s=dur)
                        plan = ob.plan
                        r = simulate(
                            tr, PlanController(plan), table, link=link, duration_s=dur, sizer=sizer
                        )
                        bound_sum += plan.value
                        expected_sum += ob.expected_value
                        frames += plan.num_frames
                        floor_sum += ob.late_lost_floor * plan.num_frames
                        blind_floor_sum += ob.expected_late_lost_floor * plan.num_frames
                        per["bound"] = plan.bound
                        per["expected_bound"] = ob.expected_value / max(plan.num_frames, 1)
                        per["late_lost_floor_pct"] = 100 * ob.late_lost_floor
                        per["expected_late_lost_floor_pct"] = 100 * ob.expected_late_lost_floor
                    else:
                        r = simulate(tr, factory(), table, link=link, duration_s=dur, sizer=sizer)
                    results.append((name, r))
                    per[name] = r.summary()
                runs = [r for n, r in results[-len(controllers) :]]
                # The bound is only a bound if no controller beats it: count any that do.
                per["bound_violations"] = [
                    r.controller for r in runs if r.mean_qoe > per["bound"] + 1e-9
                ]
                out["traces"].append(per)
            s = summarize(results)
            bound = bound_sum / max(frames, 1)
            expected = expected_sum / max(frames, 1)
            s["offline"]["bound_qoe"] = bound
            s["offline"]["expected_bound_qoe"] = expected
            s["offline"]["late_lost_floor_pct"] = 100 * floor_sum / max(frames, 1)
            s["offline"]["expected_late_lost_floor_pct"] = 100 * blind_floor_sum / max(frames, 1)
            out["families"][f"{family} loss={loss}"] = s
            print(
                f"\n(2) {family}, {len(chosen)} traces x {args.seconds:.0f} s, "
                f"{100 * loss:.0f}% random loss, 1 Mbit/s of trace = {scale:g} kbit/s, "
                f"quality table {table.model}; "
                f"offline bound (DP value) {bound:.2f}, losses unknown {expected:.2f}; "
                f"least late+lost any sender reaches "
                f"{s['offline']['late_lost_floor_pct']:.2f} %, losses unknown "
                f"{s['offline']['expected_late_lost_floor_pct']:.2f} %"
            )
            print(
                f"{'controller':<14}{'mean QoE':>9}{'% of bound':>11}{'% exp.':>7}"
                f"{'late+lost %':>12}{'p95 queue ms':>13}{'kbit/s':>8}{'levels':>7}"
            )
            for name, v in s.items():
                label = "offline replay" if name == "offline" else name
                print(
                    f"{label:<14}{v['mean_qoe']:>9.2f}{100 * v['mean_qoe'] / bound:>11.1f}"
                    f"{100 * v['mean_qoe'] / expected:>7.1f}"
                    f"{v['late_lost_pct']:>12.2f}{v['p95_queue_ms']:>13.0f}"
                    f"{v['wire_kbps']:>8.2f}{v['mean_levels']:>7.1f}"
                )
    print("\n(2) per trace: adaptive vs the bound and the best fixed baseline")
    print(
        f"{'trace':<44}{'loss':>5}{'adaptive':>9}{'bound':>7}{'% bnd':>6}{'exp.':>6}{'best fix':>9}"
        f"{'l+l %':>7}{'p95 q':>7}{'viol':>5}"
    )
    for per in out["traces"]:
        a = per["adaptive"]
        fixed = max(v["mean_qoe"] for k, v in per.items() if k.startswith("fixed"))
        print(
            f"{per['trace'][:43]:<44}{per['loss']:>5.1f}{a['mean_qoe']:>9.2f}{per['bound']:>7.2f}"
            f"{100 * a['mean_qoe'] / per['bound']:>6.1f}{per['expected_bound']:>6.2f}"
            f"{fixed:>9.2f}{a['late_lost_pct']:>7.2f}"
            f"{a['p95_queue_ms']:>7.0f}{len(per['bound_violations']):>5}"
        )
    return out


# -- progressive -------------------------------------------------------------------------------
def progressive(args: argparse.Namespace) -> dict:
    from mimirate.bitstream.container import MimiFile
    from mimirate.ratecontrol.progressive import compare
    from mimirate.ratecontrol.qoe import load_quality_table
    from mimirate.ratecontrol.traces import load_trace, trace_files

    codec = load(args)
    table = load_quality_table(args.table)
    files = files_of(DEV, args.files)
    # A fast and a thin trace of each kind: the first HSDPA and FCC-folder traces run at
    # several times the 4.4 kbit/s of 32 levels; the FCC "trace_*" ones near 1 kbit/s.
    fcc = trace_files(TRACES / "fcc")
    thin = [f for f in fcc if f.name.startswith("trace_")][:1]
    traces = [load_trace(f) for f in [trace_files(TRACES / "hsdpa-norway")[0], fcc[0], *thin]]
    rows = []
    for f in tqdm(files, desc="progressive", unit="file"):
        s = Scored(codec, f)
        mf = MimiFile.of_codec(codec, s.enc.codes, s.enc.num_samples)
        for tr in traces:
            a, b = compare(mf, tr, table)
            rows.append((tr.name, mf.duration_s, a, b))
    print(
        f"\nprogressive delivery vs 32 levels in time order ({len(files)} dev files, traces "
        f"{', '.join(t.name for t in traces)}; quality table {table.model})"
    )
    print(f"{'layout':<14}{'first audio s':>14}{'stall s':>9}{'complete s':>11}{'played R':>9}")
    out = {}
    for tname in dict.fromkeys(r[0] for r in rows):
        for i, label in ((2, "coarse-first"), (3, "in-order")):
            d = [r[i] for r in rows if r[0] == tname]
            vals = [
                np.mean([x.first_audio_s for x in d]),
                np.mean([x.stall_s for x in d]),
                np.mean([x.complete_s for x in d]),
                np.mean([x.played_utility for x in d]),
            ]
            print(
                f"{label:<14}{vals[0]:>14.2f}{vals[1]:>9.2f}{vals[2]:>11.2f}{vals[3]:>9.1f}"
                f"  {tname[:28]}"
            )
            out[f"{tname} {label}"] = dict(
                zip(
                    ["first_audio_s", "stall_s", "complete_s", "played_R"],
                    map(float, vals),
                    strict=True,
                )
            )
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        _, a, b = rows[-1][0], rows[-1][2], rows[-1][3]  # the thin trace
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(a.times_s, a.message_utility, label="coarse first")
        ax.plot(b.times_s, b.message_utility, label="32 levels in time order")
        ax.axvline(a.first_audio_s, ls=":", c="C0")
        ax.axvline(b.first_audio_s, ls=":", c="C1")
        ax.set(
            xlabel="time since the transfer began (s)",
            ylabel="quality of the message so far (mean R)",
            title=rows[0][0],
        )
        ax.legend()
        fig.tight_layout()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(args.out) / "progressive.png", dpi=110)
    return out


def dtx(args: argparse.Namespace) -> dict:
    """The VAD on real speech, and what DTX saves: the dev files back to back as one
    talker's stream, the adaptive controller over a steady link with and without DTX."""
    from mimirate.audio import read_audio
    from mimirate.ratecontrol.controller import AdaptiveController
    from mimirate.ratecontrol.options import OptionTable
    from mimirate.ratecontrol.qoe import load_quality_table
    from mimirate.ratecontrol.simulator import simulate
    from mimirate.ratecontrol.traces import constant_trace
    from mimirate.ratecontrol.vad import VoiceActivity, levels_dbfs
    from mimirate.ratecontrol.wire import WireSizer

    files = files_of(DEV, args.files or 40)
    activity, below_median = [], []
    for path in tqdm(files, desc="vad", unit="file"):
        x = read_audio(path, 24_000).samples
        frames = x[: x.size // 1920 * 1920].reshape(-1, 1920)
        vad = VoiceActivity()
        speech = np.array([vad.push(f) for f in frames])
        levels = levels_dbfs(frames, 1920)
        if speech.any():
            below_median += list(np.median(levels[speech]) - levels[~speech])
        activity.append(speech)
    act = np.concatenate(activity)
    table = load_quality_table(args.table)
    options = OptionTable(WireSizer(), table)
    link = constant_trace(16_000.0, name="steady 16 kbit/s")
    seconds = act.size * 0.08
    runs = {}
    for name, a in (("all frames", None), ("DTX", act)):
        r = simulate(link, AdaptiveController(options), table, duration_s=seconds, activity=a)
        runs[name] = r.summary()
    below = np.array(below_median)
    out = {
        "files": len(files),
        "frames": int(act.size),
        "silent_pct": float(100 * (1 - act.mean())),
        "silent_db_below_speech_median": {
            q: float(np.percentile(below, p)) for q, p in (("p1", 1), ("p50", 50), ("min", 0))
        }
        if below.size
        else {},
        "runs": runs,
    }
    print(f"\nVAD on {len(files)} dev files: {out['silent_pct']:.1f} % of {act.size} frames silent")
    if below.size:
        b = out["silent_db_below_speech_median"]
        print(
            f"silent frames under each file's median speech frame by {b['min']:.1f} dB at "
            f"least, {b['p50']:.1f} dB median"
        )
    print(f"{'':<12}{'wire kbit/s':>12}{'mean QoE':>10}{'mean levels':>13}")
    for name, r in runs.items():
        print(f"{name:<12}{r['wire_kbps']:>12.2f}{r['mean_qoe']:>10.2f}{r['mean_levels']:>13.2f}")
    out["talkspurt_ends"] = _talkspurt_ends(act, table, options)
    return out


def _talkspurt_ends(act: np.ndarray, table, options) -> dict:
    """DTX at 10 % random loss, with and without the keep-alive that carries the copy of a
    talkspurt's last packet (``simulator.PROTECT_TALKSPURT_END``): steady links and the
    network section's FCC and HSDPA traces, the activity above as the talker."""
    from mimirate.ratecontrol import simulator
    from mimirate.ratecontrol.controller import AdaptiveController
    from mimirate.ratecontrol.simulator import BernoulliLoss, LinkConfig, simulate
    from mimirate.ratecontrol.traces import constant_trace, load_trace

    links = [constant_trace(k * 1000.0, name=f"steady {k} kbit/s") for k in (4, 5, 8, 16)]
    for family in ("fcc", "hsdpa-norway"):
        links += [load_trace(p) for p in network_traces(family, 4, 0)]
    seconds = min(act.size * 0.08, 300.0)
    activity = act[: round(seconds / 0.08)]
    link_cfg = LinkConfig(loss=BernoulliLoss(0.1), seed=1)
    out = {}
    before = simulator.PROTECT_TALKSPURT_END
    try:
        for protect in (False, True):
            simulator.PROTECT_TALKSPURT_END = protect
            rows = []
            for trace in tqdm(links, desc=f"talkspurt ends ({protect})", leave=False):
                r = simulate(
                    trace,
                    AdaptiveController(options),
                    table,
                    link=link_cfg,
                    duration_s=seconds,
                    activity=activity,
                )
                rows.append(
                    {
                        "link": trace.name,
                        "mean_qoe": r.mean_qoe,
                        "late_pct": 100 * r.late_frac,
                        "lost_pct": 100 * r.lost_frac,
                        "wire_kbps": r.wire_bps / 1000,
                    }
                )
            out["protected" if protect else "unprotected"] = rows
    finally:
        simulator.PROTECT_TALKSPURT_END = before
    print("\nDTX at 10 % loss: a talkspurt's last packet unprotected -> its copy in a keep-alive")
    print(f"{'link':<26}{'QoE':>14}{'late+lost %':>16}{'wire kbit/s':>16}")
    for a, b in zip(out["unprotected"], out["protected"], strict=True):
        ll_a, ll_b = a["late_pct"] + a["lost_pct"], b["late_pct"] + b["lost_pct"]
        print(
            f"{a['link'][:25]:<26}{a['mean_qoe']:>6.2f} ->{b['mean_qoe']:>6.2f}"
            f"{ll_a:>7.2f} ->{ll_b:>6.2f}{a['wire_kbps']:>7.2f} ->{b['wire_kbps']:>6.2f}"
        )
    for key in ("unprotected", "protected"):
        rows = out[key]
        print(
            f"{key:<26}mean QoE {np.mean([r['mean_qoe'] for r in rows]):.2f}, late+lost "
            f"{np.mean([r['late_pct'] + r['lost_pct'] for r in rows]):.2f} %"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="small")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--table", default=None, help="quality table (default: the model's)")
    ap.add_argument("--files", type=int, default=None, help="use the first N files")
    ap.add_argument("--quality-table", action="store_true")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--allocation", action="store_true")
    ap.add_argument("--network", action="store_true")
    ap.add_argument("--progressive", action="store_true")
    ap.add_argument("--dtx", action="store_true")
    ap.add_argument("--traces-per-family", type=int, default=4)
    ap.add_argument(
        "--held-out",
        type=int,
        default=0,
        metavar="N",
        help="--network on N other traces a family (not those the controller was tuned on)",
    )
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="KBPS",
        help="--network: kbit/s that 1 Mbit/s of a trace becomes (default: the simulator's, 4)",
    )
    ap.add_argument("--out", default=None, help="folder for JSON and plots")
    args = ap.parse_args()
    if args.table is None:
        args.table = args.model + ("-random" if args.random_init else "")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    doc: dict = {}
    if args.quality_table:
        quality_table(args)
    if args.calibrate:
        calibrate(args)
    if args.allocation:
        doc["allocation"] = allocation(args)
    if args.network:
        doc["network"] = network(args)
    if args.progressive:
        doc["progressive"] = progressive(args)
    if args.dtx:
        doc["dtx"] = dtx(args)
    print(f"\n{time.time() - t0:.0f} s (2 shared cores: timings are noisy)")
    if args.out and doc:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ratecontrol.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
