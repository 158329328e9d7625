"""Codec speed and memory, ours against moshi and transformers, in one run.

Each implementation runs in its own subprocess (honest peak RSS), on the same seeded
audio and the same random weights (official ``mimi`` config; ours also ``small``):

- streaming encode+decode per 80 ms frame: median and p99 ms (ours, moshi), codes
  compared with moshi's frame by frame;
- offline encode and decode of ``--seconds`` of audio, x real time (all three; best of
  3 runs, after one untimed run);
- peak RSS while streaming (after loading), and of the whole process;
- ours again with ``decoder_dtype=torch.bfloat16``: its codes against moshi's, its
  decoded audio's SNR against our float32 decoder's.

    .venv/bin/python benchmarks/bench_codec.py [--seconds 10] [--threads 2] [--json]

With ``--batch N`` it measures instead the offline throughput of N clips at once, ours
against transformers' ``MimiModel``, on ``--device`` in ``--dtype`` (the GPU figure of
issue 2: ``--batch 64 --device cuda --dtype bfloat16``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE, FRAME = 24_000, 1920


def _audio(seconds: float) -> np.ndarray:
    n = int(seconds * RATE) // FRAME * FRAME
    t = np.arange(n) / RATE
    voice = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return (0.2 * voice + 0.01 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def _transformers_model(ckpt: str):
    """transformers' ``MimiModel`` (default config: the official one) with ``ckpt``'s weights."""
    from transformers import MimiConfig, MimiModel

    from mimirate.config import MIMI
    from mimirate.models.loading import Layout, _read_safetensors, convert_state_dict

    m = MimiModel(MimiConfig()).eval()
    state = convert_state_dict(_read_safetensors(Path(ckpt)), Layout.KYUTAI, Layout.HF_MODULE, MIMI)
    m.load_state_dict(state)
    return m


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a
    # worker would report its parent's peak.
    hwm = next(
        ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")
    )
    return int(hwm.split()[1]) / 1024


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux 4.0+): the streaming peak then excludes
    # loading, which briefly holds the checkpoint file and the model together.
    Path("/proc/self/clear_refs").write_text("5")


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for r in summary["results"]:
        print(r)
    for k, v in summary.items():
        if k != "results":
            print(f"{k}: {v:.3f}")


def _best(run, repeats: int = 3) -> float:
    """Shortest of ``repeats`` timed runs, in seconds: other tenants of a shared machine
    only ever add time, so the minimum is the least noisy estimate (as timeit does)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _worker(impl: str, preset: str, ckpt: str, seconds: float, threads: int) -> dict:
    import torch
    from tqdm import tqdm

    torch.set_num_threads(threads)
    audio = _audio(seconds)
    x = torch.from_numpy(audio)[None, None]
    frames = len(audio) // FRAME
    step_ms: list[float] = []
    codes: list[list[int]] = []
    # no_grad, not inference_mode: weights loaded under inference_mode become
    # inference tensors, which our codebook cache cannot version-check.
    with torch.no_grad():
        if impl in ("ours", "ours-bf16-decoder"):
            from mimirate.models.loading import load_codec

            dec_dtype = torch.bfloat16 if impl == "ours-bf16-decoder" else torch.float32
            if ckpt:
                codec = load_codec(path=ckpt, decoder_dtype=dec_dtype)
            else:
                codec = load_codec(preset, random_init=True, decoder_dtype=dec_dtype)
            enc_s, dec_s = codec.stream_encoder(), codec.stream_decoder()
            _reset_peak_rss()
            for t in tqdm(range(frames), desc=f"{impl}/{preset} stream", leave=False):
                start = time.perf_counter()
                e = enc_s.push(audio[t * FRAME : (t + 1) * FRAME])
                dec_s.push(e.codes)
                step_ms.append(1e3 * (time.perf_counter() - start))
                codes.append(e.codes[:, 0].tolist())
            stream_rss_mb = _peak_rss_mb()
            c = codec.encode(audio).codes
            enc_t = _best(lambda: codec.encode(audio))
            dec_t = _best(lambda: codec.decode(c))
            decoded = codec.decode(c)
        elif impl == "moshi":
            from moshi.models.loaders import get_mimi

            m = get_mimi(ckpt, num_codebooks=32)
            _reset_peak_rss()
            with m.streaming(1):
                for t in tqdm(range(frames), desc="moshi stream", leave=False):
                    start = time.perf_counter()
                    c = m.encode(x[..., t * FRAME : (t + 1) * FRAME])
                    m.decode(c)
                    step_ms.append(1e3 * (time.perf_counter() - start))
                    codes.append(c[0, :, 0].tolist())
            stream_rss_mb = _peak_rss_mb()
            c = m.encode(x)
            enc_t = _best(lambda: m.encode(x))
            dec_t = _best(lambda: m.decode(c))
        else:
            m = _transformers_model(ckpt)
            c = m.encode(x).audio_codes
            enc_t = _best(lambda: m.encode(x))
            dec_t = _best(lambda: m.decode(c))
    rss_mb = _peak_rss_mb()
    out = {
        "impl": impl,
        "preset": preset,
        "encode_xrt": seconds / enc_t,
        "decode_xrt": seconds / dec_t,
    }
    if step_ms:
        out |= {
            "step_median_ms": float(np.median(step_ms)),
            "step_p99_ms": float(np.percentile(step_ms, 99)),
            "stream_peak_rss_mb": stream_rss_mb,
        }
        out["codes"] = codes
    if impl.startswith("ours"):
        out["decoded"] = decoded[::8].tolist()  # every 8th sample: enough for an SNR
    out["peak_rss_mb"] = rss_mb
    return out


