"""Bit packing: exact sizes, MSB-first order, round trips, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimirate.bitstream import pack_codes, packed_size, unpack_codes
from mimirate.bitstream.bitpack import _pack_bitwise
from mimirate.errors import FormatError


def test_msb_first_known_bytes():
    # 00000000001 11111111111 + 2 pad bits -> 0000 0000 | 0011 1111 | 1111 1100
    assert pack_codes(np.array([1, 2047])) == bytes([0x00, 0x3F, 0xFC])
    assert pack_codes(np.array([0b10000000000])) == bytes([0x80, 0x00])


def test_size_is_exact_and_pad_bits_are_zero(rng):
    for n in range(0, 40):
        c = rng.integers(0, 2048, n)
        data = pack_codes(c)
        assert len(data) == packed_size(n) == -(-n * 11 // 8)
        if n * 11 % 8:
            assert data[-1] & ((1 << (8 - n * 11 % 8)) - 1) == 0


@settings(max_examples=200, deadline=None)
@given(
    bits=st.integers(1, 16),
    data=st.data(),
)
def test_round_trip_every_width(bits, data):
    n = data.draw(st.integers(0, 70))
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n))
    c = np.array(values, dtype=np.uint16)
    packed = pack_codes(c, bits)
    assert len(packed) == packed_size(n, bits)
    if n:
        assert packed == _pack_bitwise(c, bits)  # the fast path agrees with the bit matrix
    out = unpack_codes(packed, n, bits)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, c)


def test_shape_is_flattened_in_c_order(rng):
    c = rng.integers(0, 2048, (3, 5))
    assert pack_codes(c) == pack_codes(c.reshape(-1))
    np.testing.assert_array_equal(unpack_codes(pack_codes(c), 15).reshape(3, 5), c)


def test_extra_bytes_are_ignored(rng):
    c = rng.integers(0, 2048, 9)
    np.testing.assert_array_equal(unpack_codes(pack_codes(c) + b"\xff\xff", 9), c)


@pytest.mark.parametrize(
    ("codes", "bits", "match"),
    [
        (np.array([2048]), 11, "0..2047"),
        (np.array([-1]), 11, "0..2047"),
        (np.array([1.5]), 11, "integers"),
        (np.array([1]), 0, "1..16"),
        (np.array([1]), 17, "1..16"),
    ],
)
def test_pack_rejects_bad_codes(codes, bits, match):
    with pytest.raises(FormatError, match=match):
        pack_codes(codes, bits)


def test_unpack_rejects_short_data_and_bad_counts():
    with pytest.raises(FormatError, match="need 3 bytes, only 2"):
        unpack_codes(b"\x00\x00", 2)
    with pytest.raises(FormatError, match=">= 0"):
        unpack_codes(b"", -1)
    assert unpack_codes(b"", 0).shape == (0,)
