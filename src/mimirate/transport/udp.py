"""The UDP media socket: bounded, rate-limited, parse-or-drop.

Every datagram is checked in this order before any work is done for it: size (larger
than ``max_datagram_bytes`` is dropped unread), the sender's rate (a token bucket per
address), then parsing (:class:`~mimirate.errors.FormatError` drops it and counts it).
Only a well-formed message reaches the handler. Nothing here queues: a datagram is
handled or dropped on arrival, and sending never blocks (the kernel drops when its
buffer is full, which is what a real-time sender wants rather than growing a queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mimirate.errors import FormatError
from mimirate.transport.limits import AddressRateLimiter
from mimirate.transport.wire import WireMessage, parse_message

Address = tuple[str, int]
Handler = Callable[[WireMessage, Address, int], None]

log = logging.getLogger(__name__)
#: Handler exceptions logged with their traceback; after these, one in LOG_EVERY.
LOG_FIRST_ERRORS = 5
LOG_EVERY = 1000


@dataclass
class UdpCounters:
    received: int = 0
    oversized: int = 0
    rate_limited: int = 0
    malformed: int = 0
    handler_errors: int = 0
    sent: int = 0
    send_errors: int = 0


class MediaProtocol(asyncio.DatagramProtocol):
    """Checks each datagram and hands well-formed messages to ``handler(msg, addr, size)``.

    Args:
        handler: called for each accepted message with the datagram's length.
        max_datagram_bytes: the size limit.
        limiter: per-address rate limiter (None: no rate limit, for clients).
        clock: seconds, monotonic (the loop's clock by default).
    """

    def __init__(
        self,
        handler: Handler,
        max_datagram_bytes: int,
        limiter: AddressRateLimiter | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.handler = handler
        self.max_datagram_bytes = max_datagram_bytes
        self.limiter = limiter
        self.clock = clock
        self.counters = UdpCounters()
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: not our problem to raise.
        self.counters.send_errors += 1

    def datagram_received(self, data: bytes, addr: Address) -> None:
        c = self.counters
        c.received += 1
        if len(data) > self.max_datagram_bytes:
            c.oversized += 1
            return
        if self.limiter is not None:
            now = self.clock() if self.clock else asyncio.get_running_loop().time()
            if not self.limiter.allow(addr[:2], now):
                c.rate_limited += 1
                return
        try:
            msg = parse_message(data)
        except FormatError:
            c.malformed += 1
            return
        try:
            self.handler(msg, addr[:2], len(data))
        except Exception:
            # One client's bad state must not take the socket down for everyone. But a
            # handler that raises is a bug, not bad input (parsing already refused that):
            # say so, with the traceback, without letting a flood fill the log.
            c.handler_errors += 1
            n = c.handler_errors
            if n <= LOG_FIRST_ERRORS or n % LOG_EVERY == 0:
                log.exception(
                    "handling %s from %s failed (error %d)", type(msg).__name__, addr[:2], n
                )

    def send(self, data: bytes, addr: Address | None = None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.sendto(data, addr)
            self.counters.sent += 1
        except OSError:
            self.counters.send_errors += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_udp(
    handler: Handler,
    *,
    local: Address | None = None,
    remote: Address | None = None,
    max_datagram_bytes: int = 1400,
    limiter: AddressRateLimiter | None = None,
) -> MediaProtocol:
    """Bind a UDP socket (``local``) or connect one (``remote``) and return its protocol."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: MediaProtocol(handler, max_datagram_bytes, limiter),
        local_addr=local,
        remote_addr=remote,
    )
    return protocol
