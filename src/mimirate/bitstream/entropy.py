"""Lossless entropy coding of codes with shared integer probability tables (docs/format.md).

Codes are range coded (``constriction``'s queue coder: first in, first out) with one
categorical model per level and *context*. Each level takes its context from one source,
chosen per level when the table is fitted:

- ``NONE``: one distribution for the level;
- ``PREV_LEVEL``: the code of the previous level in the same frame (level >= 2);
- ``PREV_FRAME``: the code of the same level in the previous frame of the same chunk or
  packet (code 0 before the first frame).

A context is ``context_map[level, conditioning_code]`` (``num_contexts`` clusters of the
2048 possible codes, fitted so that codes with similar successors share a distribution).
The tables are integer frequencies, every one >= 1, so every code stays codable and both
ends build bit-identical models. The module does not import torch: it sees codes only.

Symbol order in a stream: level 1 of the frames that have it, then level 2, ...; within a
``PREV_LEVEL`` level, frames are grouped by context (ascending), time order within a
group, so each group is coded with one model in one call; ``PREV_FRAME`` levels go in time
order. Decoding mirrors this because level ``j - 1`` is decoded before level ``j``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import constriction
import numpy as np

from mimirate.errors import FormatError

DEFAULT_CONTEXTS = 16
_TABLE_FORMAT = "mimirate-entropy-v1"


class ContextSource(IntEnum):
    NONE = 0
    PREV_LEVEL = 1
    PREV_FRAME = 2


@dataclass(frozen=True, eq=False)
class EntropyTable:
    """Probability tables for one model's codes.

    Attributes:
        model: preset name of the model the codes come from.
        weights_hash: 8 bytes identifying its weights (tables are fitted per weights).
        bits: bits per code (alphabet ``2**bits``).
        sources: ``[L]`` uint8 :class:`ContextSource` per level (``L`` levels covered).
        context_map: ``[L, 2**bits]`` uint8: context of each conditioning code.
        freqs: ``[L, C, 2**bits]`` uint32 frequencies, all >= 1.
    """

    model: str
    weights_hash: bytes
    bits: int
    sources: np.ndarray
    context_map: np.ndarray
    freqs: np.ndarray
    _models: dict[tuple[int, int], object] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        a = 1 << self.bits
        src = np.asarray(self.sources, dtype=np.uint8)
        cmap = np.asarray(self.context_map, dtype=np.uint8)
        f = np.asarray(self.freqs, dtype=np.uint32)
        nl = src.shape[0] if src.ndim == 1 else -1
        if nl < 1 or cmap.shape != (nl, a) or f.ndim != 3 or f.shape[0] != nl or f.shape[2] != a:
            raise FormatError(
                f"entropy table shapes disagree: sources {src.shape}, context_map {cmap.shape}, "
                f"freqs {f.shape} (expected [L], [L, {a}], [L, C, {a}])"
            )
        if int(src.max()) > max(ContextSource) or (nl and src[0] == ContextSource.PREV_LEVEL):
            raise FormatError("entropy table has an impossible context source")
        if f.size == 0 or int(f.min()) < 1 or int(cmap.max()) >= f.shape[1]:
            raise FormatError("entropy table frequencies must be >= 1 and contexts in range")
        if int(f.astype(np.uint64).sum(axis=2).max()) >= 1 << 52:
            raise FormatError("entropy table frequencies are too large to be exact in float64")
        if len(self.weights_hash) != 8:
            raise FormatError("entropy table weights_hash must be 8 bytes")
        object.__setattr__(self, "sources", src)
        object.__setattr__(self, "context_map", cmap)
        object.__setattr__(self, "freqs", f)
        digest = hashlib.blake2b(digest_size=8)
        for part in (
            _TABLE_FORMAT.encode(),
            self.model.encode(),
            self.weights_hash,
            bytes([self.bits]),
            src.tobytes(),
            cmap.tobytes(),
            f.astype(">u4").tobytes(),
        ):
            digest.update(len(part).to_bytes(8, "big") + part)
        object.__setattr__(self, "_id", digest.digest())

    @property
    def table_id(self) -> bytes:
        """8 bytes identifying these exact tables (blake2b of their contents)."""
        return self._id  # type: ignore[attr-defined]

    @property
    def num_levels(self) -> int:
        return int(self.sources.shape[0])

    @property
    def num_contexts(self) -> int:
        return int(self.freqs.shape[1])

    def _model(self, level: int, ctx: int) -> object:
        key = (level, ctx)
        m = self._models.get(key)
        if m is None:
            # Integer frequencies are exact in float64, and constriction quantizes them
            # with a deterministic fixed-point routine: both ends get the same model.
            probs = self.freqs[level, ctx].astype(np.float64)
            m = constriction.stream.model.Categorical(probs, perfect=False)
            self._models[key] = m
        return m

    def _check_levels(self, k: int) -> None:
        if k > self.num_levels:
            raise FormatError(
                f"the entropy table covers {self.num_levels} levels; the codes have {k}"
            )

    # -- coding ---------------------------------------------------------------------------
    def encode(self, codes: np.ndarray, levels: np.ndarray | None) -> bytes:
        """Range code ``codes`` ``[K, n]`` (frame ``t`` has levels ``1..levels[t]``).

        Returns the coder's 32-bit words, big-endian (a multiple of 4 bytes).
        """
        codes = np.asarray(codes)
        k, n = codes.shape
        self._check_levels(k)
        enc = constriction.stream.queue.RangeEncoder()
        lv = np.full(n, k) if levels is None else np.asarray(levels)
        for j in range(k):
            frames = np.flatnonzero(lv > j)
            if frames.size == 0:
                continue
            sym = codes[j, frames].astype(np.int32)
            src = self.sources[j]
            if src == ContextSource.NONE:
                enc.encode(sym, self._model(j, 0))
            elif src == ContextSource.PREV_LEVEL:
                ctx = self.context_map[j][codes[j - 1, frames]]
                for c in np.unique(ctx).tolist():
                    enc.encode(sym[ctx == c], self._model(j, c))
            else:
                prev = 0
                for s in sym.tolist():
                    enc.encode(s, self._model(j, int(self.context_map[j, prev])))
                    prev = s
        return enc.get_compressed().astype(">u4").tobytes()

    def decode(
        self,
        data: bytes,
        levels: np.ndarray | None,
        num_levels: int,
        num_frames: int | None = None,
    ) -> np.ndarray:
        """Inverse of :meth:`encode`: ``[num_levels, n]`` uint16 (codes above a frame's level
        count are 0). ``n`` is ``levels.size``, or ``num_frames`` when ``levels`` is None."""
        if len(data) % 4:
            raise FormatError(f"an entropy-coded stream is whole 32-bit words, got {len(data)} B")
        k = num_levels
        self._check_levels(k)
        if levels is None:
            if num_frames is None:
                raise ValueError("give levels or num_frames")
            lv = np.full(num_frames, k)
        else:
            lv = np.asarray(levels)
        n = lv.size
        words = np.frombuffer(bytes(data), dtype=">u4").astype(np.uint32)
        dec = constriction.stream.queue.RangeDecoder(words)
        out = np.zeros((k, n), dtype=np.uint16)
        try:
            for j in range(k):
                frames = np.flatnonzero(lv > j)
                if frames.size == 0:
                    continue
                src = self.sources[j]
                if src == ContextSource.NONE:
                    out[j, frames] = dec.decode(self._model(j, 0), frames.size)
                elif src == ContextSource.PREV_LEVEL:
                    ctx = self.context_map[j][out[j - 1, frames]]
                    for c in np.unique(ctx).tolist():
                        sel = frames[ctx == c]
                        out[j, sel] = dec.decode(self._model(j, c), sel.size)
                else:
                    prev = 0
                    for t in frames.tolist():
                        s = int(dec.decode(self._model(j, int(self.context_map[j, prev]))))
                        out[j, t] = s
                        prev = s
        except (ValueError, RuntimeError, AssertionError) as e:  # constriction's errors
            raise FormatError(f"the entropy-coded stream is corrupt: {e}") from None
        return out

    # -- measuring ------------------------------------------------------------------------
    def code_lengths(self, codes: np.ndarray) -> np.ndarray:
        """Ideal code length in bits of each code ``[K, T]`` under these tables (no coder
        overhead): ``-log2 p``, the figure entropy coding approaches."""
        codes = np.asarray(codes)
        k, t = codes.shape
        self._check_levels(k)
        out = np.zeros((k, t))
        logp = {}
        for j in range(k):
            src = self.sources[j]
            if src == ContextSource.NONE:
                ctx = np.zeros(t, dtype=np.int64)
            elif src == ContextSource.PREV_LEVEL:
                ctx = self.context_map[j][codes[j - 1]]
            else:
                prev = np.concatenate([[0], codes[j, :-1]]).astype(np.int64)
                ctx = self.context_map[j][prev]
            if j not in logp:
                f = self.freqs[j].astype(np.float64)
                logp[j] = np.log2(f / f.sum(axis=1, keepdims=True))
            out[j] = -logp[j][ctx, codes[j]]
        return out

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tables as safetensors (atomically), with model and hash in metadata."""
        from safetensors.numpy import save

        from mimirate.fileio import atomic_write_bytes

        meta = {
            "format": _TABLE_FORMAT,
            "model": self.model,
            "weights_hash": self.weights_hash.hex(),
            "bits": str(self.bits),
            "table_id": self.table_id.hex(),
        }
        tensors = {
            "sources": self.sources,
            "context_map": self.context_map,
            "freqs": self.freqs,
        }
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EntropyTable:
        """Read tables written by :meth:`save` (FormatError if the file is not one)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            raw = Path(path).read_bytes()
            tensors = load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
        except (OSError, SafetensorError, ValueError) as e:
            raise FormatError(f"cannot read entropy table {path}: {e}") from None
        if meta.get("format") != _TABLE_FORMAT:
            raise FormatError(f"{path} is not a {_TABLE_FORMAT} entropy table")
        try:
            table = cls(
                model=meta["model"],
                weights_hash=bytes.fromhex(meta["weights_hash"]),
                bits=int(meta["bits"]),
                sources=tensors["sources"],
                context_map=tensors["context_map"],
                freqs=tensors["freqs"],
            )
        except (KeyError, ValueError) as e:
            raise FormatError(f"{path}: incomplete entropy table ({e})") from None
        if meta.get("table_id") != table.table_id.hex():
            raise FormatError(f"{path}: the table id in its metadata does not match its contents")
        return table


# -- fitting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelFit:
    """How one level was fitted: the chosen source and held-out bits per code of each."""

    level: int
    source: ContextSource
    heldout_bits: dict[str, float]


@dataclass(frozen=True)
class _Pairs:
    """Sparse pair counts: ``(prev[i], cur[i])`` seen ``count[i]`` times."""

    prev: np.ndarray
    cur: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, prev: np.ndarray, cur: np.ndarray, a: int) -> _Pairs:
        keys, counts = np.unique(prev.astype(np.int64) * a + cur, return_counts=True)
        return cls(keys // a, keys % a, counts.astype(np.float64))

    @property
    def total(self) -> float:
        return float(self.count.sum())


def _pool(pairs: _Pairs, assign: np.ndarray, c: int, a: int) -> np.ndarray:
    """Counts per context ``[c, a]``: the rows of the conditioning codes summed by cluster."""
    flat = np.bincount(
        assign[pairs.prev].astype(np.int64) * a + pairs.cur, weights=pairs.count, minlength=c * a
    )
    return flat.reshape(c, a)


def _cluster(pairs: _Pairs, c: int, a: int, iters: int = 12) -> np.ndarray:
    """Group the ``a`` conditioning codes into ``c`` contexts.

    A k-means under code length: each code joins the cluster whose pooled distribution
    codes its successors in the fewest bits. Deterministic (initial clusters by frequency
    rank). Works on the sparse pairs: cost grows with distinct pairs, not ``a * a``.
    """
    totals = np.bincount(pairs.prev, weights=pairs.count, minlength=a)
    order = np.argsort(-totals, kind="stable")
    assign = np.zeros(a, dtype=np.int64)
    assign[order] = np.arange(a) % c
    used = totals > 0
    for _ in range(iters):
        pooled = _pool(pairs, assign, c, a) + 0.5
        logq = np.log(pooled) - np.log(pooled.sum(axis=1, keepdims=True))  # [c, a]
        # score[p, k]: log-likelihood of code p's successors under cluster k.
        score = np.stack(
            [
                np.bincount(pairs.prev, weights=pairs.count * logq[k, pairs.cur], minlength=a)
                for k in range(c)
            ],
            axis=1,
        )
        new = np.where(used, np.argmax(score, axis=1), 0)
        if np.array_equal(new, assign):
            break
        assign = new
    return assign.astype(np.uint8)


def _freqs_from(pairs: _Pairs, assign: np.ndarray, c: int, a: int, smooth: int) -> np.ndarray:
    pooled = np.rint(_pool(pairs, assign, c, a)).astype(np.int64)
    # 16 x count + smooth: integer frequencies with a pseudo-count of smooth / 16.
    return (pooled * 16 + smooth).astype(np.uint32)


def _heldout_bits(pairs: _Pairs, assign: np.ndarray, freqs: np.ndarray) -> float:
    if pairs.total == 0:
        return 0.0
    f = freqs.astype(np.float64)
    logp = np.log2(f / f.sum(axis=1, keepdims=True))
    return float(-(pairs.count * logp[assign[pairs.prev], pairs.cur]).sum() / pairs.total)


def fit_table(
    code_arrays: Iterable[np.ndarray],
    *,
    model: str,
    weights_hash: bytes,
    bits: int = 11,
    num_contexts: int = DEFAULT_CONTEXTS,
    heldout_every: int = 5,
) -> tuple[EntropyTable, list[LevelFit]]:
    """Fit tables from codes ``[K, T]`` of training utterances (one array per utterance).

    Every ``heldout_every``-th utterance is held out to choose, per level, the context
    source and the smoothing; the final tables are then counted on all utterances.
    Returns the table and, per level, what was chosen and the held-out bits per code.
    """
    arrays = [np.asarray(c, dtype=np.int64) for c in code_arrays]
    if not arrays:
        raise FormatError("fitting an entropy table needs at least one utterance of codes")
    if not 1 <= num_contexts <= 256:
        raise FormatError(f"num_contexts must be in 1..256, got {num_contexts}")
    k = min(c.shape[0] for c in arrays)
    a = 1 << bits
    if any(c.size and (int(c.max()) >= a or int(c.min()) < 0) for c in arrays):
        raise FormatError(f"codes do not fit in {bits} bits")

    def pairs(subset: list[np.ndarray], j: int, src: ContextSource) -> _Pairs:
        prev_parts, cur_parts = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for c in subset:
            if c.shape[1] == 0:
                continue
            if src == ContextSource.NONE:
                prev_parts.append(np.zeros(c.shape[1], dtype=np.int64))
            elif src == ContextSource.PREV_LEVEL:
                prev_parts.append(c[j - 1])
            else:
                prev_parts.append(np.concatenate([[0], c[j, :-1]]))
            cur_parts.append(c[j])
        return _Pairs.of(np.concatenate(prev_parts), np.concatenate(cur_parts), a)

    train = [c for i, c in enumerate(arrays) if i % heldout_every != heldout_every - 1]
    held = [c for i, c in enumerate(arrays) if i % heldout_every == heldout_every - 1]
    if not held or not train:
        train = held = arrays
    sources = np.zeros(k, dtype=np.uint8)
    cmap = np.zeros((k, a), dtype=np.uint8)
    freqs = np.ones((k, num_contexts, a), dtype=np.uint32)
    fits = []
    for j in range(k):
        candidates = [ContextSource.NONE, ContextSource.PREV_FRAME]
        if j > 0:
            candidates.insert(1, ContextSource.PREV_LEVEL)
        results = {}
        for src in candidates:
            tr, ho = pairs(train, j, src), pairs(held, j, src)
            c = 1 if src == ContextSource.NONE else num_contexts
            assign = np.zeros(a, dtype=np.uint8) if c == 1 else _cluster(tr, c, a)
            results[src] = min(
                (_heldout_bits(ho, assign, _freqs_from(tr, assign, c, a, sm)), sm)
                for sm in (1, 4, 16, 64)
            )
        src = min(results, key=lambda s: results[s][0])
        smooth = results[src][1]
        allp = pairs(arrays, j, src)
        c = 1 if src == ContextSource.NONE else num_contexts
        assign = np.zeros(a, dtype=np.uint8) if c == 1 else _cluster(allp, c, a)
        sources[j] = src
        cmap[j] = assign
        freqs[j, :c] = _freqs_from(allp, assign, c, a, smooth)
        fits.append(LevelFit(j + 1, src, {s.name: results[s][0] for s in results}))
    table = EntropyTable(model, weights_hash, bits, sources, cmap, freqs)
    return table, fits


# -- where tables live --------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def table_path(model: str, weights_hash: bytes) -> Path:
    """Where the entropy table for preset ``model`` with these weights is kept: beside the
    model's packaged weights, one file per weights hash."""
    return ASSETS / model / f"entropy-{weights_hash.hex()}.safetensors"


def find_table(model: str, weights_hash: bytes, table_id: bytes | None = None) -> EntropyTable:
    """The stored table for ``model`` with these weights (and this id, when given).

    Raises FormatError saying how to make one when there is none or it does not match.
    """
    path = table_path(model, weights_hash)
    if not path.is_file():
        raise FormatError(
            f"no entropy table for model {model!r} with weights {weights_hash.hex()} "
            f"({path}); fit one with `mimirate entropy-fit DIR --model {model}`"
        )
    table = EntropyTable.load(path)
    if table.weights_hash != weights_hash or table.model != model:
        raise FormatError(
            f"the entropy table at {path} was fitted for {table.model!r} weights "
            f"{table.weights_hash.hex()}, not {model!r} {weights_hash.hex()}; refit it with "
            f"`mimirate entropy-fit DIR --model {model}`"
        )
    if table_id is not None and table.table_id != table_id:
        raise FormatError(
            f"the file was coded with entropy table {table_id.hex()}, but the table at {path} "
            f"is {table.table_id.hex()}; pass the right one with --table"
        )
    return table
