"""Python clients: publish audio, listen to a room, download a voice message progressively.

A stream client opens a session over HTTP (``POST /api/session``), says HELLO over UDP
until the server echoes it, then runs the same :class:`~mimirate.transport.session.Sender`
and :class:`~mimirate.transport.session.Receiver` the server uses: the sender encodes in
real time (one frame per 80 ms) and adapts to the server's reports; the receiver plays one
frame per 80 ms tick from its jitter buffer and reports back every four frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from mimirate.codec import Codec
from mimirate.errors import ConfigError, MimirateError
from mimirate.ratecontrol.vad import VoiceActivity
from mimirate.transport import wire
from mimirate.transport.adapt import make_policy
from mimirate.transport.jitter import JitterBuffer
from mimirate.transport.session import (
    Receiver,
    Sender,
)
from mimirate.transport.udp import Address, MediaProtocol, open_udp
from mimirate.transport.wire import FrameCodes, MediaPacket

#: Frames between two receiver reports (320 ms).
REPORT_EVERY_FRAMES = 4
#: Most playout delay the jitter buffer grows to (1.2 s): a frame that waited in a
#: bottleneck's queue plays late rather than not at all, and the delay shrinks again.
MAX_DELAY_FRAMES = 15
#: How long to keep saying HELLO before giving up.
HELLO_TIMEOUT_S = 5.0


async def array_frames(audio: np.ndarray, frame_size: int) -> AsyncIterator[np.ndarray]:
    """``[N]`` samples as ``[frame_size]`` chunks (the last zero-padded)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    for i in range(0, len(audio), frame_size):
        chunk = audio[i : i + frame_size]
        if len(chunk) < frame_size:
            chunk = np.pad(chunk, (0, frame_size - len(chunk)))
        yield chunk


async def command_frames(argv: list[str], frame_size: int) -> AsyncIterator[np.ndarray]:
    """Frames from a command writing raw float32 mono at the codec's rate on its stdout
    (``sox -d ...`` for a microphone); the command is ended when the stream is."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        while True:
            try:
                data = await proc.stdout.readexactly(frame_size * 4)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    tail = np.frombuffer(e.partial[: len(e.partial) // 4 * 4], dtype="<f4")
                    yield np.pad(tail, (0, frame_size - len(tail))).astype(np.float32)
                return
            yield np.frombuffer(data, dtype="<f4").astype(np.float32)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


class TransportError(MimirateError):
    """The server refused us, could not be reached, or went silent."""


@dataclass(frozen=True)
class Target:
    """A parsed server URL: ``http://HOST:PORT/room/NAME`` or ``.../messages/NAME.mimi``."""

    base_url: str
    host: str
    kind: str  # "room" or "message"
    name: str


def parse_url(url: str) -> Target:
    """Parse a server URL; a bare ``http://host:port`` means the broadcast room."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r}: give an http://HOST:PORT/room/NAME URL")
    base = f"{parts.scheme}://{parts.netloc}"
    path = [p for p in parts.path.split("/") if p]
    if not path:
        return Target(base, parts.hostname, "room", "broadcast")
    if len(path) == 2 and path[0] == "room":
        return Target(base, parts.hostname, "room", path[1])
    if len(path) == 2 and path[0] == "messages":
        return Target(base, parts.hostname, "message", path[1])
    raise ConfigError(f"{url!r}: the path must be /room/NAME or /messages/NAME.mimi")


@dataclass(frozen=True)
class ClientOptions:
    """How a stream client behaves.

    Attributes:
        token: the server's token, when it has one.
        levels / frames_per_packet / redundancy_levels: the sender's start (and fixed)
            settings; ``adaptive`` lets the rate controller change them.
        level_cap: most levels this listener asks for (1..32).
        via: send media to this address instead of the server's (an impairing relay).
        seconds: stop listening after this much audio played (None: until the stream ends).
        idle_s: the stream has ended when nothing arrived for this long.
        jitter_frames: initial jitter-buffer delay in frames.
        quality_table: the controller's quality table (default: the model's).
        dtx: mark silent frames (a noise-floor VAD with a hangover), so that a controller that
            suppresses silence does not send them; the fixed sender sends every frame.
    """

    token: str | None = None
    levels: int = 8
    frames_per_packet: int = 1
    redundancy_levels: int = 2
    adaptive: bool = True
    level_cap: int = 32
    via: Address | None = None
    seconds: float | None = None
    idle_s: float = 2.0
    jitter_frames: int = 2
    quality_table: str | None = None
    dtx: bool = True


@dataclass(frozen=True)
class SendStats:
    frames: int
    packets: int
    wire_bytes: int  # payload + 40-byte headers of every packet sent
    mean_levels: float
    reports: int
    late_frames: int  # frames encoded more than a frame period after their deadline
    seconds: float
    controller: str  # "adaptive" or "fixed"
    levels: tuple[tuple[int, int], ...]  # (levels, frames sent at that many levels)
    paused_frames: int = 0  # dropped unsent while the controller paused (a stalled path)
    dtx_frames: int = 0  # silent frames not sent (discontinuous transmission)


@dataclass(frozen=True)
class ListenStats:
    frames: int  # ticks played (waiting ticks excluded)
    full: int
    redundant: int
    concealed: int
    longest_conceal_run: int
    max_tick_gap_ms: float  # longest wall time between two played frames
    mean_levels: float  # over frames decoded from data
    levels: tuple[int, ...]  # per played frame (0 = concealed)
    packets: int
    lost: int
    late: int
    receive_kbps: float
    seconds: float
    unsent: int = 0  # frames the sender did not send (DTX silence, pauses): concealed too


@dataclass(frozen=True)
class StreamResult:
    """What a stream client did: the audio it played (``[N]`` float32) and its figures."""

    audio: np.ndarray | None
    send: SendStats | None
    listen: ListenStats | None


async def open_session(
    target: Target, *, publish: bool, subscribe: bool, token: str | None
) -> dict[str, object]:
    """Ask the server for a session; return its JSON reply (session id, UDP port, model)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"room": target.name, "publish": publish, "subscribe": subscribe}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(f"{target.base_url}/api/session", json=body, headers=headers) as r,
        ):
            if r.status != 200:
                raise TransportError(
                    f"the server refused the session ({r.status}): {await r.text()}"
                )
            reply = await r.json()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise TransportError(f"cannot reach {target.base_url}: {e}") from None
    if not isinstance(reply, dict) or "session" not in reply or "udp_port" not in reply:
        raise TransportError("the server's session reply is not what this client understands")
    return reply


