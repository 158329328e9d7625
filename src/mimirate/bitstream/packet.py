"""Real-time messages: audio packets and the control messages of a session (docs/format.md).

Every message starts with one byte: the format version (top 2 bits, 1) and the
:class:`MessageType` (low 6 bits). Integers are big-endian. A message travels alone in one
datagram, so its length is known and the last field runs to its end.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Union

import numpy as np

from mimirate.bitstream.bitpack import pack_codes, packed_size, unpack_codes
from mimirate.errors import FormatError

if TYPE_CHECKING:
    from mimirate.bitstream.entropy import EntropyTable

PACKET_VERSION = 1
MAX_PACKET_FRAMES = 255
MAX_LEVELS = 64


class MessageType(IntEnum):
    """The low 6 bits of a message's first byte."""

    AUDIO = 1  # Packet: codes for 1..255 frames, sender -> receiver
    FEEDBACK = 2  # FeedbackReport: receiver -> sender, a few times a second
    LEVEL_CAP = 3  # LevelCapRequest: receiver -> sender, "send at most this much"
    HELLO = 4  # Hello: either side, opens a session, names the model
    BYE = 5  # Bye: either side, closes it


AUDIO_FLAG_ENTROPY = 0x01
AUDIO_FLAG_REDUNDANCY = 0x02
AUDIO_FLAG_UNIFORM = 0x04
_AUDIO_KNOWN = AUDIO_FLAG_ENTROPY | AUDIO_FLAG_REDUNDANCY | AUDIO_FLAG_UNIFORM

_AUDIO = struct.Struct(">BBHIB")  # type byte, flags, seq, timestamp, frames
_REDUNDANCY = struct.Struct(">BBB")  # distance, frames, levels
_PRIMARY_LEN = struct.Struct(">H")


def _type_byte(t: MessageType) -> int:
    return (PACKET_VERSION << 6) | int(t)


def message_type(data: bytes) -> MessageType:
    """The type of the message in ``data`` (FormatError if empty, unknown or another version)."""
    if len(data) < 1:
        raise FormatError("empty message")
    version, t = data[0] >> 6, data[0] & 0x3F
    if version != PACKET_VERSION:
        raise FormatError(
            f"message version {version} is not supported (this side speaks {PACKET_VERSION})"
        )
    try:
        return MessageType(t)
    except ValueError:
        known = ", ".join(f"{m.value} ({m.name})" for m in MessageType)
        raise FormatError(f"unknown message type {t}; known: {known}") from None


def _expect(data: bytes, t: MessageType, size: int) -> None:
    got = message_type(data)
    if got != t:
        raise FormatError(f"expected a {t.name} message, got {got.name}")
    if len(data) < size:
        raise FormatError(f"{t.name} message needs at least {size} bytes, got {len(data)}")


def _check_codes(codes: np.ndarray, bits: int, what: str) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 2 or c.dtype.kind not in "iu":
        raise FormatError(f"{what} must be a [K, F] integer array, got {c.shape} {c.dtype}")
    if c.size and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise FormatError(f"{what} must be in 0..{(1 << bits) - 1}")
    return c.astype(np.uint16, copy=False)


def _coarse_first(codes: np.ndarray, levels: np.ndarray) -> np.ndarray:
    mask = np.arange(1, codes.shape[0] + 1)[:, None] <= levels[None, :]
    return codes[mask]


def _scatter(flat: np.ndarray, levels: np.ndarray) -> np.ndarray:
    k = int(levels.max())
    out = np.zeros((k, levels.size), dtype=np.uint16)
    out[np.arange(1, k + 1)[:, None] <= levels[None, :]] = flat
    return out


@dataclass(frozen=True, eq=False)
class Redundancy:
    """Copies of the first levels of earlier frames, sent again for loss protection.

    Attributes:
        distance: frames between the first redundant frame and the packet's first frame
            (the redundant frames are ``timestamp - distance ...``), 1..255.
        codes: ``[L, R]`` uint16: levels 1..L of ``R`` consecutive frames, ``R <= distance``.
    """

    distance: int
    codes: np.ndarray

    @property
    def first_frame_offset(self) -> int:
        return -self.distance


