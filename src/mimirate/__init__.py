"""mimirate: the Mimi neural speech codec with a truly elastic bitrate.

The public API is what this module exports (``__all__``); everything else is
internal. ``import mimirate`` is light: PyTorch loads only when a model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimirate.audio import Audio, read_audio, write_wav
from mimirate.codec import Codec, Encoded, StreamDecoder, StreamEncoder
from mimirate.config import DEFAULT_MODEL, PRESETS, MimiConfig, get_preset
from mimirate.errors import (
    AudioError,
    CheckpointError,
    ConfigError,
    FormatError,
    MimirateError,
)

if TYPE_CHECKING:
    from mimirate.models.loading import load_codec

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "Audio",
    "AudioError",
    "CheckpointError",
    "Codec",
    "ConfigError",
    "Encoded",
    "FormatError",
    "MimiConfig",
    "MimirateError",
    "StreamDecoder",
    "StreamEncoder",
    "get_preset",
    "load_codec",
    "read_audio",
    "write_wav",
]


def __getattr__(name: str) -> Any:
    # Keep `import mimirate` free of torch: load the model code on first use.
    if name == "load_codec":
        from mimirate.models.loading import load_codec

        return load_codec
    raise AttributeError(f"module 'mimirate' has no attribute {name!r}")
