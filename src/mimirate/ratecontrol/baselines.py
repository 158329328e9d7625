"""Baseline controllers for the simulator, and the offline optimum that bounds them all.

- :class:`FixedController`: the same levels, packetisation and redundancy throughout.
- :class:`ThroughputController`: the throughput rule of adaptive streaming: budget =
  :data:`THROUGHPUT_GAIN` x the harmonic mean of the last receive rates (the gain above 1 is
  its only way to find more capacity: a real-time sender never sends more than it chose).
- :class:`QueueController`: the buffer-based rule (BBA) turned around for a sender: levels
  fall linearly down the level ladder as the queuing delay crosses a reservoir-to-cushion
  band, and climb back one step per report.
- :func:`offline_optimum`: dynamic programming over the whole trace and loss pattern, an
  optimistic relaxation whose value bounds every controller from above (see its
  docstring), or over the trace with losses known only by their probability, the bound in
  expectation for controllers that cannot foresee losses; its schedule is replayed in the
  simulator by :class:`PlanController`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mimirate.ratecontrol.controller import Decision, Feedback
from mimirate.ratecontrol.options import (
    FRAMES_PER_PACKET,
    PLAYOUT_DEADLINE_MS,
    REDUNDANCY_LEVELS,
    OptionTable,
    Sizer,
    level_ladder,
)
from mimirate.ratecontrol.qoe import (
    FRAME_MS,
    LOST_UTILITY,
    QualityTable,
    delay_impairment,
)
from mimirate.ratecontrol.simulator import BernoulliLoss, LinkConfig
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
#: The offline optimum's backlog states: bytes of work queued at the bottleneck, always
#: rounded DOWN to one of :func:`dp_bins` (so its delays are never pessimistic): every
#: DP_STEP_BYTES up to DP_FINE_BYTES (a few packets: where delays decide the QoE), then
#: geometric with ratio DP_RATIO up to the drop-tail buffer. Bytes, not ms: an outage
#: leaves the work in bytes unchanged, where rounding a time would skip over it.
DP_STEP_BYTES = 0.25
DP_FINE_BYTES = 400.0
DP_RATIO = 1.002


def dp_bins(queue_bytes: int) -> np.ndarray:
    """Backlog states ``[B]`` (bytes, increasing, from 0) for a buffer of ``queue_bytes``."""
    fine = np.arange(0.0, DP_FINE_BYTES, DP_STEP_BYTES)
    top = max(float(queue_bytes), DP_FINE_BYTES)
    n = int(np.ceil(np.log(top / DP_FINE_BYTES) / np.log(DP_RATIO))) + 1
    return np.unique(np.concatenate([fine, DP_FINE_BYTES * DP_RATIO ** np.arange(n)]))


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
    """Levels of :func:`~mimirate.ratecontrol.options.level_ladder` from the queuing delay
    (buffer-based), fixed packetisation."""

    name = "queue"

    def __init__(
        self, max_levels: int = 32, frames_per_packet: int = FIXED_FRAMES_PER_PACKET
    ) -> None:
        self.ladder = level_ladder(max_levels)
        self.fpp = frames_per_packet
        self.step = 0
        self.path = _Path()

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        if feedback is not None and self.path.take(feedback):
            x = (CUSHION_MS - self.path.qdelay) / (CUSHION_MS - RESERVOIR_MS)
            # A step of the ladder, climbing back one step per report at most.
            target = round(float(np.clip(x, 0.0, 1.0)) * (len(self.ladder) - 1))
            self.step = target if target < self.step else min(self.step + 1, target)
        lv = self.ladder[self.step]
        return Decision(lv, self.fpp, 0, lv)


@dataclass(frozen=True)
class Plan:
    """A whole-stream schedule: packet ``k`` holds frames ``starts[k] ..
    starts[k] + frames[k] - 1`` at ``levels[k]`` levels (0: the sender drops them unsent)
    and repeats the previous packet's frames at ``redundancy[k]`` levels (0 = none).
    ``value`` is the summed frame QoE the optimum credits itself: an upper bound on what
    any controller achieves (see :func:`offline_optimum`); ``bound`` is it per frame."""

    starts: np.ndarray  # [P]
    frames: np.ndarray  # [P]
    levels: np.ndarray  # [P]
    redundancy: np.ndarray  # [P]
    value: float

    @property
    def num_frames(self) -> int:
        return int(self.starts[-1] + self.frames[-1]) if self.starts.size else 0

    @property
    def bound(self) -> float:
        """Upper bound on the mean per-frame QoE of any controller on this trace."""
        return self.value / max(self.num_frames, 1)


class PlanController:
    """Replays a :class:`Plan` (ignores feedback: the plan already knows the future)."""

    name = "offline-optimum"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._packet_of = np.repeat(np.arange(plan.starts.size), plan.frames)[: plan.num_frames]

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        t = min(max(round(now_ms / FRAME_MS) - 1, 0), self._packet_of.size - 1)
        k = int(self._packet_of[t])
        lv = int(self.plan.levels[k])
        if lv == 0:
            return Decision(1, int(self.plan.frames[k]), 0, 1, pause=True)
        return Decision(lv, int(self.plan.frames[k]), int(self.plan.redundancy[k]), lv)


def _bin_down(bins: np.ndarray, backlog: np.ndarray) -> np.ndarray:
    """Index of the largest ``bins`` entry at or below each backlog."""
    i = np.searchsorted(bins, np.maximum(backlog, 0.0), side="right") - 1
    return np.clip(i, 0, bins.size - 1)


def offline_optimum(
    trace: Trace,
    table: QualityTable,
    *,
    sizer: Sizer,
    link: LinkConfig | None = None,
    duration_s: float | None = None,
    frames_per_packet: tuple[int, ...] = FRAMES_PER_PACKET,
    levels: tuple[int, ...] | None = None,
    redundancy: tuple[int, ...] = REDUNDANCY_LEVELS,
    losses: Literal["known", "expected"] = "known",
) -> Plan:
    """The best schedule with the whole trace and loss pattern known, and an upper bound.

    A dynamic programme over frame boundaries. The state at boundary ``t`` (when the
    packet ending with frame ``t - 1`` was sent) is the bottleneck's backlog in bytes,
    rounded DOWN to one of :func:`dp_bins`, and, if the previous packet did not arrive,
    its frame count. An action sends the next ``F`` frames (``frames_per_packet``) at ``L``
    levels (``levels``, default all of the table's), repeating the previous packet's
    frames at ``R`` levels (``redundancy``) when it did not arrive; or drops the ``F``
    frames at the sender.

    ``Plan.value`` bounds from above the summed QoE of every controller in
    :func:`~mimirate.ratecontrol.simulator.simulate` on the same trace, link and seed (all
    frames speech) whose packets each hold one level count from ``levels``, and whose
    packetisation and redundancy are among those offered, because it is a relaxation:

    - any such controller's packet sequence is an action sequence here (a pause is a drop
      at the sender, after which nothing earlier is repeated, as in the simulator);
    - a smaller backlog never scores less (FIFO departures do not increase with it, a
      frame's QoE does not decrease as it arrives earlier, and a packet the bigger backlog
      would lose to a full buffer can be sent anyway and lost there, at no more backlog),
      so rounding the backlog down only over-estimates;
    - no switch penalty (it is never negative); redundancy only where the oracle knows the
      previous packet was lost, at any depth (a real sender repeats blindly, at most the
      levels those frames had).

    Its slack: each rounding gives away less than :data:`DP_STEP_BYTES` of queued work per
    packet (or a fraction ``1 - 1 / DP_RATIO`` of a backlog over :data:`DP_FINE_BYTES`);
    the switch penalties; the oracle's knowledge of losses. The plan it returns can be
    replayed with :class:`PlanController` (which pays those penalties).

    ``losses="expected"`` takes that knowledge away (Bernoulli loss only): the capacity
    trace is still known, each packet is lost with probability ``p``, and the value is the
    *expected* summed QoE. A packet's frames score ``1 - p`` of their QoE; a packet with
    redundancy ``R`` (its bytes always sent: the sender cannot know yet whether the packet
    before arrived) adds ``q (1 - p)`` of the repeated frames' QoE at ``R`` levels, ``q``
    being the probability that the packet before was lost (``p``, or 1 if the full buffer
    dropped it). Losses after the bottleneck do not change its backlog, so the backlog
    stays deterministic and the programme exact in expectation. Its value bounds the
    expected QoE of every controller that decides redundancy without knowing which
    packets were lost (all of this package's); a single run may beat it by luck, by as
    much as its realised losses fall short of ``p``. (The default, ``"known"``, gives the
    oracle the seed's loss pattern: a bound on every controller, far above what any of
    them can reach at 10 % loss.)
    """
    link = link or LinkConfig()
    dur = trace.period_s if duration_s is None else duration_s
    n_t = int(dur * 1000 / FRAME_MS)
    if losses not in ("known", "expected"):
        raise ValueError(f"losses must be 'known' or 'expected', not {losses!r}")
    expected = losses == "expected"
    if expected and not isinstance(link.loss, BernoulliLoss):
        raise ValueError("losses='expected' needs Bernoulli loss (independent packets)")
    p = link.loss.p if expected else 0.0
    if expected:  # the expectation replaces the draws
        lost = np.zeros(n_t + 1, bool)
    else:
        lost = link.loss.pattern(n_t + 1, np.random.default_rng([link.seed, 0]))
    prop = link.propagation_ms
    lv = np.array(levels or range(1, table.num_levels + 1))
    reds = np.array([0, *sorted({int(r) for r in redundancy if r > 0})])
    u = table.utility_of(lv)[None, None, :]  # [1, 1, L]
    u_red = table.utility_of(reds)[None, :, None]  # [1, R, 1]; depth 0 scores LOST_UTILITY
    bins = dp_bins(link.queue_bytes)
    n_b = bins.size
    max_f = max(frames_per_packet)
    # The state's second index: "known": the previous packet's frame count if it did not
    # arrive, else 0. "expected": 0 if there is nothing to repeat (after a drop at the
    # sender), pf in 1..max_f for a packet of pf frames sent (lost with probability p),
    # max_f + pf for one the full buffer dropped (lost for certain).
    n_pf = 2 * max_f + 1 if expected else max_f + 1
    n_l, n_r = lv.size, reds.size
    # Values of the boundaries a packet can reach from the current one (a ring: a packet
    # spans at most max(frames_per_packet) frames).
    ring = max(frames_per_packet) + 1
    value = np.full((ring, n_b, n_pf), -np.inf)
    value[0, 0, 0] = 0.0
    # Per state, how it was reached, packed in one int32 (see ``pack``): F, source backlog
    # bin, source pf, level index + 1 (0: dropped at the sender), redundancy index.
    back = np.zeros((n_t + 1, n_b, n_pf), np.int32)

    def pack(f: int, src_b: Any, src_pf: int, li: Any, ri: Any) -> Any:
        """The code of (F, source bin, source pf, level index, redundancy index); the
        bins and indices may be arrays."""
        return (((f * n_b + src_b) * n_pf + src_pf) * (n_l + 1) + li + 1) * n_r + ri

    def unpack(code: int) -> tuple[int, int, int, int, int]:
        code, ri = divmod(code, n_r)
        code, li = divmod(code, n_l + 1)
        code, src_pf = divmod(code, n_pf)
        f, src_b = divmod(code, n_b)
        return f, src_b, src_pf, li - 1, ri

    size_cache: dict[tuple[int, int], np.ndarray] = {}

    def sizes(f: int, pf: int) -> np.ndarray:
        """Wire bytes ``[R, L]`` of f frames at L, repeating pf frames at depth R."""
        if (f, pf) not in size_cache:
            rows = reds if pf else reds[:1]
            size_cache[f, pf] = np.array(
                [
                    [sizer.packet_bytes((int(k),) * f, (int(r),) * pf if r else ()) for k in lv]
                    for r in rows
                ],
                dtype=np.float64,
            )
        return size_cache[f, pf]

    def frame_q(arrival: np.ndarray, capture: float, util: np.ndarray) -> np.ndarray:
        lat = arrival - capture
        q = np.maximum(util - delay_impairment(lat + FRAME_MS), LOST_UTILITY)
        return np.where(lat <= PLAYOUT_DEADLINE_MS, q, LOST_UTILITY)

    def relax(t: int, key: np.ndarray, total: np.ndarray, info: np.ndarray) -> None:
        """Scatter-max ``total`` into flat states ``key`` of boundary ``t`` (``info``: how)."""
        order = np.lexsort((total, key))
        last = np.ones(order.size, bool)
        last[:-1] = key[order[1:]] != key[order[:-1]]
        win = order[last]
        tgt = key[win]
        flat_v = value[t % ring].reshape(-1)
        better = total[win] > flat_v[tgt]
        win, tgt = win[better], tgt[better]
        flat_v[tgt] = total[win]
        back[t].reshape(-1)[tgt] = info[win]

    for t in range(n_t):
        for src in range(n_pf):
            col = value[t % ring, :, src]
            pf = src - max_f if src > max_f else src  # frames that may be repeated
            # Probability that those frames did not arrive (known: they did not).
            q_prev = (p if src <= max_f else 1.0) if expected else 1.0
            # The value never rises with the backlog (see above): a state that scores no
            # more than one with less backlog is dominated, and need not be expanded.
            ahead = np.concatenate([[-np.inf], np.maximum.accumulate(col)[:-1]])
            live = np.flatnonzero(np.isfinite(col) & (col > ahead))
            if live.size == 0:
                continue
            base = col[live]
            for f in frames_per_packet:
                if t + f > n_t:
                    continue
                send = (t + f) * FRAME_MS
                c_send = float(trace.bytes_by(send / 1e3))
                served = c_send - float(trace.bytes_by(t * FRAME_MS / 1e3))
                queued = np.maximum(bins[live] - served, 0.0)  # [B] work left at the send
                # Drop the F frames at the sender: nothing sent, the backlog drains, and
                # nothing is repeated from before (as a pausing sender does).
                relax(t + f, _bin_down(bins, queued) * n_pf, base.copy(), pack(f, live, src, -1, 0))
                slot_lost = bool(lost[t + f - 1])
                size = sizes(f, pf)[: reds.size if pf and not slot_lost else 1]  # [R, L]
                work = queued[:, None, None] + size[None]  # [B, R, L] up to its last byte
                dep = np.asarray(trace.time_when(c_send + work)) * 1e3
                drop = work > link.queue_bytes
                reward = np.zeros(dep.shape)
                if not slot_lost:
                    arrival = dep + prop
                    for i in range(f):
                        reward = reward + (1 - p) * frame_q(arrival, (t + i + 1) * FRAME_MS, u)
                    if size.shape[0] > 1:
                        for j in range(pf):
                            repeated = frame_q(arrival, (t - pf + j + 1) * FRAME_MS, u_red)
                            reward = reward + q_prev * (1 - p) * repeated
                reward = np.where(drop, 0.0, reward)
                work_next = np.where(drop, queued[:, None, None], work)
                if expected:
                    pf_next = np.where(drop, max_f + f, f)
                else:
                    pf_next = np.where(drop | slot_lost, f, 0)
                key = (_bin_down(bins, work_next) * n_pf + pf_next).reshape(-1)
                total = (base[:, None, None] + reward).reshape(-1)
                b_i, r_i, l_i = np.meshgrid(
                    live, np.arange(size.shape[0]), np.arange(n_l), indexing="ij"
                )
                relax(t + f, key, total, pack(f, b_i, src, l_i, r_i).reshape(-1))
        value[t % ring] = -np.inf  # boundary t is done; its slot serves t + ring
    state = int(np.argmax(value[n_t % ring]))
    b, pf = np.unravel_index(state, (n_b, n_pf))
    total_value = float(value[n_t % ring, b, pf])
    t = n_t
    packets = []
    while t > 0:
        f, src_b, src_pf, li, ri = unpack(int(back[t, b, pf]))
        packets.append((t - f, f, int(lv[li]) if li >= 0 else 0, int(reds[ri])))
        b, pf = src_b, src_pf
        t -= f
    packets.reverse()
    arr = np.array(packets, dtype=np.int64).reshape(-1, 4)
    return Plan(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], total_value)


#: Utility the floor's programme gives every frame that plays: large enough that no
#: delay impairment (at most ~30 R points before the playout deadline) buys a lost frame.
_FLOOR_UTILITY = 1e6


def late_lost_floor(
    trace: Trace,
    *,
    sizer: Sizer,
    link: LinkConfig | None = None,
    duration_s: float | None = None,
    losses: Literal["known", "expected"] = "known",
) -> float:
    """The least fraction of frames late or lost that any sender reaches on this trace.

    :func:`offline_optimum` on a quality table in which every played frame is worth the
    same, far more than any delay costs: its optimum plays as many frames as a schedule can,
    at one level (a smaller packet never arrives later), and its value bounds that count
    from above for every controller whose packetisation and redundancy are among those
    offered (all of this package's). So the fraction returned is a lower bound on their
    late-or-lost fraction, within ``1e-4`` points. With ``losses="expected"`` (Bernoulli
    loss), a bound on the expected fraction of senders that do not know which packets
    were lost; ``"known"`` gives the oracle the loss pattern too. A frame counts as late
    or lost here as in the simulator (all frames speech).
    """
    flat = QualityTable(
        model="late-lost-floor",
        weights_hash="",
        dataset="",
        num_files=0,
        command="",
        created="",
        pesq_wb=(0.0,),
        mel_distance=(0.0,),
        utility=(_FLOOR_UTILITY,),
    )
    plan = offline_optimum(
        trace, flat, sizer=sizer, link=link, duration_s=duration_s, levels=(1,), losses=losses
    )
    # value >= U * played - (delay impairments of played frames), each impairment at most
    # Idd at the deadline: played <= value / U + that over U.
    worst = float(delay_impairment(np.array([PLAYOUT_DEADLINE_MS + FRAME_MS]))[0])
    played = plan.value / _FLOOR_UTILITY + plan.num_frames * worst / _FLOOR_UTILITY
    return max(0.0, 1.0 - played / max(plan.num_frames, 1))


@dataclass(frozen=True)
class OfflineBounds:
    """What no controller beats on one trace and link (see :func:`offline_bounds`).

    ``plan``: the oracle's schedule (losses known; its ``value`` bounds every run).
    ``expected_value``: the bound in expectation for senders that do not know which packets
    are lost (``plan.value`` when there is no random loss to not know). The floors: the
    least late-or-lost fraction, losses known and not (:func:`late_lost_floor`).
    ``blind``: whether the second pair was computed apart (Bernoulli loss, ``p > 0``).
    """

    plan: Plan
    expected_value: float
    late_lost_floor: float
    expected_late_lost_floor: float
    blind: bool


def offline_bounds(
    trace: Trace, table: QualityTable, *, sizer: Sizer, link: LinkConfig, duration_s: float
) -> OfflineBounds:
    """The offline optimum and the late-or-lost floor, with losses known and, under random
    (Bernoulli) loss, not known: the bounds `mimirate simulate` and the network benchmark
    report beside the controllers."""
    kw: dict[str, Any] = dict(sizer=sizer, link=link, duration_s=duration_s)
    plan = offline_optimum(trace, table, **kw)
    floor = late_lost_floor(trace, **kw)
    blind = isinstance(link.loss, BernoulliLoss) and link.loss.p > 0
    if not blind:
        return OfflineBounds(plan, plan.value, floor, floor, False)
    return OfflineBounds(
        plan,
        offline_optimum(trace, table, **kw, losses="expected").value,
        floor,
        late_lost_floor(trace, **kw, losses="expected"),
        True,
    )
