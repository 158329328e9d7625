"""Where the time goes in one streaming step (encode + decode of one 80 ms frame).

Times each module of our MimiModel per streaming step, and the whole step of moshi's
reference in the same run (same weights, same audio), so ratios hold however busy
the machine is. Random weights; the official ``mimi`` configuration by default.

    .venv/bin/python benchmarks/profile_modules.py [--preset mimi] [--frames 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from mimirate.config import get_preset
from mimirate.models.mimi import MimiModel

STAGES = (
    "encoder SEANet",
    "encoder transformer",
    "downsample",
    "quantizer encode",
    "quantizer decode",
    "upsample",
    "decoder transformer",
    "decoder SEANet",
)


def _random_codebooks(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("embedding_sum"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.5)
            elif name.endswith("_initialized"):
                buf.fill_(1)


class _Clock:
    """Accumulates wall time per stage: ``with clock("stage"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self._stage = ""
        self._t0 = 0.0

    def __call__(self, stage: str) -> _Clock:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.times[self._stage].append(time.perf_counter() - self._t0)


def profile_ours(model: MimiModel, audio: torch.Tensor) -> tuple[dict[str, list[float]], list]:
    fs = model.frame_size
    es, ds = model.init_encoder_state(1), model.init_decoder_state(1)
    clock = _Clock()
    codes_out = []
    for i in tqdm(range(0, audio.shape[-1], fs), desc="ours", leave=False):
        t0 = time.perf_counter()
        with clock("encoder SEANet"):
            emb = model.encoder(audio[..., i : i + fs], es.seanet)
        with clock("encoder transformer"):
            emb = model.encoder_transformer(emb, es.transformer)
        with clock("downsample"):
            lat = model.downsample(emb, es.downsample)
        with clock("quantizer encode"):
            q = model.quantizer.encode(lat)
        with clock("quantizer decode"):
            z = model.quantizer.decode(q.codes)
        with clock("upsample"):
            z = model.upsample(z, ds.upsample)
        with clock("decoder transformer"):
            z = model.decoder_transformer(z, ds.transformer)
        with clock("decoder SEANet"):
            model.decoder(z, ds.seanet)
        clock.times["total"].append(time.perf_counter() - t0)
        codes_out.append(q.codes)
    return clock.times, codes_out


def profile_moshi(state: dict[str, torch.Tensor], audio: torch.Tensor):
    from moshi.models import loaders

    ref = loaders.get_mimi(None, device="cpu")
    ref.set_num_codebooks(32)
    ref.load_state_dict(state)
    fs = ref.frame_size
    times, codes = [], []
    with ref.streaming(1):
        for i in tqdm(range(0, audio.shape[-1], fs), desc="moshi", leave=False):
            t0 = time.perf_counter()
            c = ref.encode(audio[..., i : i + fs])
            ref.decode(c)
            times.append(time.perf_counter() - t0)
            codes.append(c)
    return times, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mimi")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-reference", action="store_true", help="skip moshi")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_preset(args.preset)
    model = MimiModel(config).eval()
    _random_codebooks(model, 0)
    model.fold_for_inference()  # as the codec does
    g = torch.Generator().manual_seed(1)
    audio = 0.1 * torch.randn(1, 1, args.frames * config.frame_size, generator=g)
    warm = 5 * config.frame_size
    with torch.inference_mode():
        profile_ours(model, audio[..., :warm])
        times, codes = profile_ours(model, audio)
    result: dict[str, object] = {
        "preset": args.preset,
        "threads": args.threads,
        "frames": args.frames,
        "ours_ms_median": {s: 1e3 * statistics.median(times[s]) for s in (*STAGES, "total")},
        "ours_total_ms_p99": 1e3 * sorted(times["total"])[int(0.99 * (len(times["total"]) - 1))],
        "peak_rss_mb": _peak_rss_mb(),
    }
    if args.preset == "mimi" and not args.no_reference:
        sd = {
            k.replace("in_proj_weight", "in_projs.0.weight").replace(
                "out_proj.weight", "out_projs.0.weight"
            ): v
            for k, v in model.state_dict().items()
        }
        with torch.no_grad():
            profile_moshi(sd, audio[..., :warm])
            ref_times, ref_codes = profile_moshi(sd, audio)
        ref_med = 1e3 * statistics.median(ref_times)
        ours_med = result["ours_ms_median"]["total"]  # type: ignore[index]
        same = torch.equal(torch.cat(codes, -1), torch.cat(ref_codes, -1))
        result.update(
            moshi_ms_median=ref_med,
            moshi_ms_p99=1e3 * sorted(ref_times)[int(0.99 * (len(ref_times) - 1))],
            speedup_vs_moshi=ref_med / ours_med,
            codes_identical_to_moshi=same,
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.preset}, {args.threads} threads, {args.frames} frames, ms per streaming step:")
    for stage, ms in result["ours_ms_median"].items():  # type: ignore[union-attr]
        print(f"  {stage:22s} {ms:8.2f}")
    print(f"  {'total p99':22s} {result['ours_total_ms_p99']:8.2f}")
    if "moshi_ms_median" in result:
        print(
            f"moshi: median {result['moshi_ms_median']:.2f} ms,"
            f" p99 {result['moshi_ms_p99']:.2f} ms;"
            f" speedup {result['speedup_vs_moshi']:.2f}x;"
            f" codes identical: {result['codes_identical_to_moshi']}"
        )
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB (this process, both models)")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