@dataclass(frozen=True, eq=False)
class Packet:
    """An AUDIO message: the codes of 1..255 consecutive frames.

    Attributes:
        seq: sequence number, 0..65535, +1 per packet (wraps).
        timestamp: index of the first frame in the stream, in frames (mod 2**32).
        levels: ``[F]`` level counts per frame, each in ``1..64``.
        codes: ``[K, F]`` uint16 with ``K >= max(levels)``; codes above a frame's level
            count are not sent (they parse back as 0, and ``K`` as ``max(levels)``).
        redundancy: optional copies of earlier frames' first levels.
        entropy: the table to entropy code the codes with (None: plain, 11-bit packed).
        bits: bits per code (a session parameter, from HELLO; not in the packet).
    """

    seq: int
    timestamp: int
    levels: np.ndarray
    codes: np.ndarray
    redundancy: Redundancy | None = None
    entropy: EntropyTable | None = field(default=None, repr=False)
    bits: int = 11

    type: ClassVar[MessageType] = MessageType.AUDIO

    def __post_init__(self) -> None:
        if not 0 <= self.seq < 1 << 16:
            raise FormatError(f"sequence number {self.seq} is outside 0..65535")
        if not 0 <= self.timestamp < 1 << 32:
            raise FormatError(f"timestamp {self.timestamp} is outside 0..2**32-1")
        lv = np.asarray(self.levels)
        if lv.ndim != 1 or not 1 <= lv.size <= MAX_PACKET_FRAMES or lv.dtype.kind not in "iu":
            raise FormatError(f"levels must be [F] integers with 1 <= F <= {MAX_PACKET_FRAMES}")
        if int(lv.min()) < 1 or int(lv.max()) > MAX_LEVELS:
            raise FormatError(f"per-frame levels must be in 1..{MAX_LEVELS}")
        object.__setattr__(self, "levels", lv.astype(np.uint8))
        codes = _check_codes(self.codes, self.bits, "codes")
        if codes.shape[1] != lv.size or codes.shape[0] < int(lv.max()):
            raise FormatError(
                f"codes {codes.shape} do not cover {lv.size} frames of up to {int(lv.max())} levels"
            )
        object.__setattr__(self, "codes", codes)
        if self.redundancy is not None:
            r = self.redundancy
            rc = _check_codes(r.codes, self.bits, "redundant codes")
            if not 1 <= r.distance <= 255 or not 1 <= rc.shape[1] <= r.distance:
                raise FormatError("redundancy needs 1 <= frames <= distance <= 255")
            if not 1 <= rc.shape[0] <= MAX_LEVELS:
                raise FormatError(f"redundant levels must be in 1..{MAX_LEVELS}")
            object.__setattr__(self, "redundancy", Redundancy(r.distance, rc))

    @property
    def num_frames(self) -> int:
        return int(self.levels.size)

    def __bytes__(self) -> bytes:
        uniform = bool((self.levels == self.levels[0]).all())
        flags = (
            (AUDIO_FLAG_ENTROPY if self.entropy is not None else 0)
            | (AUDIO_FLAG_REDUNDANCY if self.redundancy is not None else 0)
            | (AUDIO_FLAG_UNIFORM if uniform else 0)
        )
        out = bytearray(
            _AUDIO.pack(_type_byte(self.type), flags, self.seq, self.timestamp, self.num_frames)
        )
        out += bytes([self.levels[0]]) if uniform else self.levels.tobytes()
        r = self.redundancy
        if r is not None:
            out += _REDUNDANCY.pack(r.distance, r.codes.shape[1], r.codes.shape[0])
        if self.entropy is None:
            flat = _coarse_first(self.codes, self.levels)
            if r is not None:
                flat = np.concatenate([flat, r.codes.reshape(-1)])
            out += pack_codes(flat, self.bits)
        else:
            primary = self.entropy.encode(self.codes, self.levels)
            if r is not None:
                if len(primary) >= 1 << 16:
                    raise FormatError("entropy-coded packet too large for redundancy")
                out += _PRIMARY_LEN.pack(len(primary)) + primary
                out += self.entropy.encode(r.codes, None)
            else:
                out += primary
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes, *, bits: int = 11, table: EntropyTable | None = None) -> Packet:
        """Parse an AUDIO message (``table`` is required if it is entropy coded)."""
        data = bytes(data)
        _expect(data, MessageType.AUDIO, _AUDIO.size + 1)
        _, flags, seq, ts, n = _AUDIO.unpack_from(data)
        if flags & ~_AUDIO_KNOWN:
            raise FormatError(f"unknown AUDIO flags 0x{flags:02x}")
        if n == 0:
            raise FormatError("an AUDIO packet must carry at least one frame")
        pos = _AUDIO.size
        if flags & AUDIO_FLAG_UNIFORM:
            levels = np.full(n, data[pos], dtype=np.uint8)
            pos += 1
        else:
            if len(data) < pos + n:
                raise FormatError(f"AUDIO packet ends inside its {n} level counts")
            levels = np.frombuffer(data, dtype=np.uint8, count=n, offset=pos).copy()
            pos += n
        if int(levels.min()) < 1 or int(levels.max()) > MAX_LEVELS:
            raise FormatError(f"a frame's level count is outside 1..{MAX_LEVELS}")
        red_shape = None
        distance = 0
        if flags & AUDIO_FLAG_REDUNDANCY:
            if len(data) < pos + _REDUNDANCY.size:
                raise FormatError("AUDIO packet ends inside its redundancy header")
            distance, rf, rl = _REDUNDANCY.unpack_from(data, pos)
            pos += _REDUNDANCY.size
            if not 1 <= rf <= distance or not 1 <= rl <= MAX_LEVELS:
                raise FormatError("redundancy header needs 1 <= frames <= distance, levels 1..64")
            red_shape = (rl, rf)
        body = data[pos:]
        total = int(levels.astype(np.int64).sum())
        red_codes = None
        if flags & AUDIO_FLAG_ENTROPY:
            if table is None:
                raise FormatError("the packet is entropy coded: the receiver needs the table")
            if red_shape is not None:
                if len(body) < _PRIMARY_LEN.size:
                    raise FormatError("AUDIO packet ends inside its entropy stream length")
                (plen,) = _PRIMARY_LEN.unpack_from(body)
                primary = body[_PRIMARY_LEN.size : _PRIMARY_LEN.size + plen]
                if len(primary) != plen:
                    raise FormatError("AUDIO packet ends inside its entropy stream")
                codes = table.decode(primary, levels, int(levels.max()))
                red_codes = table.decode(
                    body[_PRIMARY_LEN.size + plen :], None, red_shape[0], red_shape[1]
                )
            else:
                codes = table.decode(body, levels, int(levels.max()))
        else:
            count = total + (0 if red_shape is None else red_shape[0] * red_shape[1])
            need = packed_size(count, bits)
            if len(body) != need:
                raise FormatError(
                    f"AUDIO payload is {len(body)} bytes; {count} codes of {bits} bits need {need}"
                )
            flat = unpack_codes(body, count, bits)
            codes = _scatter(flat[:total], levels)
            if red_shape is not None:
                red_codes = flat[total:].reshape(red_shape)
        red = None if red_codes is None else Redundancy(distance, red_codes)
        return cls(seq, ts, levels, codes, red, table if flags & AUDIO_FLAG_ENTROPY else None, bits)


