"""The ``.mimi`` file: a header, then chunks of frames in coarse-first order (docs/format.md).

Layout (all integers big-endian)::

    header  | chunk 0 | chunk 1 | ...
    chunk = [level side info] payload crc32

Within a chunk's plain payload, level 1 of every frame comes first, then level 2, ...,
each code at exactly ``bits_per_code`` bits in one continuous MSB-first bit stream (no
padding between levels), so the first ``k`` levels of a chunk are a byte prefix of it:
:func:`truncate_bytes` cuts a file to ``k`` levels with byte slices, and
:func:`read_prefix` decodes whatever levels of a partly downloaded file have arrived.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mimirate.bitstream.bitpack import pack_codes, packed_size, unpack_codes
from mimirate.errors import FormatError

if TYPE_CHECKING:
    from mimirate.bitstream.entropy import EntropyTable

MAGIC = b"MIMI"
VERSION = 1
#: Default frames per chunk: 125 frames = 10 s at 12.5 Hz.
DEFAULT_CHUNK_FRAMES = 125
#: Upper bound on frames per chunk (80 s at 12.5 Hz): bounds what one chunk may allocate.
MAX_CHUNK_FRAMES = 1000
MAX_LEVELS = 64
MAX_MODEL_NAME = 32

FLAG_ENTROPY = 0x01
FLAG_FRAME_LEVELS = 0x02
_KNOWN_FLAGS = FLAG_ENTROPY | FLAG_FRAME_LEVELS

_PREFIX = struct.Struct(">4sBBHB")  # magic, version, flags, header size, model name length
_FIELDS = struct.Struct(">8s8sIIBBHIQ")
_K_OFFSET = struct.calcsize(">8s8sIIB")  # where "levels present" sits within _FIELDS
_CRC = struct.Struct(">I")
_LEN = struct.Struct(">I")
#: Header bytes besides the model name.
HEADER_FIXED_BYTES = _PREFIX.size + _FIELDS.size + _CRC.size
#: Bytes every chunk carries besides its codes and side information (the CRC32).
CHUNK_OVERHEAD_BYTES = _CRC.size
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")

SIDE_PACKED = 0
SIDE_RUNS = 1


class IncompleteError(FormatError):
    """The bytes end before the structure being read does: wait for more of the file."""


def level_width(num_levels: int) -> int:
    """Bits per frame of packed level side information: enough for ``0..num_levels-1``."""
    return max(1, (num_levels - 1).bit_length())


def encode_levels(levels: np.ndarray, num_levels: int) -> bytes:
    """Side information for one chunk's per-frame level counts ``[n]`` (values 1..K).

    Two encodings; the shorter is written (packed on a tie):
    ``0x00`` + ``n`` values ``level - 1`` at :func:`level_width` bits, or
    ``0x01`` + run count (u8) + runs of (level u8, length u8 in 1..255).
    """
    lv = np.asarray(levels, dtype=np.int64)
    w = level_width(num_levels)
    packed = bytes([SIDE_PACKED]) + pack_codes(lv - 1, w)
    change = np.flatnonzero(np.diff(lv)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [lv.size]]))
    runs = []
    for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
        while n > 0:
            take = min(n, 255)
            runs.append((int(lv[s]), take))
            n -= take
    if len(runs) <= 255 and 2 + 2 * len(runs) < len(packed):
        return bytes([SIDE_RUNS, len(runs)]) + bytes(b for run in runs for b in run)
    return packed


def decode_levels(data: bytes | memoryview, n: int, num_levels: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode_levels`: ``(levels [n] uint8, bytes consumed)``.

    Raises FormatError if the bytes are too few or describe impossible levels.
    """
    if len(data) < 1:
        raise IncompleteError("level side information is missing")
    mode = data[0]
    if mode == SIDE_PACKED:
        w = level_width(num_levels)
        size = 1 + packed_size(n, w)
        if len(data) < size:
            raise IncompleteError(f"level side information needs {size} bytes, {len(data)} present")
        lv = unpack_codes(bytes(data[1:size]), n, w).astype(np.int64) + 1
    elif mode == SIDE_RUNS:
        if len(data) < 2:
            raise IncompleteError("level side information is missing its run count")
        count = data[1]
        size = 2 + 2 * count
        if len(data) < size:
            raise IncompleteError(f"level side information needs {size} bytes, {len(data)} present")
        runs = np.frombuffer(bytes(data[2:size]), dtype=np.uint8).reshape(count, 2)
        if count == 0 or int(runs[:, 1].astype(np.int64).sum()) != n or (runs[:, 1] == 0).any():
            raise FormatError(f"level runs do not add up to the chunk's {n} frames")
        lv = np.repeat(runs[:, 0].astype(np.int64), runs[:, 1])
    else:
        raise FormatError(f"unknown level side information mode {mode} (known: 0, 1)")
    if n and (lv.min() < 1 or lv.max() > num_levels):
        raise FormatError(f"a frame's level count is outside 1..{num_levels}")
    return lv.astype(np.uint8), size


