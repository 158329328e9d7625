"""A deterministic trace-driven simulator of one real-time stream over a bottleneck.

Sender -> bottleneck (capacity from a :class:`~mimirate.ratecontrol.traces.Trace`, FIFO,
drop-tail queue of ``queue_bytes``) -> random loss (Bernoulli or Gilbert-Elliott, one draw
per 80 ms sending slot) -> propagation delay -> receiver. The receiver sends a FEEDBACK
message (real ``mimirate.bitstream`` bytes) every ``feedback_interval_ms``; it crosses the
reverse path (propagation delay, the same loss model, no capacity limit) to the sender's
controller. Every packet is built as a real ``Packet`` and sized as its bytes + 40.

The receiver's jitter buffer holds each frame until it plays, at its own delay after
capture (an adaptive buffer that time-stretches, as WebRTC's NetEQ does, idealised: it
knows each frame's delay), and drops frames later than
:data:`~mimirate.ratecontrol.options.PLAYOUT_DEADLINE_MS`. A frame plays from its own
packet if that is in time, else from the redundant copy in the next packet if that one is,
else it is lost (nothing arrived) or late (arrived after the deadline). Definitions the
figures use, over speech frames only:

- a frame *played from redundancy* (at the fewer levels of its copy) is played, not lost:
  QoE scores the lower utility;
- *lost*: no copy arrived (lost on the link, dropped by the full queue, or dropped unsent
  by the sender while it pauses in an outage); *late*: a copy arrived, none in time;
- frames the VAD marks silent are sent at the controller's ``silence_levels``, or not at
  all when that is 0 (discontinuous transmission), and are left out of every average;
- ``wire_bps`` counts every byte sent: headers, redundant copies, packets later dropped.

QoE per frame is :func:`mimirate.ratecontrol.qoe.frame_qoe`.

Everything is seeded and single-threaded: the same arguments give the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mimirate.bitstream.packet import FeedbackReport
from mimirate.errors import ConfigError
from mimirate.ratecontrol.controller import DTX_KEEPALIVE_FRAMES, FeedbackReader, RateController
from mimirate.ratecontrol.options import PLAYOUT_DEADLINE_MS, Sizer
from mimirate.ratecontrol.qoe import FRAME_MS, QoE, QualityTable, frame_qoe
from mimirate.ratecontrol.traces import Trace
from mimirate.ratecontrol.wire import WireSizer

#: Under DTX with redundancy on, a keep-alive goes in the frame after a talkspurt's last
#: packet to carry its copy, as the real sender (``transport.session.Sender``) does.
#: Off only to measure what it gains (``benchmarks/bench_ratecontrol.py --dtx``).
PROTECT_TALKSPURT_END = True


class LossModel(Protocol):
    def pattern(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``[n]`` bool: whether the i-th packet is lost."""
        ...


