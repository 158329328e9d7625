"""The training loop: quantizer dropout, mel + adversarial losses, collapse guard, exact resume.

One :class:`Trainer` owns the model, the discriminator, both optimizers and every random
generator; :meth:`Trainer.save` / :meth:`Trainer.restore` capture all of it (see
``checkpoint.py``), so a run resumed on another machine continues the same sequence of
batches and decisions. The recipe follows Mimi and EnCodec:

- quantizer dropout: each item keeps the first ``k`` levels, ``k`` drawn log-uniformly
  in ``1..n_q`` (low rates get as many steps as high ones); on half of the quantized
  steps ``k`` is drawn per frame, so frames with different level counts meet;
- half of the steps decode the continuous latent (Mimi), which keeps the decoder
  learning while the codebooks settle; the quantizer still runs and its codebooks
  still take their EMA steps;
- multi-scale mel + waveform L1 from the start, a multi-scale STFT discriminator with
  feature matching from ``adversarial_start`` on;
- the first ``quantize_start`` steps train the encoder and decoder as a continuous
  autoencoder through the quantizer's projections; then every codebook is fitted at
  once by residual k-means on ``kmeans_frames`` latent frames from fresh batches, and
  quantizer dropout starts. 2048 centroids need thousands of samples, far more than
  one batch; fitted on one batch of an untrained encoder, they leave one code in use
  per level;
- with ``freeze_encoder`` (the default), the encoder side (SEANet encoder, its
  transformer, the downsample and the quantizers' input projections) stops learning
  at the fit: the codebooks then describe a latent that no longer moves, their EMA
  steps only refine them, and the decoder learns to decode the codes. Short runs
  need this; with compute to spare, ``freeze_encoder=False`` trains everything
  jointly as Mimi does;
- each RVQ's projected input is held at unit variance over the batch (a penalty on
  the square of its log): the commitment loss cannot be won by shrinking the latent,
  centroids fitted at one scale stay valid, and unlike a penalty on the mean square,
  a constant (input-independent) latent cannot satisfy it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from mimirate.config import MimiConfig, get_preset
from mimirate.errors import CheckpointError, ConfigError, MimirateError
from mimirate.models import kernels
from mimirate.models.mimi import MimiModel
from mimirate.models.quantization import CHECK_UNUSED_EVERY
from mimirate.train import checkpoint
from mimirate.train.data import Augmentation, Clip, CropSampler
from mimirate.train.discriminator import MultiScaleSTFTDiscriminator
from mimirate.train.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    energy_ratio,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mel_distance,
)


class TrainingCollapsed(MimirateError):
    """The run lost its codebooks or its output energy and could not be restarted."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (stored in every checkpoint)."""

    model: str = "small"
    steps: int = 20_000
    batch_size: int = 8
    segment_seconds: float = 1.0
    seed: int = 0
    holdout_clips: int = 8
    gain_db: tuple[float, float] = (-12.0, 6.0)
    noise_probability: float = 0.3
    noise_snr_db: tuple[float, float] = (25.0, 50.0)
    lr: float = 5e-4
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 100
    # Warmup-stable-decay: the learning rates hold until this step, then fall linearly to
    # ``decay_floor`` of their value at ``steps``. A constant rate lets a run be extended
    # at will; the final decay settles the weights (the noise of a constant rate costs
    # several percent of mel loss). None: no decay.
    decay_start: int | None = None
    decay_floor: float = 0.1
    grad_clip: float = 5.0
    quantize_probability: float = 0.5
    per_frame_probability: float = 0.5
    mel_weight: float = 1.0
    #: Weight of the multi-resolution linear-STFT loss (0: off, the recipe's default).
    stft_weight: float = 0.0
    waveform_weight: float = 0.1
    commitment_weight: float = 1.0
    latent_scale_weight: float = 1.0
    adversarial_start: int = 3_000
    #: Steps over which the generator's adversarial and feature-matching weights rise
    #: linearly from 0 (the discriminator trains at full rate from adversarial_start): a
    #: trained generator does not chase a discriminator that knows nothing yet.
    adversarial_ramp: int = 0
    adversarial_weight: float = 1.0
    feature_weight: float = 3.0
    adversarial_loss: str = "hinge"  # or "lsgan"
    disc_ffts: tuple[int, ...] = (2048, 1024, 512)
    disc_filters: int = 32
    checkpoint_seconds: float = 300.0
    validate_every: int = 100
    quantize_start: int = 1_000
    freeze_encoder: bool = True
    kmeans_frames: int = 16_384
    kmeans_iters: int = 10
    guard_warmup: int = 400
    min_energy_ratio: float = 0.02
    max_energy_ratio: float = 50.0
    min_perplexity: float = 2.0
    max_restarts: int = 2

    def __post_init__(self) -> None:
        get_preset(self.model)
        if self.steps < 0 or self.batch_size < 1 or self.segment_seconds <= 0:
            raise ConfigError("steps must be >= 0, batch >= 1 and segment seconds > 0")
        if self.decay_start is not None and not 0 <= self.decay_start <= self.steps:
            raise ConfigError(f"decay start {self.decay_start} must be in 0..steps ({self.steps})")
        if not 0.0 <= self.decay_floor <= 1.0:
            raise ConfigError(f"decay floor must be in [0, 1], not {self.decay_floor}")
        if self.stft_weight < 0:
            raise ConfigError(f"STFT loss weight must be >= 0, not {self.stft_weight}")
        if self.adversarial_ramp < 0:
            raise ConfigError(f"adversarial ramp must be >= 0 steps, not {self.adversarial_ramp}")
        if self.adversarial_loss not in ("hinge", "lsgan"):
            raise ConfigError(
                f"adversarial loss must be hinge or lsgan, not {self.adversarial_loss}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**kw)


@dataclass(frozen=True)
class StepResult:
    """What one step measured (also one line of the JSONL log)."""

    step: int
    loss: float
    mel: float
    stft: float
    waveform: float
    commitment: float
    latent_rms: float
    adversarial: float
    feature: float
    disc: float
    energy_ratio: float
    quantized: bool
    mean_levels: float
    perplexity: list[float]
    seconds: float


def corpus_fingerprint(clips: Sequence[Clip]) -> str:
    """SHA-256 of clip names and lengths: a resumed run checks it reads the same corpus."""
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.name}:{len(c.samples)}\n".encode())
    return h.hexdigest()[:16]