def _level_order(codes: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    """Codes of one chunk ``[K, n]`` in coarse-first order, skipping levels a frame lacks."""
    if levels is None:
        return codes.reshape(-1)
    k = codes.shape[0]
    mask = np.arange(1, k + 1)[:, None] <= levels[None, :]
    return codes[mask]  # boolean indexing walks row by row: level 1 first


def _scatter(flat: np.ndarray, k: int, levels: np.ndarray | None, n: int) -> np.ndarray:
    """Inverse of :func:`_level_order` into ``[k, n]`` uint16 (missing codes are 0)."""
    if levels is None:
        return flat.reshape(k, n).astype(np.uint16)
    out = np.zeros((k, n), dtype=np.uint16)
    mask = np.arange(1, k + 1)[:, None] <= levels[None, :]
    out[mask] = flat
    return out


class CodecIdentity(Protocol):
    """What a file header records of the codec that made its codes
    (:class:`mimirate.codec.Codec` has all of it)."""

    @property
    def name(self) -> str: ...
    @property
    def weights_hash(self) -> bytes: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def frame_rate(self) -> float: ...
    @property
    def bits_per_code(self) -> int: ...


@dataclass(frozen=True, eq=False)
class MimiFile:
    """A whole ``.mimi`` file in memory.

    Attributes:
        model: preset name of the model that made the codes (``"small"``).
        weights_hash: 8 bytes identifying its weights.
        sample_rate, frame_rate: of the codec (24000, 12.5).
        bits_per_code: bits each code is stored in (11).
        num_levels: levels present, ``K``.
        num_samples: audio samples the frames cover (the last frame may be padded).
        codes: ``[K, T]`` uint16. With per-frame ``levels``, codes above a frame's level
            count are not stored (they parse back as 0).
        levels: ``[T]`` uint8 per-frame level counts in ``1..K``, or None: every frame has K.
        entropy: whether the payload is entropy coded (needs ``entropy_table``).
        chunk_frames: frames per chunk (the last chunk may hold fewer).
        entropy_table: the probability tables for ``entropy=True``.
    """

    model: str
    weights_hash: bytes
    sample_rate: int
    frame_rate: float
    bits_per_code: int
    num_levels: int
    num_samples: int
    codes: np.ndarray
    levels: np.ndarray | None = None
    entropy: bool = False
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    entropy_table: EntropyTable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not _NAME_RE.match(self.model):
            raise FormatError(
                f"model name {self.model!r} must be 1-32 characters of A-Z a-z 0-9 . _ -"
            )
        if not isinstance(self.weights_hash, bytes) or len(self.weights_hash) != 8:
            raise FormatError("weights_hash must be exactly 8 bytes")
        if not 1 <= self.bits_per_code <= 16:
            raise FormatError(f"bits_per_code must be in 1..16, got {self.bits_per_code}")
        if not 1 <= self.num_levels <= MAX_LEVELS:
            raise FormatError(f"num_levels must be in 1..{MAX_LEVELS}, got {self.num_levels}")
        if not 1 <= self.chunk_frames <= MAX_CHUNK_FRAMES:
            raise FormatError(f"chunk_frames must be in 1..{MAX_CHUNK_FRAMES}")
        if self.sample_rate < 1 or self.sample_rate >= 1 << 32:
            raise FormatError(f"sample rate {self.sample_rate} is out of range")
        mhz = self.frame_rate * 1000
        if mhz != round(mhz) or not 1 <= mhz < 1 << 32:
            raise FormatError(f"frame rate {self.frame_rate} must be a positive multiple of 1 mHz")
        frame = self.sample_rate / self.frame_rate
        if frame != int(frame):
            raise FormatError("sample_rate / frame_rate must be a whole number of samples")
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_levels:
            raise FormatError(f"codes must be [num_levels={self.num_levels}, T], got {codes.shape}")
        if codes.dtype.kind not in "iu":
            raise FormatError(f"codes must be integers, got {codes.dtype}")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << self.bits_per_code):
            raise FormatError(f"codes must be in 0..{(1 << self.bits_per_code) - 1}")
        object.__setattr__(self, "codes", codes.astype(np.uint16, copy=False))
        t = codes.shape[1]
        if t >= 1 << 32:
            raise FormatError("too many frames for one file")
        if self.levels is not None:
            lv = np.asarray(self.levels)
            if lv.shape != (t,) or lv.dtype.kind not in "iu":
                raise FormatError(f"levels must be [T={t}] integers, got {lv.shape} {lv.dtype}")
            if t and (int(lv.min()) < 1 or int(lv.max()) > self.num_levels):
                raise FormatError(f"per-frame levels must be in 1..{self.num_levels}")
            object.__setattr__(self, "levels", lv.astype(np.uint8))
        fs = int(frame)
        if not (max(t - 1, 0) * fs < self.num_samples <= t * fs or (t == 0 == self.num_samples)):
            raise FormatError(
                f"num_samples={self.num_samples} does not match {t} frames of {fs} samples"
            )
        if self.entropy and self.entropy_table is None:
            raise FormatError("an entropy-coded file needs its entropy table (entropy_table=...)")

    # -- derived -------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def duration_s(self) -> float:
        """Seconds the frames cover (``num_frames / frame_rate``)."""
        return self.num_frames / self.frame_rate

    def frame_levels(self) -> np.ndarray:
        """Per-frame level counts ``[T]`` uint8 (filled with K when ``levels`` is None)."""
        if self.levels is None:
            return np.full(self.num_frames, self.num_levels, dtype=np.uint8)
        return self.levels

    @classmethod
    def of_codec(
        cls, codec: CodecIdentity, codes: np.ndarray, num_samples: int, **options: Any
    ) -> MimiFile:
        """The file of ``codes`` ``[K, T]`` made by ``codec`` (``K`` levels), covering
        ``num_samples``; ``options`` are the other fields (``levels``, ``entropy``, ...)."""
        return cls(
            model=codec.name,
            weights_hash=codec.weights_hash,
            sample_rate=codec.sample_rate,
            frame_rate=codec.frame_rate,
            bits_per_code=codec.bits_per_code,
            num_levels=codes.shape[0],
            num_samples=num_samples,
            codes=codes,
            **options,
        )

    @classmethod
    def blank(
        cls,
        *,
        num_levels: int,
        num_frames: int,
        frame_rate: float = 12.5,
        bits: int = 11,
        model: str = "small",
        sample_rate: int = 24_000,
    ) -> MimiFile:
        """A file of all-zero codes: its size is that of any plain file of this shape."""
        fs = int(sample_rate / frame_rate)
        return cls(
            model=model,
            weights_hash=bytes(8),
            sample_rate=sample_rate,
            frame_rate=frame_rate,
            bits_per_code=bits,
            num_levels=num_levels,
            num_samples=num_frames * fs,
            codes=np.zeros((num_levels, num_frames), dtype=np.uint16),
        )

    # -- writing -------------------------------------------------------------------------
    def header_bytes(self) -> bytes:
        """The serialised header, CRC included."""
        name = self.model.encode("ascii")
        flags = (FLAG_ENTROPY if self.entropy else 0) | (
            FLAG_FRAME_LEVELS if self.levels is not None else 0
        )
        size = HEADER_FIXED_BYTES + len(name)
        table_id = self.entropy_table.table_id if self.entropy else bytes(8)
        body = (
            _PREFIX.pack(MAGIC, VERSION, flags, size, len(name))
            + name
            + _FIELDS.pack(
                self.weights_hash,
                table_id,
                self.sample_rate,
                round(self.frame_rate * 1000),
                self.bits_per_code,
                self.num_levels,
                self.chunk_frames,
                self.num_frames,
                self.num_samples,
            )
        )
        return body + _CRC.pack(zlib.crc32(body))

    def chunk_bytes(self, index: int) -> bytes:
        """Chunk ``index`` serialised: side information, payload and CRC."""
        start = index * self.chunk_frames
        stop = min(start + self.chunk_frames, self.num_frames)
        if not 0 <= start < stop:
            raise IndexError(f"chunk {index} out of range")
        codes = self.codes[:, start:stop]
        lv = None if self.levels is None else self.levels[start:stop]
        side = b"" if lv is None else encode_levels(lv, self.num_levels)
        if self.entropy:
            assert self.entropy_table is not None
            coded = self.entropy_table.encode(codes, lv)
            payload = _LEN.pack(len(coded)) + coded
        else:
            payload = pack_codes(_level_order(codes, lv), self.bits_per_code)
        body = side + payload
        return body + _CRC.pack(zlib.crc32(body))

    @property
    def num_chunks(self) -> int:
        return -(-self.num_frames // self.chunk_frames)

    def side_info_bytes(self) -> int:
        """Bytes of per-frame level side information in the file (0 without ``levels``)."""
        if self.levels is None:
            return 0
        c = self.chunk_frames
        return sum(
            len(encode_levels(self.levels[i * c : (i + 1) * c], self.num_levels))
            for i in range(self.num_chunks)
        )

    def to_bytes(self) -> bytes:
        """The whole file (docs/format.md)."""
        return self.header_bytes() + b"".join(self.chunk_bytes(i) for i in range(self.num_chunks))

    # -- transforming --------------------------------------------------------------------
    def truncate(self, k: int) -> MimiFile:
        """The same file with only its first ``k`` levels (per-frame counts capped at ``k``)."""
        if not 1 <= k <= self.num_levels:
            raise FormatError(f"cannot truncate to {k} levels: the file has 1..{self.num_levels}")
        lv = None if self.levels is None else np.minimum(self.levels, k).astype(np.uint8)
        return replace(self, num_levels=k, codes=self.codes[:k].copy(), levels=lv)

    def with_entropy(self, table: EntropyTable | None) -> MimiFile:
        """The same codes, entropy coded with ``table`` (None: plain)."""
        return replace(self, entropy=table is not None, entropy_table=table)

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes, table: EntropyTable | None = None) -> MimiFile:
        """Parse a whole file; FormatError on anything that does not follow the spec.

        ``table`` is needed for entropy-coded files (its id must match the header's).
        """
        part = _read(data, table, whole=True)
        return cls(
            model=part.model,
            weights_hash=part.weights_hash,
            sample_rate=part.sample_rate,
            frame_rate=part.frame_rate,
            bits_per_code=part.bits_per_code,
            num_levels=part.num_levels,
            num_samples=part.num_samples,
            codes=part.codes,
            levels=part.file_levels,
            entropy=part.entropy,
            chunk_frames=part.chunk_frames,
            entropy_table=table if part.entropy else None,
        )


