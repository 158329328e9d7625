"""Entropy coding: lossless round trips, determinism, fitting, table files, bad streams."""

from __future__ import annotations

import numpy as np
import pytest

from mimirate.bitstream import ContextSource, EntropyTable, fit_table
from mimirate.bitstream.entropy import find_table
from mimirate.errors import FormatError

BITS = 11


def correlated(rng, k, t):
    """Codes with the structure the contexts exploit: a slow level 1, levels tied to the last."""
    c = np.zeros((k, t), dtype=np.int64)
    c[0] = np.cumsum(rng.integers(-2, 3, t)) % 64
    for j in range(1, k):
        c[j] = (c[j - 1] * 7 + rng.integers(0, 8, t)) % (1 << BITS)
    return c


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(7)
    utts = [correlated(rng, 3, 150) for _ in range(10)]
    return fit_table(utts, model="tiny", weights_hash=b"w" * 8, num_contexts=4)


def test_fit_picks_the_informative_context(fitted):
    table, fits = fitted
    assert [f.level for f in fits] == [1, 2, 3]
    assert table.sources[0] == ContextSource.PREV_FRAME
    assert list(table.sources[1:]) == [ContextSource.PREV_LEVEL] * 2
    for f in fits:
        assert f.heldout_bits[f.source.name] == min(f.heldout_bits.values())
    assert table.freqs.min() >= 1 and table.freqs.dtype == np.uint32


def test_round_trip_is_lossless_and_smaller(fitted):
    table, _ = fitted
    rng = np.random.default_rng(1)
    codes = correlated(rng, 3, 400)
    levels = rng.integers(1, 4, 400)
    for lv in (None, levels):
        data = table.encode(codes, lv)
        assert len(data) % 4 == 0
        out = table.decode(data, lv, 3, 400)
        full = np.full(400, 3) if lv is None else lv
        mask = np.arange(1, 4)[:, None] <= full[None, :]
        np.testing.assert_array_equal(out[mask], codes[mask])
        assert (out[~mask] == 0).all()
        assert len(data) * 8 < mask.sum() * BITS * 0.9
    # The measured size is close to the ideal code length the tables give.
    ideal = table.code_lengths(codes).sum()
    assert ideal <= len(table.encode(codes, None)) * 8 <= ideal + 64


def test_codes_never_seen_in_training_still_code(fitted):
    table, _ = fitted
    codes = np.full((3, 5), 2047)
    np.testing.assert_array_equal(table.decode(table.encode(codes, None), None, 3, 5), codes)


def test_deterministic_bytes(fitted):
    table, _ = fitted
    codes = correlated(np.random.default_rng(3), 3, 50)
    again = EntropyTable(
        table.model,
        table.weights_hash,
        table.bits,
        table.sources.copy(),
        table.context_map.copy(),
        table.freqs.copy(),
    )
    assert again.table_id == table.table_id
    assert again.encode(codes, None) == table.encode(codes, None)
    # A pinned stream: the coder or the table quantization changing would break old files.
    fixed = EntropyTable(
        "tiny",
        b"w" * 8,
        2,
        np.array([0, 1], dtype=np.uint8),
        np.array([[0, 0, 0, 0], [0, 1, 0, 1]], dtype=np.uint8),
        np.array([[[1, 2, 3, 4], [1, 1, 1, 1]], [[5, 1, 1, 1], [1, 1, 1, 9]]]),
    )
    data = fixed.encode(np.array([[3, 2, 1, 0], [0, 3, 0, 3]]), None)
    assert data.hex() == PINNED
    np.testing.assert_array_equal(fixed.decode(data, None, 2, 4), [[3, 2, 1, 0], [0, 3, 0, 3]])


PINNED = "bbff2eb2"


def test_save_load_and_find(fitted, tmp_path, monkeypatch):
    table, _ = fitted
    path = tmp_path / "entropy.safetensors"
    table.save(path)
    back = EntropyTable.load(path)
    assert back.table_id == table.table_id and back.model == "tiny"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(FormatError, match="cannot read entropy table"):
        EntropyTable.load(path)
    import mimirate.bitstream.entropy as ent

    monkeypatch.setattr(ent, "ASSETS", tmp_path)
    with pytest.raises(FormatError, match="mimirate entropy-fit DIR --model tiny"):
        find_table("tiny", b"w" * 8)
    (tmp_path / "tiny").mkdir()
    table.save(ent.table_path("tiny", b"w" * 8))
    assert find_table("tiny", b"w" * 8).table_id == table.table_id
    table.save(ent.table_path("tiny", b"v" * 8))  # a table filed under the wrong weights
    with pytest.raises(FormatError, match="was fitted for 'tiny' weights"):
        find_table("tiny", b"v" * 8)
    with pytest.raises(FormatError, match="coded with entropy table"):
        find_table("tiny", b"w" * 8, bytes(8))


def test_bad_streams_and_tables(fitted):
    table, _ = fitted
    with pytest.raises(FormatError, match="whole 32-bit words"):
        table.decode(b"\x00" * 5, None, 3, 2)
    with pytest.raises(FormatError, match="covers 3 levels"):
        table.encode(np.zeros((4, 2), int), None)
    rng = np.random.default_rng(0)
    for _ in range(50):  # garbage decodes to some codes or a FormatError, never a crash
        junk = rng.integers(0, 256, 4 * int(rng.integers(0, 6)), dtype=np.uint8).tobytes()
        try:
            out = table.decode(junk, None, 3, 20)
            assert out.shape == (3, 20) and out.max() < 2048
        except FormatError:
            pass
    with pytest.raises(FormatError, match="shapes disagree"):
        EntropyTable("tiny", b"w" * 8, 11, np.zeros(2), np.zeros((2, 2048)), np.ones((3, 1, 2048)))
    with pytest.raises(FormatError, match=">= 1"):
        EntropyTable("tiny", b"w" * 8, 11, np.zeros(1), np.zeros((1, 2048)), np.zeros((1, 1, 2048)))