def unit_gain_init(model: torch.nn.Module) -> None:
    """Re-draw every convolution as N(0, 1/fan_in) with zero bias, so each keeps the
    scale of its input.

    PyTorch's default (uniform with gain 1/sqrt(3), biases as large as the weights)
    loses about 5 dB per layer; through the ~15 layers of the SEANet encoder the audio
    is ~4 % of the latent at step 0 and the biases are the rest, so training starts
    from a latent that does not depend on its input and its gradients are tiny
    (measured on the small preset: input part 0.001 of a 0.024 RMS latent by default,
    0.142 of 0.142 with this init).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv1d):
            fan_in = module.weight.shape[1] * module.weight.shape[2]
        elif isinstance(module, torch.nn.ConvTranspose1d):
            # Each output sample sums kernel/stride taps of every input channel in its group.
            per_group = module.in_channels // module.groups
            fan_in = per_group * module.weight.shape[2] / module.stride[0]
        else:
            continue
        torch.nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(fan_in))
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)


def _codebooks(model: MimiModel) -> Iterator[tuple[str, Any]]:
    for name, module in model.named_modules():
        if name.endswith("._codebook"):
            yield name, module


class Trainer:
    """A training run in ``out_dir`` (checkpoint in ``out_dir/checkpoint``, best weights in
    ``out_dir/best``, log in ``out_dir/log.jsonl``)."""

    def __init__(
        self,
        config: TrainConfig,
        clips: Sequence[Clip],
        holdout: Sequence[Clip],
        out_dir: Path,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        self.config = config
        self.model_config: MimiConfig = get_preset(config.model)
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.progress = progress
        torch.manual_seed(config.seed)
        self.model = MimiModel(self.model_config)
        unit_gain_init(self.model)
        self.model = self.model.to(self.device).train()
        if self.device.type == "cpu":
            kernels.keep_freed_memory()
        self.disc = MultiScaleSTFTDiscriminator(config.disc_ffts, config.disc_filters).to(
            self.device
        )
        self.opt_g = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=config.betas, weight_decay=0.0
        )
        self.opt_d = torch.optim.AdamW(
            self.disc.parameters(), lr=config.disc_lr, betas=config.betas, weight_decay=0.0
        )
        self.mel_loss = MultiScaleMelLoss(self.model_config.sample_rate).to(self.device)
        self.stft_loss = MultiResolutionSTFTLoss().to(self.device)
        segment = round(config.segment_seconds * self.model_config.sample_rate)
        augmentation = Augmentation(config.gain_db, config.noise_probability, config.noise_snr_db)
        self.sampler = CropSampler(clips, segment, config.batch_size, config.seed, augmentation)
        self.fingerprint = corpus_fingerprint(clips)
        self.holdout = list(holdout)
        self.rng = np.random.default_rng(config.seed + 1)
        self.step = 0
        self.lr_scale = 1.0
        self.restarts = 0
        self.best_val = math.inf
        self.health = {"energy_ratio": 1.0, "perplexity": float(self.model_config.quantizer.bins)}
        self._stop = False

    # -- one step ------------------------------------------------------------------------

    def _levels(self, frames: int) -> tuple[bool, torch.Tensor]:
        cfg, n_q = self.config, self.model_config.quantizer.n_q
        B = cfg.batch_size
        quantize = bool(self.rng.random() < cfg.quantize_probability)
        if not quantize or self.step < cfg.quantize_start:
            # The continuous latent is decoded; every codebook still takes its EMA step.
            return False, torch.full((B, frames), n_q, dtype=torch.long)

        def draw(shape: tuple[int, ...]) -> np.ndarray:
            return np.clip(np.floor(np.exp(self.rng.random(shape) * math.log(n_q + 1))), 1, n_q)

        if self.rng.random() < cfg.per_frame_probability:
            levels = draw((B, frames))
        else:
            levels = np.repeat(draw((B, 1)), frames, axis=1)
        return True, torch.from_numpy(levels.astype(np.int64))

    def lr_factor(self) -> float:
        """The schedule's factor at the current step: linear warmup, constant, linear decay."""
        cfg = self.config
        factor = min(1.0, (self.step + 1) / max(1, cfg.warmup_steps))
        if cfg.decay_start is not None and self.step >= cfg.decay_start:
            span = max(1, cfg.steps - cfg.decay_start)
            done = min(1.0, (self.step - cfg.decay_start) / span)
            factor *= 1.0 - (1.0 - cfg.decay_floor) * done
        return factor

    def adversarial_factor(self) -> float:
        """Share of the adversarial and feature-matching weights the generator gets now."""
        cfg = self.config
        if self.step < cfg.adversarial_start:
            return 0.0
        return min(1.0, (self.step - cfg.adversarial_start + 1) / max(1, cfg.adversarial_ramp))

    def _set_lr(self) -> None:
        factor = self.lr_factor()
        for opt, base in ((self.opt_g, self.config.lr), (self.opt_d, self.config.disc_lr)):
            for g in opt.param_groups:
                g["lr"] = base * factor * self.lr_scale

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _latent_scale_penalty(self, latent: torch.Tensor) -> torch.Tensor:
        """``(log var)^2`` of each RVQ's input, variance per channel over batch and time
        (averaged over channels): zero at unit scale, and only input-dependent variation
        counts."""
        terms = []
        for rvq in (self.model.quantizer.rvq_first, self.model.quantizer.rvq_rest):
            z = F.conv1d(latent.float(), rvq.input_proj.weight.float())
            var = z.transpose(0, 1).reshape(z.shape[1], -1).var(dim=1).mean()
            terms.append(torch.log(var + 1e-8) ** 2)
        return torch.stack(terms).mean()

    def _encoder_side(self) -> list[torch.nn.Module]:
        m = self.model
        return [
            m.encoder,
            m.encoder_transformer,
            m.downsample,
            m.quantizer.rvq_first.input_proj,
            m.quantizer.rvq_rest.input_proj,
        ]

    @torch.no_grad()
    def fit_codebooks(self) -> int:
        """Fit every codebook by residual k-means on the latents of fresh batches.

        Returns the number of frames used. Uses the sampler, so a resumed run draws the
        same batches.
        """
        cfg = self.config
        parts, total = [], 0
        while total < cfg.kmeans_frames:
            x = torch.from_numpy(self.sampler.batch()).to(self.device)
            with self._autocast():
                latent = self.model.encode_latent_step(
                    F.pad(x, (0, (-x.shape[-1]) % self.model_config.frame_size)),
                    self.model.init_encoder_state(x.shape[0]),
                )
            frames = latent.float().transpose(1, 2).reshape(-1, latent.shape[1])
            parts.append(frames)
            total += frames.shape[0]
        self.model.quantizer.fit(
            torch.cat(parts)[: cfg.kmeans_frames], cfg.kmeans_iters, float(parts[0].shape[0])
        )
        for _, cb in _codebooks(self.model):
            cb._steps_to_check = CHECK_UNUSED_EVERY
        return min(total, cfg.kmeans_frames)

    def train_step(self) -> StepResult:
        """One generator step (and one discriminator step once adversarial training is on)."""
        cfg = self.config
        t0 = time.perf_counter()
        self._set_lr()
        x = torch.from_numpy(self.sampler.batch()).to(self.device)
        frames = -(-x.shape[-1] // self.model_config.frame_size)
        if self.step == cfg.quantize_start and cfg.kmeans_frames > 0:
            self.fit_codebooks()
        frozen = cfg.freeze_encoder and self.step >= cfg.quantize_start
        for module in self._encoder_side():
            module.requires_grad_(not frozen)
        quantize, levels = self._levels(frames)
        levels = levels.to(self.device)
        adversarial = self.step >= cfg.adversarial_start
        quantizing = self.step >= cfg.quantize_start
        with self._autocast():
            out = self.model(x, levels=levels, quantize=quantize)
        y = out.audio.float()
        mel = self.mel_loss(y, x)
        stft = self.stft_loss(y, x) if cfg.stft_weight > 0 else torch.zeros((), device=self.device)
        wave = F.l1_loss(y, x)
        commit = out.commitment_loss.float()
        scale = (
            torch.zeros((), device=self.device)
            if frozen
            else self._latent_scale_penalty(out.latent)
        )
        # Before the codebooks are fitted, commitment would pull the latent towards
        # centroids that mean nothing yet.
        commit_weight = cfg.commitment_weight if quantizing else 0.0
        loss = (
            cfg.mel_weight * mel
            + cfg.stft_weight * stft
            + cfg.waveform_weight * wave
            + commit_weight * commit
            + cfg.latent_scale_weight * scale
        )
        adv = feat = disc_loss = torch.zeros((), device=self.device)
        if adversarial:
            self.disc.requires_grad_(False)
            with self._autocast():
                fake = self.disc(y)
                real = self.disc(x)
            gen = hinge_generator_loss if cfg.adversarial_loss == "hinge" else lsgan_generator_loss
            adv = gen([f.float() for f in fake.logits])
            feat = feature_matching_loss(real.features, fake.features)
            ramp = self.adversarial_factor()
            loss = loss + ramp * (cfg.adversarial_weight * adv + cfg.feature_weight * feat)
            self.disc.requires_grad_(True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}")
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt_g.step()
        if adversarial:
            with self._autocast():
                fake = self.disc(y.detach())
                real = self.disc(x)
            dl = (
                hinge_discriminator_loss
                if cfg.adversarial_loss == "hinge"
                else lsgan_discriminator_loss
            )
            disc_loss = dl([r.float() for r in real.logits], [f.float() for f in fake.logits])
            self.opt_d.zero_grad(set_to_none=True)
            disc_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
            self.opt_d.step()
        self.step += 1
        with torch.no_grad():
            rms = float(
                F.conv1d(
                    out.latent.float(), self.model.quantizer.rvq_rest.input_proj.weight.float()
                )
                .pow(2)
                .mean()
                .sqrt()
            )
        return StepResult(
            step=self.step,
            loss=float(loss.detach()),
            mel=float(mel.detach()),
            stft=float(stft.detach()),
            waveform=float(wave.detach()),
            commitment=float(commit.detach()),
            latent_rms=rms,
            adversarial=float(adv.detach()),
            feature=float(feat.detach()),
            disc=float(disc_loss.detach()),
            energy_ratio=energy_ratio(y, x),
            quantized=quantize,
            mean_levels=float(levels.float().mean()),
            perplexity=[round(float(p), 2) for p in out.perplexity],
            seconds=time.perf_counter() - t0,
        )

    # -- collapse guard -------------------------------------------------------------------

    def _update_health(self, r: StepResult) -> str | None:
        """Track smoothed energy ratio and first-level perplexity; return why it collapsed."""
        a = 0.1
        h = self.health
        h["energy_ratio"] = (1 - a) * h["energy_ratio"] + a * r.energy_ratio
        if r.quantized:
            h["perplexity"] = (1 - a) * h["perplexity"] + a * r.perplexity[0]
        if not math.isfinite(r.loss):
            return "the loss is not finite"
        if self.step < self.config.guard_warmup:
            return None
        if not self.config.min_energy_ratio <= h["energy_ratio"] <= self.config.max_energy_ratio:
            return (
                f"output/input energy ratio {h['energy_ratio']:.3g} left "
                f"[{self.config.min_energy_ratio}, {self.config.max_energy_ratio}]"
            )
        if h["perplexity"] < self.config.min_perplexity:
            return f"first-level codebook perplexity fell to {h['perplexity']:.2f}"
        return None

    # -- validation ----------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, seconds: float = 4.0) -> dict[str, float]:
        """Mean mel distance on the held-out clips (eval mode): through the continuous
        path, and once the codebooks are fitted, at 8 and 32 levels."""
        if not self.holdout:
            return {}
        self.model.eval()
        n = round(seconds * self.model_config.sample_rate)
        result = {}
        try:
            batch = np.zeros((len(self.holdout), 1, n), dtype=np.float32)
            for i, c in enumerate(self.holdout):
                s = c.samples[:n]
                batch[i, 0, : len(s)] = s
            x = torch.from_numpy(batch).to(self.device)
            out = self.model(x, levels=None, quantize=False)
            result["val_mel_continuous"] = float(mel_distance(out.audio.float(), x, 24_000).mean())
            if self.step > self.config.quantize_start:
                for k in (8, self.model_config.quantizer.n_q):
                    out = self.model(x, levels=k, quantize=True)
                    result[f"val_mel_{k}"] = float(
                        mel_distance(out.audio.float(), x, 24_000).mean()
                    )
        finally:
            self.model.train()
        return result

    # -- checkpoints ---------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"disc/{k}": v for k, v in self.disc.state_dict().items()})
        g_t, g_meta = checkpoint.optimizer_to_tensors(self.opt_g, "opt_g")
        d_t, d_meta = checkpoint.optimizer_to_tensors(self.opt_d, "opt_d")
        tensors.update(g_t)
        tensors.update(d_t)
        tensors["rng/torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/torch_cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "step": self.step,
            "model": self.config.model,
            "train_config": self.config.to_dict(),
            "opt_g": g_meta,
            "opt_d": d_meta,
            "sampler_rng": self.sampler.state(),
            "trainer_rng": self.rng.bit_generator.state,
            # Python-side counters of the codebooks (dead-code check cadence).
            "codebook_counters": {n: cb._steps_to_check for n, cb in _codebooks(self.model)},
            "lr_scale": self.lr_scale,
            "restarts": self.restarts,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "health": self.health,
            "corpus": self.fingerprint,
        }
        return tensors, state

    def save(self) -> Path:
        tensors, state = self._state()
        return checkpoint.save(self.out_dir / "checkpoint", tensors, state, f"step{self.step:07d}")

    def save_best(self, val: dict[str, float]) -> None:
        tensors = {k: v for k, v in self.model.state_dict().items()}
        checkpoint.save(
            self.out_dir / "best",
            tensors,
            {"step": self.step, "model": self.config.model, "validation": val},
            f"step{self.step:07d}",
        )

    def restore(self, directory: Path | None = None, *, fresh_discriminator: bool = False) -> None:
        """Load a checkpoint written by :meth:`save` (default: this run's).

        ``fresh_discriminator`` keeps this trainer's newly built discriminator and its optimizer
        instead of the checkpoint's (for a run whose GAN has not started and that changes the
        discriminator's size); everything else is restored as usual.
        """
        loaded = checkpoint.load(directory or self.out_dir / "checkpoint")
        t, s = loaded.tensors, loaded.state
        if s.get("model") != self.config.model:
            raise CheckpointError(
                f"checkpoint is for model {s.get('model')!r}, not {self.config.model!r}"
            )

        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}

        try:
            self.model.load_state_dict(sub("model/"))
            if not fresh_discriminator:
                self.disc.load_state_dict(sub("disc/"))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not fit the model: {e}") from None
        checkpoint.optimizer_from_tensors(self.opt_g, t, s["opt_g"], "opt_g")
        if not fresh_discriminator:
            checkpoint.optimizer_from_tensors(self.opt_d, t, s["opt_d"], "opt_d")
        torch.set_rng_state(t["rng/torch_cpu"])
        if self.device.type == "cuda" and "rng/torch_cuda" in t:
            torch.cuda.set_rng_state(t["rng/torch_cuda"], self.device)
        self.sampler.set_state(s["sampler_rng"])
        self.rng.bit_generator.state = s["trainer_rng"]
        counters = s.get("codebook_counters", {})
        for name, cb in _codebooks(self.model):
            if name in counters:
                cb._steps_to_check = int(counters[name])
        self.step = int(s["step"])
        self.lr_scale = float(s["lr_scale"])
        self.restarts = int(s["restarts"])
        self.best_val = math.inf if s.get("best_val") is None else float(s["best_val"])
        self.health = dict(s["health"])
        if s.get("corpus") != self.fingerprint:
            tqdm.write(
                "warning: the training audio differs from the checkpoint's "
                f"({s.get('corpus')} vs {self.fingerprint}); batches will not repeat exactly"
            )

    # -- the loop ------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop = True

    def run(self, max_minutes: float | None = None) -> StepResult | None:
        """Train until ``config.steps`` (or ``max_minutes``, or SIGTERM/SIGINT), then save.

        Raises :class:`TrainingCollapsed` when the guard fires and no restart is left.
        """
        cfg = self.config
        start = time.monotonic()
        last_save = time.monotonic()
        previous = {
            s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)
        }
        last: StepResult | None = None
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not self.progress,
        )
        try:
            while self.step < cfg.steps and not self._stop:
                if max_minutes is not None and time.monotonic() - start > max_minutes * 60:
                    tqdm.write(f"time limit of {max_minutes} min reached at step {self.step}")
                    break
                try:
                    r = self.train_step()
                    why = self._update_health(r)
                except FloatingPointError as e:
                    r, why = None, str(e)
                if why is not None:
                    self._collapse(why)
                    bar.n = self.step
                    continue
                assert r is not None
                last = r
                record = dataclasses.asdict(r)
                if cfg.validate_every and self.step % cfg.validate_every == 0:
                    val = self.validate()
                    record.update(val)
                    # The best weights are judged on their codes, so only once they exist.
                    coded = [v for k, v in val.items() if k != "val_mel_continuous"]
                    score = float(np.mean(coded)) if coded else math.inf
                    if score < self.best_val:
                        self.best_val = score
                        self.save_best(val)
                self._log(record)
                bar.update(1)
                bar.set_postfix(
                    mel=f"{r.mel:.3f}", er=f"{r.energy_ratio:.2f}", ppl=f"{r.perplexity[0]:.0f}"
                )
                if time.monotonic() - last_save > cfg.checkpoint_seconds:
                    self.save()
                    last_save = time.monotonic()
        finally:
            bar.close()
            for s, h in previous.items():
                signal.signal(s, h)
        self.save()
        return last

    def _collapse(self, why: str) -> None:
        directory = self.out_dir / "checkpoint"
        if not checkpoint.exists(directory):
            raise TrainingCollapsed(
                f"training collapsed at step {self.step}: {why}. There is no checkpoint to "
                "restart from yet; start again with a lower --lr or another --seed"
            )
        if self.restarts >= self.config.max_restarts:
            raise TrainingCollapsed(
                f"training collapsed at step {self.step}: {why}. No restart left "
                f"({self.restarts} of {self.config.max_restarts} used); lower --lr or resume "
                "from an earlier checkpoint"
            )
        restarts = self.restarts + 1
        scale = self.lr_scale * 0.5
        message = f"collapse at step {self.step}: {why}; restarting from the last checkpoint"
        tqdm.write(message + f" with learning rate x{scale:g}")
        self._log({"event": "restart", "step": self.step, "reason": why})
        self.restore(directory)
        # Kept across the reload: a replay at the same rate would collapse the same way.
        self.restarts, self.lr_scale = restarts, scale