@dataclass(frozen=True, eq=False)
class Header:
    """The parsed header of a ``.mimi`` file (what :func:`parse_header` returns)."""

    model: str
    weights_hash: bytes
    entropy_table_id: bytes
    sample_rate: int
    frame_rate: float
    bits_per_code: int
    num_levels: int
    chunk_frames: int
    num_frames: int
    num_samples: int
    entropy: bool
    frame_levels: bool
    size: int

    @property
    def num_chunks(self) -> int:
        return -(-self.num_frames // self.chunk_frames)

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_frames, self.num_frames - index * self.chunk_frames)


def parse_header(data: bytes) -> Header:
    """Parse and check the header at the start of ``data``.

    Raises IncompleteError (a FormatError) when ``data`` is a valid beginning of a
    header that has not fully arrived, FormatError when it is wrong.
    """
    n = len(data)
    if n >= 4 and data[:4] != MAGIC:
        raise FormatError(f"not a .mimi file: magic is {bytes(data[:4])!r}, expected {MAGIC!r}")
    if n >= 5 and data[4] != VERSION:
        raise FormatError(
            f"unsupported .mimi version {data[4]} (this reader knows version {VERSION}); "
            "upgrade mimirate to read it"
        )
    if n < _PREFIX.size:
        raise IncompleteError(f"only {n} bytes: the header needs at least {_PREFIX.size}")
    _magic, _version, flags, size, name_len = _PREFIX.unpack_from(data)
    if flags & ~_KNOWN_FLAGS:
        raise FormatError(f"unknown header flags 0x{flags:02x} (known: 0x{_KNOWN_FLAGS:02x})")
    if not 1 <= name_len <= MAX_MODEL_NAME:
        raise FormatError(f"model name length {name_len} is outside 1..{MAX_MODEL_NAME}")
    if size != HEADER_FIXED_BYTES + name_len:
        raise FormatError(f"header size {size} does not match a {name_len}-byte model name")
    if n < size:
        raise IncompleteError(f"only {n} of the {size} header bytes are present")
    (crc,) = _CRC.unpack_from(data, size - _CRC.size)
    if zlib.crc32(bytes(data[: size - _CRC.size])) != crc:
        raise FormatError("header CRC mismatch: the file is corrupt")
    name_bytes = bytes(data[_PREFIX.size : _PREFIX.size + name_len])
    try:
        name = name_bytes.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not _NAME_RE.match(name):
        raise FormatError(f"model name {name_bytes!r} is not 1-32 characters of A-Z a-z 0-9 . _ -")
    whash, table_id, rate, mhz, bits, k, chunk, frames, samples = _FIELDS.unpack_from(
        data, _PREFIX.size + name_len
    )
    if not 1 <= bits <= 16:
        raise FormatError(f"bits per code {bits} is outside 1..16")
    if not 1 <= k <= MAX_LEVELS:
        raise FormatError(f"levels present {k} is outside 1..{MAX_LEVELS}")
    if not 1 <= chunk <= MAX_CHUNK_FRAMES:
        raise FormatError(f"frames per chunk {chunk} is outside 1..{MAX_CHUNK_FRAMES}")
    if rate == 0 or mhz == 0 or (rate * 1000) % mhz:
        raise FormatError(f"sample rate {rate} Hz / frame rate {mhz} mHz is not whole samples")
    fs = rate * 1000 // mhz
    if not (max(frames - 1, 0) * fs < samples <= frames * fs or frames == 0 == samples):
        raise FormatError(f"sample count {samples} does not match {frames} frames of {fs}")
    entropy = bool(flags & FLAG_ENTROPY)
    if not entropy and table_id != bytes(8):
        raise FormatError("a plain file must have an all-zero entropy table id")
    return Header(
        model=name,
        weights_hash=whash,
        entropy_table_id=table_id,
        sample_rate=rate,
        frame_rate=mhz / 1000,
        bits_per_code=bits,
        num_levels=k,
        chunk_frames=chunk,
        num_frames=frames,
        num_samples=samples,
        entropy=entropy,
        frame_levels=bool(flags & FLAG_FRAME_LEVELS),
        size=size,
    )