class StreamClient:
    """One session: publish ``audio`` and/or listen, over one UDP socket.

    Args:
        url: ``http://HOST:PORT/room/NAME``.
        codec: the codec (must match the server's model and weights).
        options: see :class:`ClientOptions`.
    """

    def __init__(self, url: str, codec: Codec, options: ClientOptions | None = None) -> None:
        self.target = parse_url(url)
        if self.target.kind != "room":
            raise ConfigError("a stream URL is http://HOST:PORT/room/NAME")
        self.codec = codec
        self.options = options or ClientOptions()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimirate-client")
        self._udp: MediaProtocol | None = None
        self._hello = asyncio.Event()
        self._bye = asyncio.Event()
        self._first_media = asyncio.Event()
        self._sender: Sender | None = None
        self._receiver: Receiver | None = None
        self._last_rx = 0.0
        self._reports = 0
        self._session = -1
        self._refused: str | None = None

    def _now_ms(self) -> float:
        return asyncio.get_running_loop().time() * 1000.0

    def _on_message(self, msg: wire.WireMessage, addr: Address, size: int) -> None:
        now = self._now_ms()
        self._last_rx = now
        if isinstance(msg, wire.Hello):
            if msg.session_id == self._session:
                self._hello.set()
        elif isinstance(msg, MediaPacket):
            if self._receiver is not None:
                self._receiver.on_packet(msg, now, size)
                self._first_media.set()
        elif isinstance(msg, wire.FeedbackReport):
            if self._sender is not None:
                self._sender.on_report(msg, now)
                self._reports += 1
        elif isinstance(msg, wire.Bye) and msg.session_id == self._session:
            if msg.reason == wire.ByeReason.ERROR:
                self._refused = "the server ended the session (model or weights mismatch?)"
            self._bye.set()

    async def run(
        self, audio: np.ndarray | AsyncIterator[np.ndarray] | None, listen: bool
    ) -> StreamResult:
        """Publish ``audio`` (``[N]`` float32, or frames from a live source; None: do not
        publish) and/or listen; return what was played and the figures."""
        if audio is None and not listen:
            raise ConfigError("a client must publish audio, listen, or both")
        source = (
            array_frames(audio, self.codec.frame_size) if isinstance(audio, np.ndarray) else audio
        )
        reply = await open_session(
            self.target, publish=audio is not None, subscribe=listen, token=self.options.token
        )
        if reply.get("model") != self.codec.name:
            raise ConfigError(
                f"the server runs model {reply.get('model')!r}, this client {self.codec.name!r}; "
                "load the same model (--model)"
            )
        if reply.get("weights_hash") != self.codec.weights_hash.hex():
            raise ConfigError(
                "the server's model weights differ from this client's; load the same weights"
            )
        self._session = int(reply["session"])  # type: ignore[call-overload]
        addr = self.options.via or (self.target.host, int(reply["udp_port"]))  # type: ignore[call-overload]
        self._udp = await open_udp(self._on_message, remote=addr, max_datagram_bytes=65535)
        try:
            await self._say_hello()
            tasks = []
            if audio is not None:
                assert source is not None
                tasks.append(asyncio.create_task(self._publish(source)))
            if listen:
                tasks.append(asyncio.create_task(self._listen()))
            try:
                results = await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
            send = results[0] if audio is not None else None
            played = results[-1] if listen else None
            self._udp.send(bytes(wire.Bye(self._session)))
            return StreamResult(
                audio=played[0] if played else None,
                send=send,
                listen=played[1] if played else None,
            )
        finally:
            self._udp.close()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _hello_bytes(self) -> bytes:
        c = self.codec
        return bytes(
            wire.Hello(
                self._session,
                c.name,
                c.weights_hash,
                c.sample_rate,
                c.frame_rate,
                c.bits_per_code,
                c.num_levels,
            )
        )

    async def _say_hello(self) -> None:
        assert self._udp is not None
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while not self._hello.is_set():
            if self._refused or time.monotonic() > deadline:
                raise TransportError("the server did not answer over UDP (is the port reachable?)")
            self._udp.send(self._hello_bytes())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hello.wait(), 0.25)

    async def _publish(self, source: AsyncIterator[np.ndarray]) -> SendStats:
        assert self._udp is not None
        codec, o = self.codec, self.options
        policy, initial = make_policy(o, codec.num_levels, codec.name)
        sender = self._sender = Sender(codec.num_levels, policy, initial)
        vad = VoiceActivity() if o.dtx else None
        encoder = codec.stream_encoder()
        loop = asyncio.get_running_loop()
        period = 1.0 / codec.frame_rate
        start = loop.time()
        late = levels_total = frames = 0

        def send(batch: list[bytes]) -> None:
            for data in batch:
                self._udp.send(data)  # type: ignore[union-attr]

        # The audio of the frames the encoder has not returned yet, for the VAD.
        held = np.zeros(0, np.float32)
        n = codec.frame_size
        async for chunk in source:
            encoded = await loop.run_in_executor(self._pool, encoder.push, chunk)
            held = np.concatenate([held, np.asarray(chunk, np.float32).reshape(-1)])
            for t in range(encoded.num_frames):
                speech = vad.push(held[t * n : (t + 1) * n]) if vad is not None else True
                levels_total += min(sender.levels, codec.num_levels)
                frame = FrameCodes(frames, encoded.codes[:, t].copy())
                send(sender.push(frame, loop.time() * 1000.0, speech))
                frames += 1
            held = held[encoded.num_frames * n :]
            # A file is paced to real time here; a live source paces itself (then we are
            # never early, only late when encoding cannot keep up).
            delay = start + frames * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period:
                late += 1
        send(sender.flush(loop.time() * 1000.0))
        return SendStats(
            frames=frames,
            packets=sender.packets,
            wire_bytes=sender.wire_bytes + sender.packets * wire.HEADER_BYTES,
            mean_levels=levels_total / max(frames, 1),
            reports=self._reports,
            late_frames=late,
            seconds=loop.time() - start,
            controller=sender.policy.name,
            levels=tuple(sorted(sender.levels_sent.items())),
            paused_frames=sender.paused_frames,
            dtx_frames=sender.dtx_frames,
        )

    async def _listen(self) -> tuple[np.ndarray, ListenStats]:
        assert self._udp is not None
        codec, o = self.codec, self.options
        jitter = JitterBuffer(
            target_frames=o.jitter_frames, max_frames=max(MAX_DELAY_FRAMES, o.jitter_frames)
        )
        rx = self._receiver = Receiver(
            codec.stream_decoder(), codec.num_levels, codec.frame_size, jitter
        )
        rx.level_cap = int(min(max(o.level_cap, 1), codec.num_levels))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._first_media.wait(), HELLO_TIMEOUT_S * 2)
        except TimeoutError:
            raise TransportError("no audio arrived: is anyone publishing in this room?") from None
        period = 1.0 / codec.frame_rate
        start = loop.time()
        out: list[np.ndarray] = []
        max_gap = 0.0
        last_play: float | None = None
        played = 0
        tick = 0
        limit = None if o.seconds is None else round(o.seconds * codec.frame_rate)
        ended = False
        while limit is None or played < limit:
            frame = await loop.run_in_executor(self._pool, rx.render, rx.next_playout())
            now = loop.time()
            if frame.source.name != "WAITING":
                out.append(frame.audio)
                played += 1
                if last_play is not None:
                    max_gap = max(max_gap, now - last_play)
                last_play = now
            tick += 1
            if tick % REPORT_EVERY_FRAMES == 0:
                self._udp.send(bytes(rx.report(now * 1000.0)))
                if rx.level_cap < codec.num_levels:
                    self._udp.send(bytes(wire.LevelCapRequest(rx.level_cap)))
            ended = self._bye.is_set() or now * 1000.0 - self._last_rx > o.idle_s * 1000.0
            if ended and rx.jitter.depth == 0:
                break
            delay = start + tick * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        js = rx.jitter_stats()
        levels = list(rx.played_levels)
        if ended:
            # What was concealed after the last frame that arrived is the wait for the end
            # of the stream, not audio: leave it out of the output and the figures.
            while levels and levels[-1] == 0:
                levels.pop()
                out.pop()
        decoded = [lv for lv in levels if lv > 0]
        runs = [len(r) for r in "".join("x" if lv == 0 else " " for lv in levels).split()]
        mon = rx.monitor
        seconds = loop.time() - start
        stats = ListenStats(
            frames=len(levels),
            full=rx.sources["FULL"],
            redundant=rx.sources["REDUNDANT"],
            concealed=len(levels) - len(decoded),
            longest_conceal_run=max(runs, default=0),
            max_tick_gap_ms=max_gap * 1000.0,
            mean_levels=float(np.mean(decoded)) if decoded else 0.0,
            levels=tuple(levels),
            packets=mon.total_received,
            lost=mon.total_lost,
            late=js.late,
            receive_kbps=(mon.total_bytes + wire.HEADER_BYTES * mon.total_received)
            * 8
            / max(seconds, 1e-9)
            / 1000.0,
            seconds=seconds,
            unsent=mon.unsent_frames,
        )
        audio = np.concatenate(out) if out else np.zeros(0, np.float32)
        return audio, stats


