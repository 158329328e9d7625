"""Baseline controllers for the simulator, and the offline optimum that bounds them all.

- :class:`FixedController`: the same levels, packetisation and redundancy throughout.
- :class:`ThroughputController`: the throughput rule of adaptive streaming: budget =
  :data:`THROUGHPUT_GAIN` x the harmonic mean of the last receive rates (the gain above 1 is
  its only way to find more capacity: a real-time sender never sends more than it chose).
- :class:`QueueController`: the buffer-based rule (BBA) turned around for a sender: levels
  fall linearly from the most to one as the queuing delay crosses a reservoir-to-cushion
  band, and climb back one level per report.
- :func:`offline_optimum`: dynamic programming over the whole trace and loss pattern (an
  oracle; see its docstring), replayed in the simulator by :class:`PlanController`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from mimirate.ratecontrol.controller import Decision, Feedback
from mimirate.ratecontrol.options import FRAMES_PER_PACKET, PLAYOUT_DEADLINE_MS, OptionTable, Sizer
from mimirate.ratecontrol.qoe import (
    FRAME_MS,
    LOST_UTILITY,
    SWITCH_WEIGHT,
    QualityTable,
    delay_impairment,
)
from mimirate.ratecontrol.simulator import LinkConfig
from mimirate.ratecontrol.traces import Trace

#: Frames per packet of the fixed baselines (two 80 ms frames: a 160 ms packet, the
#: bundling a careful fixed-rate sender would pick for 40-byte headers; four frames would
#: put the first frame past the playout deadline on a thin link).
FIXED_FRAMES_PER_PACKET = 2
#: Levels of the fixed baselines.
FIXED_LEVELS = (1, 4, 8, 16, 32)
#: Redundant levels of the "fixed 8 with redundancy" baseline.
FIXED_REDUNDANCY = 2
#: Throughput rule: budget over the measured receive rate, and how many samples it averages.
THROUGHPUT_GAIN = 1.25
THROUGHPUT_SAMPLES = 5
#: Queue rule: queuing delay below which it sends the most, above which the least.
RESERVOIR_MS = 20.0
CUSHION_MS = 150.0
#: Levels the offline optimum chooses from (each fixed baseline's among them).
DP_LEVELS = (1, 2, 4, 8, 16, 32)
#: The offline optimum's backlog states: every DP_BIN_MS up to DP_FINE_MS (past the
#: playout deadline plus a packet, where every frame is late anyway), then growing
#: geometrically (an outage can hold packets for seconds) up to DP_MAX_BACKLOG_MS.
DP_BIN_MS = 20.0
DP_FINE_MS = 800.0
DP_MAX_BACKLOG_MS = 60_000.0
DP_BINS = np.unique(
    np.concatenate(
        [
            np.arange(0.0, DP_FINE_MS + DP_BIN_MS / 2, DP_BIN_MS),
            np.geomspace(DP_FINE_MS, DP_MAX_BACKLOG_MS, 15),
        ]
    )
)


class FixedController:
    """Always the same setting."""

    def __init__(
        self, levels: int, frames_per_packet: int = FIXED_FRAMES_PER_PACKET, redundancy: int = 0
    ) -> None:
        self.decision = Decision(levels, frames_per_packet, redundancy, levels)
        self.name = f"fixed-{levels}" + (f"+red{redundancy}" if redundancy else "")

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        return self.decision


class _Path:
    """The receive rate and queuing delay a baseline sees, from the reports."""

    def __init__(self) -> None:
        self.base_owd = math.inf
        self.qdelay = 0.0
        self.owd = 0.0
        self._received: deque[tuple[float, int]] = deque()
        self.rates: deque[float] = deque(maxlen=THROUGHPUT_SAMPLES)

    def take(self, fb: Feedback) -> bool:
        if not fb.arrivals:
            return False
        owds = [a.arrival_ms - a.send_ms for a in fb.arrivals]
        self.base_owd = min(self.base_owd, min(owds))
        self.owd = max(owds)
        self.qdelay = self.owd - self.base_owd
        for a in fb.arrivals:
            self._received.append((a.arrival_ms, a.wire_bytes))
        latest = max(a.arrival_ms for a in fb.arrivals)
        while self._received[0][0] <= latest - 1000.0:
            self._received.popleft()
        self.rates.append(sum(b for _, b in self._received) * 8.0)
        return True


class ThroughputController:
    """Budget = gain x harmonic mean of recent receive rates; best setting under it."""

    name = "throughput"

    def __init__(self, options: OptionTable, start_rate_bps: float = 2000.0) -> None:
        self.options = options
        self.path = _Path()
        self.rate_bps = start_rate_bps
        self.decision = Decision.of(options.best(start_rate_bps, 0.0, 0.0, max_redundancy=0), 1)

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        if feedback is not None and self.path.take(feedback):
            rates = [r for r in self.path.rates if r > 0]
            if rates:
                self.rate_bps = THROUGHPUT_GAIN * len(rates) / sum(1.0 / r for r in rates)
                opt = self.options.best(self.rate_bps, 0.0, self.path.owd, max_redundancy=0)
                self.decision = Decision.of(opt, 1)
        return self.decision


class QueueController:
    """Levels from the queuing delay (buffer-based), fixed packetisation."""

    name = "queue"

    def __init__(
        self, max_levels: int = 32, frames_per_packet: int = FIXED_FRAMES_PER_PACKET
    ) -> None:
        self.max_levels = max_levels
        self.fpp = frames_per_packet
        self.levels = 1
        self.path = _Path()

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        if feedback is not None and self.path.take(feedback):
            x = (CUSHION_MS - self.path.qdelay) / (CUSHION_MS - RESERVOIR_MS)
            target = 1 + round(float(np.clip(x, 0.0, 1.0)) * (self.max_levels - 1))
            self.levels = target if target < self.levels else min(self.levels + 1, target)
        return Decision(self.levels, self.fpp, 0, self.levels)


@dataclass(frozen=True)
class Plan:
    """A whole-stream schedule: packet ``k`` holds frames ``starts[k] ..
    starts[k] + frames[k] - 1`` at ``levels[k]`` levels and repeats the previous packet's
    frames at ``redundancy[k]`` levels (0 = none). ``value`` is the DP's own estimate of
    the summed frame QoE (its delays are rounded up, so the replay does at least as well,
    switch penalties aside)."""

    starts: np.ndarray  # [P]
    frames: np.ndarray  # [P]
    levels: np.ndarray  # [P]
    redundancy: np.ndarray  # [P]
    value: float


class PlanController:
    """Replays a :class:`Plan` (ignores feedback: the plan already knows the future)."""

    name = "offline-optimum"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        n = int(plan.starts[-1] + plan.frames[-1])
        self._packet_of = np.repeat(np.arange(plan.starts.size), plan.frames)[:n]

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        t = min(max(round(now_ms / FRAME_MS) - 1, 0), self._packet_of.size - 1)
        k = int(self._packet_of[t])
        lv = int(self.plan.levels[k])
        return Decision(lv, int(self.plan.frames[k]), int(self.plan.redundancy[k]), lv)


def offline_optimum(
    trace: Trace,
    table: QualityTable,
    *,
    sizer: Sizer,
    link: LinkConfig | None = None,
    duration_s: float | None = None,
    frames_per_packet: tuple[int, ...] = FRAMES_PER_PACKET,
    levels: tuple[int, ...] = DP_LEVELS,
) -> Plan:
    """The best schedule with the whole trace and loss pattern known.

    A dynamic programme over frame boundaries. The state at boundary ``t`` (the moment
    the packet ending with frame ``t - 1`` was sent) is the bottleneck's backlog (rounded
    up to one of :data:`DP_BINS`, so its delays are never optimistic), the previous
    packet's levels (switch penalty, redundancy) and, if that packet was lost, its frame
    count. An action sends the next ``F`` frames at ``L`` levels, and after a lost packet
    may repeat its frames in full. The oracle knows more than any controller can; its
    limits: levels from :data:`DP_LEVELS`, uniform within a packet, redundancy only in full.
    """
    link = link or LinkConfig()
    dur = trace.period_s if duration_s is None else duration_s
    n_t = int(dur * 1000 / FRAME_MS)
    lost = link.loss.pattern(n_t + 1, np.random.default_rng([link.seed, 0]))
    prop = link.propagation_ms
    lv = np.array(levels)
    n_l = lv.size
    u = table.utility_of(lv)
    bins = DP_BINS
    n_b = bins.size
    n_pf = max(frames_per_packet) + 1  # previous packet lost with pf frames (0: not lost)
    shape = (n_b, n_l, n_pf)
    size_state = n_b * n_l * n_pf
    neg = -np.inf
    value = np.full((n_t + 1, size_state), neg)
    value[0, 0 * n_l * n_pf : 1 * n_l * n_pf : n_pf] = 0.0  # b=0, any Lp, pf=0
    back = np.zeros((n_t + 1, size_state, 5), np.int16)  # F, src b, src Lp, src pf, red
    switch = SWITCH_WEIGHT * np.abs(u[:, None] - u[None, :])  # [Lp, L]
    ell = np.broadcast_to(np.arange(n_l), (n_b, n_l, n_l))

    size_cache: dict[tuple[int, int], np.ndarray] = {}

    def sizes(f: int, red_frames: int) -> np.ndarray:
        """Wire bytes ``[Lp, L]`` of f frames at L, repeating red_frames frames at Lp."""
        if (f, red_frames) not in size_cache:
            rows = lv if red_frames else lv[:1]
            size_cache[f, red_frames] = np.array(
                [
                    [sizer.packet_bytes((int(k),) * f, (int(kp),) * red_frames) for k in lv]
                    for kp in rows
                ],
                dtype=np.float64,
            )
        return size_cache[f, red_frames]

    def frame_q(arrival: np.ndarray, capture: float, util: np.ndarray) -> np.ndarray:
        lat = arrival - capture
        q = np.maximum(util - delay_impairment(lat + FRAME_MS), LOST_UTILITY)
        return np.where(lat <= PLAYOUT_DEADLINE_MS, q, LOST_UTILITY)

    for t in range(n_t):
        v_t = value[t].reshape(shape)
        alive = [pf for pf in range(n_pf) if np.isfinite(v_t[:, :, pf]).any()]
        if not alive:
            continue
        busy = t * FRAME_MS + bins  # [B] when the link is free again
        for f in frames_per_packet:
            if t + f > n_t:
                continue
            send = (t + f) * FRAME_MS
            slot_lost = bool(lost[t + f - 1])
            start = np.maximum(busy, send)
            c_start = np.asarray(trace.bytes_by(start / 1e3))
            queued = c_start - trace.bytes_by(send / 1e3)
            for pf in alive:
                for red in (False, True) if pf > 0 and not slot_lost else (False,):
                    size = sizes(f, pf if red else 0)  # [Lp, L] (or [1, L] without redundancy)
                    dep = np.asarray(trace.time_when(c_start[:, None, None] + size[None])) * 1e3
                    drop = queued[:, None, None] + size[None] > link.queue_bytes
                    arrival = dep + prop
                    reward = np.zeros(dep.shape)
                    if not slot_lost:
                        for i in range(f):
                            reward = reward + frame_q(
                                arrival, (t + i + 1) * FRAME_MS, u[None, None, :]
                            )
                        if red:
                            for j in range(pf):
                                reward = reward + frame_q(
                                    arrival, (t - pf + j + 1) * FRAME_MS, u[None, :, None]
                                )
                    dep = np.broadcast_to(dep, (n_b, n_l, n_l))
                    drop = np.broadcast_to(drop, (n_b, n_l, n_l))
                    reward = np.broadcast_to(reward, (n_b, n_l, n_l))
                    reward = np.where(drop, 0.0, reward) - switch[None]
                    busy_next = np.where(drop, busy[:, None, None], dep)
                    i_next = np.minimum(
                        np.searchsorted(bins, np.maximum(busy_next - send, 0.0) - 1e-6), n_b - 1
                    )
                    pf_next = np.where(drop | slot_lost, f, 0)
                    total = v_t[:, :, pf, None] + reward  # [B, Lp, L]
                    key = ((i_next * n_l + ell) * n_pf + pf_next).reshape(-1)
                    flat = total.reshape(-1)
                    cand = np.flatnonzero(np.isfinite(flat))
                    if cand.size == 0:
                        continue
                    # Scatter-max: sort by target then value, keep the last of each target.
                    order = cand[np.lexsort((flat[cand], key[cand]))]
                    last = np.ones(order.size, bool)
                    last[:-1] = key[order[1:]] != key[order[:-1]]
                    win = order[last]
                    tgt = key[win]
                    better = flat[win] > value[t + f, tgt]
                    win, tgt = win[better], tgt[better]
                    src_b, src_p, _ = np.unravel_index(win, total.shape)
                    value[t + f, tgt] = flat[win]
                    back[t + f, tgt] = np.stack(
                        [
                            np.full(win.size, f),
                            src_b,
                            src_p,
                            np.full(win.size, pf),
                            np.full(win.size, int(red)),
                        ],
                        axis=1,
                    )
    state = int(np.argmax(value[n_t]))
    total_value = float(value[n_t, state])
    t = n_t
    packets = []
    while t > 0:
        f, src_b, src_p, src_pf, red = (int(x) for x in back[t, state])
        lvl = int(lv[np.unravel_index(state, shape)[1]])
        packets.append((t - f, f, lvl, int(lv[src_p]) if red else 0))
        state = int(np.ravel_multi_index((src_b, src_p, src_pf), shape))
        t -= f
    packets.reverse()
    arr = np.array(packets, dtype=np.int64).reshape(-1, 4)
    return Plan(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], total_value)
