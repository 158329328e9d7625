"""``mimirate demo``: the main job on the default model and the bundled speech clip.

Encodes once at all levels, cuts the codes to several level counts, writes each as a
real ``.mimi`` file and a decoded WAV, prints the bitrate table (nominal, container,
entropy-coded, on the wire) with a quality figure, draws a plot, and ends with a small
evaluation report (``mimirate eval`` on the clip, with baselines where installed).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_LEVELS = (1, 2, 4, 8, 16, 32)


def bundled_clip() -> Path:
    """The LJ Speech clip shipped in the package (public domain)."""
    return Path(str(resources.files("mimirate") / "assets" / "clips" / "LJ001-0001.flac"))


@dataclass(frozen=True)
class DemoRow:
    levels: int
    file: str
    wav: str
    bytes: int
    nominal_kbps: float
    container_kbps: float
    entropy_kbps: float | None
    wire_kbps: tuple[float, float, float]  # 1, 2 and 4 frames per packet
    mel_distance: float


def _level_list(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not levels:
        raise argparse.ArgumentTypeError("give at least one level count")
    return levels


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="code a speech clip at several levels: bitrate table, WAVs, plot, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--input", help="audio file to use instead of the bundled clip")
    p.add_argument("--model", default=None, help="preset name or checkpoint path (default model)")
    p.add_argument("--random-init", action="store_true", help="random weights (tests only)")
    p.add_argument(
        "--levels",
        type=_level_list,
        default=DEMO_LEVELS,
        help="level counts (default 1,2,4,8,16,32)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the evaluation report")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mimirate import load_codec
    from mimirate.audio import read_audio, resample, write_wav
    from mimirate.bitstream import MimiFile, find_table, stream_report
    from mimirate.cli import print_json
    from mimirate.config import DEFAULT_MODEL
    from mimirate.errors import ConfigError, FormatError
    from mimirate.evaluation.metrics import METRIC_RATE, mel_distance
    from mimirate.fileio import atomic_write_bytes

    torch.set_num_threads(2)
    model = args.model or DEFAULT_MODEL
    codec = load_codec(model, random_init=True) if args.random_init else load_codec(model)
    for k in args.levels:
        if not 1 <= k <= codec.num_levels:
            raise ConfigError(f"--levels must be in 1..{codec.num_levels}, got {k}")
    source = Path(args.input) if args.input else bundled_clip()
    audio = read_audio(source, codec.sample_rate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_wav(out / "original.wav", audio.samples, codec.sample_rate)

    encoded = codec.encode(audio.samples)  # once at all levels; every cut is a prefix
    try:
        table = find_table(codec.name, codec.weights_hash)
    except FormatError:
        table = None  # no fitted entropy table for these weights: the column says n/a
    reference16 = resample(audio.samples, codec.sample_rate, METRIC_RATE)
    rows: list[DemoRow] = []
    decoded: dict[int, np.ndarray] = {}
    for k in args.levels:
        mf = MimiFile.of_codec(codec, np.ascontiguousarray(encoded.codes[:k]), encoded.num_samples)
        data = mf.to_bytes()
        mimi_path = out / f"levels-{k:02d}.mimi"
        atomic_write_bytes(mimi_path, data)
        # Decode from the bytes just written: what the listener hears is what the file holds.
        parsed = MimiFile.parse(data)
        samples = codec.decode(parsed.codes)[: parsed.num_samples]
        decoded[k] = samples
        wav_path = out / f"levels-{k:02d}.wav"
        write_wav(wav_path, samples, codec.sample_rate)
        entropy_bytes = None
        if table is not None and k <= table.num_levels:
            entropy_bytes = len(mf.with_entropy(table).to_bytes())
        report = stream_report(
            mf.frame_levels(),
            frame_rate=mf.frame_rate,
            bits=mf.bits_per_code,
            container_bytes=len(data),
            entropy_bytes=entropy_bytes,
            side_info_bytes=mf.side_info_bytes(),
        )
        mel = mel_distance(reference16, resample(samples, codec.sample_rate, METRIC_RATE))
        rows.append(
            DemoRow(
                levels=k,
                file=str(mimi_path),
                wav=str(wav_path),
                bytes=len(data),
                nominal_kbps=report.nominal_bps / 1000,
                container_kbps=report.container_bps / 1000,
                entropy_kbps=None if report.entropy_bps is None else report.entropy_bps / 1000,
                wire_kbps=tuple(
                    bps / 1000 for bps in (report.wire_1_bps, report.wire_2_bps, report.wire_4_bps)
                ),
                mel_distance=mel,
            )
        )
    plot = _plot(out / "demo.png", audio.samples, decoded, rows, codec.sample_rate)
    report_page = None if args.no_report else _report(codec, model, args, source, out)
    summary: dict[str, Any] = {
        "model": codec.name,
        "weights_hash": codec.weights_hash.hex(),
        "input": str(source),
        "duration_s": audio.duration,
        "rows": [r.__dict__ for r in rows],
        "plot": str(plot),
        "report": None if report_page is None else str(report_page),
    }
    if args.json:
        print_json(summary)
    else:
        _print_table(summary, rows)
    return 0


def _print_table(summary: dict[str, Any], rows: list[DemoRow]) -> None:
    print(
        f"model {summary['model']} ({summary['weights_hash']}), "
        f"{Path(summary['input']).name}, {summary['duration_s']:.2f} s"
    )
    print(
        f"{'levels':>6} {'nominal':>8} {'file':>8} {'entropy':>8} "
        f"{'wire@1':>8} {'wire@2':>8} {'wire@4':>8} {'bytes':>7} {'mel dist':>8}"
    )
    for r in rows:
        ent = "n/a" if r.entropy_kbps is None else f"{r.entropy_kbps:.3f}"
        w1, w2, w4 = r.wire_kbps
        print(
            f"{r.levels:>6} {r.nominal_kbps:>8.3f} {r.container_kbps:>8.3f} {ent:>8} "
            f"{w1:>8.3f} {w2:>8.3f} {w4:>8.3f} {r.bytes:>7} {r.mel_distance:>8.3f}"
        )
    print(
        "kbit/s; file = the .mimi bytes over the duration; wire = with 40-byte IPv4/UDP/RTP "
        "headers at 1, 2, 4 frames per packet; mel dist = mean |log10 mel| difference at 16 kHz"
    )
    print(f"decoded WAVs and .mimi files in {Path(rows[0].wav).parent}/, plot {summary['plot']}")
    if summary["report"]:
        print(f"report: {summary['report']}")


def _plot(path: Path, original, decoded: dict, rows: list[DemoRow], rate: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mimirate.fileio import atomic_write

    shown = [k for k in (1, 8, 32) if k in decoded] or list(decoded)[:3]
    fig, axes = plt.subplots(1 + len(shown) + 1, 1, figsize=(9, 2.2 * (len(shown) + 2)))
    signals = [("original", original)] + [(f"{k} level{'s' * (k > 1)}", decoded[k]) for k in shown]
    for ax, (title, x) in zip(axes, signals, strict=False):
        ax.specgram(x + 1e-9, NFFT=512, Fs=rate, noverlap=384, cmap="magma", vmin=-120)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("Hz")
    ax = axes[-1]
    ax.plot([r.container_kbps for r in rows], [r.mel_distance for r in rows], "o-")
    for r in rows:
        ax.annotate(str(r.levels), (r.container_kbps, r.mel_distance), fontsize=8)
    ax.set_xlabel("kbit/s in the .mimi file")
    ax.set_ylabel("mel distance (lower is better)")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return path


def _report(codec, model: str, args: argparse.Namespace, source: Path, out: Path) -> Path:
    from mimirate.evaluation.baselines import Baseline
    from mimirate.evaluation.harness import EvalConfig, evaluate
    from mimirate.evaluation.report import write_report

    baselines: list[Baseline] = []
    if shutil.which("opusenc") and shutil.which("opusdec"):
        baselines.append(Baseline("opus", "6"))
    if shutil.which("c2enc") and shutil.which("c2dec"):
        baselines.append(Baseline("codec2", "1200"))
    report_dir = out / "report"
    config = EvalConfig(
        model=model,
        random_init=args.random_init,
        levels=tuple(args.levels),
        baselines=tuple(baselines),
        jobs=1,
        clip_dir=str(report_dir / "clips"),
        clip_files=1,
    )
    result = evaluate([source], config, progress=True)
    return write_report(result, report_dir)
