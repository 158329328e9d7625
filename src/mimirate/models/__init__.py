"""The Mimi model in PyTorch (streaming, explicit state) and the codec built on it."""

from mimirate.models.mimi import (
    DecoderState,
    EncodeResult,
    EncoderState,
    MimiModel,
    MimiOutput,
)
from mimirate.models.neural_codec import MimiCodec, MimiStreamDecoder, MimiStreamEncoder

__all__ = [
    "DecoderState",
    "EncodeResult",
    "EncoderState",
    "MimiCodec",
    "MimiModel",
    "MimiOutput",
    "MimiStreamDecoder",
    "MimiStreamEncoder",
]
