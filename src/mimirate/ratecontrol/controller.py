"""The network-adaptive controller for real-time streams.

Why not GCC. WebRTC's GCC detects overuse from the *gradient* of one-way delay, smoothed
by a trendline over ~20 packet groups. At our 12.5 packets/s, and 3 to 6 packets/s once
frames are bundled to save headers, 20 groups span 1.6 to 6 s: a capacity drop fills a
small queue long before the filter sees a trend. So this controller follows SCReAM and
NADA instead and reacts to the queuing delay itself, sample by sample:

- queuing delay = one-way delay - its minimum over the last :data:`BASE_DELAY_WINDOW_MS`
  (clock offsets cancel). A queue is judged by its *floor*, the least queuing delay of the
  last :data:`QUEUE_FLOOR_PACKETS` packets acknowledged within :data:`QUEUE_FLOOR_WINDOW_MS`
  (CoDel's test of a standing queue): a link that delivers in bursts, as cellular schedulers
  do, holds some packets back 100-200 ms in every report while others pass at once, and a
  queue that drains between bursts is no reason to stop growing or to cut. (Measured against
  the smoothed delay on the network benchmark's 4 traces a family, mean QoE at 0 / 10 %
  loss: Mahimahi 9.43 -> 10.32 / 6.47 -> 9.02, HSDPA 14.21 -> 13.91 / 11.68 -> 11.66, FCC
  18.63 -> 18.53 / 15.04 -> 15.00; on 8 other traces a family, Mahimahi 13.47 -> 14.04 /
  11.11 -> 12.17, HSDPA 13.33 -> 13.28 / 10.36 -> 10.69, FCC 13.04 -> 13.11 / 10.79 ->
  10.87. Tried with it, not adopted: capping the setting at 1.1-1.3x the capacity last
  seen, for gentler probes, lost 0.2-0.6 on average; forgetting that capacity once the rate
  passes it by 20-40 %, or taking it with loss added back, moved the averages by < 0.1;
  holding the budget under the rate of the last failed probe for 3-5 s, doubling while
  probes fail at the same rate, lost 0.2-0.4.)
  Congestion is a queue that is ours: a floor over :data:`QDELAY_HIGH_MS`, or one
  sample over :data:`QDELAY_SEVERE_MS`, while the bottleneck delivers under
  :data:`BEHIND_RATIO` of what is sent (delay that sending less would not remove, a cellular
  schedule's gaps or a slow link's serialisation, is no reason to send less); a delay
  growing past :data:`QDELAY_HIGH_MS` for :data:`PERSIST_REPORTS` reports in a row, whatever
  the rates say; or no acknowledgement for far longer than usual (an outage). (Tried and
  measured: requiring the first rule for 2-3 reports in a row gained 4-5 % QoE on the
  Mahimahi traces in the simulator, but over a real 10 kbit/s tbf link with a 700-byte queue
  that halved, the stream went back to 32 levels. Likewise tolerating a one-packet shortfall
  in "behind", since at three packets a second one packet is a third of a one-second rate:
  Mahimahi at 10 % loss gained 0.2-0.5 R points, but on that tbf link the stream climbed
  back to 32 levels after the halving.) On congestion the rate drops to :data:`BACKOFF` x
  the receive rate, which is what the bottleneck is delivering (GCC's rule; it drains the
  queue at once), at most once per :data:`DECREASE_GAP_MS`, and within :data:`DRAIN_MS` of a
  cut only if the queue is longer than it was at the cut;
- while the floor is below :data:`QDELAY_LOW_MS` the rate grows (:data:`STARTUP_GAIN_PER_S`
  until the first congestion and whenever the path is empty, below :data:`QDELAY_EMPTY_MS`, up to
  :data:`CEILING_FRACTION` of the receive rate at the last congestion; then
  :data:`INCREASE_GAIN_PER_S` up to that rate, and only :data:`ADDITIVE_BPS_PER_S` past
  it), never
  beyond :data:`PROBE_RATIO` x what is actually being sent (2: one frame a packet
  instead of two, the delay the QoE most rewards, costs ~1.9x the wire rate, and with a
  smaller ratio the budget never reached it on links with 10x the capacity); in between it holds;
- a *bursty* path is one whose packets rise far above the queue's floor: the average of
  (latest sample - floor) over the reports while the floor is low, the path's jitter, exceeds
  :data:`BURSTY_JITTER_MS` (a wired or shaped link stays near 0, cellular schedules hold
  packets 50-200 ms). There a congestion signal is often a burst, the one-second receive
  rate read across a gap understates the capacity, and the capacity comes back within
  seconds, so the cut is to :data:`BURSTY_BACKOFF` x the receive rate and the probe past the
  last capacity grows by :data:`BURSTY_ADDITIVE_BPS_PER_S`; a steady link keeps the gentler
  :data:`BACKOFF` and :data:`ADDITIVE_BPS_PER_S`, whose probes its queue shows at once. The
  average also reads the onset of a queue (the floor lags a queue that grows), so a steady
  link counts as bursty for a few seconds after congestion. (Measured, mean QoE over the
  network benchmark's traces, 0 / 10 % loss: Mahimahi 10.58 -> 11.24 / 8.52 -> 9.50, HSDPA
  14.47 -> 14.48 / 12.04 -> 12.07, FCC 18.97 -> 19.04 / 15.51 -> 15.57; over 8 other traces
  a family, Mahimahi 14.24 -> 14.62 / 12.37 -> 12.95, HSDPA 13.59 -> 13.79 / 10.95 ->
  11.21, FCC 13.53 -> 13.56 / 11.25 -> 11.22; steady links of 3, 5, 6 and 12 kbit/s
  unchanged, 4 kbit/s 8.82 -> 8.93; over every trace of the folders, `mimirate simulate
  --duration 60` (HSDPA 80, FCC 127) and 300 (Mahimahi 13): 11.3 -> 11.4 / 8.8 -> 8.9,
  12.3 -> 12.5 / 10.1 -> 10.3, 14.1 -> 14.8 / 11.7 -> 12.6. The p95 queuing of the
  benchmark's Mahimahi rows went 1039 -> 836 / 706 -> 1946 ms, packets sent into one
  trace's outages; over all 13, 189 -> 255 / 193 -> 227 ms. A cut to 0.9 and 600 bit/s a
  second for every path gained as much on the traces but let a steady 6 kbit/s link's queue
  reach a p95 of 233 ms (tests/test_simulator.py); 600 bit/s a second alone for every path
  cost a steady 4 kbit/s link 0.9 R points. Readings of the jitter that leave the onsets
  out gained less: over the six rows of the benchmark +0.27 on average against +0.30 (only
  while the bottleneck keeps up; held out +0.08 against +0.24), +0.20 (not in reports that
  show congestion; held out +0.03), +0.01 to +0.25 (median or 75th percentile of the last
  20-40 reports).)
- a *failed probe* is not repeated at once: on a steady path the settings' wire rates
  jump where the packetisation changes (two frames a packet to one adds 2.5 kbit/s of
  headers), so while the sender is app-limited under such a jump the budget grows past it
  with no queue to stop it, the first setting over the jump overfills the link, and the
  stream spends a second or two in a queue; then it climbs back and does it again, every
  ~8 s on a steady 4 kbit/s link. A switch to a setting costing over
  (1 + :data:`UPGRADE_STEP`) x the one before, followed by congestion within
  :data:`UPGRADE_FAIL_MS`, blocks settings costing as much (and the budget's growth past
  them) for :data:`UPGRADE_HOLD_MS`, doubled up to :data:`UPGRADE_HOLD_MAX_MS` each time the
  next probe fails too, as TCP backs off its retransmission timer. Not on a bursty path,
  whose congestion signals are mostly its bursts. (Measured: steady 4 / 5 kbit/s links, 30
  s, 8.93 -> 9.41 / 12.87 -> 13.46 R points; network benchmark's traces unchanged on average
  (HSDPA 14.48 -> 14.35 / 12.07 -> 11.95, FCC 19.04 -> 19.19 / 15.57 -> 15.57, Mahimahi
  11.24 -> 11.25 / 9.50 -> 9.58 at 0 / 10 % loss); held out 12.89 -> 12.96 on average, FCC at
  10 % 11.22 -> 11.43; over every trace of the three folders QoE within +-0.1 and the
  p95 of all packets' queuing on HSDPA and FCC 134 / 103 -> 128 / 99 and 135 / 127 -> 117
  / 122 ms.
  Blocking on every path lost 0.7 / 0.4 on Mahimahi; letting the budget grow during the
  hold, so that the next probe jumps further, lost 0.1 on the benchmark's mean (4 kbit/s
  alike, 9.46); reverting a probe as soon as its queue grows, before congestion is certain,
  helped the 3 kbit/s link (2.09 -> 2.70) but lost 0.05 on the benchmark's traces and 0.15
  held out.)
- loss without queuing delay is not congestion (radio loss would otherwise starve the
  stream): it is smoothed into a loss estimate (a bias-corrected exponential average, so
  that it reads the first packets' loss rate whole) that buys redundancy.

The rate is a budget in wire bit/s, headers counted. The setting sent, levels x frames per
packet x redundancy, is the one of highest expected QoE that fits the budget
(:class:`mimirate.ratecontrol.options.OptionTable`): bundling frames saves headers and
costs delay (both counted), redundancy costs bits and a packet of delay and saves lost
frames. Queuing delay is measured net of a bigger packet's longer serialisation, and the
delay predicted for a setting uses the latest sample when it is above the average. A
setting whose first frame would be late by that prediction is not taken while another
fits. A new setting is taken only when it gains :data:`SWITCH_MARGIN` R points or the
current one no longer fits.

Loss protection. Once the smoothed loss estimate reaches :data:`PROTECT_LOSS`, only settings
with redundancy are eligible: each packet repeats the first ``redundancy`` levels of the
frames of the packet before it, so a frame is missing only when both its packet and the
next are lost (probability ``p**2``: 1% at 10% independent loss). Definitions used by the
simulator and the figures: a frame *played from redundancy* (at fewer levels) counts as
played, and QoE scores its lower utility; a frame is *lost* when no copy of it arrived, and
*late* when a copy arrived but none before the playout deadline; a frame the sender dropped
unsent (a pause) counts as lost. Redundancy bytes are counted in the wire rate.
Protection is required, not left to the expected-QoE choice, because that QoE counts a lost
frame as R 0 for its own 80 ms, linear in the loss rate, while G.107's own loss impairment
rises steeply over the first few percent (Ie,eff = 95 Ppl / (Ppl + Bpl) for random loss and
Ie 0: with a robustness Bpl of 10, 2 % loss costs 16 R points and 8 % costs 42). Measured
on the network benchmark's traces at 10 % loss, leaving it to the QoE choice: mean QoE
HSDPA 11.95 -> 12.80, FCC 15.57 -> 17.02, Mahimahi 9.58 -> 10.21, but late+lost 18.5 ->
20.0, 6.1 -> 9.9 and 32.3 -> 35.5 % (FCC's bus and amazon traces 2.1 / 2.0 -> 5.6 / 6.3 %);
taking no redundancy whenever no protected setting arrives in time, instead of a protected
setting predicted late, moved every row by 0.1 or less.
But the copy comes one packet later, and on a slow link with bundled frames it arrives past
the deadline: such protection protects nothing and its bytes make the main copies later.
Protection is required only among settings where the copy of at least the packet's last
frame is predicted in time; where none of those fits the budget, redundancy is left to the
expected-QoE choice (which counts copies' lateness). Measured at 10 % loss over every trace
of the three folders: QoE HSDPA 8.89 -> 9.06, FCC 10.29 -> 10.47, Mahimahi 12.54 -> 12.63,
late+lost 23.6 -> 21.6, 22.9 -> 21.3, 25.2 -> 25.1 %. Requiring every frame's copy in time
gained more QoE (9.26, 10.62, 12.90) but lost more frames on steady links (5 kbit/s at 10 %
loss: lost 1.1 -> 3.3 %, QoE 11.48 -> 8.74, against 11.75 with the last frame's copy).

Silence and outages. Frames the sender's VAD marks silent are not sent at all
(discontinuous transmission, :data:`SILENCE_LEVELS` = 0; the receiver's concealment
fades the last frame out, and its reports tell unsent frames from lost ones), but for a
keep-alive frame at 1 level every :data:`DTX_KEEPALIVE_FRAMES`, and, with redundancy on,
one in the frame after a talkspurt's last packet, to carry that packet's copy.
While the path is stalled (the oldest packet unacknowledged for far longer than
usual, and no report acknowledging anything for as long), and while even the cheapest
setting would arrive past the playout deadline (the link carries less than the cheapest
stream, so its queue only grows), the sender drops its frames unsent, but for probes: frames
pushed into an outage or an overload would only queue up, be hopelessly late, and make the
frames after them late too. A probe is one frame sent alone, :data:`STALL_PROBE_MS` after
the last packet, and twice as long after each probe no report has answered (the newest
packet's arrival answers; old ones trickling out of a deep queue do not), up to
:data:`STALL_PROBE_MAX_MS`, as TCP's persist timer backs off. Every probe sent into an outage
waits in the queue for all of it; at a fixed 500 ms they were most of the packets sent in
the long outages of the Mahimahi traces, and the p95 queuing delay there was theirs
(benchmark's Mahimahi rows: 701 / 1750 -> 375 / 285 ms at 0 / 10 % loss; over every trace
of the three folders QoE moved by 0.07 or less). When
acknowledgements come back on an empty queue, the rate resumes at
:data:`RESUME_FRACTION` of the rate before the stall (capacity after a cellular outage
usually returns as it was), instead of climbing from the bottom.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mimirate.bitstream.packet import FeedbackReport
from mimirate.ratecontrol.options import PLAYOUT_DEADLINE_MS, OptionTable, StreamOption
from mimirate.ratecontrol.qoe import FRAME_MS

#: Queue floor over which the path is congested.
QDELAY_HIGH_MS = 60.0
#: A single queuing-delay sample this high is congestion (while the bottleneck falls
#: behind) without waiting for the average: reports come every ~100 ms, the p95 target is
#: 150 ms. (300 ms gained 0.15 R points over the held-out traces, bursty cellular links
#: giving single samples that high, but failed tests/test_netns.py's capacity halving over a
#: real tbf link in 2 of 3 runs.)
QDELAY_SEVERE_MS = 120.0
#: The bottleneck falls behind when it delivers less than this fraction of what is sent
#: (both over the last RATE_WINDOW_MS; random loss after it added back).
BEHIND_RATIO = 0.9
#: Consecutive reports with a queuing delay over QDELAY_HIGH_MS, each longer than the one
#: before, that are congestion.
PERSIST_REPORTS = 3
#: Smoothed queuing delay under which the path counts as empty (fast ramp-up).
QDELAY_EMPTY_MS = 10.0
#: Queue floor under which the rate may grow.
QDELAY_LOW_MS = 40.0
#: Rate after congestion, as a fraction of the receive rate.
BACKOFF = 0.85
#: Shortest time between two decreases (the queue needs a moment to drain).
DECREASE_GAP_MS = 500.0
#: After a cut, how long the queue is given to drain before the same delay cuts again.
DRAIN_MS = 1500.0
#: Rate growth per second before the first congestion, and after it.
STARTUP_GAIN_PER_S = 0.5
INCREASE_GAIN_PER_S = 0.15
#: The fast growth stops at this fraction of the receive rate measured at the last
#: congestion (the last capacity seen): near it, the rate creeps up, else it overshoots
#: the link by the ~300 ms it takes a report to show the queue.
CEILING_FRACTION = 0.9
#: Least growth per second when growing.
ADDITIVE_BPS_PER_S = 300.0
#: A path whose jitter (average of the latest queuing-delay sample minus the floor, over
#: reports while the floor is under QDELAY_LOW_MS) exceeds this is bursty ...
BURSTY_JITTER_MS = 40.0
#: ... smoothing of that average, per report ...
JITTER_ALPHA = 0.1
#: ... and there the rate after congestion and the least growth per second are these.
BURSTY_BACKOFF = 0.9
BURSTY_ADDITIVE_BPS_PER_S = 1000.0
#: The budget never exceeds this times the rate actually sent (no runaway while app-limited).
PROBE_RATIO = 2.0
#: First budget, bit/s (one level at four frames a packet fits, and a bit more).
START_RATE_BPS = 2000.0
#: Window over which send and receive rates are measured.
RATE_WINDOW_MS = 1000.0
#: Window of the minimum one-way delay.
BASE_DELAY_WINDOW_MS = 10_000.0
#: Smoothing of the loss estimate, per packet accounted for.
LOSS_ALPHA = 0.02
#: Smoothing of the queuing delay (per report) for detection and for predicting delay.
QDELAY_ALPHA = 0.3
#: Expected QoE gain (R points) that justifies changing the setting.
SWITCH_MARGIN = 0.5
#: How much longer than the fastest acknowledgement an unacknowledged packet may wait
#: before the path counts as stalled (an outage): more than two report intervals, so
#: that two lost reports in a row (1% of the time at 10% loss) are not taken for one.
STALL_MARGIN_MS = 350.0
#: While paused, a probe (one frame alone, no redundancy) goes out this long after the last
#: packet to find out when the path is back; the wait doubles with every probe no report
#: has answered since, up to STALL_PROBE_MAX_MS.
STALL_PROBE_MS = 500.0
STALL_PROBE_MAX_MS = 4000.0
#: Added to predicted delays: the playout deadline is a cliff, the prediction is not exact.
DEADLINE_MARGIN_MS = 20.0
#: Levels of frames marked silent (0: not sent, discontinuous transmission).
SILENCE_LEVELS = 0
#: Under DTX, one silent frame in this many still goes (at 1 level, alone): the receiver
#: knows the stream is alive (a listener ends a stream after 2 s of nothing), NAT
#: bindings stay open and feedback keeps coming, as Opus DTX sends a frame every 400 ms.
DTX_KEEPALIVE_FRAMES = 5
#: The queue's floor is the least queuing delay of the last QUEUE_FLOOR_PACKETS packets
#: acknowledged within QUEUE_FLOOR_WINDOW_MS: three packets at four frames a packet, enough
#: to see between a cellular link's bursts; fewer packets react sooner on a steady link.
#: (Measured: 1 s alone let a steady 6 kbit/s link's queue reach a p95 of 155 ms, against
#: 130 ms with 6 packets; 3 or 4 packets, or 0.6, 1.5 or 2 s, lowered the traces' QoE.)
QUEUE_FLOOR_PACKETS = 6
QUEUE_FLOOR_WINDOW_MS = 1000.0
#: Smoothed loss rate from which every packet carries redundancy.
PROTECT_LOSS = 0.01
#: After a stall, the rate resumes at this fraction of the rate before it.
RESUME_FRACTION = 0.7
#: On a steady path, a switch to a setting costing over (1 + UPGRADE_STEP) x the wire rate
#: of the one before is a probe; congestion within UPGRADE_FAIL_MS of it fails it ...
UPGRADE_STEP = 0.15
UPGRADE_FAIL_MS = 2000.0
#: ... and settings costing as much are not taken again (nor the budget grown past it) for
#: UPGRADE_HOLD_MS, doubled up to UPGRADE_HOLD_MAX_MS each time the next probe fails too.
UPGRADE_HOLD_MS = 5000.0
UPGRADE_HOLD_MAX_MS = 40_000.0


class ControllerState(enum.Enum):
    STARTUP = "startup"  # growing fast until the first congestion
    INCREASE = "increase"
    HOLD = "hold"
    DECREASE = "decrease"  # just backed off


@dataclass(frozen=True)
class PacketArrival:
    """One received packet: its send time and size (the sender's records) and its
    arrival time (the receiver's clock; only differences with send times are used)."""

    seq: int  # unwrapped sequence number
    send_ms: float
    arrival_ms: float
    wire_bytes: int


@dataclass(frozen=True)
class Feedback:
    """A receiver report joined with the sender's records of what it sent.

    Attributes:
        arrivals: packets received since the previous report, in arrival order.
        highest_seq: highest sequence number received so far (unwrapped; -1 before any).
        cumulative_lost: packets missing below ``highest_seq`` so far.
    """

    arrivals: tuple[PacketArrival, ...]
    highest_seq: int
    cumulative_lost: int


class FeedbackReader:
    """Turns ``mimirate.bitstream`` FEEDBACK messages into :class:`Feedback` for a sender.

    The sender records every packet it sends (:meth:`sent`); a report names packets by
    16-bit sequence number and gives receiver-clock arrival times in microseconds mod 2**32;
    both are unwrapped here against what was sent and received before.
    """

    #: Packets remembered: far more than are ever in flight.
    HISTORY = 4096

    def __init__(self) -> None:
        self._sent: dict[int, tuple[int, float, int]] = {}  # seq mod 2**16 -> (seq, ms, bytes)
        self._last_us: int | None = None
        self._wraps_us = 0
        self._highest = -1

    def sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        self._sent[seq % 65536] = (seq, send_ms, wire_bytes)
        self._sent.pop((seq - self.HISTORY) % 65536, None)

    def _unwrap_us(self, t: int) -> float:
        if self._last_us is not None and t < self._last_us - (1 << 31):
            self._wraps_us += 1 << 32
        self._last_us = t
        return (t + self._wraps_us) / 1000.0

    def read(self, report: FeedbackReport) -> Feedback:
        arrivals = []
        for seq16, t_us in report.arrivals:
            rec = self._sent.get(seq16)
            if rec is None:  # older than the history, or never sent: nothing to learn
                continue
            seq, send_ms, size = rec
            arrivals.append(PacketArrival(seq, send_ms, self._unwrap_us(t_us), size))
        rec = self._sent.get(report.highest_seq)
        if rec is not None:
            self._highest = max(self._highest, rec[0])
        return Feedback(tuple(arrivals), self._highest, report.cumulative_lost)


@dataclass(frozen=True)
class Decision:
    """What the sender does from now on, per frame.

    Attributes:
        levels: levels of each speech frame (1..K).
        frames_per_packet: frames bundled in one packet.
        redundancy: levels of each frame of the previous packet repeated in the next
            packet (0 = none; never more than those frames had).
        silence_levels: levels for frames the VAD marks silent (0: not sent, DTX).
        pause: do not send the frames decided now (the path is stalled: they would only
            fill the bottleneck's queue and delay the frames after the outage).
    """

    levels: int
    frames_per_packet: int
    redundancy: int
    silence_levels: int
    pause: bool = False

    @classmethod
    def of(cls, option: StreamOption, silence_levels: int, pause: bool = False) -> Decision:
        return cls(
            option.levels, option.frames_per_packet, option.redundancy, silence_levels, pause
        )


class RateController(Protocol):
    """What the simulator and the real-time sender drive."""

    name: str

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        """A packet left the sender."""
        ...

    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        """Take a receiver report (None: none arrived) at ``now_ms``; return the decision."""
        ...


class AdaptiveController:
    """Delay-based rate estimate + QoE-optimal setting under it (see the module docstring).

    Args:
        options: the settings and their wire rates.
        start_rate_bps: first budget.
    """

    name = "adaptive"

    def __init__(self, options: OptionTable, start_rate_bps: float = START_RATE_BPS) -> None:
        self.options = options
        self.min_rate = options.cheapest.wire_bps
        self.max_rate = float(options.bps.max())
        self.rate_bps = max(start_rate_bps, self.min_rate)
        self.state = ControllerState.STARTUP
        self.loss = 0.0
        self._loss_sum, self._loss_weight = 0.0, 0.0  # the bias-corrected average of it
        self.qdelay_ms = 0.0  # latest sample, for detection
        self.qdelay_smooth_ms = 0.0  # for delay prediction
        self.qdelay_floor_ms = 0.0  # least sample of the last packets (QUEUE_FLOOR_*)
        self.jitter_ms = 0.0  # how far samples rise above the floor (BURSTY_JITTER_MS)
        # (now_ms, sample) of the last packets acknowledged
        self._qdelay_window: deque[tuple[float, float]] = deque(maxlen=QUEUE_FLOOR_PACKETS)
        self.base_owd_ms = math.inf
        self.base_ack_ms = math.inf
        self.base_bytes = 0  # size of the packet that had the base delay
        # (now, min owd of a report, its smallest ack delay, bytes of the min-owd packet)
        self._owd_window: deque[tuple[float, float, float, int]] = deque()
        self._last_update_ms: float | None = None
        self._last_decrease_ms = -math.inf
        self._qdelay_at_decrease = 0.0
        self._highest_seq = -1
        self._lost = 0
        self._received: deque[tuple[float, int]] = deque()  # (arrival_ms, bytes), last second
        self._sent: deque[tuple[float, int]] = deque()  # (send_ms, bytes), last second
        self._unacked: dict[int, float] = {}  # seq -> send_ms
        self._last_sent_ms = -math.inf
        self._pausing = False  # the last decision paused (or probed)
        self._unanswered_probes = 0  # probes sent since a report acknowledged the newest packet
        self._newest_seq = -1  # the newest packet sent
        self._rate_before_stall: float | None = None
        self._last_arrivals_ms = -math.inf  # when a report last acknowledged anything
        self.ceiling_bps = math.inf  # receive rate at the last congestion
        self._high_reports = 0  # consecutive reports with a queue over QDELAY_HIGH_MS, growing
        self.option = options.best(self.rate_bps, 0.0, 0.0)
        self._choice_key: tuple[float | int, ...] | None = None
        self._choice = self.option
        self._choice_on_time = np.ones(len(options.options), bool)  # set with _choice
        self._now_ms = 0.0
        self._probe: tuple[float, float] | None = None  # (when, wire bit/s) of an upgrade
        self._blocked_bps = math.inf  # settings costing this much are not taken ...
        self._blocked_until_ms = -math.inf  # ... until then (UPGRADE_*)
        self._hold_ms = UPGRADE_HOLD_MS

    # -- inputs ---------------------------------------------------------------------------
    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        self._sent.append((send_ms, wire_bytes))
        self._unacked[seq] = send_ms
        self._last_sent_ms = send_ms
        self._newest_seq = max(self._newest_seq, seq)
        if self._pausing:
            self._unanswered_probes += 1

    def send_rate_bps(self, now_ms: float) -> float:
        while self._sent and self._sent[0][0] <= now_ms - RATE_WINDOW_MS:
            self._sent.popleft()
        return sum(b for _, b in self._sent) * 8000.0 / RATE_WINDOW_MS

    @property
    def receive_rate_bps(self) -> float:
        """Wire bit/s that arrived over the last second of the receiver's clock."""
        return sum(b for _, b in self._received) * 8000.0 / RATE_WINDOW_MS

    @property
    def bursty(self) -> bool:
        """The path delivers in bursts (see the module docstring)."""
        return self.jitter_ms > BURSTY_JITTER_MS

    @property
    def delivered_rate_bps(self) -> float:
        """What the bottleneck delivered: the receive rate before random loss after it."""
        return self.receive_rate_bps / max(1.0 - self.loss, 0.5)

    def _take(self, fb: Feedback, now_ms: float) -> bool:
        """Fold a report into the estimates; True when it shows congestion."""
        congested = False
        if fb.arrivals:
            owds = [a.arrival_ms - a.send_ms for a in fb.arrivals]
            ack = min(now_ms - a.send_ms for a in fb.arrivals)
            i_min = min(range(len(owds)), key=owds.__getitem__)
            self._owd_window.append((now_ms, owds[i_min], ack, fb.arrivals[i_min].wire_bytes))
            while self._owd_window[0][0] < now_ms - BASE_DELAY_WINDOW_MS:
                self._owd_window.popleft()
            base = min(self._owd_window, key=lambda w: w[1])
            self.base_owd_ms, self.base_bytes = base[1], base[3]
            self.base_ack_ms = min(w[2] for w in self._owd_window)
            self._last_arrivals_ms = now_ms
            # Only the newest packet's arrival answers the probes: older ones trickling out
            # of a deep queue say the path still holds everything sent since.
            if any(a.seq >= self._newest_seq for a in fb.arrivals):
                self._unanswered_probes = 0
            for a in fb.arrivals:
                self._received.append((a.arrival_ms, a.wire_bytes))
                self._unacked.pop(a.seq, None)
            latest = max(a.arrival_ms for a in fb.arrivals)
            while self._received and self._received[0][0] <= latest - RATE_WINDOW_MS:
                self._received.popleft()
            # A bigger packet than the one that set the base takes longer to serialise:
            # that is not queuing (at the delivered rate, the bottleneck's or less).
            rate = max(self.receive_rate_bps, self.min_rate)
            previous = self.qdelay_ms
            samples = [
                max(o - self.base_owd_ms - max(a.wire_bytes - self.base_bytes, 0) * 8000 / rate, 0)
                for o, a in zip(owds, fb.arrivals, strict=True)
            ]
            self.qdelay_ms = max(samples)
            self._qdelay_window.extend((now_ms, q) for q in samples)
            while self._qdelay_window[0][0] < now_ms - QUEUE_FLOOR_WINDOW_MS:
                self._qdelay_window.popleft()
            self.qdelay_floor_ms = min(q for _, q in self._qdelay_window)
            growing = self.qdelay_ms > QDELAY_HIGH_MS and self.qdelay_ms > previous
            self.qdelay_smooth_ms += QDELAY_ALPHA * (self.qdelay_ms - self.qdelay_smooth_ms)
            # How far packets rise above a low floor: a cellular schedule's bursts, and the
            # onset of a queue (GCC's adaptive threshold likewise rises after large deviations).
            if self.qdelay_floor_ms < QDELAY_LOW_MS:
                spread = self.qdelay_ms - self.qdelay_floor_ms
                self.jitter_ms += JITTER_ALPHA * (spread - self.jitter_ms)
            # Cellular links deliver in bursts: one late report is jitter, a queue that
            # stays is congestion, and a very late one is congestion at once ...
            delayed = self.qdelay_floor_ms > QDELAY_HIGH_MS or self.qdelay_ms > QDELAY_SEVERE_MS
            # ... but only while the bottleneck delivers less than is sent (random loss
            # after it added back): delay that sending less would not remove (the radio's
            # schedule, a slow link's serialisation) is no reason to send less.
            behind = self.delivered_rate_bps < BEHIND_RATIO * self.send_rate_bps(now_ms)
            # A queue that grows for several reports is ours whatever the rates say (a
            # small overload hides in a one-second receive rate). A delay that stays high
            # without growing, rates matching, is a slower link serialising, not a queue.
            self._high_reports = self._high_reports + 1 if growing else 0
            congested = (delayed and behind) or self._high_reports >= PERSIST_REPORTS
        # Everything at or below the highest sequence received is settled (arrived or lost).
        for seq in [q for q in self._unacked if q <= fb.highest_seq]:
            del self._unacked[seq]
        accounted = fb.highest_seq - self._highest_seq
        if accounted > 0:
            lost = max(fb.cumulative_lost - self._lost, 0)
            keep = (1.0 - LOSS_ALPHA) ** accounted
            self._loss_sum = keep * self._loss_sum + (1.0 - keep) * min(lost / accounted, 1.0)
            # Bias-corrected: the average starts at 0 with weight 0, so that the first
            # packets give the loss rate they show instead of a fraction of it (the plain
            # average reads 0.1 * (1 - 0.98**n) at 10 % loss: 6 % after 50 packets, four
            # seconds of one-frame packets, and the shortfall read as congestion).
            self._loss_weight = keep * self._loss_weight + (1.0 - keep)
            self.loss = self._loss_sum / self._loss_weight
            self._highest_seq, self._lost = fb.highest_seq, fb.cumulative_lost
        return congested

    def _stalled(self, now_ms: float) -> bool:
        """No report has acknowledged the oldest packet for far longer than acks take: an
        outage, or a queue so deep that waiting for its delay samples would be too late."""
        if not self._unacked or math.isinf(self.base_ack_ms):
            return False
        age = now_ms - min(self._unacked.values())
        # ... and nothing at all has arrived for as long. Under random loss a lost packet
        # stays unacknowledged until a later one arrives, a packet interval later (320 ms
        # at four frames a packet), and two lost in a row leave two intervals of silence.
        interval = self.option.frames_per_packet * FRAME_MS
        silent = now_ms - self._last_arrivals_ms > STALL_MARGIN_MS + 2 * interval
        return age > self.base_ack_ms + STALL_MARGIN_MS + interval and silent

    # -- the decision ---------------------------------------------------------------------
    def update(self, feedback: Feedback | None, now_ms: float) -> Decision:
        dt_s = 0.0 if self._last_update_ms is None else (now_ms - self._last_update_ms) / 1e3
        self._last_update_ms = now_ms
        congested = self._take(feedback, now_ms) if feedback is not None else False
        stalled = self._stalled(now_ms)
        if stalled and self._rate_before_stall is None:
            self._rate_before_stall = self.rate_bps
        elif (
            not stalled
            and self._rate_before_stall is not None
            and feedback is not None
            and feedback.arrivals
            and self.qdelay_ms < QDELAY_LOW_MS
        ):
            self.rate_bps = max(self.rate_bps, RESUME_FRACTION * self._rate_before_stall)
            self._rate_before_stall = None
        if congested or stalled:
            # While the queue drains after a cut, its delay stays high and the receive rate
            # falls with what is sent: cutting again on those would spiral to the bottom.
            # Within DRAIN_MS of a cut, only a queue longer than at the cut cuts again.
            draining = (
                now_ms - self._last_decrease_ms < DRAIN_MS
                and self.qdelay_ms <= self._qdelay_at_decrease
                and not stalled
            )
            if now_ms - self._last_decrease_ms >= DECREASE_GAP_MS and not draining:
                # The receive rate is what the bottleneck delivers; in a stall it is stale.
                # (Not the delivered rate, loss added back: that is right only for loss
                # after the bottleneck. Measured: cutting from it gained 0.1-0.2 R points
                # at 10 % simulated loss, but over the tbf link of tests/test_netns.py,
                # whose loss comes before the bottleneck, the stream stayed at 32 levels
                # after the capacity halved in 2 of 3 runs.)
                received = self.receive_rate_bps
                if received > 0 and not stalled:
                    self.ceiling_bps = received
                backoff = BURSTY_BACKOFF if self.bursty else BACKOFF
                cut = backoff * (received if received > 0 and not stalled else self.rate_bps)
                self.rate_bps = max(self.min_rate, min(self.rate_bps, cut))
                if not stalled:
                    self._probe_failed(now_ms)
                self._last_decrease_ms = now_ms
                self._qdelay_at_decrease = self.qdelay_ms
            self.state = ControllerState.DECREASE
        elif feedback is not None and feedback.arrivals:
            if self.qdelay_floor_ms > QDELAY_LOW_MS:
                if self.state is not ControllerState.STARTUP:
                    self.state = ControllerState.HOLD
            elif self.state in (ControllerState.DECREASE, ControllerState.HOLD):
                self.state = ControllerState.INCREASE
        if self.state in (ControllerState.STARTUP, ControllerState.INCREASE) and dt_s > 0:
            # An empty path (no queue at all) ramps up as fast as at startup: after an
            # outage or a deep fade the capacity usually comes back at once.
            fast = self.state is ControllerState.STARTUP or (
                self.qdelay_smooth_ms < QDELAY_EMPTY_MS
                and self.rate_bps < CEILING_FRACTION * self.ceiling_bps
            )
            gain = STARTUP_GAIN_PER_S if fast else INCREASE_GAIN_PER_S
            # Past the last capacity seen, only the additive probe.
            gain = 0.0 if self.rate_bps >= self.ceiling_bps else gain
            additive = BURSTY_ADDITIVE_BPS_PER_S if self.bursty else ADDITIVE_BPS_PER_S
            grown = self.rate_bps + dt_s * max(additive, gain * self.rate_bps)
            cap = max(PROBE_RATIO * self.send_rate_bps(now_ms), PROBE_RATIO * self.min_rate)
            if now_ms < self._blocked_until_ms:
                cap = min(cap, max(self.rate_bps, self._blocked_bps))
            self.rate_bps = min(max(self.rate_bps, min(grown, cap)), self.max_rate)
        self._now_ms = now_ms
        previous = self.option
        self.option = self._choose()
        if self.option.wire_bps > (1.0 + UPGRADE_STEP) * previous.wire_bps:
            self._probe = (now_ms, self.option.wire_bps)
        elif self._probe is not None and now_ms - self._probe[0] > UPGRADE_FAIL_MS:
            if self._probe[1] >= self._blocked_bps:
                self._hold_ms = UPGRADE_HOLD_MS  # the rate that failed held this time
            self._probe = None
        # While stalled, send only a probe now and then: what is sent into an outage waits
        # in the queue and makes every frame after it late.
        # Likewise when even the cheapest setting would arrive past the playout deadline:
        # the link delivers less than the cheapest stream, its queue only grows, and a
        # frame sent now is late and makes the next ones later still.
        # (_choose just predicted every setting's timing for these same inputs.)
        hopeless = self.rate_bps <= self.min_rate and not self._choice_on_time.any()
        self._pausing = stalled or hopeless
        if not self._pausing:
            return Decision.of(self.option, SILENCE_LEVELS)
        # Probes back off while unanswered: each one sent into an outage waits there for
        # the whole of it (a 56-byte probe on a 0.05 kbit/s trickle: 9 s), and one a
        # half-second made most of the packets of a long outage such waits.
        wait = min(STALL_PROBE_MS * 2.0 ** min(self._unanswered_probes, 16), STALL_PROBE_MAX_MS)
        if now_ms - self._last_sent_ms >= wait:
            # The probe: this frame, alone and without redundancy.
            return Decision(self.option.levels, 1, 0, SILENCE_LEVELS)
        return Decision.of(self.option, SILENCE_LEVELS, pause=True)

    def _probe_failed(self, now_ms: float) -> None:
        """Congestion right after an upgrade on a steady path: block its rate a while."""
        if self._probe is None or self.bursty:
            return
        when, bps = self._probe
        self._probe = None
        if now_ms - when > UPGRADE_FAIL_MS:
            return
        # The probe after a hold failed at the blocked rate or above: hold twice as long.
        again = bps >= 0.9 * self._blocked_bps and (
            now_ms - self._blocked_until_ms < self._hold_ms + UPGRADE_FAIL_MS
        )
        self._hold_ms = min(2 * self._hold_ms, UPGRADE_HOLD_MAX_MS) if again else UPGRADE_HOLD_MS
        self._blocked_bps = min(bps, self._blocked_bps) if again else bps
        self._blocked_until_ms = now_ms + self._hold_ms

    def predicted_delay_ms(self) -> np.ndarray:
        """Expected one-way delay ``[N]`` of a packet of each option: the base delay, the
        queuing delay (smoothed, or the latest sample when longer), and the extra
        serialisation of a bigger packet than the one that set the base (at the budget
        rate: the bottleneck's rate, or less)."""
        base = 0.0 if math.isinf(self.base_owd_ms) else self.base_owd_ms
        extra = (self.options.packet_bytes - self.base_bytes) * 8000.0 / self.rate_bps
        # The latest sample when it is above the average: a queue that is building now
        # is what the next packet meets.
        queue = max(self.qdelay_smooth_ms, self.qdelay_ms)
        return base + queue + DEADLINE_MARGIN_MS + np.maximum(extra, 0.0)

    def _on_time(self, delay: np.ndarray | None = None) -> np.ndarray:
        """``[N]`` bool: the settings whose first frame arrives in time by prediction."""
        delay = self.predicted_delay_ms() if delay is None else delay
        return (self.options.fpp - 1) * FRAME_MS + delay <= PLAYOUT_DEADLINE_MS

    def _choose(self) -> StreamOption:
        # A pure function of these: the real-time sender asks every frame, and between
        # reports they seldom change (scoring every option costs ~0.5 ms).
        key = (
            self.rate_bps,
            self.loss,
            self.base_owd_ms,
            self.base_bytes,
            self.qdelay_smooth_ms,
            self.qdelay_ms,
            self.option.index,
            self._now_ms < self._blocked_until_ms,
            self._blocked_bps,
        )
        if key != self._choice_key:
            self._choice_key = key
            self._choice = self._choose_now()
        return self._choice

    def _choose_now(self) -> StreamOption:
        delay = self.predicted_delay_ms()
        scores = self.options.scores(self.loss, delay)
        protect = self.loss >= PROTECT_LOSS
        # Bundling that makes the first frame of a packet late by prediction trades lost
        # frames for levels; the late-or-lost target says no, while anything else fits.
        on_time = self._on_time(delay)
        self._choice_on_time = on_time
        if self._now_ms < self._blocked_until_ms:
            on_time = on_time & (self.options.bps < 0.99 * self._blocked_bps)
        if protect:
            # A copy travels one packet later: protection that arrives past the deadline
            # protects nothing and costs bytes. Required only among the settings where the
            # copy of at least the packet's last frame is predicted in time; with none of
            # them affordable, redundancy is left to the expected-QoE choice.
            copy_on_time = delay + self.options.fpp * FRAME_MS <= PLAYOUT_DEADLINE_MS
            useful = on_time & copy_on_time & (self.options.red > 0)
            if (useful & (self.options.bps <= self.rate_bps)).any():
                on_time = useful
            else:
                protect = False
        best = self.options.best(
            self.rate_bps,
            self.loss,
            delay,
            scores=scores,
            min_redundancy=1 if protect else 0,
            allowed=on_time,
        )
        cur = self.option
        keep = cur is not best and cur.wire_bps <= self.rate_bps
        keep &= cur.redundancy > 0 or not protect
        if keep and scores[best.index] - scores[cur.index] < SWITCH_MARGIN:
            return cur
        return best