@dataclass(frozen=True, eq=False)
class PartialFile:
    """What a prefix of a ``.mimi`` file holds (:func:`read_prefix`).

    Attributes:
        model, weights_hash, sample_rate, frame_rate, bits_per_code, num_levels,
        chunk_frames, entropy: from the header.
        num_frames, num_samples: of the whole file, as the header declares.
        codes: ``[K, T']`` uint16 for the ``T'`` frames with at least level 1 present;
            codes above a frame's ``levels`` are 0.
        levels: ``[T']`` uint8, levels that fully arrived for each frame.
        file_levels: ``[T']`` uint8 per-frame level counts stored in the file, or None when
            the file stores none (every frame has K).
        complete: the whole file arrived (then ``T' == num_frames`` and levels are final).
        bytes_used: bytes of the prefix that the decoded data came from (header included).
        verified_frames: frames whose chunk CRC was checked (the first ones); the rest
            come from the chunk still arriving.
    """

    model: str
    weights_hash: bytes
    sample_rate: int
    frame_rate: float
    bits_per_code: int
    num_levels: int
    chunk_frames: int
    entropy: bool
    num_frames: int
    num_samples: int
    codes: np.ndarray
    levels: np.ndarray
    file_levels: np.ndarray | None
    complete: bool
    bytes_used: int
    verified_frames: int

    @property
    def frames_arrived(self) -> int:
        return int(self.codes.shape[1])


