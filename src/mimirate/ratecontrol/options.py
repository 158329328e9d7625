"""The stream settings a sender can choose between, their wire cost and expected QoE.

A setting (:class:`StreamOption`) is levels per frame, frames per packet and redundancy
(the first ``r`` levels of each frame of the previous packet, piggybacked on the next). Its
wire rate comes from the sizes of real packets (:class:`mimirate.ratecontrol.wire.WireSizer`),
headers included, so a controller given a rate budget picks what actually fits.

:class:`OptionTable` scores every setting with the same receiver and QoE model that the
simulator uses (:mod:`mimirate.ratecontrol.qoe`): a frame waits for the rest of its packet,
crosses the network, plays if it is in time, else its redundant copy one packet later
plays if that is in time; with independent packet losses of probability ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mimirate.ratecontrol.qoe import FRAME_MS, LOST_UTILITY, QualityTable, delay_impairment

#: The receiver's playout deadline after capture: later frames are dropped as late (ITU-T
#: G.114 puts 400 ms mouth-to-ear at the limit of acceptable planning).
PLAYOUT_DEADLINE_MS = 400.0
#: Frames per packet a sender may use: more would put the first frame past the deadline.
FRAMES_PER_PACKET = (1, 2, 3, 4)
#: Redundancy depths offered (levels of each earlier frame repeated).
REDUNDANCY_LEVELS = (0, 1, 2, 4, 8)
#: Level counts the quality table measures (the others are interpolated there): the steps
#: of the queue-based baseline (see :func:`level_ladder`).
LEVEL_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def level_ladder(num_levels: int) -> tuple[int, ...]:
    """:data:`LEVEL_LADDER` cut to a codec of ``num_levels`` levels (which it always ends with)."""
    return (*(k for k in LEVEL_LADDER if k < num_levels), num_levels)


class Sizer(Protocol):
    def packet_bytes(self, levels: tuple[int, ...], redundancy: tuple[int, ...]) -> int: ...


@dataclass(frozen=True)
class StreamOption:
    """One steady stream setting and its wire rate (bit/s, headers included)."""

    levels: int
    frames_per_packet: int
    redundancy: int
    wire_bps: float
    index: int = 0  # position in its OptionTable


def option_bps(
    sizer: Sizer,
    levels: int,
    frames_per_packet: int,
    redundancy: int,
    frame_rate: float = 1000.0 / FRAME_MS,
) -> float:
    """Wire bit/s of a steady stream of packets built with this setting."""
    red = (min(redundancy, levels),) * frames_per_packet if redundancy > 0 else ()
    size = sizer.packet_bytes((levels,) * frames_per_packet, red)
    return size * 8.0 * frame_rate / frames_per_packet


def expected_frame_qoe(
    table: QualityTable,
    levels: np.ndarray,
    frames_per_packet: np.ndarray,
    redundancy: np.ndarray,
    loss: float,
    network_delay_ms: float | np.ndarray,
) -> np.ndarray:
    """Expected QoE per frame for settings ``[N]`` (arrays broadcast together).

    ``network_delay_ms`` is the expected one-way delay of a packet from its sending
    (propagation, queuing and serialisation). Switch penalties are left out: a steady
    setting has none.
    """
    lv = np.asarray(levels)
    f = np.asarray(frames_per_packet)
    r = np.minimum(np.asarray(redundancy), lv)
    u_main = table.utility_of(lv)
    u_red = table.utility_of(r)
    total = np.zeros(np.broadcast(lv, f, r).shape)
    fmax = int(np.max(f))
    for i in range(fmax):  # i frames captured after this one in the same packet
        inside = i < f
        wait = i * FRAME_MS
        lat = wait + network_delay_ms
        lat_red = lat + f * FRAME_MS
        ok = lat <= PLAYOUT_DEADLINE_MS
        ok_red = (lat_red <= PLAYOUT_DEADLINE_MS) & (r > 0)
        q_main = np.where(ok, u_main - delay_impairment(lat + FRAME_MS), LOST_UTILITY)
        q_red = np.where(ok_red, u_red - delay_impairment(lat_red + FRAME_MS), LOST_UTILITY)
        q_main = np.maximum(q_main, LOST_UTILITY)
        q_red = np.maximum(q_red, LOST_UTILITY)
        e = (1 - loss) * q_main + loss * ((1 - loss) * q_red + loss * LOST_UTILITY)
        total = total + np.where(inside, e, 0.0)
    return total / f


class OptionTable:
    """Every setting of levels x frames per packet x redundancy, with its wire rate.

    Args:
        sizer: measures packets (real ``bytes(Packet)`` + headers).
        table: the codec's measured quality per level.
        levels: level counts offered (default 1..K of the table: fine steps let a
            controller settle just under a link's rate).
        frames_per_packet, redundancy: packetisations and redundancy depths offered.
    """

    def __init__(
        self,
        sizer: Sizer,
        table: QualityTable,
        levels: tuple[int, ...] | None = None,
        frames_per_packet: tuple[int, ...] = FRAMES_PER_PACKET,
        redundancy: tuple[int, ...] = REDUNDANCY_LEVELS,
    ) -> None:
        self.table = table
        lvs = levels or tuple(range(1, table.num_levels + 1))
        combos = [(k, f, r) for f in frames_per_packet for k in lvs for r in redundancy if r <= k]
        opts = [
            StreamOption(k, f, r, option_bps(sizer, k, f, r), i)
            for i, (k, f, r) in enumerate(combos)
        ]
        self.options = opts
        self.levels = np.array([o.levels for o in opts])
        self.fpp = np.array([o.frames_per_packet for o in opts])
        self.red = np.array([o.redundancy for o in opts])
        self.bps = np.array([o.wire_bps for o in opts])
        self.packet_bytes = self.bps * self.fpp * FRAME_MS / 8000.0
        self.cheapest = opts[int(np.argmin(self.bps))]

    def find(self, levels: int, frames_per_packet: int, redundancy: int) -> StreamOption:
        for o in self.options:
            if (o.levels, o.frames_per_packet, o.redundancy) == (
                levels,
                frames_per_packet,
                redundancy,
            ):
                return o
        raise KeyError((levels, frames_per_packet, redundancy))

    def scores(self, loss: float, network_delay_ms: float | np.ndarray) -> np.ndarray:
        """Expected per-frame QoE of every option ``[N]`` (the delay a float, or ``[N]``
        per option: a bigger packet takes longer to serialise)."""
        return expected_frame_qoe(
            self.table, self.levels, self.fpp, self.red, loss, network_delay_ms
        )

    def best(
        self,
        rate_bps: float,
        loss: float,
        network_delay_ms: float | np.ndarray,
        *,
        max_frames_per_packet: int | None = None,
        max_redundancy: int | None = None,
        min_redundancy: int = 0,
        scores: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> StreamOption:
        """The option of highest expected QoE whose wire rate fits ``rate_bps`` (the
        cheapest eligible one when none fits); ties go to the cheaper. ``allowed`` ``[N]``
        bool narrows the choice further where it leaves anything that fits."""
        eligible = self.red >= min_redundancy
        if allowed is not None and (eligible & allowed & (self.bps <= rate_bps)).any():
            eligible = eligible & allowed
        fits = (self.bps <= rate_bps) & eligible
        if max_frames_per_packet is not None:
            fits &= self.fpp <= max_frames_per_packet
        if max_redundancy is not None:
            fits &= self.red <= max_redundancy
        if not fits.any():
            pool = np.flatnonzero(eligible)
            return (
                self.options[int(pool[np.argmin(self.bps[pool])])] if pool.size else self.cheapest
            )
        if scores is None:
            scores = self.scores(loss, network_delay_ms)
        s = np.where(fits, scores, -np.inf)
        top = np.flatnonzero(s >= s.max() - 1e-9)
        return self.options[int(top[np.argmin(self.bps[top])])]
