"""The real-time server: aiohttp for the page, signalling and WebSocket; UDP for media.

One process serves rooms. A room has at most two publishers (a call: each party hears
the other) or the server's own broadcast source, and any number of listeners. Each
listener has its own :class:`~mimirate.transport.session.Sender` and so its own levels
and level cap, all cut from the same frames: the embedded code at work (a broadcast is
encoded once, at every level). Browser listeners get PCM decoded here over their
WebSocket (a page cannot open a UDP socket); Python clients get packets over UDP.

Sessions start over HTTP (``POST /api/session``): the reply names a random 128-bit
session id that the client's first datagram (HELLO) presents, which ties its UDP
address to the session. See docs/transport.md for the protocol and the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from mimirate.codec import Codec
from mimirate.config import DEFAULT_MODEL
from mimirate.errors import ConfigError, FormatError
from mimirate.ratecontrol.vad import VoiceActivity
from mimirate.transport import wire
from mimirate.transport.adapt import make_policy
from mimirate.transport.limits import AddressRateLimiter, Limits
from mimirate.transport.pool import StreamPool
from mimirate.transport.session import (
    ReceiveMonitor,
    Sender,
)
from mimirate.transport.udp import Address, MediaProtocol, open_udp
from mimirate.transport.wire import FrameCodes, MediaPacket

log = logging.getLogger(__name__)

ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MESSAGE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\.mimi$")
#: The files of the page, served from the package (nothing else under /static).
WEB_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "player-worklet.js": "text/javascript",
    "style.css": "text/css",
}
#: The broadcast source's room.
BROADCAST_ROOM = "broadcast"
#: Largest voice message served (a 10-minute message at 32 levels is about 330 kB).
MAX_MESSAGE_BYTES = 16 << 20
#: Frames between two receiver reports (and the server's uplink reports): 320 ms of stream.
REPORT_EVERY_FRAMES = 4


@dataclass(frozen=True)
class ServerConfig:
    """What ``mimirate serve`` opens. Nothing is reachable beyond these.

    Attributes:
        host: address to bind (loopback by default: opening wider is a deliberate choice).
        port: HTTP port (0: any free port); ``udp_port`` None means the same number.
        token: when set, every session and WebSocket must present it.
        allowed_origins: WebSocket origins accepted besides the server's own.
        broadcast: an audio file the server encodes once (looped) into room ``broadcast``.
        messages_dir: folder whose ``*.mimi`` files are served as voice messages.
        levels / frames_per_packet / redundancy_levels: what each listener's sender
            starts with (and keeps, when no rate controller is available).
        adaptive: use the network-adaptive controller for each listener when available.
        quality_table: the controller's quality table (model name or JSON file; default:
            the one measured for the model).
    """

    host: str = "127.0.0.1"
    port: int = 8750
    udp_port: int | None = None
    model: str = DEFAULT_MODEL
    model_path: str | None = None
    random_init: bool = False
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    broadcast: str | None = None
    messages_dir: str | None = None
    limits: Limits = field(default_factory=Limits)
    levels: int = 8
    frames_per_packet: int = 1
    redundancy_levels: int = 2
    adaptive: bool = True
    quality_table: str | None = None


@dataclass
class Session:
    """One client: its UDP address once it said HELLO, and what it publishes/receives."""

    id: int  # 32-bit, random: the HELLO that ties a UDP address to this session carries it
    room: str
    publish: bool
    subscribe: bool
    peer_ip: str
    created: float
    last_seen: float
    addr: Address | None = None
    sender: Sender | None = None  # towards this client (when it subscribes)
    monitor: ReceiveMonitor | None = None  # from this client (when it publishes)
    frames_in: int = 0
    seen_frames: set[int] = field(default_factory=set)
    # Frame index of the publisher's stream at its last uplink report. Reports go by
    # stream time (frame indices), not by frames received: under DTX a keep-alive every
    # 5 frames still gets a report, so the publisher's controller keeps its feedback.
    reported_frame: int | None = None


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A background task (the broadcast source, a browser's writer, the reaper) that died
    of an exception says so at once: nobody awaits it, so it would otherwise be silent."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_coro(), exc_info=task.exception())


class WsListener:
    """A browser listener: frames in through a bounded queue, PCM out over its WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, codec: Codec, queue_frames: int) -> None:
        self.ws = ws
        self.codec = codec
        self.decoder = codec.stream_decoder()
        self.cap = min(8, codec.num_levels)
        self.queue: asyncio.Queue[FrameCodes] = asyncio.Queue(maxsize=queue_frames)
        self.dropped = 0
        self.sent = 0
        self.last_levels = 0

    def offer(self, frame: FrameCodes) -> None:
        levels = min(self.cap, frame.levels)
        item = FrameCodes(frame.index, frame.codes[:levels])
        if self.queue.full():
            # A slow reader loses its oldest frame, never the server's memory.
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)


