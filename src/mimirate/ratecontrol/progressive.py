"""Progressive delivery of voice messages: coarse levels first, quality rising as the rest arrives.

A ``.mimi`` file stores each chunk coarse first (level 1 of every frame, then level 2, ...).
Making the whole message one chunk (:func:`coarse_first_file`) puts every frame's base
level at the front: a player can start as soon as the first second's base levels are in,
and the refinements that arrive while it plays raise the quality of the frames not yet
played. The reference is the same codes as a 32-level file in time order, one-second
chunks, played by a player that waits for each frame to be complete
(:func:`in_order_file`).

:func:`deliver` sends a file's bytes over a trace as a reliable transfer (the link's
capacity, less 40 bytes of headers per 1500-byte packet, after a propagation delay), reads
what arrived at each instant with ``mimirate.bitstream.read_prefix`` (the real parser on the
real bytes) and plays it: time to first audio, stalls, the levels each frame played with,
and the quality of the whole message if decoded at each instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from mimirate.bitstream.container import MAX_CHUNK_FRAMES, MimiFile, read_prefix
from mimirate.errors import ConfigError, FormatError
from mimirate.ratecontrol.qoe import QualityTable
from mimirate.ratecontrol.traces import Trace

#: Bytes of headers per full-size packet of the reliable transfer (IPv4 + TCP/QUIC-ish).
PACKET_BYTES = 1500
HEADER_BYTES = 40
#: Audio a player wants before it starts.
START_SECONDS = 1.0
#: Time step at which arrivals are read.
STEP_S = 0.02


def coarse_first_file(f: MimiFile) -> MimiFile:
    """The same codes as one chunk (up to the container's largest): every base level first."""
    frames = min(max(f.num_frames, 1), MAX_CHUNK_FRAMES)
    return dataclasses.replace(f, chunk_frames=frames)


def in_order_file(f: MimiFile) -> MimiFile:
    """The same codes in one-second chunks: time order, second by second."""
    frames = max(1, round(f.frame_rate * START_SECONDS))
    return dataclasses.replace(f, chunk_frames=frames)


@dataclass(frozen=True)
class Delivery:
    """How one file played over one trace.

    Attributes:
        name: the layout / player.
        file_bytes: size of the file.
        first_audio_s: time to first audio (start of playback).
        stall_s: total time playback waited for data after it started.
        complete_s: when the last byte arrived.
        played_levels: ``[T]`` levels each frame played with.
        played_utility: mean R of the frames as played.
        times_s: ``[S]`` sample instants; message_utility: ``[S]`` mean R of the whole
            message decoded from what had arrived then (0 for frames not yet there).
    """

    name: str
    file_bytes: int
    first_audio_s: float
    stall_s: float
    complete_s: float
    played_levels: np.ndarray
    played_utility: float
    times_s: np.ndarray
    message_utility: np.ndarray


def deliver(
    data: bytes,
    trace: Trace,
    table: QualityTable,
    *,
    name: str,
    progressive: bool,
    propagation_ms: float = 40.0,
    start_s: float = 0.0,
) -> Delivery:
    """Play ``data`` (a ``.mimi`` file) as it arrives over ``trace`` from ``start_s``.

    A ``progressive`` player starts when the first second has its base level and plays
    each frame with the levels present at its turn (stalling only for a missing base
    level); the other starts when the first second is complete and plays complete frames.
    """
    try:
        whole = read_prefix(data)
    except FormatError as e:
        raise ConfigError(f"{name}: not a whole .mimi file ({e})") from e
    if not whole.complete:
        raise ConfigError(f"{name}: the file is incomplete; deliver needs the whole file")
    n_frames = whole.num_frames
    full = np.asarray(whole.levels, dtype=np.int64)
    goodput = (PACKET_BYTES - HEADER_BYTES) / PACKET_BYTES
    c0 = trace.bytes_by(start_s)
    done = float(trace.time_when(c0 + len(data) / goodput)) - start_s + propagation_ms / 1e3
    times = np.arange(0.0, done + STEP_S, STEP_S)
    avail = np.zeros((times.size, n_frames), np.int64)
    arrived_bytes = np.floor(
        (np.asarray(trace.bytes_by(start_s + np.maximum(times - propagation_ms / 1e3, 0.0))) - c0)
        * goodput
    ).astype(np.int64)
    last_n, last_lv = -1, np.zeros(n_frames, np.int64)
    header_min = 16  # nothing is readable before the header; skip the parser's errors
    for i, n in enumerate(np.minimum(arrived_bytes, len(data))):
        if n != last_n:
            last_n = int(n)
            lv = np.zeros(n_frames, np.int64)
            if n >= header_min:
                try:
                    p = read_prefix(data[:n])
                    lv[: p.frames_arrived] = p.levels
                except FormatError:
                    pass  # the header itself has not arrived yet
            last_lv = lv
        avail[i] = last_lv
    avail[-1] = full
    # When each frame becomes playable: base level present, or complete.
    ready_mask = avail >= 1 if progressive else avail >= full[None, :]
    ready_idx = np.argmax(ready_mask, axis=0)  # first sample index, per frame
    ready_t = times[ready_idx]
    first = min(n_frames, max(1, round(whole.frame_rate * START_SECONDS)))
    start = float(ready_t[:first].max())
    frame_s = 1.0 / whole.frame_rate
    clock = start
    stall = 0.0
    played = np.zeros(n_frames, np.int64)
    for t in range(n_frames):
        if ready_t[t] > clock:
            stall += ready_t[t] - clock
            clock = float(ready_t[t])
        i = min(math.floor(clock / STEP_S + 1e-9), times.size - 1)
        played[t] = avail[i, t] if progressive else full[t]
        clock += frame_s
    util = table.utility_of(avail).mean(axis=1)
    return Delivery(
        name,
        len(data),
        start,
        stall,
        done,
        played,
        float(table.utility_of(played).mean()),
        times,
        util,
    )


def compare(
    f: MimiFile,
    trace: Trace,
    table: QualityTable,
    *,
    propagation_ms: float = 40.0,
    start_s: float = 0.0,
) -> tuple[Delivery, Delivery]:
    """(coarse-first progressive, 32-level in time order) over the same trace."""
    a = deliver(
        coarse_first_file(f).to_bytes(),
        trace,
        table,
        name="coarse-first",
        progressive=True,
        propagation_ms=propagation_ms,
        start_s=start_s,
    )
    b = deliver(
        in_order_file(f).to_bytes(),
        trace,
        table,
        name="in-order",
        progressive=False,
        propagation_ms=propagation_ms,
        start_s=start_s,
    )
    return a, b