_FEEDBACK = struct.Struct(">BBHIHII B".replace(" ", ""))
_ARRIVAL = struct.Struct(">HI")


@dataclass(frozen=True)
class FeedbackReport:
    """A FEEDBACK message: what the receiver saw since its previous report.

    Attributes:
        highest_seq: highest sequence number received (mod 2**16).
        cumulative_lost: packets lost since the session began (0..2**32-1).
        loss_fraction: lost / expected since the previous report, in 1/65535 units.
        receive_rate_bps: bit/s the receiver measured over the report interval
            (AUDIO payload bytes, without IP/UDP/RTP headers).
        jitter_us: interarrival jitter in microseconds (RFC 3550 estimator).
        arrivals: up to 255 ``(seq, arrival_us)`` pairs, the packets received since the
            previous report, with arrival times on the receiver's clock in microseconds
            mod 2**32 (senders use the differences only: delay-gradient estimation).
    """

    highest_seq: int
    cumulative_lost: int
    loss_fraction: int
    receive_rate_bps: int
    jitter_us: int
    arrivals: tuple[tuple[int, int], ...] = ()

    type: ClassVar[MessageType] = MessageType.FEEDBACK

    def __post_init__(self) -> None:
        limits = {
            "highest_seq": 1 << 16,
            "cumulative_lost": 1 << 32,
            "loss_fraction": 1 << 16,
            "receive_rate_bps": 1 << 32,
            "jitter_us": 1 << 32,
        }
        for name, hi in limits.items():
            if not 0 <= getattr(self, name) < hi:
                raise FormatError(f"{name} = {getattr(self, name)} is outside 0..{hi - 1}")
        if len(self.arrivals) > 255:
            raise FormatError("a report carries at most 255 arrival times")
        for seq, t in self.arrivals:
            if not (0 <= seq < 1 << 16 and 0 <= t < 1 << 32):
                raise FormatError(f"arrival ({seq}, {t}) is out of range")
        object.__setattr__(self, "arrivals", tuple((int(s), int(t)) for s, t in self.arrivals))

    def __bytes__(self) -> bytes:
        head = _FEEDBACK.pack(
            _type_byte(self.type),
            0,
            self.highest_seq,
            self.cumulative_lost,
            self.loss_fraction,
            self.receive_rate_bps,
            self.jitter_us,
            len(self.arrivals),
        )
        return head + b"".join(_ARRIVAL.pack(s, t) for s, t in self.arrivals)

    @classmethod
    def parse(cls, data: bytes) -> FeedbackReport:
        data = bytes(data)
        _expect(data, MessageType.FEEDBACK, _FEEDBACK.size)
        _, flags, hs, lost, frac, rate, jit, n = _FEEDBACK.unpack_from(data)
        if flags:
            raise FormatError(f"unknown FEEDBACK flags 0x{flags:02x}")
        if len(data) != _FEEDBACK.size + n * _ARRIVAL.size:
            raise FormatError(
                f"FEEDBACK with {n} arrivals must be {_FEEDBACK.size + n * _ARRIVAL.size} "
                f"bytes, got {len(data)}"
            )
        arr = tuple(
            _ARRIVAL.unpack_from(data, _FEEDBACK.size + i * _ARRIVAL.size) for i in range(n)
        )
        return cls(hs, lost, frac, rate, jit, arr)


