"""The Mimi model: SEANet + transformer encoder, split RVQ, transformer + SEANet decoder.

Streaming is the only code path. ``encode_step``/``decode_step`` consume the next
frames of a stream with an explicit state; ``encode``/``decode`` run the same steps
from a fresh state, a bounded number of frames at a time (so memory does not grow
with the input). ``forward`` is the training pass.

For the ``mimi`` preset, ``state_dict()`` has exactly the keys and shapes of Kyutai's
released checkpoint, so it loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mimirate.config import MimiConfig
from mimirate.models import kernels
from mimirate.models.conv import (
    ConvDownsample1d,
    ConvState,
    ConvTransposeState,
    ConvTrUpsample1d,
    StreamingConvTranspose1d,
)
from mimirate.models.quantization import SplitResidualVectorQuantizer
from mimirate.models.seanet import SEANetDecoder, SEANetEncoder
from mimirate.models.streaming import param_like
from mimirate.models.transformer import LatentTransformer, TransformerState

#: Frames per step of the offline ``encode``/``decode``: 10 s, the transformers' context,
#: bounds attention to 250 queries on 500 keys. Bigger steps feed the transformers and the
#: quantizer bigger products: encoding 30 s with ``mimi`` on 2 cores took 1.27 s in steps of
#: 50 frames and 1.04 s in steps of 125 (decoding 1.31 -> 1.18 s).
OFFLINE_CHUNK_FRAMES = 125
#: Longer inputs go through the SEANet encoder and decoder in tiles of this many frames:
#: 2 s of their activations stay in cache where 4 s do not (encoding measured 17% faster
#: on 2 cores), while the transformers and the quantizer are faster on the whole chunk.
SEANET_TILE_FRAMES = 25


def _tile_frames(x: torch.Tensor) -> int:
    """Frames per SEANet tile for ``x [B, ...]``, 0 for none.

    Tiles keep activations in cache for inference. Under autograd there are none: the
    streaming states hold their inputs detached, so a tile boundary would cut the
    gradient (a training crop longer than a tile learnt from truncated gradients). On
    the CPU a tile holds SEANET_TILE_FRAMES of activations for the whole batch: per
    stream, 8 streams' tiles took 98 MB a layer, which glibc serves with fresh mmaps
    (over its 32 MiB ceiling, ``kernels.keep_freed_memory``): 690 k page faults per call
    encoding 8 x 5 s.
    """
    if torch.is_grad_enabled():
        return 0
    if x.device.type != "cpu":
        return SEANET_TILE_FRAMES
    return max(1, SEANET_TILE_FRAMES // max(1, x.shape[0]))


def _in_tiles(layer: nn.Module, x: torch.Tensor, state: Any, tile: int) -> torch.Tensor:
    """``layer(x, state)`` on ``x [B, C, N]`` in pieces of ``tile`` steps (0: whole), concatenated.

    Streaming makes the split exact; each piece's activations stay in cache.
    """
    if tile <= 0 or x.shape[-1] <= tile:
        return layer(x, state)
    pieces = [layer(x[..., i : i + tile], state) for i in range(0, x.shape[-1], tile)]
    return torch.cat(pieces, dim=-1)


@dataclass
class EncoderState:
    """Streaming state of the encoder path, for one batch of streams (mutated in place)."""

    seanet: tuple[Any, ...]
    transformer: TransformerState
    downsample: ConvState


@dataclass
class DecoderState:
    """Streaming state of the decoder path, for one batch of streams (mutated in place)."""

    upsample: ConvTransposeState
    transformer: TransformerState
    seanet: tuple[Any, ...]


@dataclass(frozen=True)
class EncodeResult:
    """``codes [B, K, T]`` long and ``latent_error [B, K, T]`` float (see ``Encoded``)."""

    codes: torch.Tensor
    latent_error: torch.Tensor


@dataclass(frozen=True)
class MimiOutput:
    """Result of the training pass.

    Attributes:
        audio: ``[B, 1, N]`` reconstruction, trimmed to the input length.
        codes: ``[B, n_q, T]`` long (all levels, whatever ``levels`` kept).
        commitment_loss: scalar, mean squared distance of each active level's input to
            its centroid.
        perplexity: ``[n_q]`` codebook perplexity per level on this batch.
        latent: ``[B, C, T]`` the continuous latent before quantization (12.5 Hz).
    """

    audio: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    latent: torch.Tensor


class MimiModel(nn.Module):
    """Mimi, every size taken from ``config``."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.seanet.dimension
        stride = config.downsample_stride
        self.encoder = SEANetEncoder(config.seanet)
        self.decoder = SEANetDecoder(config.seanet)
        self.encoder_transformer = LatentTransformer(config.transformer)
        self.decoder_transformer = LatentTransformer(config.transformer)
        self.quantizer = SplitResidualVectorQuantizer(config.quantizer, dim)
        self.downsample = ConvDownsample1d(stride, dim)
        self.upsample = ConvTrUpsample1d(stride, dim)

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Lay the weights out for inference where they are (call after ``.to(device)``):
        the codebooks folded into their search tables
        (:meth:`SplitResidualVectorQuantizer.fold_for_inference`) and, on the CPU, the
        decoder's transposed convolutions weight-major
        (:meth:`StreamingConvTranspose1d.fold_for_inference`). Codes are unchanged and the
        audio equal to float rounding; the quantizer cannot train after this."""
        self.quantizer.fold_for_inference()
        if next(self.parameters()).device.type == "cpu":
            for module in self.modules():
                if isinstance(module, StreamingConvTranspose1d):
                    module.fold_for_inference()

    @torch.no_grad()
    def set_inference_dtype(
        self, encoder: torch.dtype = torch.float32, decoder: torch.dtype = torch.float32
    ) -> None:
        """Compute the encoder's half (SEANet, transformer, downsampling) in ``encoder`` and
        the decoder's half in ``decoder``; the quantizer stays float32, so its nearest-
        centroid search does not round. Audio goes in as ``encoder``, comes out as
        ``decoder``. A bfloat16 decoder leaves the codes exact and halves its weights; a
        bfloat16 encoder changes codes (the README gives both measurements)."""
        for dtype in (encoder, decoder):
            if dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise ValueError(f"a codec computes in float32, bfloat16 or float16, not {dtype}")
        for module in (self.encoder, self.encoder_transformer, self.downsample):
            module.to(encoder)
        for module in (self.upsample, self.decoder_transformer, self.decoder):
            module.to(decoder)
        self.quantizer.float()

    @property
    def num_levels(self) -> int:
        return self.config.quantizer.n_q

    # -- streaming ---------------------------------------------------------------------

    def init_encoder_state(self, batch_size: int) -> EncoderState:
        steps = self.config.downsample_stride
        return EncoderState(
            self.encoder.init_state(batch_size),
            self.encoder_transformer.init_state(batch_size, steps),
            self.downsample.init_state(batch_size),
        )

    def init_decoder_state(self, batch_size: int) -> DecoderState:
        steps = self.config.downsample_stride
        return DecoderState(
            self.upsample.init_state(batch_size),
            self.decoder_transformer.init_state(batch_size, steps),
            self.decoder.init_state(batch_size),
        )

    def encode_latent_step(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        """``x [B, 1, n * frame_size]`` to the unquantized latent ``[B, C, n]``."""
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[-1] % self.frame_size:
            raise ValueError(
                f"expected audio [B, 1, n * {self.frame_size}], got {tuple(x.shape)}; "
                "buffer the input to whole frames first"
            )
        emb = _in_tiles(self.encoder, x, state.seanet, _tile_frames(x) * self.frame_size)
        emb = self.encoder_transformer(emb, state.transformer)
        return self.downsample(emb, state.downsample)

    def encode_step(
        self, x: torch.Tensor, state: EncoderState, n_q: int | None = None
    ) -> EncodeResult:
        """Encode the next ``n`` frames ``x [B, 1, n * frame_size]`` of the streams in ``state``.

        Returns codes ``[B, n_q, n]`` and their latent error; ``state`` advances in place.
        """
        latent = self.encode_latent_step(x, state)
        # The quantizer may run in another dtype than the rest (set_inference_dtype); the
        # casts are no-ops when they agree.
        q = self.quantizer.encode(latent.to(param_like(self.quantizer).dtype), n_q)
        return EncodeResult(q.codes, q.latent_error)

    def decode_latent_step(self, latent: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Quantized latent ``[B, C, n]`` to audio ``[B, 1, n * frame_size]``."""
        emb = self.upsample(latent, state.upsample)
        emb = self.decoder_transformer(emb, state.transformer)
        tile = _tile_frames(emb) * self.config.downsample_stride
        # The SEANet decoder runs in its weights' dtype even under autocast (a GPU run
        # trains in bfloat16 autocast): its bfloat16 rounding fills the quiet parts of the
        # output, which the log-mel loss weighs (the packaged model on a training batch:
        # mel loss 0.79 in float32, 1.07 under bfloat16 autocast, 0.80 with this decoder
        # in float32; the encoder or either transformer in float32 changed nothing).
        with torch.autocast(emb.device.type, enabled=False):
            return _in_tiles(
                self.decoder, emb.to(param_like(self.decoder).dtype), state.seanet, tile
            )

    def decode_step(
        self, codes: torch.Tensor, levels: torch.Tensor | None, state: DecoderState
    ) -> torch.Tensor:
        """Decode the next frames ``codes [B, K, n]`` (K in 1..n_q) to ``[B, 1, n * frame]``.

        ``levels [B, n]`` (values ``1..K``), when given, decodes each frame from its first
        ``levels[b, t]`` levels only. ``state`` advances in place.
        """
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_levels:
            raise ValueError(f"expected codes [B, 1..{self.num_levels}, T], got {codes.shape}")
        latent = self.quantizer.decode(codes, levels)
        return self.decode_latent_step(latent.to(param_like(self.upsample).dtype), state)

    # -- offline = streaming from a fresh state -----------------------------------------

    def encode(self, x: torch.Tensor, n_q: int | None = None) -> EncodeResult:
        """Encode ``x [B, 1, N]`` (zero-padded to whole frames) to ``[B, n_q, ceil(N / frame)]``."""
        if x.device.type == "cpu":
            kernels.keep_freed_memory()
        frames = -(-x.shape[-1] // self.frame_size)
        x = F.pad(x, (0, frames * self.frame_size - x.shape[-1]))
        state = self.init_encoder_state(x.shape[0])
        step = OFFLINE_CHUNK_FRAMES * self.frame_size
        parts = [
            self.encode_step(x[..., i : i + step], state, n_q) for i in range(0, x.shape[-1], step)
        ]
        if not parts:
            K = self.num_levels if n_q is None else n_q
            empty = x.new_zeros(x.shape[0], K, 0)
            return EncodeResult(empty.long(), empty)
        return EncodeResult(
            torch.cat([p.codes for p in parts], dim=-1),
            torch.cat([p.latent_error for p in parts], dim=-1),
        )

    def decode(self, codes: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``codes [B, K, T]`` to ``[B, 1, T * frame_size]`` from a fresh state."""
        if codes.device.type == "cpu":
            kernels.keep_freed_memory()
        state = self.init_decoder_state(codes.shape[0])
        n = OFFLINE_CHUNK_FRAMES
        parts = [
            self.decode_step(
                codes[..., i : i + n], None if levels is None else levels[:, i : i + n], state
            )
            for i in range(0, codes.shape[-1], n)
        ]
        if not parts:
            p = next(self.parameters())
            return p.new_zeros(codes.shape[0], 1, 0)
        return torch.cat(parts, dim=-1)

    # -- training ------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        levels: torch.Tensor | int | None = None,
        quantize: bool = True,
    ) -> MimiOutput:
        """Training pass on ``x [B, 1, N]`` (zero-padded to whole frames inside).

        ``levels``: per-frame level counts ``[B, T]`` in ``1..n_q`` (quantizer dropout),
        one count for all frames, or ``None`` for all levels. ``quantize=False`` decodes
        the latent through the quantizer's projections without quantizing it (the same
        bottleneck, so continuous steps train the path quantized steps use); the quantizer
        still runs, so codebooks still learn and the commitment loss is still defined.
        Same function as ``encode``/``decode`` streaming from a fresh state.
        """
        B, _, N = x.shape
        frames = -(-N // self.frame_size)
        padded = F.pad(x, (0, frames * self.frame_size - N))
        latent = self.encode_latent_step(padded, self.init_encoder_state(B))
        if levels is None:
            levels = self.num_levels
        if isinstance(levels, int):
            levels = torch.full((B, frames), levels, dtype=torch.long, device=x.device)
        if levels.shape != (B, frames):
            raise ValueError(f"levels must be [B, T] = {(B, frames)}, got {tuple(levels.shape)}")
        if bool(((levels < 1) | (levels > self.num_levels)).any()):
            raise ValueError(f"levels must be in 1..{self.num_levels}")
        q = self.quantizer(latent, levels)
        decoded = q.quantized if quantize else q.continuous
        audio = self.decode_latent_step(decoded, self.init_decoder_state(B))
        return MimiOutput(audio[..., :N], q.codes, q.commitment_loss, q.perplexity, latent)