@dataclass(frozen=True)
class BernoulliLoss:
    """Each packet lost independently with probability ``p``."""

    p: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ConfigError(f"a loss probability must be in [0, 1), got {self.p}")

    def pattern(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.random(n) < self.p


@dataclass(frozen=True)
class GilbertElliottLoss:
    """Two-state Markov loss: good -> bad with ``p_gb``, bad -> good with ``p_bg`` per
    packet; a packet is lost with ``loss_good`` / ``loss_bad`` in each state."""

    p_gb: float
    p_bg: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_gb", "p_bg", "loss_good", "loss_bad"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"Gilbert-Elliott {name} must be in [0, 1], got {v}")
        if self.p_bg == 0.0:
            raise ConfigError("Gilbert-Elliott p_bg must be > 0 (or the bad state never ends)")

    @property
    def mean_loss(self) -> float:
        bad = self.p_gb / (self.p_gb + self.p_bg)
        return bad * self.loss_bad + (1 - bad) * self.loss_good

    def pattern(self, n: int, rng: np.random.Generator) -> np.ndarray:
        u_state, u_loss = rng.random(n), rng.random(n)
        out = np.zeros(n, dtype=bool)
        bad = False
        for i in range(n):
            bad = (u_state[i] >= self.p_bg) if bad else (u_state[i] < self.p_gb)
            out[i] = u_loss[i] < (self.loss_bad if bad else self.loss_good)
        return out


@dataclass(frozen=True)
class LinkConfig:
    """The path apart from its capacity trace.

    Attributes:
        propagation_ms: one-way propagation delay, each way.
        queue_bytes: drop-tail buffer of the bottleneck (bytes of work not yet served).
        loss: random loss on the forward path (after the bottleneck).
        feedback_loss: whether reports see the same loss model on the way back.
        feedback_interval_ms: time between receiver reports.
        seed: seeds both loss patterns.
    """

    propagation_ms: float = 40.0
    queue_bytes: int = 3000
    loss: LossModel = field(default_factory=BernoulliLoss)
    feedback_loss: bool = True
    feedback_interval_ms: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (
            self.propagation_ms >= 0 and self.queue_bytes > 0 and self.feedback_interval_ms > 0
        ):
            raise ConfigError("propagation must be >= 0, queue and feedback interval > 0")


class Bottleneck:
    """A FIFO link serving packets at the trace's capacity, with a drop-tail buffer."""

    def __init__(self, trace: Trace, queue_bytes: int) -> None:
        self.trace = trace
        self.queue_bytes = queue_bytes
        self.busy_until_s = 0.0

    def backlog_bytes(self, t_s: float) -> float:
        """Bytes of work queued at ``t_s`` (not yet served)."""
        if self.busy_until_s <= t_s:
            return 0.0
        return self.trace.bytes_by(self.busy_until_s) - self.trace.bytes_by(t_s)

    def offer(self, t_ms: float, size: int) -> tuple[float, float] | None:
        """A packet of ``size`` bytes arrives at ``t_ms``: its (service start, departure)
        in ms, or None when the buffer is full and it is dropped."""
        t = t_ms / 1e3
        if self.backlog_bytes(t) + size > self.queue_bytes:
            return None
        start = max(t, self.busy_until_s)
        self.busy_until_s = float(self.trace.time_when(self.trace.bytes_by(start) + size))
        return start * 1e3, self.busy_until_s * 1e3


@dataclass(frozen=True)
class PacketLog:
    """Every packet sent (all ``[P]``): send time, wire bytes, frames, fate."""

    send_ms: np.ndarray
    wire_bytes: np.ndarray
    frames: np.ndarray
    queue_delay_ms: np.ndarray  # service start - send (NaN if dropped at the queue)
    departure_ms: np.ndarray  # NaN if dropped
    dropped: np.ndarray  # bool, by the drop-tail queue
    lost: np.ndarray  # bool, by random loss after the bottleneck


@dataclass(frozen=True)
class Conservation:
    """Bytes sent = delivered + dropped at the queue + lost on the link + still in the network."""

    sent: int
    delivered: int
    dropped: int
    lost: int
    in_network: int


@dataclass(frozen=True)
class SimResult:
    """The outcome of one simulated stream.

    Attributes:
        trace, controller: names. duration_s: stream length.
        qoe: per-frame QoE (:class:`~mimirate.ratecontrol.qoe.QoE`), all frames ``[T]``.
        speech: ``[T]`` bool, frames the figures average over.
        sent_levels: ``[T]`` levels each frame was sent with (0 = never sent).
        mean_qoe, late_frac, lost_frac: over speech frames.
        p95_queue_ms: 95th percentile of packets' queuing delay (those not dropped).
        wire_bps: bytes sent x 8 / duration; mean_levels: mean levels of played frames.
    """

    trace: str
    controller: str
    duration_s: float
    qoe: QoE
    speech: np.ndarray
    sent_levels: np.ndarray
    frame_delay_ms: np.ndarray
    packets: PacketLog
    conservation: Conservation
    mean_qoe: float
    late_frac: float
    lost_frac: float
    p95_queue_ms: float
    wire_bps: float
    mean_levels: float

    def summary(self) -> dict[str, float | str]:
        return {
            "trace": self.trace,
            "controller": self.controller,
            "duration_s": self.duration_s,
            "mean_qoe": self.mean_qoe,
            "late_lost_pct": 100 * (self.late_frac + self.lost_frac),
            "late_pct": 100 * self.late_frac,
            "lost_pct": 100 * self.lost_frac,
            "p95_queue_ms": self.p95_queue_ms,
            "wire_kbps": self.wire_bps / 1e3,
            "mean_levels": self.mean_levels,
        }


class _Receiver:
    """Arrivals and the reports made from them (receiver clock = simulation clock)."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, int, int]] = []  # (arrival_ms, seq, wire bytes)
        self.highest = -1
        self.received = 0
        self.lost_reported = 0
        self.expected_reported = 0
        self.jitter_ms = 0.0
        self._transit: float | None = None

    def report(self, now_ms: float, header: int, interval_ms: float) -> FeedbackReport:
        cut = 0
        while cut < len(self.pending) and self.pending[cut][0] <= now_ms:
            cut += 1
        batch, self.pending = self.pending[:cut], self.pending[cut:]
        payload = 0
        for _arrival, seq, size in batch:
            self.highest = max(self.highest, seq)
            self.received += 1
            payload += size - header
        lost = max(self.highest + 1 - self.received, 0)
        expected = self.highest + 1
        d_exp, d_lost = expected - self.expected_reported, lost - self.lost_reported
        frac = round(65535 * d_lost / d_exp) if d_exp > 0 else 0
        self.expected_reported, self.lost_reported = expected, lost
        return FeedbackReport(
            highest_seq=max(self.highest, 0) % 65536,
            cumulative_lost=lost,
            loss_fraction=min(max(frac, 0), 65535),
            receive_rate_bps=round(payload * 8 * 1000 / interval_ms),
            jitter_us=round(self.jitter_ms * 1000),
            arrivals=tuple((seq % 65536, round(a * 1000) % (1 << 32)) for a, seq, _ in batch),
        )

    def arrive(self, arrival_ms: float, send_ms: float, seq: int, size: int) -> None:
        self.pending.append((arrival_ms, seq, size))
        self.pending.sort()
        transit = arrival_ms - send_ms
        if self._transit is not None:  # RFC 3550 interarrival jitter
            self.jitter_ms += (abs(transit - self._transit) - self.jitter_ms) / 16.0
        self._transit = transit


def simulate(
    trace: Trace,
    controller: RateController,
    table: QualityTable,
    *,
    link: LinkConfig | None = None,
    duration_s: float | None = None,
    sizer: Sizer | None = None,
    activity: np.ndarray | None = None,
) -> SimResult:
    """Stream ``duration_s`` (default: one period of the trace) of frames through the link.

    Args:
        trace: the bottleneck's capacity.
        controller: decides levels, packetisation and redundancy (fresh for each run).
        table: the codec's measured quality per level.
        link: the rest of the path.
        sizer: packet sizes (default: real packets, 40 header bytes).
        activity: ``[T]`` bool, False for frames the sender's VAD calls silent (sent at the
            controller's ``silence_levels``, not at all when that is 0, and left out of the
            averages); default all speech.
    """
    link = link or LinkConfig()
    sizer = sizer or WireSizer()
    header = getattr(sizer, "header", 40)
    dur = trace.period_s if duration_s is None else duration_s
    n_frames = int(dur * 1000 / FRAME_MS)
    if n_frames < 1:
        raise ConfigError(f"a simulation needs at least one frame ({FRAME_MS} ms), got {dur} s")
    speech = np.ones(n_frames, bool) if activity is None else np.asarray(activity, bool)
    if speech.shape != (n_frames,):
        raise ConfigError(f"activity must have one flag per frame ({n_frames})")
    fwd_loss = link.loss.pattern(n_frames + 1, np.random.default_rng([link.seed, 0]))
    n_reports = int(n_frames * FRAME_MS / link.feedback_interval_ms) + 2
    rev_loss = (
        link.loss.pattern(n_reports, np.random.default_rng([link.seed, 1]))
        if link.feedback_loss
        else np.zeros(n_reports, bool)
    )

    bottleneck = Bottleneck(trace, link.queue_bytes)
    receiver = _Receiver()
    reader = FeedbackReader()
    prop = link.propagation_ms
    sent_levels = np.zeros(n_frames, np.int64)
    main_arrival = np.full(n_frames, np.inf)
    main_levels = np.zeros(n_frames, np.int64)
    red_arrival = np.full(n_frames, np.inf)
    red_levels = np.zeros(n_frames, np.int64)
    log: dict[str, list[float]] = {k: [] for k in PacketLog.__dataclass_fields__}

    pending: list[int] = []
    previous: list[int] = []
    last_queued = -DTX_KEEPALIVE_FRAMES  # a stream opening in silence starts with one
    tail_open = False  # the last packet sent holds speech whose copy no packet carries yet
    report_index = 0
    next_report = link.feedback_interval_ms

    def send(now: float, frames: list[int], redundancy: int) -> None:
        nonlocal tail_open
        # Random loss is drawn per 80 ms sending slot (at most one packet each): the same
        # pattern for every controller, and one an offline optimum can plan around.
        slot = frames[-1]
        seq = len(log["send_ms"])
        levels = tuple(int(sent_levels[f]) for f in frames)
        red_frames = previous if redundancy > 0 else []
        r = min([redundancy] + [int(sent_levels[f]) for f in red_frames]) if red_frames else 0
        size = sizer.packet_bytes(levels, (r,) * len(red_frames))
        controller.on_sent(seq, now, size)
        reader.sent(seq, now, size)
        out = bottleneck.offer(now, size)
        lost = out is not None and bool(fwd_loss[slot])
        tail_open = any(speech[f] for f in frames)
        log["send_ms"].append(now)
        log["wire_bytes"].append(size)
        log["frames"].append(len(frames))
        log["queue_delay_ms"].append(math.nan if out is None else out[0] - now)
        log["departure_ms"].append(math.nan if out is None else out[1])
        log["dropped"].append(out is None)
        log["lost"].append(lost)
        if out is None or lost:
            return
        arrival = out[1] + prop
        receiver.arrive(arrival, now, seq, size)
        main_arrival[frames] = arrival
        main_levels[frames] = sent_levels[frames]
        for f in red_frames:
            if arrival < red_arrival[f]:
                red_arrival[f], red_levels[f] = arrival, r

    decision = controller.update(None, 0.0)
    for t in range(n_frames):
        now = (t + 1) * FRAME_MS  # frame t is complete at the end of its 80 ms
        while next_report + prop <= now:
            report = receiver.report(next_report, header, link.feedback_interval_ms)
            if not rev_loss[report_index]:
                fb = reader.read(FeedbackReport.parse(bytes(report)))
                decision = controller.update(fb, next_report + prop)
            report_index += 1
            next_report += link.feedback_interval_ms
        decision = controller.update(None, now)
        if decision.pause:  # the sender drops the frame (and what it was bundling)
            # ... and repeats nothing from before the pause: those frames are stale.
            pending, previous, tail_open = [], [], False
            continue
        keepalive = False
        if not speech[t] and decision.silence_levels == 0:
            # Discontinuous transmission: the silent frame is not sent; what was waiting
            # for it goes now rather than wait for speech. One in DTX_KEEPALIVE_FRAMES
            # goes alone at 1 level, as the real sender does.
            keepalive = t - last_queued >= DTX_KEEPALIVE_FRAMES
            # A talkspurt's last packet has no next packet to carry its copy: the
            # keep-alive goes at once (a frame after it, not with it: loss comes in
            # bursts), as the real sender does.
            protect = decision.redundancy > 0 and PROTECT_TALKSPURT_END
            keepalive |= protect and tail_open and not pending
            if not keepalive:
                if pending:
                    send(now, pending, decision.redundancy)
                    previous, pending = pending, []
                continue
        if keepalive:
            sent_levels[t] = 1
        else:
            sent_levels[t] = decision.levels if speech[t] else decision.silence_levels
        pending.append(t)
        last_queued = t
        if keepalive or len(pending) >= decision.frames_per_packet or t == n_frames - 1:
            send(now, pending, decision.redundancy)
            previous, pending = pending, []

    capture = (np.arange(n_frames) + 1) * FRAME_MS
    lat_main = main_arrival - capture
    lat_red = red_arrival - capture
    use_main = lat_main <= PLAYOUT_DEADLINE_MS
    use_red = ~use_main & (lat_red <= PLAYOUT_DEADLINE_MS)
    played = np.where(use_main, main_levels, np.where(use_red, red_levels, 0))
    delay = np.where(use_main, lat_main, np.where(use_red, lat_red, np.nan))
    arrived = np.isfinite(main_arrival) | np.isfinite(red_arrival)
    late = (played == 0) & arrived
    lost = (played == 0) & ~arrived
    q = frame_qoe(played, np.nan_to_num(delay), table)

    packets = PacketLog(
        send_ms=np.array(log["send_ms"]),
        wire_bytes=np.array(log["wire_bytes"], np.int64),
        frames=np.array(log["frames"], np.int64),
        queue_delay_ms=np.array(log["queue_delay_ms"]),
        departure_ms=np.array(log["departure_ms"]),
        dropped=np.array(log["dropped"], bool),
        lost=np.array(log["lost"], bool),
    )
    end = n_frames * FRAME_MS
    dep = packets.departure_ms
    in_net = ~packets.dropped & (dep + prop > end)
    delivered = ~packets.dropped & ~packets.lost & ~in_net
    lost_link = ~packets.dropped & packets.lost & ~in_net
    cons = Conservation(
        sent=int(packets.wire_bytes.sum()),
        delivered=int(packets.wire_bytes[delivered].sum()),
        dropped=int(packets.wire_bytes[packets.dropped].sum()),
        lost=int(packets.wire_bytes[lost_link].sum()),
        in_network=int(packets.wire_bytes[in_net].sum()),
    )
    qd = packets.queue_delay_ms[~packets.dropped]
    sp = speech
    n_sp = max(int(sp.sum()), 1)
    return SimResult(
        trace=trace.name,
        controller=controller.name,
        duration_s=n_frames * FRAME_MS / 1000,
        qoe=q,
        speech=sp,
        sent_levels=sent_levels,
        frame_delay_ms=delay,
        packets=packets,
        conservation=cons,
        mean_qoe=float(q.qoe[sp].mean()) if sp.any() else math.nan,
        late_frac=float(late[sp].sum() / n_sp),
        lost_frac=float(lost[sp].sum() / n_sp),
        p95_queue_ms=float(np.percentile(qd, 95)) if qd.size else math.nan,
        wire_bps=float(cons.sent * 8 / (n_frames * FRAME_MS / 1000)),
        mean_levels=float(played[sp & (played > 0)].mean()) if (played[sp] > 0).any() else 0.0,
    )
