"""The .mimi container: exact sizes, round trips, truncation, prefixes, vectors, bad bytes."""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimirate.bitstream import (
    IncompleteError,
    MimiFile,
    parse_header,
    read_prefix,
    truncate_bytes,
)
from mimirate.bitstream.container import (
    CHUNK_OVERHEAD_BYTES,
    HEADER_FIXED_BYTES,
    decode_levels,
    encode_levels,
)
from mimirate.errors import FormatError

VECTORS = Path(__file__).resolve().parent / "vectors"
_spec = importlib.util.spec_from_file_location("regenerate", VECTORS / "regenerate.py")
regenerate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regenerate)
TABLE = regenerate.table()  # built once: its models are cached inside

WH = bytes(range(8))


def make(codes, levels=None, *, table=None, chunk=125, model="small", samples=None):
    k, t = codes.shape
    return MimiFile(
        model=model,
        weights_hash=WH,
        sample_rate=24_000,
        frame_rate=12.5,
        bits_per_code=11,
        num_levels=k,
        num_samples=t * 1920 if samples is None else samples,
        codes=codes,
        levels=levels,
        entropy=table is not None,
        chunk_frames=chunk,
        entropy_table=table,
    )


def present(levels, k):
    return np.arange(1, k + 1)[:, None] <= np.asarray(levels)[None, :]


def test_ten_seconds_at_eight_levels_is_1375_payload_bytes(rng):
    mf = make(rng.integers(0, 2048, (8, 125)))
    data = mf.to_bytes()
    header = HEADER_FIXED_BYTES + len("small")
    assert len(data) == header + 1375 + CHUNK_OVERHEAD_BYTES
    assert len(mf.header_bytes()) == header
    assert len(mf.chunk_bytes(0)) == 1375 + CHUNK_OVERHEAD_BYTES


