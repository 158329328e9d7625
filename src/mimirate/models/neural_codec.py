""":class:`MimiCodec`: the :class:`~mimirate.codec.Codec` interface over a :class:`MimiModel`.

NumPy in, NumPy out; leading batch dimensions are kept. Offline calls are streaming
from a fresh state; the stream objects keep their own state, so any number of them
can share one model.
"""

from __future__ import annotations

import numpy as np
import torch

from mimirate.codec import Encoded
from mimirate.config import MimiConfig
from mimirate.errors import AudioError, FormatError
from mimirate.models.mimi import DecoderState, EncoderState, MimiModel


def _as_audio(audio: object) -> np.ndarray:
    a = np.asarray(audio)
    if a.dtype.kind != "f":
        raise AudioError(f"audio must be floating point samples, got dtype {a.dtype}")
    if a.ndim < 1:
        raise AudioError("audio must have at least one dimension [..., N]")
    if not np.isfinite(a).all():
        raise AudioError("audio contains NaN or infinite samples; clean the input first")
    return a.astype(np.float32, copy=False)


class MimiCodec:
    """A :class:`MimiModel` behind the :class:`~mimirate.codec.Codec` protocol."""

    def __init__(
        self, model: MimiModel, config: MimiConfig, weights_hash: bytes, device: str = "cpu"
    ) -> None:
        if len(weights_hash) != 8:
            raise ValueError("weights_hash must be 8 bytes")
        self.model = model.to(device).eval()
        self.config = config
        self.device = torch.device(device)
        self.name = config.name
        self.sample_rate = config.sample_rate
        self.frame_rate = config.frame_rate
        self.frame_size = config.frame_size
        self.cardinality = config.quantizer.bins
        self.num_levels = config.quantizer.n_q
        self.bits_per_code = config.quantizer.bits_per_code
        self.weights_hash = bytes(weights_hash)

    # -- validation shared with the streams -------------------------------------------

    def _levels_arg(self, levels: int | None) -> int:
        if levels is None:
            return self.num_levels
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
            raise FormatError(f"levels must be an int in 1..{self.num_levels}, got {levels!r}")
        if not 1 <= int(levels) <= self.num_levels:
            raise FormatError(f"levels must be in 1..{self.num_levels}, got {levels}")
        return int(levels)

    def _check_codes(
        self, codes: object, levels: object | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        c = np.asarray(codes)
        if c.dtype.kind not in "iu":
            raise FormatError(f"codes must be integers, got dtype {c.dtype}")
        if c.ndim < 2:
            raise FormatError(f"codes must be [..., K, T], got shape {c.shape}")
        K = c.shape[-2]
        if not 1 <= K <= self.num_levels:
            raise FormatError(f"codes have {K} levels; expected 1..{self.num_levels}")
        if c.size and (c.min() < 0 or c.max() >= self.cardinality):
            raise FormatError(f"codes must be in 0..{self.cardinality - 1}")
        if levels is None:
            return c, None
        lv = np.asarray(levels)
        if lv.dtype.kind not in "iu":
            raise FormatError(f"levels must be integers, got dtype {lv.dtype}")
        expected = c.shape[:-2] + c.shape[-1:]
        if lv.shape != expected:
            raise FormatError(f"levels must have shape {expected} ([..., T]), got {lv.shape}")
        if lv.size and (lv.min() < 1 or lv.max() > K):
            raise FormatError(f"levels must be in 1..{K} (the levels the codes have)")
        return c, lv

    # -- tensor plumbing ---------------------------------------------------------------

    def _encode_frames(self, frames: np.ndarray, n_q: int, state: EncoderState) -> Encoded:
        """``frames [B, n * frame_size]`` -> torch step -> NumPy ``[B, K, n]``."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        with torch.inference_mode():
            r = self.model.encode_step(x[:, None, :], state, n_q)
        codes = r.codes.to(torch.int32).cpu().numpy().astype(np.uint16)
        return Encoded(codes, r.latent_error.float().cpu().numpy(), frames.shape[-1])

    def _decode_frames(
        self, codes: np.ndarray, levels: np.ndarray | None, state: DecoderState
    ) -> np.ndarray:
        """``codes [B, K, T]`` -> audio ``[B, T * frame_size]``."""
        c = torch.from_numpy(codes.astype(np.int64)).to(self.device)
        lv = None if levels is None else torch.from_numpy(levels.astype(np.int64)).to(self.device)
        with torch.inference_mode():
            audio = self.model.decode_step(c, lv, state)
        return audio[:, 0].float().cpu().numpy()

    # -- Codec protocol -------------------------------------------------------------------

    def encode(self, audio: np.ndarray, levels: int | None = None) -> Encoded:
        """Encode ``[..., N]`` float audio to ``codes [..., levels, ceil(N / frame_size)]``."""
        a = _as_audio(audio)
        n_q = self._levels_arg(levels)
        lead, N = a.shape[:-1], a.shape[-1]
        T = -(-N // self.frame_size)
        B = int(np.prod(lead))
        if T == 0 or B == 0:
            shape = (*lead, n_q, T)
            return Encoded(np.zeros(shape, np.uint16), np.zeros(shape, np.float32), N)
        padded = np.zeros((B, T * self.frame_size), np.float32)
        padded[:, :N] = a.reshape(B, N)
        with torch.inference_mode():
            x = torch.from_numpy(padded).to(self.device)[:, None, :]
            r = self.model.encode(x, n_q)
        codes = r.codes.to(torch.int32).cpu().numpy().astype(np.uint16)
        err = r.latent_error.float().cpu().numpy()
        return Encoded(codes.reshape(*lead, n_q, T), err.reshape(*lead, n_q, T), N)

    def decode(self, codes: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        """Decode ``[..., K, T]`` codes to ``[..., T * frame_size]`` float32 audio."""
        c, lv = self._check_codes(codes, levels)
        lead, (K, T) = c.shape[:-2], c.shape[-2:]
        B = int(np.prod(lead))
        if T == 0 or B == 0:
            return np.zeros((*lead, T * self.frame_size), np.float32)
        with torch.inference_mode():
            ct = torch.from_numpy(c.reshape(B, K, T).astype(np.int64)).to(self.device)
            lt = None if lv is None else torch.from_numpy(lv.reshape(B, T).astype(np.int64))
            audio = self.model.decode(ct, None if lt is None else lt.to(self.device))
        return audio[:, 0].float().cpu().numpy().reshape(*lead, T * self.frame_size)

    def stream_encoder(self) -> MimiStreamEncoder:
        return MimiStreamEncoder(self)

    def stream_decoder(self) -> MimiStreamDecoder:
        return MimiStreamDecoder(self)


class MimiStreamEncoder:
    """Buffers any number of samples and encodes whole frames as they complete.

    The batch shape (leading dimensions) is fixed by the first push.
    """

    def __init__(self, codec: MimiCodec, levels: int | None = None) -> None:
        self.codec = codec
        self.levels = codec._levels_arg(levels)
        self._lead: tuple[int, ...] | None = None
        self._buffer = np.zeros((0, 0), np.float32)
        self._state: EncoderState | None = None

    def _empty(self, num_samples: int) -> Encoded:
        shape = (*(self._lead or ()), self.levels, 0)
        return Encoded(np.zeros(shape, np.uint16), np.zeros(shape, np.float32), num_samples)

    def _reshape(self, enc: Encoded) -> Encoded:
        lead = self._lead or ()
        K, T = enc.codes.shape[-2:]
        return Encoded(
            enc.codes.reshape(*lead, K, T),
            enc.latent_error.reshape(*lead, K, T),
            enc.num_samples,
        )

    def push(self, audio: np.ndarray) -> Encoded:
        """Feed ``[..., n]`` samples; return the frames completed (maybe none)."""
        a = _as_audio(audio)
        lead = a.shape[:-1]
        if self._lead is None:
            self._lead = lead
            self._buffer = np.zeros((int(np.prod(lead)), 0), np.float32)
            self._state = self.codec.model.init_encoder_state(self._buffer.shape[0])
        elif lead != self._lead:
            raise AudioError(f"this stream has batch shape {self._lead}, got {lead}")
        self._buffer = np.concatenate(
            [self._buffer, a.reshape(self._buffer.shape[0], a.shape[-1])], axis=-1
        )
        fs = self.codec.frame_size
        whole = self._buffer.shape[-1] // fs * fs
        if whole == 0 or self._buffer.shape[0] == 0:
            return self._empty(0)
        frames, self._buffer = self._buffer[:, :whole], self._buffer[:, whole:]
        assert self._state is not None
        return self._reshape(self.codec._encode_frames(frames, self.levels, self._state))

    def flush(self) -> Encoded:
        """Zero-pad the buffered remainder to one frame and encode it (no frame if none)."""
        if self._lead is None or self._buffer.shape[-1] == 0 or self._buffer.shape[0] == 0:
            return self._empty(0)
        rest = self._buffer.shape[-1]
        frame = np.zeros((self._buffer.shape[0], self.codec.frame_size), np.float32)
        frame[:, :rest] = self._buffer
        self._buffer = self._buffer[:, :0]
        assert self._state is not None
        enc = self.codec._encode_frames(frame, self.levels, self._state)
        return self._reshape(Encoded(enc.codes, enc.latent_error, rest))


class MimiStreamDecoder:
    """Decodes frames as they arrive, keeping the decoder state between pushes."""

    def __init__(self, codec: MimiCodec) -> None:
        self.codec = codec
        self._lead: tuple[int, ...] | None = None
        self._state: DecoderState | None = None

    def push(self, codes: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        """Decode ``[..., K, T]`` codes (``levels [..., T]`` optional) to ``[..., T * frame]``."""
        c, lv = self.codec._check_codes(codes, levels)
        lead, (K, T) = c.shape[:-2], c.shape[-2:]
        if self._lead is None:
            self._lead = lead
            self._state = self.codec.model.init_decoder_state(int(np.prod(lead)))
        elif lead != self._lead:
            raise FormatError(f"this stream has batch shape {self._lead}, got {lead}")
        B = int(np.prod(lead))
        if T == 0 or B == 0:
            return np.zeros((*lead, 0), np.float32)
        assert self._state is not None
        audio = self.codec._decode_frames(
            c.reshape(B, K, T), None if lv is None else lv.reshape(B, T), self._state
        )
        return audio.reshape(*lead, T * self.codec.frame_size)