_LEVEL_CAP = struct.Struct(">BBI")


@dataclass(frozen=True)
class LevelCapRequest:
    """A LEVEL_CAP message: the receiver asks for at most ``max_levels`` levels a frame
    and (when ``max_bps`` is not 0) at most ``max_bps`` bit/s on the wire."""

    max_levels: int
    max_bps: int = 0

    type: ClassVar[MessageType] = MessageType.LEVEL_CAP

    def __post_init__(self) -> None:
        if not 1 <= self.max_levels <= MAX_LEVELS:
            raise FormatError(f"max_levels must be in 1..{MAX_LEVELS}, got {self.max_levels}")
        if not 0 <= self.max_bps < 1 << 32:
            raise FormatError(f"max_bps {self.max_bps} is outside 0..2**32-1")

    def __bytes__(self) -> bytes:
        return _LEVEL_CAP.pack(_type_byte(self.type), self.max_levels, self.max_bps)

    @classmethod
    def parse(cls, data: bytes) -> LevelCapRequest:
        data = bytes(data)
        _expect(data, MessageType.LEVEL_CAP, _LEVEL_CAP.size)
        if len(data) != _LEVEL_CAP.size:
            raise FormatError(f"LEVEL_CAP must be {_LEVEL_CAP.size} bytes, got {len(data)}")
        _, k, bps = _LEVEL_CAP.unpack(data)
        return cls(k, bps)


_HELLO_HEAD = struct.Struct(">BBB")  # type byte, flags, name length
_HELLO_TAIL = struct.Struct(">8s8sIIBBI")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
HELLO_FLAG_ENTROPY = 0x01