@pytest.mark.parametrize("k", [1, 2, 7, 8, 13, 32])
@pytest.mark.parametrize("chunk", [1, 5, 125])
def test_round_trip_and_per_chunk_payload(rng, k, chunk):
    t = 23
    codes = rng.integers(0, 2048, (k, t)).astype(np.uint16)
    data = make(codes, chunk=chunk, samples=t * 1920 - 7).to_bytes()
    back = MimiFile.parse(data)
    np.testing.assert_array_equal(back.codes, codes)
    assert back.levels is None and back.num_samples == t * 1920 - 7
    assert back.to_bytes() == data
    n_chunks = -(-t // chunk)
    sizes = [min(chunk, t - i * chunk) for i in range(n_chunks)]
    payload = sum(-(-n * k * 11 // 8) + CHUNK_OVERHEAD_BYTES for n in sizes)
    assert len(data) == HEADER_FIXED_BYTES + 5 + payload


def test_round_trip_per_frame_levels(rng):
    k, t = 32, 300
    codes = rng.integers(0, 2048, (k, t)).astype(np.uint16)
    levels = rng.integers(1, k + 1, t).astype(np.uint8)
    levels[100:230] = 8  # a long run: the side information switches to runs there
    mf = make(codes, levels, chunk=50)
    back = MimiFile.parse(mf.to_bytes())
    np.testing.assert_array_equal(back.levels, levels)
    mask = present(levels, k)
    np.testing.assert_array_equal(back.codes[mask], codes[mask])
    assert (back.codes[~mask] == 0).all()
    assert back.to_bytes() == mf.to_bytes()


def test_level_payload_holds_only_frames_that_have_the_level(rng):
    codes = rng.integers(0, 2048, (4, 10)).astype(np.uint16)
    levels = np.array([1, 2, 3, 4, 4, 1, 1, 2, 1, 4], dtype=np.uint8)
    chunk = make(codes, levels, chunk=10).chunk_bytes(0)
    side = encode_levels(levels, 4)
    assert len(chunk) == len(side) + -(-int(levels.sum()) * 11 // 8) + CHUNK_OVERHEAD_BYTES


def test_side_information_picks_the_shorter_encoding():
    flat = np.full(125, 8)
    assert encode_levels(flat, 8) == bytes([1, 1, 8, 125])  # one run
    varied = np.arange(125) % 8 + 1
    packed = encode_levels(varied, 8)
    assert packed[0] == 0 and len(packed) == 1 + -(-125 * 3 // 8)
    for lv in (flat, varied):
        out, used = decode_levels(encode_levels(lv, 8), lv.size, 8)
        np.testing.assert_array_equal(out, lv)
        assert used == len(encode_levels(lv, 8))
    with pytest.raises(FormatError, match="do not add up"):
        decode_levels(bytes([1, 1, 8, 124]), 125, 8)
    with pytest.raises(FormatError, match=r"outside 1\.\.4"):
        decode_levels(bytes([1, 1, 5, 10]), 10, 4)
    with pytest.raises(FormatError, match="unknown level side information mode 7"):
        decode_levels(bytes([7, 0]), 2, 4)


@pytest.mark.parametrize("per_frame", [False, True])
def test_truncate_bytes_equals_decoded_truncation(rng, per_frame):
    k, t = 12, 40
    codes = rng.integers(0, 2048, (k, t)).astype(np.uint16)
    levels = rng.integers(1, k + 1, t).astype(np.uint8) if per_frame else None
    mf = make(codes, levels, chunk=16)
    data = mf.to_bytes()
    for j in range(1, k + 1):
        cut = truncate_bytes(data, j)
        assert cut == mf.truncate(j).to_bytes()
        back = MimiFile.parse(cut)
        lv = np.minimum(mf.frame_levels(), j)
        mask = present(lv, j)
        np.testing.assert_array_equal(back.codes[mask], codes[:j][mask])
    with pytest.raises(FormatError, match=r"1\.\.12"):
        truncate_bytes(data, 13)


def test_truncated_plain_chunks_are_exactly_the_level_payload(rng):
    data = make(rng.integers(0, 2048, (32, 125))).to_bytes()
    for k in (1, 8, 32):
        cut = truncate_bytes(data, k)
        assert len(cut) - len(parse_header(cut).model) - HEADER_FIXED_BYTES == (
            -(-125 * k * 11 // 8) + CHUNK_OVERHEAD_BYTES
        )


def test_read_prefix_at_every_length(rng):
    k, t = 5, 13
    codes = rng.integers(0, 2048, (k, t)).astype(np.uint16)
    levels = rng.integers(1, k + 1, t).astype(np.uint8)
    for lv in (None, levels):
        data = make(codes, lv, chunk=4).to_bytes()
        header = parse_header(data).size
        last_frames, last_total = 0, 0
        for cut in range(len(data) + 1):
            if cut < header:
                with pytest.raises(IncompleteError):
                    read_prefix(data[:cut])
                continue
            p = read_prefix(data[:cut])
            got = p.frames_arrived
            mask = present(p.levels, k)
            np.testing.assert_array_equal(p.codes[mask], codes[:, :got][mask])
            assert (p.levels >= 1).all()
            full = np.full(t, k) if lv is None else lv
            assert (p.levels <= full[:got]).all()
            total = int(p.levels.sum())
            assert got >= last_frames and total >= last_total  # more bytes never lose data
            last_frames, last_total = got, total
            assert p.bytes_used <= cut
            assert p.complete == (cut == len(data))
            assert p.verified_frames <= got
        assert p.verified_frames == t
        np.testing.assert_array_equal(p.levels, np.full(t, k) if lv is None else lv)


def test_prefix_of_one_level_gives_every_frame_of_the_chunk(rng):
    codes = rng.integers(0, 2048, (8, 125)).astype(np.uint16)
    data = make(codes).to_bytes()
    header = parse_header(data).size
    p = read_prefix(data[: header + 172])  # 125 x 11 bits = 171.9 bytes: level 1 arrived
    assert p.frames_arrived == 125 and (p.levels == 1).all() and not p.complete
    np.testing.assert_array_equal(p.codes[0], codes[0])


def test_entropy_file_round_trip_and_table_checks(rng):
    table = TABLE
    codes = rng.integers(0, 2048, (3, 30)).astype(np.uint16)
    levels = rng.integers(1, 4, 30).astype(np.uint8)
    for lv in (None, levels):
        mf = make(codes, lv, table=table, chunk=8, model="tiny")
        data = mf.to_bytes()
        back = MimiFile.parse(data, table=table)
        assert back.entropy and back.to_bytes() == data
        mask = present(mf.frame_levels(), 3)
        np.testing.assert_array_equal(back.codes[mask], codes[mask])
        t2 = back.truncate(2)
        np.testing.assert_array_equal(
            MimiFile.parse(t2.to_bytes(), table=table).codes[present(t2.frame_levels(), 2)],
            codes[:2][present(t2.frame_levels(), 2)],
        )
        with pytest.raises(FormatError, match="entropy coded: give the entropy table"):
            MimiFile.parse(data)
        with pytest.raises(FormatError, match="truncated by MimiFile"):
            truncate_bytes(data, 1)
    other = regenerate.table()
    object.__setattr__(other, "_id", b"\x00" * 7 + b"\x01")
    with pytest.raises(FormatError, match="needs entropy table"):
        MimiFile.parse(data, table=other)


def test_entropy_prefix_decodes_whole_chunks_only(rng):
    table = TABLE
    codes = rng.integers(0, 2048, (3, 16)).astype(np.uint16)
    data = make(codes, table=table, chunk=8, model="tiny").to_bytes()
    first_chunk_end = None
    for cut in range(parse_header(data).size, len(data) + 1):
        p = read_prefix(data[:cut], table=table)
        assert p.frames_arrived in (0, 8, 16)
        if p.frames_arrived == 8 and first_chunk_end is None:
            first_chunk_end = cut
            assert p.bytes_used == cut
    assert p.complete and first_chunk_end is not None


# -- test vectors -------------------------------------------------------------------------

FILE_VECTORS = ["file_plain.bin", "file_levels.bin", "file_entropy.bin"]


@pytest.mark.parametrize("name", FILE_VECTORS)
def test_vectors_are_current_and_reserialise_byte_for_byte(name):
    data = (VECTORS / name).read_bytes()
    assert data == regenerate.files()[name], "run tests/vectors/regenerate.py after a change"
    table = TABLE
    mf = MimiFile.parse(data, table=table)
    assert mf.to_bytes() == data
    assert (mf.model, mf.weights_hash, mf.num_levels, mf.num_frames) == (
        "tiny",
        regenerate.WEIGHTS,
        3,
        10,
    )


@pytest.mark.parametrize("name", FILE_VECTORS)
def test_vectors_cut_at_every_length(name):
    data = (VECTORS / name).read_bytes()
    table = TABLE
    size = parse_header(data).size
    for cut in range(len(data)):
        with pytest.raises(FormatError) as err:
            MimiFile.parse(data[:cut], table=table)
        msg = str(err.value)
        if cut < size:
            assert msg.startswith("truncated file:"), (cut, msg)
        else:
            assert "the file ends inside chunk" in msg or "need at least" in msg, (cut, msg)


# -- bad bytes ----------------------------------------------------------------------------


def _with_header_field(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one header field replaced and the header CRC made valid again."""
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    size = HEADER_FIXED_BYTES + data[8]
    struct.pack_into(">I", b, size - 4, zlib.crc32(bytes(b[: size - 4])))
    return bytes(b)


def test_absurd_frame_count_is_refused_before_allocating():
    data = (VECTORS / "file_plain.bin").read_bytes()
    frames_at = 9 + 4 + 8 + 8 + 4 + 4 + 1 + 1 + 2  # prefix + "tiny" + fields up to frames
    bad = _with_header_field(data, frames_at + 4, ">Q", (2**32 - 1) * 1920)
    bad = _with_header_field(bad, frames_at, ">I", 2**32 - 1)
    with pytest.raises(FormatError, match="need at least"):
        MimiFile.parse(bad)
    p = read_prefix(bad)  # a prefix reader reads what is there, allocating only for it
    assert p.frames_arrived <= 12 and not p.complete  # what 112 bytes can hold


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"MIMX" + b[4:], "not a .mimi file"),
        (lambda b: b[:4] + bytes([2]) + b[5:], "unsupported .mimi version 2"),
        (lambda b: b[:5] + bytes([0x80]) + b[6:], "unknown header flags"),
        (lambda b: b[:8] + bytes([0]) + b[9:], "model name length 0"),
        (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "header CRC mismatch"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "CRC mismatch"),
        (lambda b: b + b"\x00", "unexpected bytes after the last chunk"),
    ],
)
def test_corrupt_files_give_clear_errors(mutate, match):
    data = (VECTORS / "file_plain.bin").read_bytes()
    with pytest.raises(FormatError, match=match):
        MimiFile.parse(mutate(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(FILE_VECTORS),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4),
    cut=st.integers(0, 200),
)
def test_fuzz_bit_flips_and_cuts(name, flips, cut):
    data = bytearray((VECTORS / name).read_bytes())
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    data = bytes(data[: max(1, len(data) - cut % 20)])
    table = TABLE
    for read in (lambda d: MimiFile.parse(d, table=table), lambda d: read_prefix(d, table=table)):
        try:
            read(data)
        except FormatError as e:
            assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    for candidate in (data, b"MIMI\x01" + data):
        with pytest.raises(FormatError):
            MimiFile.parse(candidate)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model="no spaces"), "model name"),
        (dict(weights_hash=b"short"), "8 bytes"),
        (dict(num_samples=1), "does not match"),
        (dict(chunk_frames=0), "chunk_frames"),
        (dict(levels=np.array([0, 1, 1])), "1..2"),
        (dict(entropy=True), "needs its entropy table"),
    ],
)
def test_constructor_rejects_inconsistent_fields(kwargs, match):
    base = dict(
        model="small",
        weights_hash=WH,
        sample_rate=24_000,
        frame_rate=12.5,
        bits_per_code=11,
        num_levels=2,
        num_samples=3 * 1920,
        codes=np.zeros((2, 3), dtype=np.uint16),
    )
    with pytest.raises(FormatError, match=match):
        MimiFile(**{**base, **kwargs})


def test_empty_file_round_trips():
    mf = make(np.zeros((4, 0), dtype=np.uint16), samples=0)
    data = mf.to_bytes()
    assert MimiFile.parse(data).num_frames == 0
    p = read_prefix(data)
    assert p.complete and p.frames_arrived == 0


def test_every_level_count_round_trips(rng):
    for k in range(1, 33):
        codes = rng.integers(0, 2048, (k, 7)).astype(np.uint16)
        levels = rng.integers(1, k + 1, 7).astype(np.uint8)
        for lv in (None, levels):
            back = MimiFile.parse(make(codes, lv, chunk=3).to_bytes())
            mask = present(back.frame_levels(), k)
            np.testing.assert_array_equal(back.codes[mask], codes[mask])


def test_public_api_and_no_torch():
    import subprocess
    import sys

    import mimirate.bitstream as bs

    for name in bs.__all__:
        assert hasattr(bs, name), name
    code = "import sys, mimirate.bitstream; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_of_codec_takes_the_header_fields_from_the_codec() -> None:
    from types import SimpleNamespace

    codec = SimpleNamespace(
        name="tiny", weights_hash=bytes(range(8)), sample_rate=24_000, frame_rate=12.5,
        bits_per_code=11,
    )  # fmt: skip
    codes = np.arange(12, dtype=np.uint16).reshape(3, 4)
    mf = MimiFile.of_codec(codec, codes, 4 * 1920, chunk_frames=2)
    header = ("tiny", bytes(range(8)), 24_000, 12.5, 11, 3, 4 * 1920)
    expected = MimiFile(*header, codes, chunk_frames=2)
    assert mf.to_bytes() == expected.to_bytes()
