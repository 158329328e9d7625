"""Both ends of one media stream, without sockets: the sender and the receiver.

:class:`Sender` turns encoded frames into AUDIO messages at the levels its policy chooses
(the network-adaptive controller when there is one, else fixed levels), repeating the
first levels of the previous packet's frames for loss protection, and keeps the send
times its feedback is compared with. :class:`Receiver` puts what arrives in a jitter
buffer, decodes one frame per tick from whatever levels arrived, conceals what did not
(base levels from redundancy, else the last frame repeated and faded), and writes the
FEEDBACK reports the sender adapts to.

Both are plain objects driven by the caller's clock (``now_ms``), so the server, the
Python clients and the tests run the very same code.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mimirate.codec import StreamDecoder
from mimirate.errors import ConfigError
from mimirate.ratecontrol.controller import DTX_KEEPALIVE_FRAMES
from mimirate.transport.jitter import FrameSource, JitterBuffer, JitterStats, Playout
from mimirate.transport.wire import (
    HEADER_BYTES,
    SEQ_MOD,
    FeedbackReport,
    FrameCodes,
    MediaPacket,
    encode_media,
    unwrap,
)

#: Milliseconds per frame at Mimi's 12.5 Hz.
FRAME_MS = 80.0
#: Send times remembered for matching feedback (about 40 s of packets at 12.5/s).
SEND_HISTORY = 512


@dataclass(frozen=True)
class SendDecision:
    """What the sender does with the next frames."""

    levels: int
    frames_per_packet: int = 1
    redundancy_levels: int = 0  # base levels of the previous packet's frames repeated
    #: Send nothing for now (the path is stalled: frames sent into an outage only queue
    #: up and make the frames after it late). The controller lifts it for a probe.
    pause: bool = False
    #: Levels of frames the sender's VAD calls silent: 0 sends none (discontinuous
    #: transmission), None sends them like speech.
    silence_levels: int | None = None


class RateController(Protocol):
    """The network-adaptive controller as the transport sees it (see ``transport.adapt``)."""

    name: str

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        """Packet ``seq`` (unwrapped) left at ``send_ms``, ``wire_bytes`` with headers."""
        ...

    def update(self, report: FeedbackReport | None, now_ms: float) -> SendDecision:
        """A receiver report at ``now_ms``, or None: a frame is due (called every frame,
        so that time-driven decisions, ramps and pauses, happen between reports)."""
        ...


class FixedPolicy:
    """Fixed levels and packetisation: what the sender does without a controller."""

    name = "fixed"

    def __init__(self, decision: SendDecision) -> None:
        self.decision = decision

    def on_sent(self, seq: int, send_ms: float, wire_bytes: int) -> None:
        pass

    def update(self, report: FeedbackReport | None, now_ms: float) -> SendDecision:
        return self.decision


class Sender:
    """Packetises frames for one receiver at the levels the policy and the cap allow.

    Args:
        num_levels: levels the source frames have (32 for a full encoding).
        policy: a :class:`RateController` (adaptive) or :class:`FixedPolicy`.
        initial: the decision used until the first receiver report arrives.
    """

    def __init__(
        self,
        num_levels: int,
        policy: RateController,
        initial: SendDecision,
        header_bytes: int = HEADER_BYTES,
    ) -> None:
        if not 1 <= initial.levels <= num_levels:
            raise ConfigError(f"levels must be in 1..{num_levels}, got {initial.levels}")
        self.num_levels = num_levels
        self.header_bytes = header_bytes
        self.policy = policy
        self.decision = initial
        self.cap = num_levels
        self._pending: list[FrameCodes] = []
        self._last_sent: tuple[FrameCodes, ...] = ()
        self._seq = 0
        self._send_ms: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._min_owd: float | None = None
        self.queuing_delay_ms = 0.0  # from the latest report's arrival times
        self.loss_fraction = 0.0  # from the latest report
        self.reports = 0
        self.packets = 0
        self.wire_bytes = 0  # payload only; callers add headers
        self.levels_sent: collections.Counter[int] = collections.Counter()
        self.paused_frames = 0  # frames dropped unsent while the policy paused
        self.dtx_frames = 0  # silent frames not sent (discontinuous transmission)
        self._last_queued = -DTX_KEEPALIVE_FRAMES  # index of the last frame queued
        self._pending_speech = False  # a frame queued is speech
        self._tail_open = False  # the last packet holds speech no packet has copied yet

    def set_cap(self, levels: int) -> None:
        """The receiver's level cap (1..num_levels); out-of-range values are clamped."""
        self.cap = int(min(max(levels, 1), self.num_levels))

    def on_report(self, report: FeedbackReport, now_ms: float) -> None:
        """Take a FEEDBACK report: update delay/loss figures and ask the policy."""
        self.reports += 1
        self.loss_fraction = report.loss_fraction / 65535.0
        delays = []
        for seq, arrival_us in report.arrivals:
            sent = self._send_ms.get(seq)
            if sent is None:
                continue
            # Receiver and sender clocks differ by an unknown offset: keep the smallest
            # one-way figure as the base and report what lies above it (queuing delay).
            owd = arrival_us / 1000.0 - sent
            if self._min_owd is None or owd < self._min_owd:
                self._min_owd = owd
            delays.append(owd - self._min_owd)
        if delays:
            self.queuing_delay_ms = float(np.mean(delays))
        self.decision = self.policy.update(report, now_ms)

    def send_time_ms(self, seq: int) -> float | None:
        """When packet ``seq`` (mod 2**16) was made, on the sender's clock."""
        return self._send_ms.get(seq % SEQ_MOD)

    @property
    def levels(self) -> int:
        return int(min(max(self.decision.levels, 1), self.cap, self.num_levels))

    def push(self, frame: FrameCodes, now_ms: float, speech: bool = True) -> list[bytes]:
        """Queue one frame (any number of levels); return the datagrams now due (0-2).

        A packet carries consecutive frames only: a gap in indices (a frame lost upstream,
        or silent frames not sent) sends what is queued first. ``speech=False`` (the VAD
        calls the frame silent) sends it at the decision's ``silence_levels``; at 0 it is
        not sent and what was queued goes now rather than wait for speech (as in the
        simulator the controller is tuned in), but for one keep-alive frame at 1 level
        every ``DTX_KEEPALIVE_FRAMES``, and one in the frame after a talkspurt's last
        packet when the decision has redundancy (it carries that packet's copy).
        """
        out: list[bytes] = []
        # Every frame, as the simulator the controller is tuned in does: its rate grows
        # with time, and a missing report (an outage) shows as time without one.
        self.decision = self.policy.update(None, now_ms)
        if self.decision.pause:
            # Drop the frame and what was bundled with it; repeat nothing from before
            # the pause either (those frames are stale by the time the path is back).
            self.paused_frames += 1
            self._pending, self._last_sent = [], ()
            self._pending_speech = self._tail_open = False
            return out
        levels = min(self.levels, frame.levels)
        quiet = self.decision.silence_levels
        keepalive = False
        if not speech and quiet is not None:
            if quiet > 0:
                levels = min(quiet, levels)
            elif frame.index - self._last_queued >= DTX_KEEPALIVE_FRAMES or (
                # A talkspurt's last packet has no next packet to carry its copy: a
                # keep-alive goes at once (a frame after it, not with it: loss comes in
                # bursts), as in the simulator.
                self._tail_open and not self._pending and self.decision.redundancy_levels > 0
            ):
                keepalive, levels = True, 1
            else:
                self.dtx_frames += 1
                if self._pending:
                    out.append(self._packet(now_ms))
                return out
        if self._pending and frame.index != self._pending[-1].index + 1:
            out.append(self._packet(now_ms))
        self._pending.append(FrameCodes(frame.index, frame.codes[:levels]))
        self._last_queued = frame.index
        self._pending_speech |= speech and not keepalive
        self.levels_sent[levels] += 1
        if keepalive or len(self._pending) >= max(1, self.decision.frames_per_packet):
            out.append(self._packet(now_ms))
        return out

    def flush(self, now_ms: float) -> list[bytes]:
        """Send what is queued now (end of stream)."""
        return [self._packet(now_ms)] if self._pending else []

    def _packet(self, now_ms: float) -> bytes:
        r = min(self.decision.redundancy_levels, self.cap)
        redundant = tuple(FrameCodes(f.index, f.codes[:r]) for f in self._last_sent) if r else ()
        seq = self._seq % SEQ_MOD
        data = encode_media(MediaPacket(seq, tuple(self._pending), redundant))
        self._send_ms[seq] = now_ms
        self._send_ms.move_to_end(seq)
        while len(self._send_ms) > SEND_HISTORY:
            self._send_ms.popitem(last=False)
        self.policy.on_sent(self._seq, now_ms, len(data) + self.header_bytes)
        self._seq += 1
        self.packets += 1
        self.wire_bytes += len(data)
        self._last_sent = tuple(self._pending)
        self._pending = []
        self._tail_open, self._pending_speech = self._pending_speech, False
        return data