def read_prefix(data: bytes, table: EntropyTable | None = None) -> PartialFile:
    """Decode every frame of a (possibly partial) ``.mimi`` file at the levels that arrived.

    A plain chunk still arriving gives the levels whose bits are all present; an
    entropy-coded chunk decodes only once complete. Raises IncompleteError while the
    header is incomplete and FormatError for corrupt data (a complete chunk with a wrong
    CRC, impossible fields, bytes after the end).
    """
    return _read(data, table, whole=False)


def _min_chunk_bytes(h: Header, n: int) -> int:
    """The fewest bytes a chunk of ``n`` frames can take (to check sizes before allocating)."""
    side = min(2 + 2, 1 + packed_size(n, level_width(h.num_levels))) if h.frame_levels else 0
    payload = _LEN.size if h.entropy else packed_size(n, h.bits_per_code)
    return side + payload + CHUNK_OVERHEAD_BYTES


def _read(data: bytes, table: EntropyTable | None, *, whole: bool) -> PartialFile:
    view = memoryview(bytes(data))
    h = parse_header(view) if not whole else _whole_header(view)
    if h.entropy:
        if table is None:
            raise FormatError(
                "the file is entropy coded: give the entropy table it names "
                f"(id {h.entropy_table_id.hex()}, model {h.model!r})"
            )
        if table.table_id != h.entropy_table_id:
            raise FormatError(
                f"the file needs entropy table {h.entropy_table_id.hex()}, "
                f"got {table.table_id.hex()}"
            )
    # Sizes declared in the header must fit in the bytes present before anything is
    # allocated for them (a prefix may of course hold fewer chunks).
    full = -(-h.num_frames // h.chunk_frames) if h.num_frames else 0
    if whole:
        last = h.num_frames - (full - 1) * h.chunk_frames if full else 0
        need = h.size + (full - 1) * _min_chunk_bytes(h, h.chunk_frames) if full else h.size
        need += _min_chunk_bytes(h, last) if full else 0
        if len(view) < need:
            raise FormatError(
                f"the header declares {h.num_frames} frames, which need at least {need} bytes; "
                f"the file has {len(view)}: it is truncated or the header is corrupt"
            )
    k = h.num_levels
    pos = h.size
    code_parts: list[np.ndarray] = []
    level_parts: list[np.ndarray] = []
    file_level_parts: list[np.ndarray] = []
    verified = 0
    complete = full == 0 and len(view) == h.size
    for c in range(full):
        n = h.chunk_len(c)
        got = _read_chunk(view, pos, n, h, table)
        if got is None:
            if whole:
                raise FormatError(f"the file ends inside chunk {c} (at byte {len(view)})")
            break
        codes, arrived, stored, used, ok = got
        if arrived.size == 0:
            if whole:
                raise FormatError(f"the file ends inside chunk {c} (at byte {len(view)})")
            break
        code_parts.append(codes)
        level_parts.append(arrived)
        file_level_parts.append(stored)
        if not ok:
            if whole:
                raise FormatError(f"the file ends inside chunk {c} (at byte {len(view)})")
            pos += used
            break
        verified += n
        pos += used
        if c == full - 1:
            complete = True
    if complete and pos != len(view):
        raise FormatError(f"{len(view) - pos} unexpected bytes after the last chunk")
    if code_parts:
        codes = np.concatenate(code_parts, axis=1)
        levels = np.concatenate(level_parts)
        stored_levels = np.concatenate(file_level_parts)
    else:
        codes = np.zeros((k, 0), dtype=np.uint16)
        levels = np.zeros(0, dtype=np.uint8)
        stored_levels = levels
    return PartialFile(
        model=h.model,
        weights_hash=h.weights_hash,
        sample_rate=h.sample_rate,
        frame_rate=h.frame_rate,
        bits_per_code=h.bits_per_code,
        num_levels=k,
        chunk_frames=h.chunk_frames,
        entropy=h.entropy,
        num_frames=h.num_frames,
        num_samples=h.num_samples,
        codes=codes,
        levels=levels,
        file_levels=stored_levels if h.frame_levels else None,
        complete=complete,
        bytes_used=pos,
        verified_frames=verified,
    )


def _whole_header(view: memoryview) -> Header:
    try:
        return parse_header(view)
    except IncompleteError as e:
        raise FormatError(f"truncated file: {e}") from None


def _read_chunk(
    view: memoryview, pos: int, n: int, h: Header, table: EntropyTable | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool] | None:
    """Read chunk of ``n`` frames at ``pos``.

    Returns None if not even its side information arrived, else ``(codes [K, n'],
    arrived levels [n'], stored levels [n'], bytes used, complete and CRC-checked)``.
    """
    k = h.num_levels
    rest = view[pos:]
    stored: np.ndarray | None = None
    side = 0
    if h.frame_levels:
        try:
            stored, side = decode_levels(rest, n, k)
        except IncompleteError:
            return None
    frame_levels = stored if stored is not None else np.full(n, k, dtype=np.uint8)
    if h.entropy:
        if len(rest) < side + _LEN.size:
            return None
        (size,) = _LEN.unpack_from(rest, side)
        end = side + _LEN.size + size
    else:
        total_codes = int(frame_levels.astype(np.int64).sum())
        end = side + packed_size(total_codes, h.bits_per_code)
    if len(rest) >= end + _CRC.size:
        (crc,) = _CRC.unpack_from(rest, end)
        if zlib.crc32(rest[:end]) != crc:
            raise FormatError(f"chunk at byte {pos}: CRC mismatch, the data is corrupt")
        if h.entropy:
            assert table is not None
            codes = table.decode(bytes(rest[side + _LEN.size : end]), frame_levels, k)
        else:
            flat = unpack_codes(bytes(rest[side:end]), total_codes, h.bits_per_code)
            codes = _scatter(flat, k, stored, n)
        return codes, frame_levels, frame_levels, end + _CRC.size, True
    if h.entropy:
        return _empty(k), _empty_levels(), _empty_levels(), 0, False
    # A plain chunk still arriving: keep the levels whose codes all arrived.
    have_bits = (len(rest) - side) * 8
    per_level = (np.arange(1, k + 1)[:, None] <= frame_levels[None, :]).sum(axis=1)
    cum_bits = np.cumsum(per_level) * h.bits_per_code
    j = int(np.searchsorted(cum_bits, have_bits, side="right"))  # levels fully present
    if j == 0:
        return _empty(k), _empty_levels(), _empty_levels(), 0, False
    arrived = np.minimum(frame_levels, j).astype(np.uint8)
    count = int(cum_bits[j - 1] // h.bits_per_code)
    flat = unpack_codes(
        bytes(rest[side : side + packed_size(count, h.bits_per_code)]), count, h.bits_per_code
    )
    codes = np.zeros((k, n), dtype=np.uint16)
    codes[:j] = _scatter(flat, j, np.minimum(frame_levels, j), n)
    return codes, arrived, frame_levels, side + packed_size(count, h.bits_per_code), False


def _empty(k: int) -> np.ndarray:
    return np.zeros((k, 0), dtype=np.uint16)


def _empty_levels() -> np.ndarray:
    return np.zeros(0, dtype=np.uint8)


def truncate_bytes(data: bytes, k: int) -> bytes:
    """Cut a plain ``.mimi`` file to its first ``k`` levels with byte slices (no decoding).

    Each chunk keeps a byte prefix of its payload (the trailing pad bits are zeroed and
    the CRC recomputed; per-frame side information is rewritten with counts capped at
    ``k``). The result equals ``MimiFile.parse(data).truncate(k).to_bytes()``. Entropy-
    coded files are re-coded through :meth:`MimiFile.truncate` instead (their levels share
    one range-coder stream); pass their table.
    """
    view = memoryview(bytes(data))
    h = _whole_header(view)
    if not 1 <= k <= h.num_levels:
        raise FormatError(f"cannot truncate to {k} levels: the file has 1..{h.num_levels}")
    if h.entropy:
        raise FormatError("entropy-coded files are truncated by MimiFile.parse(...).truncate(k)")
    hb = bytearray(view[: h.size])
    hb[_PREFIX.size + len(h.model) + _K_OFFSET] = k
    hb[-_CRC.size :] = _CRC.pack(zlib.crc32(bytes(hb[: -_CRC.size])))
    out = [bytes(hb)]
    pos = h.size
    bits = h.bits_per_code
    for c in range(h.num_chunks):
        n = h.chunk_len(c)
        got = _read_chunk(view, pos, n, h, None)
        if got is None or not got[4]:
            raise FormatError(f"the file ends inside chunk {c} (at byte {len(view)})")
        _, _, stored, used, _ = got
        rest = view[pos:]
        side = 0
        body = bytearray()
        if h.frame_levels:
            _, side = decode_levels(rest, n, h.num_levels)
            capped = np.minimum(stored, k)
            body += encode_levels(capped, k)
        else:
            capped = np.full(n, k)
        keep_bits = int(capped.astype(np.int64).sum()) * bits
        payload = bytearray(rest[side : side + packed_size(keep_bits, 1)])
        if keep_bits % 8:
            payload[-1] &= (0xFF << (8 - keep_bits % 8)) & 0xFF
        body += payload
        out.append(bytes(body) + _CRC.pack(zlib.crc32(bytes(body))))
        pos += used
    if pos != len(view):
        raise FormatError(f"{len(view) - pos} unexpected bytes after the last chunk")
    return b"".join(out)
