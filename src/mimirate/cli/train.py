"""``mimirate train``: train a model; ``train bundle``: pack the data; ``train package``: ship it.

Examples::

    mimirate train --out training/run --steps 2000              # new run (CPU)
    mimirate train --out training/run --resume --device cuda --max-minutes 13
    mimirate train bundle --out training/bundle
    mimirate train package --run training/run --out src/mimirate/assets/small
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

from mimirate.errors import ConfigError

REPO_DEFAULT_BUNDLE = Path("training/bundle")
SHARED_SPEECH = Path("../shared/data/speech")

#: Flags that may differ from the checkpoint's configuration when resuming. The batch, crop
#: length and learning rate among them: a GPU continues a CPU run with larger batches (the
#: draws stay reproducible from there on).
_RESUME_OVERRIDES = (
    "steps",
    "batch_size",
    "segment_seconds",
    "lr",
    "decay_start",
    "adversarial_start",
    "adversarial_ramp",
    "stft_weight",
    "disc_filters",  # only before the run's GAN has started (checked where it resumes)
    "checkpoint_seconds",
    "guard_warmup",
    "quantize_start",
    "kmeans_frames",
    "freeze_encoder",
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (or: train bundle / train package)",
        description="Train a Mimi-geometry codec with quantizer dropout, mel + adversarial "
        "losses, a collapse guard and exactly resumable checkpoints. Subcommands: "
        "`bundle` packs the training audio, `package` writes trained weights for load_codec.",
    )
    p.add_argument("--out", type=Path, help="run folder (checkpoint/, best/, log.jsonl)")
    p.add_argument("--config", default=None, help="model preset (default small)")
    p.add_argument("--steps", type=int, default=None, help="train until this step (total)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8)")
    p.add_argument("--segment-seconds", type=float, default=None, help="crop length (default 1)")
    p.add_argument("--lr", type=float, default=None, help="generator learning rate")
    p.add_argument(
        "--decay-start",
        type=int,
        default=None,
        help="hold the learning rate until this step, then decay it linearly to 10%% at --steps",
    )
    p.add_argument("--adversarial-start", type=int, default=None, help="step the GAN starts")
    p.add_argument(
        "--adversarial-ramp",
        type=int,
        default=None,
        help="steps over which the generator's adversarial weights rise from 0 (default 0)",
    )
    p.add_argument(
        "--stft-weight",
        type=float,
        default=None,
        help="weight of the multi-resolution linear-STFT loss beside the mel loss (default 0)",
    )
    p.add_argument(
        "--disc-filters",
        type=int,
        default=None,
        help="discriminator width (default 32); on --resume only before the GAN has started, "
        "and the discriminator then starts afresh",
    )
    p.add_argument(
        "--quantize-start",
        type=int,
        default=None,
        help="continuous autoencoder until this step, then k-means codebooks (default 1000)",
    )
    p.add_argument(
        "--kmeans-frames", type=int, default=None, help="latent frames for the codebook fit"
    )
    p.add_argument(
        "--joint",
        action="store_true",
        default=None,
        help="keep training the encoder after the codebook fit (default: frozen)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--guard-warmup", type=int, default=None, help="steps before the guard acts")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this")
    p.add_argument("--checkpoint-minutes", type=float, default=None, help="save every (default 5)")
    p.add_argument("--bundle", type=Path, default=None, help="data bundle folder")
    p.add_argument("--data-root", type=Path, default=None, help="speech folders (not the dev one)")
    p.add_argument("--espeak", type=int, default=0, help="add this many espeak-ng sentences")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.set_defaults(func=_train)
    sub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND")

    b = sub.add_parser("bundle", help="encode the training audio as a compact Opus bundle")
    b.add_argument("--out", type=Path, default=REPO_DEFAULT_BUNDLE)
    b.add_argument("--data-root", type=Path, default=SHARED_SPEECH)
    b.add_argument("--folders", default=None, help="comma-separated folders of --data-root")
    b.add_argument("--compression-level", type=float, default=None, help="libsndfile Opus level")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_bundle)

    k = sub.add_parser("package", help="write a run's weights as packaged fp16 weights")
    k.add_argument("--run", type=Path, required=True, help="run folder of `mimirate train`")
    k.add_argument("--which", choices=("best", "checkpoint"), default="best")
    k.add_argument("--out", type=Path, required=True, help="e.g. src/mimirate/assets/small")
    k.add_argument("--quality", type=Path, default=None, help="markdown table to add")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_package)

    q = sub.add_parser("quality", help="score a model on the evaluation folder, level by level")
    q.add_argument("--model", default="small", help="preset name or weights path")
    q.add_argument("--random-init", action="store_true", help="random weights (for tests)")
    q.add_argument("--files", type=int, default=8, help="evaluation files to use")
    q.add_argument("--data-root", type=Path, default=SHARED_SPEECH)
    q.add_argument("--levels", default="1,2,4,8,16,32")
    q.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_quality)


def _clips(args: argparse.Namespace, sample_rate: int, progress: bool) -> tuple[list[Any], str]:
    from mimirate.train.bundle import read_bundle
    from mimirate.train.data import list_audio_files, load_clips, training_folders

    if args.bundle is not None and args.data_root is not None:
        raise ConfigError("give --bundle or --data-root, not both")
    bundle = args.bundle
    if (
        bundle is None
        and args.data_root is None
        and (REPO_DEFAULT_BUNDLE / "manifest.json").is_file()
    ):
        bundle = REPO_DEFAULT_BUNDLE
    if bundle is not None:
        return read_bundle(bundle, sample_rate, progress), f"bundle {bundle}"
    root = args.data_root or SHARED_SPEECH
    files = list_audio_files(training_folders(root))
    return load_clips(files, sample_rate, root, progress), f"folders of {root}"


def _train(args: argparse.Namespace) -> int:
    if getattr(args, "train_command", None) is not None:
        return 0
    if args.out is None:
        raise ConfigError("give --out DIR (the run folder)")
    import torch

    from mimirate.train import checkpoint
    from mimirate.train.data import split_holdout, synthetic_speech
    from mimirate.train.trainer import TrainConfig, Trainer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no GPU; use --device cpu")
    given = {
        "model": args.config,
        "steps": args.steps,
        "batch_size": args.batch,
        "segment_seconds": args.segment_seconds,
        "lr": args.lr,
        "decay_start": args.decay_start,
        "adversarial_start": args.adversarial_start,
        "disc_filters": args.disc_filters,
        "adversarial_ramp": args.adversarial_ramp,
        "stft_weight": args.stft_weight,
        "quantize_start": args.quantize_start,
        "kmeans_frames": args.kmeans_frames,
        "freeze_encoder": None if args.joint is None else not args.joint,
        "seed": args.seed,
        "guard_warmup": args.guard_warmup,
        "checkpoint_seconds": None
        if args.checkpoint_minutes is None
        else args.checkpoint_minutes * 60,
    }
    given = {k: v for k, v in given.items() if v is not None}
    ckpt_dir = args.out / "checkpoint"
    if args.resume:
        if not checkpoint.exists(ckpt_dir):
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
        state = checkpoint.load(ckpt_dir).state
        stored = state["train_config"]
        new_disc = "disc_filters" in given and given["disc_filters"] != stored.get("disc_filters")
        if new_disc and int(state["step"]) > int(stored["adversarial_start"]):
            raise ConfigError(
                f"--disc-filters: the run's discriminator has trained since step "
                f"{stored['adversarial_start']}; its width ({stored.get('disc_filters')}) is kept"
            )
        for k, v in given.items():
            if k not in _RESUME_OVERRIDES and stored.get(k) != v:
                raise ConfigError(
                    f"--resume keeps the run's {k} ({stored.get(k)}); drop the flag or start "
                    "a new run in another folder"
                )
        config = TrainConfig.from_dict({**stored, **given})
    else:
        if checkpoint.exists(ckpt_dir):
            raise ConfigError(f"{ckpt_dir} already holds a run; pass --resume or another --out")
        config = TrainConfig(**given)
    progress = not args.no_progress
    from mimirate.config import get_preset

    rate = get_preset(config.model).sample_rate
    clips, source = _clips(args, rate, progress)
    if args.espeak:
        clips += synthetic_speech(args.espeak, rate, config.seed)
    train, holdout = split_holdout(clips, config.holdout_clips, config.seed)
    minutes = sum(len(c.samples) for c in train) / rate / 60
    # With --json, stdout carries only the summary at the end; the rest goes to stderr.
    say = functools.partial(print, file=sys.stderr if args.json else sys.stdout)
    say(f"data: {source}: {len(train)} clips, {minutes:.1f} min (+{len(holdout)} held out)")
    trainer = Trainer(config, train, holdout, args.out, device=args.device, progress=progress)
    if args.resume:
        trainer.restore(fresh_discriminator=new_disc)
        say(f"resumed at step {trainer.step}" + (" with a new discriminator" if new_disc else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "commands.txt", "a") as f:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        f.write(f"{stamp} mimirate {' '.join(sys.argv[1:])}  # device {args.device}\n")
    (args.out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    last = trainer.run(max_minutes=args.max_minutes)
    if args.json:
        from mimirate.cli import print_json

        print_json(
            {
                "step": trainer.step,
                "checkpoint": str(ckpt_dir),
                "data": source,
                "clips": len(train),
                "minutes": minutes,
                "last": None if last is None else dataclasses.asdict(last),
                "lr_factor": trainer.lr_factor(),
            }
        )
        return 0
    print(f"stopped at step {trainer.step}; checkpoint in {ckpt_dir}")
    if last is not None:
        print(f"last step: loss {last.loss:.4f} mel {last.mel:.4f} energy {last.energy_ratio:.3f}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from mimirate.cli import print_json
    from mimirate.train.bundle import (
        DEFAULT_COMPRESSION_LEVEL,
        DEFAULT_FOLDERS,
        build_bundle,
        bundle_bytes,
    )

    folders = DEFAULT_FOLDERS if args.folders is None else tuple(args.folders.split(","))
    level = DEFAULT_COMPRESSION_LEVEL if args.compression_level is None else args.compression_level
    m = build_bundle(args.data_root, args.out, folders, level, progress=not args.json)
    size = bundle_bytes(args.out)
    info = {"files": len(m.entries), "minutes": m.seconds / 60, "bytes": size, "out": str(args.out)}
    if args.json:
        print_json(info)
    else:
        mib = size / 2**20
        print(f"{len(m.entries)} files, {m.seconds / 60:.1f} min, {mib:.2f} MiB in {args.out}")
    return 0


def _package(args: argparse.Namespace) -> int:
    from mimirate.cli import print_json
    from mimirate.train.package import package_run

    info = package_run(args.run, args.out, which=args.which)
    if args.quality is not None:
        from mimirate.train.package import write_provenance

        write_provenance(args.out, info, args.quality.read_text())
    if args.json:
        print_json(info)
    else:
        json.dump(info, sys.stdout, indent=1)
        print()
    return 0


def _quality(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path as _P

    from mimirate.cli import print_json
    from mimirate.fileio import atomic_write_bytes
    from mimirate.models.loading import load_codec
    from mimirate.train.quality import dev_files, markdown_table, measure

    if _P(args.model).exists():
        codec = load_codec(path=args.model)
    else:
        codec = load_codec(args.model, random_init=args.random_init)
    files = dev_files(args.data_root, args.files)
    levels = tuple(int(v) for v in args.levels.split(","))
    rows = measure(codec, files, levels, progress=not args.json)
    table = markdown_table(rows, len(files))
    if args.markdown is not None:
        atomic_write_bytes(args.markdown, (table + "\n").encode())
    if args.json:
        print_json([dataclasses.asdict(r) for r in rows])
    else:
        print(table)
    return 0
