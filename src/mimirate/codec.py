"""The one small codec interface that everything above the model uses.

Bitstream, rate control, transport, evaluation and tokenization talk only to
:class:`Codec` (NumPy in, NumPy out). The PyTorch model behind it lives in
``mimirate.models``; :func:`mimirate.load_codec` builds one.

Shapes follow NumPy conventions: leading dimensions are batch dimensions and are
kept. ``K`` is the number of levels, ``T`` the number of frames, ``N`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """Codes for a run of frames, and what the encoder knows about them for free.

    Attributes:
        codes: ``[..., K, T]`` uint16, every value ``< cardinality``. Row ``k`` is
            level ``k + 1``; the first ``k`` rows are a valid coarser code.
        latent_error: ``[..., K, T]`` float32: squared L2 distance, per frame, between
            the decoder's input from the first ``k + 1`` levels and from the unquantized
            projections (the quantizer's input projected in and back out). Rate control
            uses it as a free distortion estimate.
        num_samples: input samples these frames cover; the last frame may have been
            zero-padded, so ``num_samples <= T * frame_size``.
    """

    codes: np.ndarray
    latent_error: np.ndarray
    num_samples: int

    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[-2])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[-1])


@runtime_checkable
class StreamEncoder(Protocol):
    """Stateful encoder for one stream (or one fixed batch of streams)."""

    def push(self, audio: np.ndarray) -> Encoded:
        """Feed ``[..., n]`` float32 samples (any ``n``, buffered); return the frames completed."""
        ...

    def flush(self) -> Encoded:
        """Zero-pad what is buffered to a whole frame and encode it (zero frames if none)."""
        ...


@runtime_checkable
class StreamDecoder(Protocol):
    """Stateful decoder for one stream (or one fixed batch of streams)."""

    def push(self, codes: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        """Decode ``[..., K, T]`` codes to ``[..., T * frame_size]`` float32 samples.

        ``levels`` (``[..., T]`` ints in ``1..K``), when given, decodes frame ``t``
        from its first ``levels[..., t]`` levels only.
        """
        ...


@runtime_checkable
class Codec(Protocol):
    """A streaming neural speech codec with residual (truncatable) levels."""

    name: str  # the preset name, written into every file
    sample_rate: int  # 24000
    frame_rate: float  # 12.5
    frame_size: int  # samples per frame, 1920
    cardinality: int  # entries per codebook, 2048
    num_levels: int  # levels the model has, 32
    bits_per_code: int  # ceil(log2(cardinality)), 11
    weights_hash: bytes  # 8 bytes identifying the weights (see mimirate.models.loading)

    def encode(self, audio: np.ndarray, levels: int | None = None) -> Encoded:
        """Encode ``[..., N]`` float32 audio at ``sample_rate`` (offline = fresh stream)."""
        ...

    def decode(self, codes: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        """Decode ``[..., K, T]`` codes to ``[..., T * frame_size]`` audio (fresh stream)."""
        ...

    def stream_encoder(self) -> StreamEncoder: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def encode_streams(
        self, encoders: Sequence[StreamEncoder], audio: Sequence[np.ndarray]
    ) -> list[Encoded]:
        """Push ``audio[i]`` into ``encoders[i]`` (streams of this codec) for every ``i``.

        Equal, within float tolerance, to ``[e.push(a) for e, a in zip(encoders, audio)]``,
        but streams that advance by the same number of frames share one model call: a
        server serving many sessions steps them all at once each frame. Each encoder may
        appear once.
        """
        ...

    def decode_streams(
        self,
        decoders: Sequence[StreamDecoder],
        codes: Sequence[np.ndarray],
        levels: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray]:
        """Push ``codes[i]`` (``[..., K_i, T]``, ``levels[i]`` as in ``push``) into ``decoders[i]``.

        Equal, within float tolerance, to pushing each stream on its own; streams with the
        same ``T`` share one model call whatever their ``K_i``. Each decoder may appear once.
        """
        ...