@dataclass
class _Interval:
    received: int = 0
    payload_bytes: int = 0
    start_ms: float | None = None
    first_seq: int | None = None
    arrivals: list[tuple[int, int]] = field(default_factory=list)


class ReceiveMonitor:
    """Counts what arrives on one stream and writes its FEEDBACK reports.

    Used by the :class:`Receiver` and by the server for each publisher's uplink.
    """

    #: Arrival times one report carries at most (the format's limit is 255).
    MAX_ARRIVALS = 64

    def __init__(self) -> None:
        self._highest: int | None = None  # unwrapped
        self._interval = _Interval()
        self._jitter_ms = 0.0
        self._last_transit: float | None = None
        self._min_transit: float | None = None
        self.total_received = 0
        self.total_bytes = 0  # payload bytes
        self.total_lost = 0
        # Frames the sender did not send (silence under DTX, or paused): a packet that
        # follows the previous one with no sequence gap but skips frame indices.
        self.unsent_frames = 0
        self._last_frame: int | None = None

    def on_packet(self, packet: MediaPacket, now_ms: float, payload_bytes: int) -> None:
        """Count one arrived packet (``payload_bytes``: its datagram length)."""
        seq = packet.seq if self._highest is None else unwrap(packet.seq, self._highest)
        if packet.frames:
            first, last = packet.frames[0].index, packet.frames[-1].index
            follows = self._highest is not None and seq == self._highest + 1
            if follows and self._last_frame is not None:
                self.unsent_frames += max(0, first - self._last_frame - 1)
            if self._highest is None or seq > self._highest:
                self._last_frame = last
        self.total_received += 1
        self.total_bytes += payload_bytes
        iv = self._interval
        if iv.first_seq is None:
            iv.first_seq = seq
        if iv.start_ms is None:
            iv.start_ms = now_ms
        iv.received += 1
        iv.payload_bytes += payload_bytes
        if len(iv.arrivals) < self.MAX_ARRIVALS:
            iv.arrivals.append((seq % SEQ_MOD, int(now_ms * 1000.0) % (1 << 32)))
        self._highest = seq if self._highest is None else max(self._highest, seq)
        if packet.frames:
            # RFC 3550 interarrival jitter; the newest frame was ready (index + 1) frames in.
            transit = now_ms - (packet.frames[-1].index + 1) * FRAME_MS
            if self._last_transit is not None:
                self._jitter_ms += (abs(transit - self._last_transit) - self._jitter_ms) / 16.0
            self._last_transit = transit
            self._min_transit = (
                transit if self._min_transit is None else min(self._min_transit, transit)
            )

    @property
    def queuing_delay_ms(self) -> float:
        """How much later than the fastest one the newest packet came (its frames' capture
        times taken as send times): the queuing delay on the path, the clocks' offset and
        the fixed propagation delay cancelled. 0 before anything arrived."""
        if self._last_transit is None or self._min_transit is None:
            return 0.0
        return self._last_transit - self._min_transit

    def report(self, now_ms: float) -> FeedbackReport:
        """The report for the interval since the last one (then a new interval starts)."""
        iv = self._interval
        expected = 0
        if iv.first_seq is not None and self._highest is not None:
            expected = self._highest - iv.first_seq + 1
        lost = max(0, expected - iv.received)
        self.total_lost += lost
        span = max(now_ms - iv.start_ms, FRAME_MS) if iv.start_ms is not None else FRAME_MS
        fraction = round(65535 * lost / expected) if expected else 0
        rep = FeedbackReport(
            highest_seq=(self._highest or 0) % SEQ_MOD,
            cumulative_lost=min(self.total_lost, (1 << 32) - 1),
            loss_fraction=min(fraction, 65535),
            receive_rate_bps=min(int(iv.payload_bytes * 8000.0 / span), (1 << 32) - 1),
            jitter_us=min(int(self._jitter_ms * 1000.0), (1 << 32) - 1),
            arrivals=tuple(iv.arrivals),
        )
        nxt = None if self._highest is None else self._highest + 1
        self._interval = _Interval(start_ms=now_ms, first_seq=nxt)
        return rep


