"""The receiver's jitter buffer: frames in by index as they arrive, one frame out per tick.

The playout side is a fixed-rate consumer: every 80 ms tick :meth:`JitterBuffer.next`
returns exactly one decision (a frame to decode, or a gap to conceal), so the audio never
stops while packets are late or lost; concealment covers the gap instead. The delay
adapts in whole frames: a frame that arrives after its turn makes the buffer stretch by
one tick (a concealed frame played without advancing), and a buffer that stays deeper
than it needs to for a while skips one frame. Plain object, no clock of its own: the
caller passes arrival times, which is what the tests do with invented timelines.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from mimirate.errors import ConfigError


class PutResult(enum.IntEnum):
    ACCEPTED = 0
    UPGRADED = 1  # a full copy replaced redundant base levels for the same frame
    DUPLICATE = 2
    LATE = 3  # its turn to play has passed
    TOO_FAR = 4  # beyond the buffer's capacity ahead of playout
    RESYNC = 5  # the stream jumped (sender restart); the buffer restarted at this frame


class FrameSource(enum.IntEnum):
    """Where the audio of one played frame came from."""

    FULL = 0  # the frame as sent
    REDUNDANT = 1  # its base levels, carried in a later packet
    CONCEALED = 2  # nothing arrived in time: the previous frame repeated, fading
    WAITING = 3  # before the stream started (nothing to play yet)


@dataclass(frozen=True)
class BufferedFrame:
    """One frame's codes as received.

    Attributes:
        index: frame number in the stream (unwrapped, 0-based).
        codes: ``[L]`` uint16, the first ``L`` levels of the frame.
        redundant: True when these are base levels copied into a later packet.
        arrival_ms: receive time on the caller's clock.
    """

    index: int
    codes: np.ndarray
    redundant: bool
    arrival_ms: float

    @property
    def levels(self) -> int:
        return int(self.codes.shape[0])


@dataclass(frozen=True)
class Playout:
    """The decision for one tick: play ``frame`` as frame ``index``, or conceal (frame None)."""

    index: int
    frame: BufferedFrame | None
    source: FrameSource


@dataclass(frozen=True)
class JitterStats:
    accepted: int
    duplicates: int
    late: int
    too_far: int
    resyncs: int
    played: int
    concealed: int
    redundant_used: int
    stretches: int
    skips: int
    target_frames: int


class JitterBuffer:
    """Reorders frames by index and releases one per tick after an adaptive delay.

    Args:
        target_frames: initial playout delay, in frames held before playing.
        min_frames / max_frames: bounds of the adaptive delay.
        capacity: most frames held (the memory bound); frames further ahead are refused.
        shrink_after: ticks the buffer must stay deeper than needed before it skips one.
    """

    def __init__(
        self,
        target_frames: int = 2,
        min_frames: int = 1,
        max_frames: int = 8,
        capacity: int = 64,
        shrink_after: int = 50,
    ) -> None:
        if not 0 <= min_frames <= target_frames <= max_frames < capacity:
            raise ConfigError(
                "jitter buffer: need 0 <= min_frames <= target_frames <= max_frames < capacity"
            )
        self.target_frames = target_frames
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.capacity = capacity
        self.shrink_after = shrink_after
        self._frames: dict[int, BufferedFrame] = {}
        self._next: int | None = None  # index of the next frame to play
        self._started = False
        self._waited = 0
        self._stretch = 0
        self._deep_ticks = 0
        self._far_run = 0
        self._counts = dict.fromkeys(
            (
                "accepted",
                "duplicates",
                "late",
                "too_far",
                "resyncs",
                "played",
                "concealed",
                "redundant_used",
                "stretches",
                "skips",
            ),
            0,
        )

    # -- arrival side --------------------------------------------------------------------
    def put(
        self, index: int, codes: np.ndarray, arrival_ms: float, redundant: bool = False
    ) -> PutResult:
        """Store frame ``index`` (``codes`` ``[L]``). Never holds more than ``capacity``."""
        if self._next is None:
            self._next = index
        if index < self._next:
            if not redundant:
                self._counts["late"] += 1
                # It missed its turn by ``behind`` frames: hold that many more from now on
                # (up to the bound), so the frames after it, delayed alike, are in time.
                # Stretches already pending count: a burst of late frames grows it once.
                behind = self._next - index - self._stretch
                grow = min(behind, self.max_frames - self.target_frames)
                if grow > 0:
                    self.target_frames += grow
                    self._stretch += grow
            return PutResult.LATE
        if index >= self._next + self.capacity:
            self._far_run += 1
            self._counts["too_far"] += 1
            if self._far_run < 3:
                return PutResult.TOO_FAR
            # Three in a row far ahead: the sender restarted or jumped; follow it.
            self._frames.clear()
            self._next = index
            self._started = False
            self._waited = 0
            self._far_run = 0
            self._counts["resyncs"] += 1
            self._store(index, codes, arrival_ms, redundant)
            return PutResult.RESYNC
        self._far_run = 0
        old = self._frames.get(index)
        if old is not None:
            if old.redundant and not redundant:
                self._store(index, codes, arrival_ms, redundant)
                return PutResult.UPGRADED
            self._counts["duplicates"] += 1
            return PutResult.DUPLICATE
        self._store(index, codes, arrival_ms, redundant)
        self._counts["accepted"] += 1
        return PutResult.ACCEPTED

    def _store(self, index: int, codes: np.ndarray, arrival_ms: float, redundant: bool) -> None:
        codes = np.array(codes, dtype=np.uint16, copy=True).reshape(-1)
        self._frames[index] = BufferedFrame(index, codes, redundant, arrival_ms)

    def ensure_cover(self, frames: int) -> None:
        """Hold at least ``frames`` frames from now on (``frames`` up to ``max_frames``).

        A packet of F frames delivers its first frame F - 1 frame periods after it was
        made: the receiver learns the sender's packetisation from each packet and grows
        its delay at once (one concealed frame per frame added) rather than letting the
        frames arrive late one by one.
        """
        frames = min(frames, self.max_frames)
        if frames > self.target_frames:
            if self._started:
                self._stretch += frames - self.target_frames
            self.target_frames = frames

    # -- playout side --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Frames from the next to play up to the newest held (0 when empty)."""
        if self._next is None or not self._frames:
            return 0
        return max(self._frames) - self._next + 1

    def next(self) -> Playout:
        """The decision for this tick. Call exactly once per frame period."""
        if self._next is None:
            return Playout(-1, None, FrameSource.WAITING)
        if not self._started:
            # The first frame plays ``target_frames`` ticks after it arrived: time, not
            # depth, because frames often arrive in bursts (a sender catching up).
            self._waited += 1
            if self._waited <= self.target_frames:
                return Playout(self._next - 1, None, FrameSource.WAITING)
            self._started = True
        if self._stretch > 0:
            # Play a concealed frame without advancing: the delay grows by one frame.
            self._stretch -= 1
            self._counts["stretches"] += 1
            self._counts["concealed"] += 1
            return Playout(self._next - 1, None, FrameSource.CONCEALED)
        self._maybe_shrink()
        index = self._next
        self._next += 1
        frame = self._frames.pop(index, None)
        if frame is None:
            self._counts["concealed"] += 1
            return Playout(index, None, FrameSource.CONCEALED)
        self._counts["played"] += 1
        if frame.redundant:
            self._counts["redundant_used"] += 1
            return Playout(index, frame, FrameSource.REDUNDANT)
        return Playout(index, frame, FrameSource.FULL)

    def _maybe_shrink(self) -> None:
        assert self._next is not None
        if self.depth > self.target_frames + 1:
            self._deep_ticks += 1
        else:
            self._deep_ticks = 0
        if self._deep_ticks < self.shrink_after:
            return
        self._deep_ticks = 0
        # Skip the oldest held frame: its audio is dropped so the delay falls by one frame.
        self._frames.pop(self._next, None)
        self._next += 1
        self._counts["skips"] += 1
        if self.target_frames > self.min_frames:
            self.target_frames -= 1

    def stats(self) -> JitterStats:
        return JitterStats(**self._counts, target_frames=self.target_frames)
