"""What bfloat16 costs a trained model: codes and audio against float32, on dev speech.

For the first ``--files`` files of ``librispeech-test-other-dev`` and a trained model
(default ``small``, the packaged one):

- a bfloat16 decoder (``decoder_dtype``): the float32 codes decoded both ways, the SNR of
  the bfloat16 audio against the float32 audio and its PESQ-WB with the float32 audio as
  the reference (4.64 would be identical);
- a bfloat16 encoder (``encoder_dtype``): the share of its codes equal to float32's, level
  by level, and PESQ-WB of its codes decoded in float32 against the float32 path's audio.

Speed and memory of the same option are in ``bench_codec.py`` (beside the references).

    .venv/bin/python benchmarks/bench_precision.py [--files 20] [--model small] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from bench_eval import DEV  # the evaluation folder, beside this file's repository
from tqdm import tqdm

LEVELS = (8, 32)


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - other) ** 2)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20, help="dev files to use (default 20)")
    ap.add_argument("--model", default="small", help="model name or checkpoint (default small)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    import torch

    from mimirate.audio import read_audio, resample
    from mimirate.evaluation.metrics import pesq_wb
    from mimirate.models.loading import load_codec
    from mimirate.train.data import AUDIO_SUFFIXES

    torch.set_num_threads(args.threads)
    files = sorted(p for p in DEV.rglob("*") if p.suffix in AUDIO_SUFFIXES)[: args.files]
    full = load_codec(args.model)
    half = load_codec(args.model, encoder_dtype=torch.bfloat16, decoder_dtype=torch.bfloat16)

    def to16(y: np.ndarray) -> np.ndarray:
        return resample(y, full.sample_rate, 16_000)

    agree, rows = [], {k: [] for k in LEVELS}
    for path in tqdm(files, desc="files", unit="file"):
        x = read_audio(path, full.sample_rate).samples
        codes, half_codes = full.encode(x).codes, half.encode(x).codes
        agree.append((codes == half_codes).mean(axis=-1))
        for k in LEVELS:
            y = full.decode(codes[:k])
            y_dec = half.decode(codes[:k])  # the bfloat16 decoder, float32 codes
            y_enc = full.decode(half_codes[:k])  # the bfloat16 encoder's codes
            rows[k].append(
                (_snr_db(y, y_dec), pesq_wb(to16(y), to16(y_dec)), pesq_wb(to16(y), to16(y_enc)))
            )
    by_level = np.mean(agree, axis=0)
    out = {
        "model": args.model,
        "files": len(files),
        "bf16_decoder": {
            str(k): {
                "snr_db": float(np.mean([r[0] for r in rows[k]])),
                "pesq_wb_vs_float32": float(np.nanmean([r[1] for r in rows[k]])),
            }
            for k in LEVELS
        },
        "bf16_encoder": {
            "code_agreement_by_level": [round(float(a), 4) for a in by_level],
            "code_agreement_first_8": float(by_level[:8].mean()),
            "pesq_wb_vs_float32": {
                str(k): float(np.nanmean([r[2] for r in rows[k]])) for k in LEVELS
            },
        },
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model}, {len(files)} files of {DEV.name}")
    for k in LEVELS:
        d = out["bf16_decoder"][str(k)]
        e = out["bf16_encoder"]["pesq_wb_vs_float32"][str(k)]
        print(
            f"{k:2d} levels: bf16 decoder {d['snr_db']:.1f} dB SNR, PESQ-WB "
            f"{d['pesq_wb_vs_float32']:.2f} against float32's audio; bf16 encoder's codes "
            f"decoded: PESQ-WB {e:.2f}"
        )
    print("bf16 encoder: codes equal to float32's by level", np.round(by_level, 3).tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
