"""The evaluation report: one HTML page, its PNG figures and audio clips beside it.

``index.html`` embeds its figures (base64 PNG) so it reads on its own; the same
figures are written beside it as PNG files, and the audio players point at the WAV
clips the harness wrote into ``clips/`` (the 16 kHz signals that were scored).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimirate.evaluation.align import DEFAULT_MAX_DELAY_S
from mimirate.evaluation.harness import EvalResult, PointSummary
from mimirate.evaluation.metrics import (
    MEL_BANDS,
    MEL_FFT,
    MEL_HOP,
    METRIC_RATE,
    METRICS,
    MeanCI,
)
from mimirate.fileio import atomic_write_bytes

_STYLE = {
    "mimi": dict(color="C0", marker="o", label="Mimi (plain .mimi file)"),
    "adaptive": dict(color="C3", marker="D", label="Mimi adaptive levels (.mimi file)"),
    "opus": dict(color="C1", marker="s", label="Opus (Ogg file)"),
    "codec2": dict(color="C2", marker="^", label="Codec 2 (raw frames)"),
}


def _png(fig: object) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return buf.getvalue()


def _errorbar(ax: object, points: Sequence[PointSummary], metric: str, x_of, **style) -> None:
    xs, ys, lo, hi = [], [], [], []
    for p in points:
        ci: MeanCI = getattr(p.metrics, metric)
        x = x_of(p)
        if x is None or not math.isfinite(ci.mean):
            continue
        xs.append(x)
        ys.append(ci.mean)
        lo.append(ci.mean - ci.low if math.isfinite(ci.low) else 0.0)
        hi.append(ci.high - ci.mean if math.isfinite(ci.high) else 0.0)
    if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, **style)  # type: ignore[attr-defined]


def rate_quality_figure(points: Sequence[PointSummary], metric: str) -> object:
    """One metric against real kbit/s: Mimi's level curve, baselines, 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = next(m for m in METRICS if m.name == metric)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for codec, style in _STYLE.items():
        group = sorted((p for p in points if p.point.codec == codec), key=lambda p: p.disk_kbps)
        _errorbar(ax, group, metric, lambda p: p.disk_kbps, linestyle="-", **style)
        if codec == "mimi" and any(p.entropy_kbps for p in group):
            _errorbar(
                ax, group, metric, lambda p: p.entropy_kbps, linestyle="--", color="C0",
                marker="o", mfc="none", label="Mimi (entropy-coded .mimi)",
            )  # fmt: skip
        for p in group:
            ci = getattr(p.metrics, metric)
            if math.isfinite(ci.mean):
                ax.annotate(p.point.setting, (p.disk_kbps, ci.mean), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("kbit/s (bytes actually stored, over the audio's duration)")
    ax.set_ylabel(info.label + ("" if info.higher_is_better else "  (lower is better)"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{info.label} vs bitrate (mean, 95% CI)")
    return fig


def spectrogram_figure(clips: Sequence[tuple[str, Path]]) -> object:
    """Log-magnitude spectrograms of the given ``(title, wav)`` clips, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf
    from scipy import signal

    fig, axes = plt.subplots(len(clips), 1, figsize=(8, 1.7 * len(clips)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (title, path) in zip(axes, clips, strict=True):
        x, rate = sf.read(str(path), dtype="float32")
        f, t, s = signal.spectrogram(x, fs=rate, nperseg=512, noverlap=384)
        ax.pcolormesh(t, f / 1000, 10 * np.log10(s + 1e-10), shading="auto", vmin=-100, vmax=-20)
        ax.set_ylabel("kHz")
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    return fig


def _pick(points: Sequence[PointSummary], limit: int = 6) -> list[PointSummary]:
    """A few points spanning the rates: Mimi's lowest, middle, highest; each baseline's
    lowest and highest."""
    chosen: list[PointSummary] = []
    for codec in _STYLE:
        group = sorted((p for p in points if p.point.codec == codec), key=lambda p: p.disk_kbps)
        if not group:
            continue
        idx = [0, len(group) // 2, len(group) - 1] if codec == "mimi" else [0, len(group) - 1]
        chosen.extend(group[i] for i in dict.fromkeys(idx))
    return chosen[:limit]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci_cell(ci: MeanCI) -> str:
    if not math.isfinite(ci.mean):
        return "–"
    if not math.isfinite(ci.low):
        return f"{ci.mean:.3f}"
    return f"{ci.mean:.3f} ± {ci.half_width:.3f}"


def _table(points: Sequence[PointSummary]) -> str:
    head = (
        "<tr><th>point</th><th>nominal kbit/s</th><th>on disk kbit/s</th>"
        "<th>entropy-coded kbit/s</th><th>wire kbit/s (1/2/4 frames a packet)</th>"
        + "".join(f"<th>{html.escape(m.label)}</th>" for m in METRICS)
        + "<th>files</th><th>median delay (ms)</th></tr>"
    )
    rows = []
    for p in points:
        wire = " / ".join(f"{w:.2f}" for w in p.wire_kbps) if p.wire_kbps else "–"
        rows.append(
            f"<tr><td>{html.escape(p.point.label)}</td><td>{_fmt(p.nominal_kbps)}</td>"
            f"<td>{_fmt(p.disk_kbps)}</td><td>{_fmt(p.entropy_kbps)}</td><td>{wire}</td>"
            + "".join(f"<td>{_ci_cell(getattr(p.metrics, m.name))}</td>" for m in METRICS)
            + f"<td>{p.files}</td><td>{_fmt(p.median_delay_ms, 1)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _img(name: str, data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'
        f'<figcaption>{html.escape(alt)} (also <a href="{name}">{name}</a>)</figcaption></figure>'
    )


def write_report(result: EvalResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``index.html`` and its PNG figures into ``out_dir``; return the page's path.

    Audio players and spectrograms use the clips in ``result.clip_dir`` (written by
    the harness); without clips those sections say so.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    points = result.points
    for m in METRICS:
        fig = rate_quality_figure(points, m.name)
        data = _png(fig)
        plt.close(fig)  # type: ignore[arg-type]
        name = f"rate_{m.name}.png"
        atomic_write_bytes(out / name, data)
        parts.append(_img(name, data, f"{m.label} against bitrate"))
    figures = "\n".join(parts)

    chosen = _pick(points)
    clip_dir = Path(result.clip_dir) if result.clip_dir else None
    clip_stems = []
    if clip_dir is not None and clip_dir.is_dir():
        clip_stems = sorted(
            p.name[: -len("__reference.wav")] for p in clip_dir.glob("*__reference.wav")
        )
    spectro = "<p>No clips were written (run with --report to get them).</p>"
    players = spectro
    if clip_stems and clip_dir is not None:
        stem = clip_stems[0]
        panels = [("reference (16 kHz)", clip_dir / f"{stem}__reference.wav")]
        panels += [
            (f"{p.point.label}: {p.disk_kbps:.2f} kbit/s", clip_dir / f"{stem}__{p.point.key}.wav")
            for p in chosen
        ]
        panels = [(t, f) for t, f in panels if f.is_file()]
        fig = spectrogram_figure(panels)
        data = _png(fig)
        plt.close(fig)  # type: ignore[arg-type]
        atomic_write_bytes(out / "spectrograms.png", data)
        spectro = _img("spectrograms.png", data, f"Spectrograms of {stem}, aligned, at 16 kHz")
        rel = os.path.relpath(clip_dir.resolve(), out.resolve())
        head = (
            "<tr><th>clip</th><th>reference</th>"
            + "".join(
                f"<th>{html.escape(p.point.label)}<br>{p.disk_kbps:.2f} kbit/s</th>" for p in chosen
            )
            + "</tr>"
        )
        rows = []
        for s in clip_stems:
            cells = [f"<td>{html.escape(s)}</td>"]
            for key in ["reference", *(p.point.key for p in chosen)]:
                src = f"{rel}/{s}__{key}.wav"
                cells.append(
                    f'<td><audio controls preload="none" src="{html.escape(src)}"></audio></td>'
                )
            rows.append(f"<tr>{''.join(cells)}</tr>")
        players = f"<table>{head}{''.join(rows)}</table>"

    seconds = points[0].seconds if points else 0.0
    model = html.escape(str(result.codec_name or result.model or "none (baselines only)"))
    notes = f"""
<ul>
<li>Set: <code>{html.escape(result.root)}</code>, {len(result.files)} files, {seconds / 60:.1f}
minutes of speech. Model: <code>{model}</code>. Took {result.elapsed_s:.0f} s with
{result.jobs} worker process(es).</li>
<li>All metrics run at {METRIC_RATE // 1000} kHz: the original file and every decoded
output are resampled to {METRIC_RATE} Hz with soxr (VHQ). PESQ is P.862.2 wideband
(<code>pesq</code>); STOI is classic STOI (<code>pystoi</code>, 10 kHz inside); ViSQOL is v3
speech mode with the deep-lattice mapping (<code>visqol-python</code>, a port of ViSQOL
3.3.3); mel distance is the mean absolute difference of log10(mel + 1e-5), magnitude mel
spectrogram, {MEL_BANDS} Slaney bands 0-8 kHz, {MEL_FFT}-point FFT, hop {MEL_HOP} (librosa);
SI-SDR in dB with zero-mean signals.</li>
<li>Alignment: each decoded output's delay against the original is found by
cross-correlation, searched within ±{DEFAULT_MAX_DELAY_S * 1000:.0f} ms, and removed
before scoring; the output is then cut or zero-padded to the original's length. The
table gives the median delay removed per point.</li>
<li>Bitrates are real bytes × 8 over the audio's duration, pooled over the set. Mimi:
the <code>.mimi</code> file (header, CRCs and all), plain and, where a table was given,
entropy-coded; on the wire, audio packets plus 40 bytes of IPv4/UDP/RTP headers each.
Mimi's codes are decoded from the parsed file. Opus: the Ogg file from
<code>opusenc --speech --bitrate K --padding 0</code> on 24 kHz input (VBR, 20 ms frames),
decoded by <code>opusdec</code> at 48 kHz. Codec 2: headerless frames from
<code>c2enc MODE</code> on 8 kHz input (each frame padded to whole bytes), decoded by
<code>c2dec</code>. "Nominal" is the figure a codec is named for.</li>
<li>Means with 95% confidence intervals from Student's t over the files (± half-width).</li>
</ul>"""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mimirate evaluation</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>mimirate: rate and quality</h1>
<h2>Notes</h2>{notes}
<h2>Rate-quality curves</h2>
{figures}
<h2>Table</h2>
{_table(points)}
<h2>Spectrograms</h2>
{spectro}
<h2>Listen</h2>
{players}
</body></html>
"""
    index = out / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    return index
