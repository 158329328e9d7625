"""Fixed-width bit packing of codes, MSB first (docs/format.md, "Bit packing").

Code ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the packed stream, most
significant bit first, and the stream's bit ``b`` is bit ``7 - b % 8`` of byte ``b // 8``
(big-endian bit order, as ``numpy.packbits``). The last byte is padded with zero bits.

NumPy's ``packbits``/``unpackbits`` do the bit shuffling in C; what is left here is a view
of each code as its big-endian bytes, so no Python loop runs per code.
"""

from __future__ import annotations

import numpy as np

from mimirate.errors import FormatError

#: Widest code this module packs (codes travel as big-endian uint16 internally).
MAX_BITS = 16


def packed_size(count: int, bits: int = 11) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise FormatError(f"bits per code must be in 1..{MAX_BITS}, got {bits}")


def pack_codes(codes: np.ndarray, bits: int = 11) -> bytes:
    """Pack integer codes (any shape, C order) at ``bits`` bits each, MSB first.

    Returns ``ceil(codes.size * bits / 8)`` bytes. Raises FormatError if a code is
    negative or does not fit in ``bits`` bits.
    """
    _check_bits(bits)
    flat = np.asarray(codes).reshape(-1)
    if flat.size == 0:
        return b""
    if flat.dtype.kind not in "iu":
        raise FormatError(f"codes must be integers, got dtype {flat.dtype}")
    if int(flat.min()) < 0 or int(flat.max()) >= 1 << bits:
        raise FormatError(f"codes must be in 0..{(1 << bits) - 1} to pack at {bits} bits")
    n = flat.size
    if bits < 7:
        return _pack_bitwise(flat, bits)
    # 8 codes of `bits` bits are exactly `bits` bytes: pack whole groups, one output byte
    # column at a time. With bits >= 7 every output byte straddles at most two adjacent
    # codes. Columns are kept as contiguous rows of a transposed array for speed.
    groups = -(-n // 8)
    padded = np.zeros(groups * 8 + 8, dtype=np.uint32)
    padded[:n] = flat
    cols = np.ascontiguousarray(padded[: groups * 8 + 8].reshape(-1, 8).T)  # [8, groups + 1]
    cols = np.vstack([cols[:, :groups], cols[:1, 1:]])  # row 8 = first code of the next group
    out = np.empty((bits, groups), dtype=np.uint8)
    pair = np.empty(groups, dtype=np.uint32)
    for j in range(bits):
        i0, offset = divmod(8 * j, bits)
        np.left_shift(cols[i0], bits, out=pair)
        pair |= cols[i0 + 1]
        pair >>= 2 * bits - offset - 8
        out[j] = pair  # the uint8 cast keeps the low byte
    return out.T.reshape(-1)[: packed_size(n, bits)].tobytes()


def _pack_bitwise(flat: np.ndarray, bits: int) -> bytes:
    # Narrow codes (< 7 bits, side information only): a bit matrix is fast enough there.
    be = flat.astype(">u2")
    bit_rows = np.unpackbits(be.view(np.uint8).reshape(-1, 2), axis=1)
    return np.packbits(bit_rows[:, MAX_BITS - bits :]).tobytes()


def unpack_codes(data: bytes, count: int, bits: int = 11) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the first ``count`` codes in ``data`` as ``[count]`` uint16.

    ``data`` must hold at least ``ceil(count * bits / 8)`` bytes (FormatError otherwise);
    bytes beyond that are ignored.
    """
    _check_bits(bits)
    if count < 0:
        raise FormatError(f"code count must be >= 0, got {count}")
    need = packed_size(count, bits)
    if len(data) < need:
        raise FormatError(
            f"{count} codes of {bits} bits need {need} bytes, only {len(data)} present"
        )
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    groups = -(-count // 8)
    # Row k holds byte k of every group of 8 codes, plus two zero rows: a code of <= 16
    # bits at bit offset <= 7 lies within 3 bytes. Transposed in uint8, widened after.
    padded = np.zeros(groups * bits, dtype=np.uint8)
    padded[:need] = raw
    by_row = np.zeros((bits + 2, groups), dtype=np.uint8)
    by_row[:bits] = padded.reshape(groups, bits).T
    rows = by_row.astype(np.uint32)
    out = np.empty((8, groups), dtype=np.uint16)
    word = np.empty(groups, dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)
    for i in range(8):
        k0, offset = divmod(i * bits, 8)
        np.left_shift(rows[k0], 16, out=word)
        word |= rows[k0 + 1] << 8
        word |= rows[k0 + 2]
        word >>= 24 - offset - bits
        word &= mask
        out[i] = word
    return out.T.reshape(-1)[:count].copy()