@dataclass
class Room:
    name: str
    publishers: list[Session] = field(default_factory=list)
    listeners: list[Session] = field(default_factory=list)
    browsers: list[WsListener] = field(default_factory=list)
    uplink_loss: float = 0.0
    uplink_delay_ms: float = 0.0


def _load_codec(config: ServerConfig) -> Codec:
    from mimirate.models.loading import load_codec

    if config.random_init:
        return load_codec(config.model, random_init=True, seed=0)
    return load_codec(config.model, path=config.model_path)


class MimirateServer:
    """The server. ``await start()``, then ``await stop()`` (also an async context manager).

    Args:
        config: what to open.
        codec: the codec (loaded from ``config.model`` when None).
    """

    def __init__(self, config: ServerConfig, codec: Codec | None = None) -> None:
        self.config = config
        self.codec = codec if codec is not None else _load_codec(config)
        self.limits = config.limits
        self.sessions: dict[int, Session] = {}
        self.by_addr: dict[Address, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.browsers = 0
        self.udp: MediaProtocol | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Codec work runs here so the event loop keeps serving while a frame decodes.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mimirate-codec")
        # Every session's frame of a tick goes through one batched codec call. One call at
        # a time: splitting a tick over both threads was 2-7x slower at 8 sessions on a
        # busy 2-core machine (benchmarks/bench_load.py --workers 2), the model's Python
        # side contending for the GIL; the other thread stays free for file work.
        self.streams = StreamPool(self.codec, self._pool, workers=1)
        self._limiter = AddressRateLimiter(
            self.limits.packets_per_second,
            self.limits.burst_packets,
            self.limits.max_tracked_addresses,
        )
        self._message_cache: dict[tuple[str, int, int], bytes] = {}
        self.http_port = 0
        self.udp_port = 0
        self.counters: dict[str, int] = {
            "sessions_refused": 0,
            "unknown_sender": 0,
            "origin_refused": 0,
            "token_refused": 0,
            "ws_bad_messages": 0,
            "frames_forwarded": 0,
            "model_mismatch": 0,
        }
        if config.messages_dir is not None and not Path(config.messages_dir).is_dir():
            raise ConfigError(f"--messages {config.messages_dir}: no such folder")
        if config.adaptive and config.quality_table is not None:
            make_policy(config, self.codec.num_levels, self.codec.name)  # fail early if bad
        if config.token is not None and len(config.token) < 8:
            raise ConfigError("the token must have at least 8 characters")
        # The broadcast file is read now: one that cannot be read is an error of the
        # command that names it (AudioError), not of a task after the server started.
        self._broadcast_audio: np.ndarray | None = None
        if config.broadcast is not None:
            from mimirate.audio import read_audio

            audio = read_audio(config.broadcast, self.codec.sample_rate).samples
            self._broadcast_audio = np.asarray(audio, np.float32).reshape(-1)

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> MimirateServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=self.limits.max_http_body_bytes)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/info", self._info)
        app.router.add_post("/api/session", self._new_session)
        app.router.add_get("/ws/{room}", self._websocket)
        app.router.add_get("/messages/{name}", self._message)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.http_port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        udp_port = self.config.udp_port if self.config.udp_port is not None else self.http_port
        self.udp = await open_udp(
            self._on_datagram,
            local=(self.config.host, udp_port),
            max_datagram_bytes=self.limits.max_datagram_bytes,
            limiter=self._limiter,
        )
        assert self.udp.transport is not None
        self.udp_port = int(self.udp.transport.get_extra_info("sockname")[1])
        self._spawn(self._reaper())
        if self._broadcast_audio is not None:
            self._spawn(self._broadcast_source(self._broadcast_audio))

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            self._end_session(s, notify=True)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for room in list(self.rooms.values()):
            for b in list(room.browsers):
                with contextlib.suppress(Exception):
                    await b.ws.close()
        if self.udp is not None:
            self.udp.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def _now_ms(self) -> float:
        return asyncio.get_running_loop().time() * 1000.0

    # -- HTTP --------------------------------------------------------------------------
    def _check_token(self, request: web.Request) -> None:
        token = self.config.token
        if token is None:
            return
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or request.query.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            self.counters["token_refused"] += 1
            raise web.HTTPUnauthorized(text="a valid token is required (--token)")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file(request.match_info["name"])

    async def _static_file(self, name: str) -> web.StreamResponse:
        if name not in WEB_FILES:
            raise web.HTTPNotFound()
        data = resources.files("mimirate.web").joinpath(name).read_bytes()
        return web.Response(
            body=data,
            content_type=WEB_FILES[name],
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def _info(self, request: web.Request) -> web.StreamResponse:
        self._check_token(request)
        return web.json_response(
            {
                "model": self.codec.name,
                "num_levels": self.codec.num_levels,
                "frame_rate": self.codec.frame_rate,
                "sample_rate": self.codec.sample_rate,
                "udp_port": self.udp_port,
                "rooms": sorted(self.rooms),
                "sessions": len(self.sessions),
                "browsers": self.browsers,
            }
        )

    async def _new_session(self, request: web.Request) -> web.StreamResponse:
        self._check_token(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise web.HTTPBadRequest(text="the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        room_name = body.get("room", BROADCAST_ROOM)
        publish = body.get("publish", False)
        subscribe = body.get("subscribe", True)
        if not isinstance(room_name, str) or not ROOM_RE.match(room_name):
            raise web.HTTPBadRequest(text="room: 1-64 letters, digits, '-' or '_'")
        if not isinstance(publish, bool) or not isinstance(subscribe, bool):
            raise web.HTTPBadRequest(text="publish and subscribe must be true or false")
        if not (publish or subscribe):
            raise web.HTTPBadRequest(text="a session must publish, subscribe or both")
        if publish and room_name == BROADCAST_ROOM and self.config.broadcast is not None:
            raise web.HTTPForbidden(text="the broadcast room is the server's own source")
        ip = request.remote or "?"
        self._admit(ip)
        room = self.rooms.setdefault(room_name, Room(room_name))
        if publish and len(room.publishers) >= 2:
            self.counters["sessions_refused"] += 1
            raise web.HTTPConflict(text=f"room {room_name!r} already has two publishers")
        now = time.monotonic()
        sid = secrets.randbits(32)
        while sid in self.sessions:
            sid = secrets.randbits(32)
        session = Session(sid, room_name, publish, subscribe, ip, now, now)
        if subscribe:
            policy, initial = make_policy(self.config, self.codec.num_levels, self.codec.name)
            session.sender = Sender(self.codec.num_levels, policy, initial)
            room.listeners.append(session)
        if publish:
            session.monitor = ReceiveMonitor()
            room.publishers.append(session)
        self.sessions[session.id] = session
        return web.json_response(
            {
                "session": session.id,
                "weights_hash": self.codec.weights_hash.hex(),
                "udp_port": self.udp_port,
                "model": self.codec.name,
                "num_levels": self.codec.num_levels,
                "frame_rate": self.codec.frame_rate,
                "sample_rate": self.codec.sample_rate,
            }
        )

    def _admit(self, ip: str) -> None:
        total = len(self.sessions) + self.browsers
        if total >= self.limits.max_sessions:
            self.counters["sessions_refused"] += 1
            raise web.HTTPServiceUnavailable(
                text=f"the server is full ({self.limits.max_sessions} sessions); try later"
            )
        mine = sum(1 for s in self.sessions.values() if s.peer_ip == ip)
        if mine >= self.limits.sessions_per_address:
            self.counters["sessions_refused"] += 1
            raise web.HTTPTooManyRequests(text="too many sessions from this address")

    async def _message(self, request: web.Request) -> web.StreamResponse:
        self._check_token(request)
        name = request.match_info["name"]
        folder = self.config.messages_dir
        if folder is None or not MESSAGE_RE.match(name):
            raise web.HTTPNotFound()
        path = Path(folder) / name
        if not path.is_file():
            raise web.HTTPNotFound()
        body = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._progressive_bytes, path
        )
        return web.Response(body=body, content_type="application/octet-stream")

    def _progressive_bytes(self, path: Path) -> bytes:
        """The file re-chunked so that as much of it as the format allows is one chunk:
        level 1 of every frame arrives first, then level 2, ... (a coarse-first download)."""
        from mimirate.bitstream.container import MAX_CHUNK_FRAMES, MimiFile

        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        cached = self._message_cache.get(key)
        if cached is not None:
            return cached
        if stat.st_size > MAX_MESSAGE_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_MESSAGE_BYTES, stat.st_size)
        data = path.read_bytes()
        try:
            f = MimiFile.parse(data)
            chunk = max(1, min(f.num_frames, MAX_CHUNK_FRAMES))
            out = dataclasses.replace(f, chunk_frames=chunk).to_bytes()
        except FormatError:
            # Entropy-coded (needs its table) or not ours to fix: serve the bytes as they are.
            out = data
        if len(self._message_cache) >= 8:
            self._message_cache.pop(next(iter(self._message_cache)))
        self._message_cache[key] = out
        return out

    # -- WebSocket (browser listeners) --------------------------------------------------
    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: no page can have opened it on a user's behalf
        own = {f"{request.scheme}://{request.host}"}
        return origin in own or origin in self.config.allowed_origins

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_ok(request):
            self.counters["origin_refused"] += 1
            raise web.HTTPForbidden(text="WebSocket origin not allowed")
        self._check_token(request)
        room_name = request.match_info["room"]
        if not ROOM_RE.match(room_name):
            raise web.HTTPBadRequest(text="bad room name")
        self._admit(request.remote or "?")
        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_ws_message_bytes, heartbeat=10.0, compress=False
        )
        await ws.prepare(request)
        room = self.rooms.setdefault(room_name, Room(room_name))
        listener = WsListener(ws, self.codec, self.limits.send_queue_frames)
        room.browsers.append(listener)
        self.browsers += 1
        writer = self._spawn(self._ws_writer(listener, room))
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "room": room_name,
                    "model": self.codec.name,
                    "num_levels": self.codec.num_levels,
                    "sample_rate": self.codec.sample_rate,
                    "frame_size": self.codec.frame_size,
                    "cap": listener.cap,
                }
            )
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    self.counters["ws_bad_messages"] += 1
                    continue
                self._on_ws_text(listener, msg.data)
        finally:
            room.browsers.remove(listener)
            self.browsers -= 1
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        return ws

    def _on_ws_text(self, listener: WsListener, text: str) -> None:
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict) or msg.get("type") != "cap":
                raise ValueError
            cap = msg["levels"]
            if not isinstance(cap, int) or isinstance(cap, bool):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self.counters["ws_bad_messages"] += 1
            return
        listener.cap = int(min(max(cap, 1), self.codec.num_levels))

    async def _ws_writer(self, listener: WsListener, room: Room) -> None:
        frame_size = self.codec.frame_size
        header = np.zeros(2, dtype="<u4")
        while True:
            frame = await listener.queue.get()
            levels = frame.levels
            full = np.zeros((self.codec.num_levels, 1), dtype=np.uint16)
            full[:levels, 0] = frame.codes
            lv = np.array([levels], dtype=np.int64)
            audio = await self.streams.decode(listener.decoder, full, lv)
            pcm = np.clip(np.asarray(audio).reshape(-1)[:frame_size], -1, 1)
            header[0] = frame.index & 0xFFFFFFFF
            header[1] = levels
            body = header.tobytes() + (pcm * 32767).astype("<i2").tobytes()
            await listener.ws.send_bytes(body)
            listener.sent += 1
            listener.last_levels = levels
            if listener.sent % REPORT_EVERY_FRAMES == 0:
                size = len(wire.encode_media(MediaPacket(0, (frame,)))) + wire.HEADER_BYTES
                await listener.ws.send_json(
                    {
                        "type": "stats",
                        "index": frame.index,
                        "levels": levels,
                        "cap": listener.cap,
                        # What this stream would take as 1-frame UDP packets, from real bytes.
                        "wire_kbps": size * 8 * self.codec.frame_rate / 1000.0,
                        "delay_ms": room.uplink_delay_ms
                        + listener.queue.qsize() * 1000.0 / self.codec.frame_rate,
                        "loss": room.uplink_loss,
                        "dropped": listener.dropped,
                    }
                )

    # -- UDP ---------------------------------------------------------------------------
    def _on_datagram(self, msg: wire.WireMessage, addr: Address, size: int) -> None:
        now_ms = self._now_ms()
        if isinstance(msg, wire.Hello):
            self._on_hello(msg, addr)
            return
        session = self.by_addr.get(addr)
        if session is None:
            self.counters["unknown_sender"] += 1
            return
        session.last_seen = time.monotonic()
        if isinstance(msg, MediaPacket):
            if session.publish:
                self._on_media(session, msg, now_ms, size)
        elif isinstance(msg, wire.FeedbackReport):
            if session.sender is not None:
                session.sender.on_report(msg, now_ms)
        elif isinstance(msg, wire.LevelCapRequest):
            if session.sender is not None:
                session.sender.set_cap(msg.max_levels)
        elif isinstance(msg, wire.Bye) and msg.session_id == session.id:
            self._end_session(session, notify=False)

    def _hello(self, session_id: int) -> bytes:
        c = self.codec
        return bytes(
            wire.Hello(
                session_id,
                c.name,
                c.weights_hash,
                c.sample_rate,
                c.frame_rate,
                c.bits_per_code,
                c.num_levels,
            )
        )

    def _on_hello(self, msg: wire.Hello, addr: Address) -> None:
        session = self.sessions.get(msg.session_id)
        if session is None:
            self.counters["unknown_sender"] += 1
            return
        if msg.model != self.codec.name or msg.weights_hash != self.codec.weights_hash:
            # The client would decode our codes with other weights: refuse, say why (BYE).
            self.counters["model_mismatch"] += 1
            assert self.udp is not None
            self.udp.send(bytes(wire.Bye(msg.session_id, wire.ByeReason.ERROR)), addr)
            self._end_session(session, notify=False)
            return
        if session.addr is not None and session.addr != addr:
            # A client whose address changed (NAT rebinding, reconnect) takes it over.
            self.by_addr.pop(session.addr, None)
        other = self.by_addr.get(addr)
        if other is not None and other is not session:
            self._end_session(other, notify=False)
        session.addr = addr
        session.last_seen = time.monotonic()
        self.by_addr[addr] = session
        assert self.udp is not None
        self.udp.send(self._hello(session.id), addr)

    def _on_media(self, session: Session, packet: MediaPacket, now_ms: float, size: int) -> None:
        assert session.monitor is not None
        session.monitor.on_packet(packet, now_ms, size)
        room = self.rooms.get(session.room)
        if room is None:
            return
        # Forward each frame once; a redundant copy stands in for a frame whose packet was
        # lost (unless it is so old that the listeners have played past it).
        newest = max(session.seen_frames, default=-1)
        fresh = [f for f in packet.redundant if f.levels and f.index + 8 > newest]
        for f in (*fresh, *packet.frames):
            if f.index in session.seen_frames:
                continue
            session.seen_frames.add(f.index)
            self._publish(room, session, f)
        if len(session.seen_frames) > 256:
            newest = max(session.seen_frames)
            session.seen_frames = {i for i in session.seen_frames if i > newest - 64}
        if not packet.frames:
            return
        last = packet.frames[-1].index
        if session.reported_frame is None or last < session.reported_frame - 64:
            # The first packet, or a stream that started over: count from its first frame.
            session.reported_frame = packet.frames[0].index - 1
        if last - session.reported_frame >= REPORT_EVERY_FRAMES and session.addr is not None:
            session.reported_frame = last
            report = session.monitor.report(now_ms)
            room.uplink_loss = report.loss_fraction / 65535.0
            room.uplink_delay_ms = session.monitor.queuing_delay_ms
            assert self.udp is not None
            self.udp.send(bytes(report), session.addr)

    def _publish(
        self, room: Room, source: Session | None, frame: FrameCodes, speech: bool = True
    ) -> None:
        """Send one frame (all the levels it has) to every listener of the room.

        ``speech=False``: the VAD of the encoding side calls it silent (listeners whose
        controller suppresses silence do not get it). Relayed frames are speech: their
        publisher's sender already left its silence out.
        """
        assert self.udp is not None
        now_ms = self._now_ms()
        for listener in room.listeners:
            if listener is source or listener.addr is None or listener.sender is None:
                continue
            for data in listener.sender.push(frame, now_ms, speech):
                self.udp.send(data, listener.addr)
            self.counters["frames_forwarded"] += 1
        for b in room.browsers:
            b.offer(frame)

    def _end_session(self, session: Session, notify: bool) -> None:
        self.sessions.pop(session.id, None)
        if session.addr is not None and self.by_addr.get(session.addr) is session:
            del self.by_addr[session.addr]
            if notify and self.udp is not None:
                self.udp.send(bytes(wire.Bye(session.id, wire.ByeReason.TIMEOUT)), session.addr)
        room = self.rooms.get(session.room)
        if room is None:
            return
        if session in room.publishers:
            room.publishers.remove(session)
        if session in room.listeners:
            room.listeners.remove(session)
        if not (room.publishers or room.listeners or room.browsers) and room.name != (
            BROADCAST_ROOM if self.config.broadcast else None
        ):
            del self.rooms[room.name]

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            cutoff = time.monotonic() - self.limits.idle_timeout_s
            for s in [s for s in self.sessions.values() if s.last_seen < cutoff]:
                self._end_session(s, notify=True)

    # -- broadcast source --------------------------------------------------------------
    async def _broadcast_source(self, audio: np.ndarray) -> None:
        """Encode ``audio`` once at every level, in real time, looping; publish each frame."""
        room = self.rooms.setdefault(BROADCAST_ROOM, Room(BROADCAST_ROOM))
        encoder = self.codec.stream_encoder()
        vad = VoiceActivity()
        loop = asyncio.get_running_loop()
        n = self.codec.frame_size
        period = 1.0 / self.codec.frame_rate
        start = loop.time()
        index = 0
        pos = 0
        while True:
            chunk = audio[pos : pos + n]
            if len(chunk) < n:  # loop the file: the stream (and the encoder) continue
                chunk = np.concatenate([chunk, audio[: n - len(chunk)]])
            pos = (pos + n) % len(audio)
            encoded = await self.streams.encode(encoder, chunk)
            speech = vad.push(chunk)  # one frame in, one frame out
            for t in range(encoded.num_frames):
                frame = FrameCodes(index, encoded.codes[:, t].copy())
                self._publish(room, None, frame, speech)
                index += 1
            delay = start + index * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                start = loop.time() - index * period  # fell behind by > 1 s: do not burst

    # -- for tests and --json -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        udp = self.udp.counters.__dict__ if self.udp is not None else {}
        return {
            "sessions": len(self.sessions),
            "browsers": self.browsers,
            "rooms": {
                k: (len(r.publishers), len(r.listeners), len(r.browsers))
                for k, r in self.rooms.items()
            },
            "udp": dict(udp),
            **self.counters,
        }


async def serve_forever(config: ServerConfig, on_ready: Callable[[MimirateServer], None]) -> None:
    """Run a server until cancelled (the ``mimirate serve`` command)."""
    server = MimirateServer(config)
    await server.start()
    try:
        on_ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()
