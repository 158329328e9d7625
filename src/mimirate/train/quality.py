"""Quick quality check of a trained codec on the evaluation folder, level by level.

Not the project's evaluation harness (``mimirate eval``): a small, dependency-light
measurement the training work uses to compare checkpoints and to set the test's quality
floor. Scores at 16 kHz (PESQ wideband and STOI are defined there), mel distance at the
model rate, after removing the decoder delay found by cross-correlation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mimirate.audio import read_audio, resample
from mimirate.codec import Codec
from mimirate.errors import ConfigError
from mimirate.evaluation.align import align
from mimirate.train.data import DEV_FOLDER
from mimirate.train.losses import mel_distance

LEVELS = (1, 2, 4, 8, 16, 32)
#: Largest delay searched, either way, when aligning output to input (samples at the
#: model rate).
MAX_LAG = 2 * 1920


@dataclass(frozen=True)
class QualityRow:
    """Mean scores over the files at one operating point (``levels`` may be a mix)."""

    label: str
    mean_levels: float
    kbps: float
    mel: float
    pesq_wb: float
    stoi: float
    si_snr: float


def dev_files(speech_root: Path, count: int) -> list[Path]:
    """``count`` files of the evaluation folder, spread evenly over its speakers (sorted)."""
    files = sorted((Path(speech_root) / DEV_FOLDER).rglob("*.flac"))
    if not files:
        raise ConfigError(f"no evaluation files in {Path(speech_root) / DEV_FOLDER}")
    idx = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
    return [files[i] for i in sorted(set(idx.tolist()))]


def _scores(ref: np.ndarray, out: np.ndarray, rate: int) -> tuple[float, float, float, float]:
    from pesq import pesq
    from pystoi import stoi

    from mimirate.train.losses import si_snr

    mel = float(
        mel_distance(torch.from_numpy(out)[None, None], torch.from_numpy(ref)[None, None], rate)[0]
    )
    r16, o16 = resample(ref, rate, 16_000), resample(out, rate, 16_000)
    p = float(pesq(16_000, r16, o16, "wb"))
    s = float(stoi(r16, o16, 16_000, extended=False))
    snr = float(si_snr(torch.from_numpy(out)[None], torch.from_numpy(ref)[None])[0])
    return mel, p, s, snr


def measure(
    codec: Codec,
    files: Sequence[Path],
    levels: Sequence[int] = LEVELS,
    mix: tuple[int, int] | None = (4, 16),
    seed: int = 0,
    progress: bool = True,
) -> list[QualityRow]:
    """Scores per level count (and for a random per-frame mix of ``mix``), mean over files."""
    rate = codec.sample_rate
    per_label: dict[str, list[tuple[float, ...]]] = {}
    means: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    for f in tqdm(files, desc="quality", unit="file", disable=not progress):
        ref = read_audio(f, rate).samples
        enc = codec.encode(ref)
        points: list[tuple[str, np.ndarray, np.ndarray | None]] = [
            (f"{k} levels", enc.codes[:k], None) for k in levels
        ]
        if mix is not None:
            choice = rng.choice(np.array(mix), size=enc.num_frames)
            points.append((f"per-frame mix of {mix}", enc.codes, choice))
        for label, codes, lv in points:
            # The harness's alignment (log-spectrogram lag, then the waveform peak near
            # it): the waveform's correlation peak alone lands anywhere on an output that
            # does not keep the phase, and STOI falls with the misalignment.
            a = align(ref, codec.decode(codes, lv), MAX_LAG)
            per_label.setdefault(label, []).append(_scores(a.reference, a.degraded, rate))
            means[label] = float(np.mean(lv)) if lv is not None else float(codes.shape[0])
    rows = []
    for label, vals in per_label.items():
        m = np.mean(np.array(vals), axis=0)
        k = means[label]
        kbps = k * codec.bits_per_code * codec.frame_rate / 1000
        rows.append(QualityRow(label, k, kbps, float(m[0]), float(m[1]), float(m[2]), float(m[3])))
    return rows


def markdown_table(rows: Sequence[QualityRow], files: int) -> str:
    lines = [
        f"Quality on {files} files of {DEV_FOLDER} (`mimirate train quality`; PESQ-WB and "
        "STOI at 16 kHz, mel distance = mean |log10 mel| difference, 80 bands, at 24 kHz):",
        "",
        "| levels | kbit/s (nominal) | mel distance | PESQ-WB | STOI | SI-SNR dB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.kbps:.2f} | {r.mel:.3f} | {r.pesq_wb:.2f} | {r.stoi:.3f} | "
            f"{r.si_snr:.1f} |"
        )
    return "\n".join(lines)
