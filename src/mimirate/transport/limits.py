"""Limits that keep one server safe from its clients: sizes, counts and rates.

Everything a stranger can make the server hold is bounded here: how many sessions, how
large a datagram or WebSocket message, how many packets per second from one address, how
many entries a queue keeps. The rate limiter is a plain object with an injected clock so
tests feed it invented timelines.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mimirate.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """What one server accepts. The defaults suit a small deployment on one machine.

    Attributes:
        max_sessions: concurrent sessions (UDP clients and WebSocket listeners together).
        max_datagram_bytes: larger UDP datagrams are dropped unread. A 32-level packet of
            4 frames with redundancy is well under 1 kB; 1400 keeps under a typical MTU.
        max_ws_message_bytes: largest WebSocket message the server reads (control only).
        max_http_body_bytes: largest HTTP request body (signalling JSON).
        packets_per_second: sustained datagrams per source address (12.5/s is one stream;
            the headroom covers a call, retries and bursts after a stall).
        burst_packets: datagrams an address may send at once before the rate applies.
        max_tracked_addresses: addresses the rate limiter remembers (least recent forgotten).
        send_queue_frames: frames queued towards one slow listener before the oldest drop.
        sessions_per_address: sessions one IP address may hold at once.
        idle_timeout_s: a session that sends nothing (no media, no feedback) for this long ends.
    """

    max_sessions: int = 32
    max_datagram_bytes: int = 1400
    max_ws_message_bytes: int = 4096
    max_http_body_bytes: int = 4096
    packets_per_second: float = 100.0
    burst_packets: int = 50
    max_tracked_addresses: int = 4096
    send_queue_frames: int = 25
    sessions_per_address: int = 8
    idle_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "max_sessions",
            "max_datagram_bytes",
            "max_ws_message_bytes",
            "max_http_body_bytes",
            "burst_packets",
            "max_tracked_addresses",
            "send_queue_frames",
            "sessions_per_address",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"limit {name} must be at least 1, got {getattr(self, name)}")
        if self.packets_per_second <= 0 or self.idle_timeout_s <= 0:
            raise ConfigError("packets_per_second and idle_timeout_s must be positive")


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take(now_s)`` spends one if it can."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now_s: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now_s

    def take(self, now_s: float, cost: float = 1.0) -> bool:
        # A clock that steps backwards (tests, suspended VMs) must not mint tokens.
        elapsed = max(0.0, now_s - self._last)
        self._last = max(self._last, now_s)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class AddressRateLimiter:
    """One token bucket per source address, at most ``max_addresses`` remembered.

    A flood from many spoofed addresses can only evict old buckets (LRU), never grow
    memory; an evicted address starts again with a full bucket, which costs at most one
    burst.
    """

    def __init__(self, rate: float, burst: int, max_addresses: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()
        self.dropped = 0

    def allow(self, address: object, now_s: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now_s)
            self._buckets[address] = bucket
            if len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        ok = bucket.take(now_s)
        if not ok:
            self.dropped += 1
        return ok

    def __len__(self) -> int:
        return len(self._buckets)