@dataclass(frozen=True)
class MessageProgress:
    """How much of a voice message was playable at one moment of its download."""

    seconds: float  # since the request
    bytes: int
    frames: int  # frames with at least level 1
    mean_levels: float  # over those frames


@dataclass(frozen=True)
class MessageResult:
    """A downloaded voice message: the codes read and how fast they became playable.

    Attributes:
        codes: ``[K, T]`` uint16; levels: ``[T]`` levels that arrived per frame.
        num_samples: samples the file covers.
        first_audio_s: when the first second (or the whole message, if shorter) was
            playable at level 1 or more; None if never.
        complete_s: when the download finished.
        progress: one entry per chunk of bytes received.
    """

    model: str
    weights_hash: bytes
    codes: np.ndarray
    levels: np.ndarray
    num_samples: int
    first_audio_s: float | None
    complete_s: float
    progress: tuple[MessageProgress, ...]


async def fetch_message(
    url: str,
    *,
    token: str | None = None,
    max_bytes: int = 64 << 20,
    read_bytes: int = 256,
    rate_bps: float | None = None,
) -> MessageResult:
    """Download a ``.mimi`` voice message progressively (the server sends it coarse-first).

    Args:
        url: ``http://HOST:PORT/messages/NAME.mimi``.
        max_bytes: refuse larger files (memory bound).
        read_bytes: bytes read at a time (each read updates the progress).
        rate_bps: read no faster than this (a slow link, for demonstrations and tests).
    """
    import aiohttp

    from mimirate.bitstream.container import IncompleteError, read_prefix
    from mimirate.errors import FormatError

    target = parse_url(url)
    if target.kind != "message":
        raise ConfigError("a voice message URL is http://HOST:PORT/messages/NAME.mimi")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    data = bytearray()
    progress: list[MessageProgress] = []
    first_audio: float | None = None
    part = None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
            http.get(f"{target.base_url}/messages/{target.name}", headers=headers) as r,
        ):
            if r.status != 200:
                raise TransportError(f"the server answered {r.status}: {await r.text()}")
            async for piece in r.content.iter_chunked(read_bytes):
                data += piece
                if len(data) > max_bytes:
                    raise TransportError(f"the message is larger than {max_bytes} bytes")
                if rate_bps:
                    delay = start + len(data) * 8 / rate_bps - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    part = read_prefix(bytes(data))
                except IncompleteError:
                    continue
                now = loop.time() - start
                n = part.frames_arrived
                mean = float(part.levels.mean()) if n else 0.0
                progress.append(MessageProgress(now, len(data), n, mean))
                need = min(round(part.frame_rate), part.num_frames)
                if first_audio is None and n >= need and n > 0:
                    first_audio = now
    except (aiohttp.ClientError, TimeoutError) as e:
        raise TransportError(f"cannot download {url}: {e}") from None
    except FormatError as e:
        raise TransportError(f"{url}: not a valid .mimi file ({e})") from None
    if part is None or not part.complete:
        raise TransportError(f"{url}: the download ended before the file did")
    return MessageResult(
        model=part.model,
        weights_hash=part.weights_hash,
        codes=part.codes,
        levels=part.levels,
        num_samples=part.num_samples,
        first_audio_s=first_audio,
        complete_s=loop.time() - start,
        progress=tuple(progress),
    )
