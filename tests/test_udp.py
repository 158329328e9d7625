"""The UDP media socket: oversized, malformed and flooding datagrams are dropped and counted."""

from __future__ import annotations

import asyncio
import socket

import numpy as np

from mimirate.transport.limits import AddressRateLimiter
from mimirate.transport.udp import open_udp
from mimirate.transport.wire import Bye, FrameCodes, MediaPacket, encode_media


def test_checks_in_order_and_survives_handler_errors(caplog) -> None:
    async def run() -> None:
        got: list[object] = []

        def handler(msg, addr, size):
            if isinstance(msg, Bye):
                raise RuntimeError("a bug in one session's handler")
            got.append((msg, size))

        limiter = AddressRateLimiter(rate=1.0, burst=6, max_addresses=8)
        proto = await open_udp(
            handler, local=("127.0.0.1", 0), max_datagram_bytes=200, limiter=limiter
        )
        port = proto.transport.get_extra_info("sockname")[1]
        good = encode_media(MediaPacket(1, (FrameCodes(5, np.arange(8, dtype=np.uint16)),)))
        datagrams = [
            good,
            b"\x41" + bytes(400),  # oversized: dropped before parsing or rate accounting
            b"",  # empty
            b"\xff\x00\x01",  # wrong version
            good[:-1],  # truncated
            bytes(Bye(7)),  # parses, the handler raises
            good,
            good,  # the seventh counted datagram: over the burst of 6
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", port))
            await asyncio.sleep(0.3)
        c = proto.counters
        proto.close()
        assert (c.received, c.oversized, c.malformed, c.handler_errors) == (8, 1, 3, 1)
        assert c.rate_limited == 1
        assert len(got) == 2
        msg, size = got[0]
        assert isinstance(msg, MediaPacket) and size == len(good)
        assert msg.frames[0].index == 5 and msg.frames[0].levels == 8

    with caplog.at_level("ERROR", logger="mimirate.transport.udp"):
        asyncio.run(run())
    # The handler's bug is logged with its traceback, not only counted.
    (record,) = caplog.records
    assert "handling Bye" in record.getMessage() and record.exc_info is not None
