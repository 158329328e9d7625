"""Turn a training run into packaged weights (``mimirate/assets/<preset>/``) with provenance.

The weights go through the loader's own writer (:func:`mimirate.models.loading.save_packaged`,
fp16), so ``load_codec("small")`` reads exactly what it checks. Before the cast each
codebook is rewritten as centroids with unit usage: inference only needs
``embedding_sum / cluster_usage``, and storing the centroid itself keeps fp16 from
rounding a large EMA sum and a tiny usage separately.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimirate.config import get_preset
from mimirate.errors import CheckpointError
from mimirate.fileio import atomic_write_bytes
from mimirate.models.mimi import MimiModel
from mimirate.train import checkpoint

PROVENANCE = "PROVENANCE.md"


def model_from_run(run_dir: Path, which: str = "best") -> tuple[MimiModel, dict[str, Any]]:
    """The model saved in ``run_dir/best`` (validation-selected) or ``run_dir/checkpoint``."""
    loaded = checkpoint.load(Path(run_dir) / which)
    prefix = "model/" if which == "checkpoint" else ""
    state = {k[len(prefix) :]: v for k, v in loaded.tensors.items() if k.startswith(prefix)}
    model = MimiModel(get_preset(loaded.state["model"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{run_dir / which} does not fit preset {model.config.name}: {e}"
        ) from None
    return model.eval(), loaded.state


@torch.no_grad()
def normalise_codebooks(model: MimiModel) -> None:
    """Rewrite every codebook as (centroids, usage 1): same centroids, fp16-friendly."""
    for name, module in model.named_modules():
        if name.endswith("._codebook"):
            centroids = module.centroids.clone()
            module.embedding_sum.copy_(centroids)
            module.cluster_usage.fill_(1.0)


def _log_summary(run_dir: Path, last: int = 50) -> dict[str, float]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "mel" in r][-last:]
    keys = (
        "loss",
        "mel",
        "waveform",
        "commitment",
        "adversarial",
        "feature",
        "disc",
        "energy_ratio",
    )
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}


def package_run(run_dir: Path, out_dir: Path, which: str = "best") -> dict[str, Any]:
    """Package ``run_dir``'s weights into ``out_dir`` and write a first PROVENANCE.md.

    Returns what was written: preset, step, bytes, weights hash, validation, losses.
    """
    from mimirate.models.loading import save_packaged

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, state = model_from_run(run_dir, which)
    normalise_codebooks(model)
    manifest = save_packaged(model, model.config, out_dir, torch.float16)
    meta = json.loads(manifest.read_text())
    files = [out_dir / s["file"] for s in meta["shards"]] + [out_dir / "config.json", manifest]
    ckpt_state = checkpoint.load(run_dir / "checkpoint").state
    info = {
        "model": model.config.name,
        "from": str(run_dir / which),
        "step": int(state["step"]),
        "checkpoint_step": int(ckpt_state["step"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "codebook_values": sum(b.numel() for n, b in model.named_buffers() if "embedding_sum" in n),
        "bytes": sum(f.stat().st_size for f in files),
        "weights_hash": meta["weights_hash"],
        "validation": state.get("validation", {}),
        "losses_last_50_steps": _log_summary(run_dir),
        "train_config": ckpt_state["train_config"],
    }
    commands = run_dir / "commands.txt"
    info["commands"] = commands.read_text().splitlines() if commands.is_file() else []
    write_provenance(out_dir, info)
    return info


def write_provenance(out_dir: Path, info: dict[str, Any], quality: str = "") -> None:
    """Write ``PROVENANCE.md``: data, steps, commands, losses, and a quality table if given."""
    cfg = info["train_config"]
    lines = [
        f"# Provenance of the `{info['model']}` weights",
        "",
        f"- Weights: step {info['step']} of the run (validation-selected; the run's last "
        f"checkpoint is at step {info['checkpoint_step']}), {info['parameters']:,} parameters "
        f"+ {info['codebook_values']:,} codebook values, stored fp16, {info['bytes']:,} bytes.",
        f"- Weights hash: `{info['weights_hash']}`.",
        "- Data: `training/bundle` (Ogg Opus ~19 kbit/s of LibriSpeech train-clean-100, one "
        "utterance from each of 251 speakers, and the LJSpeech excerpt: 56 min, 283 files; "
        f"{cfg['holdout_clips']} clips held out for validation). Never "
        "librispeech-test-other-dev.",
        f"- Recipe: batch {cfg['batch_size']} x {cfg['segment_seconds']} s crops, AdamW lr "
        f"{cfg['lr']} betas {cfg['betas']}, quantize probability {cfg['quantize_probability']}, "
        f"per-frame levels probability {cfg['per_frame_probability']}, adversarial from step "
        f"{cfg['adversarial_start']}; full configuration in `training/run/train_config.json`.",
        "- Commands (in order):",
        *[f"  - `{c}`" for c in info["commands"]],
        "- Validation (held-out training-side clips, mel distance, lower is better): "
        + ", ".join(f"{k} {v:.3f}" for k, v in info["validation"].items()),
        "- Losses, mean of the last 50 steps: "
        + ", ".join(f"{k} {v:.4f}" for k, v in info["losses_last_50_steps"].items()),
        "",
    ]
    if quality:
        lines += [quality, ""]
    atomic_write_bytes(Path(out_dir) / PROVENANCE, "\n".join(lines).encode())