@dataclass(frozen=True)
class Hello:
    """A HELLO message: opens a session and says how to decode it.

    Attributes:
        session_id: chosen by the sender, echoed in BYE.
        model, weights_hash: the codec (as in a ``.mimi`` header).
        entropy_table_id: 8 bytes naming the entropy table AUDIO packets may use, or
            all zeros for none.
        sample_rate, frame_rate, bits_per_code, num_levels: of the codec.
    """

    session_id: int
    model: str
    weights_hash: bytes
    sample_rate: int = 24_000
    frame_rate: float = 12.5
    bits_per_code: int = 11
    num_levels: int = 32
    entropy_table_id: bytes = bytes(8)

    type: ClassVar[MessageType] = MessageType.HELLO

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.model):
            raise FormatError(f"model name {self.model!r} must be 1-32 of A-Z a-z 0-9 . _ -")
        if len(self.weights_hash) != 8 or len(self.entropy_table_id) != 8:
            raise FormatError("weights_hash and entropy_table_id must be 8 bytes each")
        mhz = self.frame_rate * 1000
        if mhz != round(mhz) or not 1 <= mhz < 1 << 32 or not 1 <= self.sample_rate < 1 << 32:
            raise FormatError("sample and frame rates must be positive (frame rate in mHz steps)")
        if not 1 <= self.bits_per_code <= 16 or not 1 <= self.num_levels <= MAX_LEVELS:
            raise FormatError("bits_per_code must be in 1..16 and num_levels in 1..64")
        if not 0 <= self.session_id < 1 << 32:
            raise FormatError("session_id must be in 0..2**32-1")

    def __bytes__(self) -> bytes:
        name = self.model.encode("ascii")
        flags = HELLO_FLAG_ENTROPY if self.entropy_table_id != bytes(8) else 0
        return (
            _HELLO_HEAD.pack(_type_byte(self.type), flags, len(name))
            + name
            + _HELLO_TAIL.pack(
                self.weights_hash,
                self.entropy_table_id,
                self.sample_rate,
                round(self.frame_rate * 1000),
                self.bits_per_code,
                self.num_levels,
                self.session_id,
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> Hello:
        data = bytes(data)
        _expect(data, MessageType.HELLO, _HELLO_HEAD.size)
        _, flags, n = _HELLO_HEAD.unpack_from(data)
        if len(data) != _HELLO_HEAD.size + n + _HELLO_TAIL.size:
            raise FormatError(
                f"HELLO with a {n}-byte model name must be "
                f"{_HELLO_HEAD.size + n + _HELLO_TAIL.size} bytes, got {len(data)}"
            )
        try:
            name = data[_HELLO_HEAD.size : _HELLO_HEAD.size + n].decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("HELLO model name is not ASCII") from None
        wh, tid, rate, mhz, bits, k, sid = _HELLO_TAIL.unpack_from(data, _HELLO_HEAD.size + n)
        if flags != (HELLO_FLAG_ENTROPY if tid != bytes(8) else 0):
            raise FormatError(f"HELLO flags 0x{flags:02x} disagree with its entropy table id")
        if mhz == 0:
            raise FormatError("HELLO frame rate is 0")
        return cls(sid, name, wh, rate, mhz / 1000, bits, k, tid)


_BYE = struct.Struct(">BBI")


class ByeReason(IntEnum):
    NORMAL = 0
    ERROR = 1
    TIMEOUT = 2


@dataclass(frozen=True)
class Bye:
    """A BYE message: the session ``session_id`` ends."""

    session_id: int
    reason: ByeReason = ByeReason.NORMAL

    type: ClassVar[MessageType] = MessageType.BYE

    def __post_init__(self) -> None:
        if not 0 <= self.session_id < 1 << 32:
            raise FormatError("session_id must be in 0..2**32-1")
        object.__setattr__(self, "reason", ByeReason(self.reason))

    def __bytes__(self) -> bytes:
        return _BYE.pack(_type_byte(self.type), int(self.reason), self.session_id)

    @classmethod
    def parse(cls, data: bytes) -> Bye:
        data = bytes(data)
        _expect(data, MessageType.BYE, _BYE.size)
        if len(data) != _BYE.size:
            raise FormatError(f"BYE must be {_BYE.size} bytes, got {len(data)}")
        _, reason, sid = _BYE.unpack(data)
        try:
            return cls(sid, ByeReason(reason))
        except ValueError:
            raise FormatError(f"unknown BYE reason {reason}") from None


Message = Union[Packet, FeedbackReport, LevelCapRequest, Hello, Bye]  # noqa: UP007


def parse_message(data: bytes, *, bits: int = 11, table: EntropyTable | None = None) -> Message:
    """Parse any message, dispatching on its type byte."""
    t = message_type(data)
    if t == MessageType.AUDIO:
        return Packet.parse(data, bits=bits, table=table)
    parser = {
        MessageType.FEEDBACK: FeedbackReport,
        MessageType.LEVEL_CAP: LevelCapRequest,
        MessageType.HELLO: Hello,
        MessageType.BYE: Bye,
    }[t]
    return parser.parse(data)
