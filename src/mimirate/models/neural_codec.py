""":class:`MimiCodec`: the :class:`~mimirate.codec.Codec` interface over a :class:`MimiModel`.

NumPy in, NumPy out; leading batch dimensions are kept. Offline calls are streaming
from a fresh state; the stream objects keep their own state, so any number of them
can share one model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mimirate.codec import Encoded
from mimirate.config import MimiConfig
from mimirate.errors import AudioError, ConfigError, FormatError
from mimirate.models.mimi import DecoderState, EncoderState, MimiModel
from mimirate.models.streaming import (
    batch_size_of,
    phase_key,
    stack_states,
    state_views,
    unstack_states,
)

#: Stacked states kept for reuse by ``encode_streams``/``decode_streams`` (the groups of
#: streams that stepped together most recently).
STACK_CACHE_GROUPS = 8


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
    """A :class:`MimiModel` behind the :class:`~mimirate.codec.Codec` protocol.

    The codec is for inference: it lays the model out for it (:meth:`MimiModel.
    fold_for_inference`: codebooks folded into their search tables, the same codes, half
    the quantizer's memory and no first-frame table build; on the CPU, transposed convs
    weight-major), after which the model's quantizer cannot train.
    """

    def __init__(
        self,
        model: MimiModel,
        config: MimiConfig,
        weights_hash: bytes,
        device: str = "cpu",
        encoder_dtype: torch.dtype = torch.float32,
        decoder_dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(weights_hash) != 8:
            raise ValueError("weights_hash must be 8 bytes")
        self.model = model.to(device).eval()
        try:
            self.model.set_inference_dtype(encoder_dtype, decoder_dtype)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.encoder_dtype, self.decoder_dtype = encoder_dtype, decoder_dtype
        self.model.fold_for_inference()
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
        self._stacks: OrderedDict[tuple[int, ...], tuple[Any, list[Any]]] = OrderedDict()
        self._stacks_lock = threading.Lock()

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
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, self.encoder_dtype)
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
            x = torch.from_numpy(padded).to(self.device, self.encoder_dtype)[:, None, :]
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

    def encode_streams(
        self, encoders: Sequence[MimiStreamEncoder], audio: Sequence[np.ndarray]
    ) -> list[Encoded]:
        """``[e.push(a) for e, a in zip(encoders, audio)]``, batched across the streams.

        Streams whose pushes complete the same number of frames (and that are past their
        first frame, or all at it) are stacked and run as one model step.
        """
        if len(encoders) != len(audio):
            raise AudioError(f"{len(encoders)} encoders but {len(audio)} audio chunks")
        if len({id(e) for e in encoders}) != len(encoders):
            raise AudioError("each stream encoder may appear once per call")
        out: list[Encoded | None] = [None] * len(encoders)
        groups: dict[tuple[object, ...], list[tuple[int, np.ndarray]]] = {}
        for i, (enc, a) in enumerate(zip(encoders, audio, strict=True)):
            if enc.codec is not self:
                raise AudioError("encode_streams takes stream encoders of this codec only")
            frames = enc._take_frames(a)
            if frames.shape[-1] == 0 or frames.shape[0] == 0:
                out[i] = enc._empty(0)
                continue
            key = (frames.shape[-1], enc.levels, phase_key(enc._state))
            groups.setdefault(key, []).append((i, frames))
        for (_, levels, key), members in groups.items():
            streams = [encoders[i] for i, _ in members]
            stacked = self._group_state(streams, key)
            enc = self._encode_frames(np.concatenate([f for _, f in members]), levels, stacked)
            self._after_group_step(streams, stacked, key)
            row = 0
            for i, frames in members:
                rows = slice(row, row + frames.shape[0])
                row += frames.shape[0]
                part = Encoded(enc.codes[rows], enc.latent_error[rows], frames.shape[-1])
                out[i] = encoders[i]._reshape(part)
        return [e for e in out if e is not None]

    def decode_streams(
        self,
        decoders: Sequence[MimiStreamDecoder],
        codes: Sequence[np.ndarray],
        levels: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray]:
        """``[d.push(c, lv) for d, c, lv in zip(decoders, codes, levels)]``, batched.

        Streams pushing the same number of frames (in the same phase) run as one model
        step; their codes may have different numbers of levels.
        """
        lvs = [None] * len(decoders) if levels is None else list(levels)
        if not len(decoders) == len(codes) == len(lvs):
            raise FormatError(f"{len(decoders)} decoders, {len(codes)} codes, {len(lvs)} levels")
        if len({id(d) for d in decoders}) != len(decoders):
            raise FormatError("each stream decoder may appear once per call")
        out: list[np.ndarray | None] = [None] * len(decoders)
        groups: dict[tuple[object, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i, (dec, c, lv) in enumerate(zip(decoders, codes, lvs, strict=True)):
            if dec.codec is not self:
                raise FormatError("decode_streams takes stream decoders of this codec only")
            c3, lv2 = dec._prepare(c, lv)
            B, K, T = c3.shape
            if T == 0 or B == 0:
                out[i] = np.zeros((*(dec._lead or ()), 0), np.float32)
                continue
            full = np.full((B, T), K, np.int64) if lv2 is None else lv2.astype(np.int64)
            groups.setdefault((T, phase_key(dec._state)), []).append((i, c3, full))
        for (T, key), members in groups.items():
            K = max(c.shape[1] for _, c, _ in members)
            padded = np.zeros((sum(c.shape[0] for _, c, _ in members), K, T), np.int64)
            row = 0
            for _, c, _ in members:
                padded[row : row + c.shape[0], : c.shape[1]] = c
                row += c.shape[0]
            lv_all = np.concatenate([lv for _, _, lv in members])
            streams = [decoders[i] for i, _, _ in members]
            stacked = self._group_state(streams, key)
            audio = self._decode_frames(padded, lv_all, stacked)
            self._after_group_step(streams, stacked, key)
            row = 0
            for i, c, _ in members:
                part = audio[row : row + c.shape[0]]
                row += c.shape[0]
                out[i] = part.reshape(*(decoders[i]._lead or ()), T * self.frame_size)
        return [a for a in out if a is not None]

    def _group_state(
        self, streams: Sequence[MimiStreamEncoder | MimiStreamDecoder], key: tuple[Any, ...]
    ) -> Any:
        """One state that steps ``streams`` (all in phase ``key``) together.

        The streams' own states become row views of it, so when the same streams step
        together again (a server's steady state) it is reused as is: no copies per step.
        """
        states = [s._state for s in streams]
        if len(states) == 1:
            return states[0]
        with self._stacks_lock:
            hit = self._stacks.get(tuple(id(x) for x in states))
        if (
            hit is not None
            and all(a is b for a, b in zip(hit[1], states, strict=True))
            and phase_key(hit[0]) == key
        ):
            return hit[0]
        stacked = stack_states(states)
        views = state_views(stacked, [batch_size_of(x) for x in states])
        for stream, view in zip(streams, views, strict=True):
            stream._state = view
        with self._stacks_lock:
            self._stacks[tuple(id(v) for v in views)] = (stacked, views)
            while len(self._stacks) > STACK_CACHE_GROUPS:
                self._stacks.popitem(last=False)
        return stacked

    def _after_group_step(
        self, streams: Sequence[MimiStreamEncoder | MimiStreamDecoder], stacked: Any, key: Any
    ) -> None:
        # Tensors were updated in place through the views; flags (a stream's first step)
        # live in each view's own objects and are copied when they changed.
        if len(streams) > 1 and phase_key(stacked) != key:
            unstack_states(stacked, [s._state for s in streams])

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
        frames = self._take_frames(audio)
        if frames.shape[-1] == 0 or frames.shape[0] == 0:
            return self._empty(0)
        assert self._state is not None
        return self._reshape(self.codec._encode_frames(frames, self.levels, self._state))

    def _take_frames(self, audio: np.ndarray) -> np.ndarray:
        """Buffer ``audio``; take the whole frames buffered, ``[B, n * frame_size]``."""
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
        frames, self._buffer = self._buffer[:, :whole], self._buffer[:, whole:]
        return frames

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
        c, lv = self._prepare(codes, levels)
        lead = self._lead or ()
        B, _, T = c.shape
        if T == 0 or B == 0:
            return np.zeros((*lead, 0), np.float32)
        assert self._state is not None
        audio = self.codec._decode_frames(c, lv, self._state)
        return audio.reshape(*lead, T * self.codec.frame_size)

    def _prepare(
        self, codes: np.ndarray, levels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Check a push; fix the batch shape on the first. ``codes [B, K, T]``, ``[B, T]``."""
        c, lv = self.codec._check_codes(codes, levels)
        lead, (K, T) = c.shape[:-2], c.shape[-2:]
        if self._lead is None:
            self._lead = lead
            self._state = self.codec.model.init_decoder_state(int(np.prod(lead)))
        elif lead != self._lead:
            raise FormatError(f"this stream has batch shape {self._lead}, got {lead}")
        B = int(np.prod(lead))
        return c.reshape(B, K, T), None if lv is None else lv.reshape(B, T)
