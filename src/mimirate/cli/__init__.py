"""The ``mimirate`` command line.

Each command group is a module in this package with a ``register(subparsers)``
function; they are found automatically, so adding a command touches one file.
Handlers import heavy libraries (torch, ray) inside themselves so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

from mimirate import __version__
from mimirate.errors import MimirateError

#: ``--bf16-decoder`` of the commands that decode.
BF16_DECODER_HELP = (
    "compute the decoder in bfloat16 (codes are unaffected): its weights take half the "
    "memory, and offline decoding is faster on CPUs with AVX-512 BF16; the audio is ~40 dB "
    "SNR from float32's"
)


def load_cli_codec(model: str, random_init: bool, seed: int, bf16_decoder: bool = False) -> Any:
    """The codec a command asked for (``--model``, ``--random-init``, ``--seed``,
    ``--bf16-decoder``), on at most 2 threads."""
    import os

    import torch

    from mimirate import load_codec

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    dtype = torch.bfloat16 if bf16_decoder else torch.float32
    if random_init:
        return load_codec(model, random_init=True, seed=seed, decoder_dtype=dtype)
    return load_codec(model, decoder_dtype=dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimirate",
        description=(
            "Mimi neural speech codec with an elastic bitrate (1-32 levels, 137.5 bit/s each)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mimirate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (the ``--json`` output of every command)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MimirateError as e:
        print(f"mimirate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