@dataclass(frozen=True)
class PlayedFrame:
    """One tick's audio: ``audio`` ``[frame_size]`` float32 and where it came from."""

    index: int
    audio: np.ndarray
    levels: int  # levels decoded (0 when concealed or waiting)
    source: FrameSource


#: Gain at the end of the k-th consecutive concealed frame: the last frame repeats and
#: fades out over four frames, then silence. A short gap sounds like a held sound, a long
#: one like a drop-out, never like a loop.
CONCEAL_GAINS = (0.9, 0.6, 0.3, 0.1)


class Receiver:
    """Jitter buffer, decoder and concealment for one incoming stream.

    Args:
        decoder: a fresh :class:`~mimirate.codec.StreamDecoder` for this stream.
        num_levels: levels of the decoder (codes are zero-padded up to it).
        frame_size: samples per frame (1920).
        jitter: the buffer (a default one when None).
    """

    def __init__(
        self,
        decoder: StreamDecoder,
        num_levels: int,
        frame_size: int,
        jitter: JitterBuffer | None = None,
    ) -> None:
        self.decoder = decoder
        self.num_levels = num_levels
        self.frame_size = frame_size
        self.jitter = jitter if jitter is not None else JitterBuffer()
        self.monitor = ReceiveMonitor()
        # The delay beyond a packet's own span that the buffer keeps for network jitter.
        self.cover_frames = self.jitter.target_frames
        self.level_cap = num_levels
        self._last_codes: np.ndarray | None = None
        self._conceal_run = 0
        self._gain = 1.0
        self.longest_conceal_run = 0
        self.played_levels: list[int] = []
        self.sources: collections.Counter[str] = collections.Counter()

    def on_packet(self, packet: MediaPacket, now_ms: float, payload_bytes: int) -> None:
        """File one arrived packet (``payload_bytes``: its datagram length)."""
        self.monitor.on_packet(packet, now_ms, payload_bytes)
        if packet.frames:
            self.jitter.ensure_cover(self.cover_frames + len(packet.frames) - 1)
        for f in packet.frames:
            self.jitter.put(f.index, f.codes, now_ms)
        for f in packet.redundant:
            if f.levels:
                self.jitter.put(f.index, f.codes, now_ms, redundant=True)

    def report(self, now_ms: float) -> FeedbackReport:
        return self.monitor.report(now_ms)

    def tick(self) -> PlayedFrame:
        """Produce the next frame of audio (call once per frame period)."""
        return self.render(self.next_playout())

    def next_playout(self) -> Playout:
        """This tick's decision from the jitter buffer (on the thread that files packets)."""
        p = self.jitter.next()
        self.sources[p.source.name] += 1
        return p

    def render(self, p: Playout) -> PlayedFrame:
        """Decode or conceal one decision (may run on a worker thread: it touches only the
        decoder and the concealment state, never the jitter buffer)."""
        if p.source is FrameSource.WAITING:
            return PlayedFrame(p.index, np.zeros(self.frame_size, np.float32), 0, p.source)
        if p.frame is not None:
            codes = p.frame.codes[: self.num_levels]
            audio = self._decode(codes)
            if self._gain < 1.0:
                # Ramp back up within the frame: no click after a concealed gap.
                audio = audio * np.linspace(self._gain, 1.0, self.frame_size, dtype=np.float32)
            self._gain = 1.0
            self._last_codes = codes
            self._conceal_run = 0
            self.played_levels.append(int(codes.shape[0]))
            return PlayedFrame(p.index, audio, int(codes.shape[0]), p.source)
        self._conceal_run += 1
        self.longest_conceal_run = max(self.longest_conceal_run, self._conceal_run)
        self.played_levels.append(0)
        if self._last_codes is None:
            return PlayedFrame(p.index, np.zeros(self.frame_size, np.float32), 0, p.source)
        # Keep the decoder's state moving with the last codes; fade what it says.
        audio = self._decode(self._last_codes)
        run = self._conceal_run
        target = CONCEAL_GAINS[run - 1] if run <= len(CONCEAL_GAINS) else 0.0
        ramp = np.linspace(self._gain, target, self.frame_size, dtype=np.float32)
        self._gain = target
        return PlayedFrame(p.index, audio * ramp, 0, p.source)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        levels = int(codes.shape[0])
        full = np.zeros((self.num_levels, 1), dtype=np.uint16)
        full[:levels, 0] = codes
        audio = self.decoder.push(full, np.array([levels], dtype=np.int64))
        return np.asarray(audio, dtype=np.float32).reshape(-1)[: self.frame_size]

    def jitter_stats(self) -> JitterStats:
        return self.jitter.stats()
