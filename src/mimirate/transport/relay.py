"""A user-space UDP relay that impairs a link: loss, delay and a capacity with a queue.

This kernel has no netem, so tests put this relay on the media path (between a client and
the server, in the client's namespace or on loopback) to add what ``tc tbf`` cannot:
Bernoulli loss and fixed delay, per direction. It can also be the bottleneck itself
(a rate with a drop-tail queue, changeable while running) where namespaces are forbidden.
Seeded, so a run's losses are reproducible. Only forwards between the one client it has
heard from and the one upstream address it was given.

Run it alone: ``python -m mimirate.transport.relay --listen 127.0.0.1:9000
--upstream 127.0.0.1:8750 --loss 0.1 --delay-ms 20``. ``--down-trace FILE`` replays a
bandwidth trace (``ratecontrol.traces`` formats) as the downlink capacity over time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
from dataclasses import dataclass

import numpy as np

from mimirate.errors import MimirateError

Address = tuple[str, int]

#: How often a packet being serialised looks at the bottleneck rate again.
RATE_STEP_S = 0.02


@dataclass
class Impairment:
    """One direction's impairment.

    Attributes:
        loss: probability that a datagram is dropped.
        delay_ms: added one-way delay.
        rate_bps: bottleneck capacity in bit/s, IP/UDP headers (28 bytes) counted; None:
            unlimited. May be changed while the relay runs.
        queue_bytes: drop-tail queue of the bottleneck.
    """

    loss: float = 0.0
    delay_ms: float = 0.0
    rate_bps: float | None = None
    queue_bytes: int = 3000


@dataclass
class DirectionStats:
    forwarded: int = 0
    lost: int = 0
    queue_drops: int = 0
    bytes: int = 0
    max_queue_bytes: int = 0


class _Direction:
    def __init__(self, imp: Impairment, rng: np.random.Generator, send: object) -> None:
        self.imp = imp
        self.rng = rng
        self.send = send
        self.stats = DirectionStats()
        self.queue: collections.deque[tuple[bytes, Address]] = collections.deque()
        self.queued = 0
        self.wake = asyncio.Event()

    def offer(self, data: bytes, dest: Address) -> None:
        if self.rng.random() < self.imp.loss:
            self.stats.lost += 1
            return
        size = len(data) + 28
        if self.imp.rate_bps is not None and self.queued + size > self.imp.queue_bytes:
            self.stats.queue_drops += 1
            return
        self.queue.append((data, dest))
        self.queued += size
        self.stats.max_queue_bytes = max(self.stats.max_queue_bytes, self.queued)
        self.wake.set()

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        free_at = loop.time()  # when the bottleneck finishes what it is sending
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            data, dest = self.queue[0]
            if self.imp.rate_bps:
                # Serialisation at the bottleneck rate, on an absolute schedule: a busy
                # event loop waking late must not slow the link down as well. The rate is
                # read again every RATE_STEP_S, so a change (a trace's outage ending)
                # applies to the packet on the wire too, as it does with tc.
                clock = max(free_at, loop.time())
                bits = (len(data) + 28) * 8.0
                while True:
                    rate = self.imp.rate_bps
                    done_at = clock + bits / rate
                    if done_at <= loop.time() + RATE_STEP_S:
                        free_at = done_at
                        if done_at > loop.time():
                            await asyncio.sleep(done_at - loop.time())
                        break
                    await asyncio.sleep(RATE_STEP_S)
                    now = loop.time()
                    bits -= (now - clock) * rate
                    clock = now
            self.queue.popleft()
            self.queued -= len(data) + 28
            self.stats.forwarded += 1
            self.stats.bytes += len(data)
            if self.imp.delay_ms > 0:
                loop.call_later(self.imp.delay_ms / 1000.0, self.send, data, dest)
            else:
                self.send(data, dest)  # type: ignore[operator]


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_data: object) -> None:
        self.on_data = on_data
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_data(data, addr[:2])  # type: ignore[operator]

    def error_received(self, exc: Exception) -> None:
        pass


class ImpairingRelay:
    """Relay between one client (the first address that sends to ``listen``) and ``upstream``.

    ``up`` impairs client -> upstream, ``down`` upstream -> client. ``async with`` it, or
    ``start()``/``stop()``; ``address`` is where clients send.
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int = 0,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.up_imp = up or Impairment()
        self.down_imp = down or Impairment()
        self.seed = seed
        self.client: Address | None = None
        self.address: Address = listen
        #: Downlink capacity steps (seconds after the client's first datagram, kbit/s).
        self.schedule: list[tuple[float, float]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._front: _Socket | None = None
        self._back: _Socket | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rng_up, rng_down = (
            np.random.default_rng([self.seed, 0]),
            np.random.default_rng([self.seed, 1]),
        )
        self.up = _Direction(self.up_imp, rng_up, self._to_upstream)
        self.down = _Direction(self.down_imp, rng_down, self._to_client)
        _, self._front = await loop.create_datagram_endpoint(
            lambda: _Socket(self._from_client), local_addr=self.listen
        )
        _, self._back = await loop.create_datagram_endpoint(
            lambda: _Socket(self._from_upstream), remote_addr=self.upstream
        )
        assert self._front.transport is not None
        self.address = self._front.transport.get_extra_info("sockname")[:2]
        self._tasks = [loop.create_task(self.up.pump()), loop.create_task(self.down.pump())]

    async def _replay(self) -> None:
        """Apply ``schedule`` (seconds after the client's first datagram, kbit/s) downlink."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, kbps in self.schedule:
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.down_imp.rate_bps = kbps * 1000.0

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for s in (self._front, self._back):
            if s is not None and s.transport is not None:
                s.transport.close()

    async def __aenter__(self) -> ImpairingRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _from_client(self, data: bytes, addr: Address) -> None:
        if self.client is None:
            self.client = addr
            if self.schedule:
                self._tasks.append(asyncio.get_running_loop().create_task(self._replay()))
        if addr != self.client:
            return  # one client per relay: anything else is not ours to forward
        self.up.offer(data, self.upstream)

    def _from_upstream(self, data: bytes, addr: Address) -> None:
        if self.client is not None:
            self.down.offer(data, self.client)

    def _to_upstream(self, data: bytes, dest: Address) -> None:
        if self._back is not None and self._back.transport is not None:
            self._back.transport.sendto(data)

    def _to_client(self, data: bytes, dest: Address) -> None:
        if self._front is not None and self._front.transport is not None:
            self._front.transport.sendto(data, dest)


def _schedule(text: str) -> list[tuple[float, float]]:
    """``KBPS`` or ``T:KBPS,T:KBPS,...`` -> [(seconds, kbit/s)], sorted by time."""
    try:
        if ":" not in text:
            return [(0.0, float(text))]
        steps = [tuple(float(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("give KBPS or T:KBPS,T:KBPS,...") from None
    if any(len(st) != 2 or st[1] <= 0 for st in steps):
        raise argparse.ArgumentTypeError("each step is T:KBPS with KBPS > 0")
    return sorted(steps)  # type: ignore[arg-type]


#: Capacity given to a trace's outage pieces (a zero rate would mean "unlimited" here).
OUTAGE_KBPS = 0.5


def trace_schedule(
    path: str, seconds: float, mean_kbps: float, step_s: float = 0.5
) -> list[tuple[float, float]]:
    """The first ``seconds`` of the trace at ``path`` as a downlink schedule, scaled so its
    mean over those seconds is ``mean_kbps``: [(seconds, kbit/s)] every ``step_s``.

    Each step carries the trace's average rate over it (bytes it could carry / step), so
    short bursts and outages of a Mahimahi trace keep their weight.
    """
    from mimirate.ratecontrol.traces import load_trace

    trace = load_trace(path, scale_kbps=1000.0)  # rates in the trace's own bit/s
    edges = np.arange(0.0, seconds + step_s, step_s)
    carried = np.diff(np.asarray(trace.bytes_by(edges), dtype=np.float64)) * 8 / step_s
    if not carried.sum() > 0:
        raise argparse.ArgumentTypeError(f"{path}: the trace carries nothing in {seconds} s")
    kbps = np.maximum(carried / carried.mean() * mean_kbps, OUTAGE_KBPS)
    return [(float(t), round(float(k), 3)) for t, k in zip(edges[:-1], kbps, strict=True)]


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m mimirate.transport.relay", description=__doc__)
    p.add_argument("--listen", type=_address, required=True, help="HOST:PORT clients send to")
    p.add_argument("--upstream", type=_address, required=True, help="server HOST:PORT")
    p.add_argument("--loss", type=float, default=0.0, help="loss probability, each direction")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    p.add_argument(
        "--down-kbps",
        type=_schedule,
        default=None,
        help="downlink capacity, kbit/s (IP/UDP headers counted), or a schedule "
        "'T:KBPS,T:KBPS,...' of capacities from T seconds after the first datagram",
    )
    p.add_argument(
        "--down-trace",
        metavar="FILE",
        help="replay this bandwidth trace as the downlink capacity (instead of --down-kbps)",
    )
    p.add_argument(
        "--trace-mean-kbps",
        type=float,
        default=8.0,
        help="scale the trace to this mean capacity over --trace-seconds (default 8)",
    )
    p.add_argument("--trace-seconds", type=float, default=60.0, help="seconds of trace to play")
    p.add_argument("--queue-bytes", type=int, default=3000, help="bottleneck queue")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.down_trace is not None:
        if args.down_kbps is not None:
            p.error("give --down-kbps or --down-trace, not both")
        try:
            args.down_kbps = trace_schedule(
                args.down_trace, args.trace_seconds, args.trace_mean_kbps
            )
        except (argparse.ArgumentTypeError, MimirateError) as e:
            p.error(str(e))

    async def run() -> None:
        up = Impairment(loss=args.loss, delay_ms=args.delay_ms)
        down = Impairment(args.loss, args.delay_ms, queue_bytes=args.queue_bytes)
        relay = ImpairingRelay(args.listen, args.upstream, up, down, args.seed)
        if args.down_kbps:
            down.rate_bps = args.down_kbps[0][1] * 1000.0
            relay.schedule = args.down_kbps
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with relay:
            print(f"relay {relay.address[0]}:{relay.address[1]} -> {args.upstream}", flush=True)
            await stop.wait()
        print(
            f"up: {relay.up.stats.forwarded} forwarded, {relay.up.stats.lost} lost; "
            f"down: {relay.down.stats.forwarded} forwarded, {relay.down.stats.lost} lost",
            flush=True,
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