def _batch_worker(impl: str, ckpt: str, seconds: float, batch: int, device: str, dtype: str):
    """Offline encode and decode of ``batch`` clips at once on ``device``, x real time
    summed over the batch (the issue's GPU figure: batch 64 in bf16)."""
    import torch

    dt = getattr(torch, dtype)
    x = torch.from_numpy(np.tile(_audio(seconds), (batch, 1)))[:, None].to(device, dt)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(run) -> float:
        def once() -> None:
            run()
            sync()

        once()  # warm-up: kernels picked, memory pooled
        return _best(once)

    with torch.inference_mode():
        if impl == "ours":
            from mimirate.models.loading import load_model

            model = load_model(path=ckpt).model.to(device, dt).eval()
            codes = model.encode(x).codes
            enc_t = timed(lambda: model.encode(x))
            dec_t = timed(lambda: model.decode(codes))
        else:
            m = _transformers_model(ckpt).to(device, dt)
            codes = m.encode(x).audio_codes
            enc_t = timed(lambda: m.encode(x))
            dec_t = timed(lambda: m.decode(codes))
    total = batch * seconds
    return {
        "impl": impl,
        "batch": batch,
        "device": device,
        "dtype": dtype,
        "encode_xrt": total / enc_t,
        "decode_xrt": total / dec_t,
    }


def batch_main(args: argparse.Namespace) -> int:
    from mimirate.models.loading import load_model, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model("mimi", random_init=True, seed=0)
        ckpt = str(save_checkpoint(loaded.model, Path(tmp) / "mimi.safetensors", loaded.config))
        del loaded
        results = []
        for impl in ("ours", "transformers"):
            cmd = [sys.executable, __file__, "--batch-worker", impl, ckpt]
            cmd += ["--seconds", str(args.seconds), "--batch", str(args.batch)]
            cmd += ["--device", args.device, "--dtype", args.dtype]
            cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ours, ref = results
    summary = {
        "results": results,
        "encode_speedup_vs_transformers": ours["encode_xrt"] / ref["encode_xrt"],
        "decode_speedup_vs_transformers": ours["decode_xrt"] / ref["decode_xrt"],
    }
    _print(summary, args.json)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--batch",
        type=int,
        default=0,
        help="instead: offline throughput of this many clips at once, ours vs transformers",
    )
    ap.add_argument("--device", default="cpu", help="device of the --batch runs (cuda on a GPU)")
    ap.add_argument(
        "--dtype", default="float32", help="dtype of the --batch runs (bfloat16 on a GPU)"
    )
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "PRESET", "CKPT"), help=argparse.SUPPRESS)
    ap.add_argument("--batch-worker", nargs=2, metavar=("IMPL", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch_worker:
        impl, ckpt = args.batch_worker
        import torch

        torch.set_num_threads(args.threads)
        out = _batch_worker(impl, ckpt, args.seconds, args.batch, args.device, args.dtype)
        print(json.dumps(out))
        return 0
    if args.batch:
        return batch_main(args)
    if args.worker:
        impl, preset, ckpt = args.worker
        print(
            json.dumps(
                _worker(impl, preset, ckpt if ckpt != "-" else "", args.seconds, args.threads)
            )
        )
        return 0
    from mimirate.models.loading import load_model, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model("mimi", random_init=True, seed=0)
        ckpt = str(save_checkpoint(loaded.model, Path(tmp) / "mimi.safetensors", loaded.config))
        del loaded
        runs = [
            ("ours", "mimi", ckpt),
            ("moshi", "mimi", ckpt),
            ("transformers", "mimi", ckpt),
            ("ours", "small", "-"),
            ("ours-bf16-decoder", "mimi", ckpt),
        ]
        results = []
        for impl, preset, path in runs:
            cmd = [sys.executable, __file__, "--worker", impl, preset, path]
            cmd += ["--seconds", str(args.seconds), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ours, moshi, half = results[0], results[1], results[4]
    moshi_codes = np.array(moshi.pop("codes"))
    agree = float(np.mean(np.array(ours.pop("codes")) == moshi_codes))
    half_agree = float(np.mean(np.array(half.pop("codes")) == moshi_codes))
    full, approx = np.array(ours.pop("decoded")), np.array(half.pop("decoded"))
    results[3].pop("codes", None)
    results[3].pop("decoded", None)
    summary = {
        "results": results,
        "stream_code_agreement_vs_moshi": agree,
        # decoder_dtype=bfloat16: codes (the encoder is float32) and the decoded audio's
        # SNR against float32's (random weights: indicative only).
        "bf16_decoder_code_agreement_vs_moshi": half_agree,
        "bf16_decoder_snr_db": float(10 * np.log10(np.sum(full**2) / np.sum((full - approx) ** 2))),
        "stream_median_speedup_vs_moshi": moshi["step_median_ms"] / ours["step_median_ms"],
        "encode_speedup_vs_moshi": ours["encode_xrt"] / moshi["encode_xrt"],
        "decode_speedup_vs_moshi": ours["decode_xrt"] / moshi["decode_xrt"],
        "encode_speedup_vs_transformers": ours["encode_xrt"] / results[2]["encode_xrt"],
        "decode_speedup_vs_transformers": ours["decode_xrt"] / results[2]["decode_xrt"],
    }
    _print(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
