"""The server end to end on loopback: rooms, listeners' own levels, faults, limits, shutdown.

Every test runs a real server (aiohttp + UDP) and real clients in one event loop, with
the tiny random-weight codec, for one or two seconds of audio.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from mimirate import write_wav
from mimirate.transport.client import ClientOptions, StreamClient, TransportError
from mimirate.transport.limits import Limits
from mimirate.transport.server import MimirateServer, ServerConfig, WsListener
from mimirate.transport.wire import FrameCodes, Hello, MediaPacket, encode_media

SR = 24_000


@pytest.fixture(scope="module")
def codec():
    import torch

    from mimirate import load_codec

    torch.set_num_threads(1)
    return load_codec("tiny", random_init=True, seed=0)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (voiced + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    write_wav(path, speechlike(2.0), SR)
    return path


#: Playout delay for clients in these tests: server and clients share one process (and
#: one GIL) on a busy machine, so arrivals jitter more than on a real network.
JITTER = 5


def config(**kw) -> ServerConfig:
    kw.setdefault("port", 0)
    kw.setdefault("model", "tiny")
    kw.setdefault("adaptive", False)
    return ServerConfig(**kw)


def test_broadcast_listeners_get_their_own_levels(codec, wav) -> None:
    async def run():
        async with MimirateServer(config(broadcast=str(wav)), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/broadcast"
            full = StreamClient(url, codec, ClientOptions(seconds=1.2, jitter_frames=JITTER))
            capped = StreamClient(
                url, codec, ClientOptions(seconds=1.2, level_cap=3, jitter_frames=JITTER)
            )
            return await asyncio.gather(full.run(None, True), capped.run(None, True))

    full, capped = asyncio.run(run())
    for r, levels in ((full, 8), (capped, 3)):
        st = r.listen
        assert st.frames == 15 and r.audio.shape == (15 * 1920,)
        assert st.concealed == 0 and st.lost == 0
        # The first report carries the cap; frames before it went at the start levels.
        assert set(st.levels[-8:]) == {levels}
        assert np.abs(r.audio).max() > 0


def test_call_each_party_hears_the_other_bit_exactly(codec) -> None:
    a, b = speechlike(1.0, seed=1), speechlike(1.0, seed=2) * 0.5

    async def run():
        async with MimirateServer(config(), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/call-1"
            opts = ClientOptions(
                levels=8, redundancy_levels=0, adaptive=False, idle_s=0.6, jitter_frames=JITTER
            )
            ca, cb = StreamClient(url, codec, opts), StreamClient(url, codec, opts)
            results = await asyncio.gather(ca.run(a, True), cb.run(b, True))
            return (*results, srv.snapshot())

    ra, rb, snap = asyncio.run(run())
    # Nothing the server did for two well-behaved parties raised (the UDP handler counts
    # and swallows exceptions, so that one client cannot take the socket down).
    assert snap["udp"]["handler_errors"] == 0 and snap["udp"]["malformed"] == 0
    for mine, heard in ((a, rb), (b, ra)):
        assert heard.send.frames == 13 and heard.send.mean_levels == 8
        st = heard.listen
        assert st.concealed == 0 and st.full == 13
        # What arrived is what the sender encoded: decoding the same 8 levels offline gives
        # the same samples (streaming decode equals offline decode).
        enc = codec.encode(mine)
        ref = codec.decode(enc.codes[:8])
        np.testing.assert_allclose(heard.audio[: ref.size], ref, atol=2e-4)


def test_garbage_on_the_wire_does_not_disturb_a_listener(codec, wav) -> None:
    async def run():
        async with MimirateServer(config(broadcast=str(wav)), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/broadcast"
            stop = asyncio.Event()

            async def attacker() -> None:
                good = encode_media(MediaPacket(3, (FrameCodes(9, np.ones(4, np.uint16)),)))
                junk = [
                    b"",
                    b"\x00" * 3,
                    good[:5],
                    good + b"x",
                    b"\x41" + bytes(5000),  # oversized
                    bytes(Hello(12345, "tiny", codec.weights_hash)),  # unknown session
                    good,  # media from an address with no session
                ]
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    while not stop.is_set():
                        for d in junk:
                            s.sendto(d, ("127.0.0.1", srv.udp_port))
                        await asyncio.sleep(0.01)
                async with aiohttp.ClientSession() as http:
                    for body in (b"not json", b"[1]", json.dumps({"room": "../x"}).encode()):
                        async with http.post(
                            f"http://127.0.0.1:{srv.http_port}/api/session", data=body
                        ) as r:
                            assert r.status == 400

            task = asyncio.create_task(attacker())
            r = await StreamClient(
                url, codec, ClientOptions(seconds=1.2, jitter_frames=JITTER)
            ).run(None, True)
            stop.set()
            await task
            return r, srv.snapshot()

    r, snap = asyncio.run(run())
    assert r.listen.frames == 15 and r.listen.concealed == 0
    udp = snap["udp"]
    assert udp["malformed"] > 0 and udp["oversized"] > 0
    # Beyond the attacker's burst its packets are refused before parsing.
    assert udp["rate_limited"] > 0
    assert snap["unknown_sender"] > 0 and snap["frames_forwarded"] > 0


def test_token_session_limit_origin_and_paths(codec, tmp_path) -> None:
    async def run():
        cfg = config(
            token="s3cret-token",
            limits=Limits(max_sessions=2),
            allowed_origins=("http://app.example",),
            messages_dir=str(tmp_path),
        )
        async with MimirateServer(cfg, codec) as srv, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{srv.http_port}"
            auth = {"Authorization": "Bearer s3cret-token"}
            body = {"room": "r1", "subscribe": True}
            statuses = {}
            async with http.post(f"{base}/api/session", json=body) as r:
                statuses["no token"] = r.status
            async with http.post(
                f"{base}/api/session", json=body, headers={"Authorization": "Bearer wrong"}
            ) as r:
                statuses["bad token"] = r.status
            for i in range(3):
                async with http.post(f"{base}/api/session", json=body, headers=auth) as r:
                    statuses[f"session {i}"] = r.status
            async with http.post(f"{base}/api/session", data=b"x" * 10_000, headers=auth) as r:
                statuses["big body"] = r.status
            for name, origin in (
                ("evil origin", "http://evil.example"),
                ("allowed origin", "http://app.example"),
            ):
                try:
                    async with http.ws_connect(
                        f"{base}/ws/r1?token=s3cret-token", headers={"Origin": origin}
                    ) as ws:
                        statuses[name] = 101
                        await ws.close()
                except aiohttp.WSServerHandshakeError as e:
                    statuses[name] = e.status
            for path in (
                "/messages/..%2Fsecret.mimi",
                "/messages/none.mimi",
                "/static/server.py",
                "/static/..%2F__init__.py",
            ):
                async with http.get(f"{base}{path}?token=s3cret-token") as r:
                    statuses[path] = r.status
            return statuses

    s = asyncio.run(run())
    assert s["no token"] == 401 and s["bad token"] == 401
    assert (s["session 0"], s["session 1"], s["session 2"]) == (200, 200, 503)
    assert s["big body"] == 413
    assert s["evil origin"] == 403
    # The allowed origin passes the origin check, then meets the full server (503).
    assert s["allowed origin"] == 503
    assert all(v == 404 for k, v in s.items() if k.startswith("/"))


def test_publisher_vanishing_then_reconnecting(codec) -> None:
    async def run():
        lim = Limits(idle_timeout_s=0.6)
        async with MimirateServer(config(limits=lim), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/talk"
            opts = ClientOptions(adaptive=False, idle_s=0.5, jitter_frames=JITTER)
            listener = asyncio.create_task(StreamClient(url, codec, opts).run(None, True))
            await asyncio.sleep(0.2)
            pub = StreamClient(url, codec, opts)
            task = asyncio.create_task(pub.run(speechlike(3.0), False))
            await asyncio.sleep(0.8)
            task.cancel()  # mid-stream, no BYE: the socket just goes quiet
            with pytest.raises(asyncio.CancelledError):
                await task
            heard = await listener
            await asyncio.sleep(1.0)
            after_reap = srv.snapshot()
            # The same room works again for a new publisher and listener.
            again = asyncio.create_task(StreamClient(url, codec, opts).run(None, True))
            await asyncio.sleep(0.2)
            await StreamClient(url, codec, opts).run(speechlike(0.6), False)
            return heard, after_reap, await again, srv.snapshot()

    heard, after_reap, again, _ = asyncio.run(run())
    assert 5 <= heard.listen.frames <= 14
    assert after_reap["sessions"] == 0 and "talk" not in after_reap["rooms"]
    assert again.listen.full >= 7 and again.listen.concealed == 0


def test_browser_listener_queue_is_bounded(codec) -> None:
    class NoSocket:  # the listener is never written to in this test
        pass

    ws = WsListener(NoSocket(), codec, queue_frames=5)  # type: ignore[arg-type]
    ws.cap = 4
    for i in range(1000):
        ws.offer(FrameCodes(i, np.arange(32, dtype=np.uint16)))
    assert ws.queue.qsize() == 5 and ws.dropped == 995
    assert ws.queue.get_nowait().codes.shape == (4,)  # cut to the listener's cap


def test_websocket_streams_pcm_and_obeys_the_cap(codec, wav) -> None:
    async def run():
        async with (
            MimirateServer(config(broadcast=str(wav)), codec) as srv,
            aiohttp.ClientSession() as http,
        ):
            base = f"http://127.0.0.1:{srv.http_port}"
            origin = {"Origin": base}
            seen: list[int] = []
            stats = []
            async with http.ws_connect(f"{base}/ws/broadcast", headers=origin) as ws:
                hello = await ws.receive_json(timeout=5)
                await ws.send_bytes(b"\x00binary is not a command")
                await ws.send_str("{not json")
                await ws.send_json({"type": "cap", "levels": 2})
                while len(seen) < 14:
                    msg = await ws.receive(timeout=5)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        head = np.frombuffer(msg.data[:8], "<u4")
                        assert len(msg.data) == 8 + 2 * 1920
                        seen.append(int(head[1]))
                    else:
                        stats.append(json.loads(msg.data))
            await asyncio.sleep(0.1)
            return hello, seen, stats, srv.snapshot()

    hello, seen, stats, snap = asyncio.run(run())
    assert hello["type"] == "hello" and hello["frame_size"] == 1920
    assert seen[-4:] == [2, 2, 2, 2]
    assert stats and stats[-1]["levels"] == 2 and stats[-1]["wire_kbps"] > 0
    assert snap["ws_bad_messages"] == 2 and snap["browsers"] == 0


def test_stop_leaves_nothing_running(codec, wav) -> None:
    before = {t.name for t in threading.enumerate()}

    async def run():
        srv = MimirateServer(config(broadcast=str(wav)), codec)
        await srv.start()
        url = f"http://127.0.0.1:{srv.http_port}/room/broadcast"
        listener = asyncio.create_task(
            StreamClient(url, codec, ClientOptions(idle_s=0.5)).run(None, True)
        )
        await asyncio.sleep(0.6)
        port = srv.udp_port
        await srv.stop()  # with a listener connected: it gets BYE and ends
        result = await asyncio.wait_for(listener, 5)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return port, result, pending

    port, result, pending = asyncio.run(run())
    assert pending == []
    assert result.listen.frames >= 3
    leftover = {t.name for t in threading.enumerate()} - before
    assert not leftover, leftover
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))  # the ports were released


def test_client_reports_refusals_clearly(codec) -> None:
    async def run():
        async with MimirateServer(config(), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/nobody"
            with pytest.raises(TransportError, match="no audio arrived"):
                await StreamClient(url, codec, ClientOptions()).run(None, True)

    with pytest.raises(TransportError, match="cannot reach"):
        asyncio.run(StreamClient("http://127.0.0.1:9/room/x", codec).run(None, True))
    import mimirate.transport.client as client_mod

    client_mod.HELLO_TIMEOUT_S, old = 0.3, client_mod.HELLO_TIMEOUT_S
    try:
        asyncio.run(run())
    finally:
        client_mod.HELLO_TIMEOUT_S = old


def test_hello_from_a_new_address_moves_the_session(codec, wav) -> None:
    """A client whose address changes (NAT rebinding, a new socket) keeps its session."""
    from mimirate.transport.client import open_session, parse_url

    async def run():
        async with MimirateServer(config(broadcast=str(wav)), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/broadcast"
            reply = await open_session(parse_url(url), publish=False, subscribe=True, token=None)
            hello = bytes(Hello(int(reply["session"]), codec.name, codec.weights_hash))
            got = {}
            for name in ("first", "second"):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.connect(("127.0.0.1", srv.udp_port))
                s.send(hello)
                await asyncio.sleep(0.5)
                n = 0
                while True:
                    try:
                        s.recv(2048)
                        n += 1
                    except BlockingIOError:
                        break
                got[name] = (s, n)
            first, second = got["first"][0], got["second"][0]
            await asyncio.sleep(0.4)
            late_first = sum(1 for _ in iter(lambda: _recv(first), None))
            late_second = sum(1 for _ in iter(lambda: _recv(second), None))
            for s, _ in got.values():
                s.close()
            return got["first"][1], got["second"][1], late_first, late_second

    n1, n2, late1, late2 = asyncio.run(run())
    assert n1 >= 3 and n2 >= 3  # HELLO echo plus media at each address in turn
    assert late1 == 0 and late2 >= 3  # after the move, media goes to the new address only


def _recv(s: socket.socket) -> bytes | None:
    try:
        return s.recv(2048)
    except BlockingIOError:
        return None


def test_browser_listeners_are_decoded_in_one_call_a_frame(codec, wav) -> None:
    async def listen(http, base, cap, frames):
        async with http.ws_connect(f"{base}/ws/broadcast", headers={"Origin": base}) as ws:
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "cap", "levels": cap})
            got = 0
            while got < frames:
                msg = await ws.receive(timeout=5)
                got += msg.type == aiohttp.WSMsgType.BINARY

    async def run():
        async with (
            MimirateServer(config(broadcast=str(wav)), codec) as srv,
            aiohttp.ClientSession() as http,
        ):
            base = f"http://127.0.0.1:{srv.http_port}"
            await asyncio.gather(*(listen(http, base, cap, 8) for cap in (1, 4, 8)))
            return srv.streams.stats

    stats = asyncio.run(run())
    # Three listeners with their own caps (and the broadcast encoder on its own queue):
    # once all have joined, a frame's three decodes go through one batched call.
    assert stats.largest == 3 and stats.calls < stats.pushes


def test_silence_is_not_sent_but_the_stream_stays_alive(codec) -> None:
    """DTX end to end: the talker's VAD and controller leave silence out (but for
    keep-alives), the server relays what comes, the listener counts the frames never sent
    and does not take 2 s of silence for the end of the stream."""
    n = codec.frame_size
    talk = speechlike(12 * n / SR)
    quiet = (3e-4 * np.random.default_rng(1).standard_normal(25 * n)).astype(np.float32)
    audio = np.concatenate([talk, quiet, speechlike(12 * n / SR, seed=3)])

    async def run():
        async with MimirateServer(config(), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/dtx"
            listener = StreamClient(url, codec, ClientOptions(idle_s=1.0, jitter_frames=JITTER))
            heard = asyncio.create_task(listener.run(None, True))
            while not srv.sessions:
                await asyncio.sleep(0.02)
            talker = StreamClient(url, codec, ClientOptions(jitter_frames=JITTER))
            sent = await talker.run(audio, False)
            return sent, await heard

    sent, heard = asyncio.run(run())
    s, st = sent.send, heard.listen
    assert s.controller == "adaptive" and s.frames == 49 and s.paused_frames == 0
    # The server's uplink reports reached the talker's controller (every 320 ms of stream
    # time, keep-alives included: about 10 in 3.9 s).
    assert s.reports >= 6
    # Frames 12-14 are the VAD's hangover; of the 22 silent frames after them, one in
    # five goes as a keep-alive (19, 24, 29, 34): 18 are not sent.
    assert s.dtx_frames == 18
    assert st.unsent == 18 and st.lost == 0
    # The stream went on through the silence (idle_s = 1 s < 1.8 s without speech).
    assert st.frames >= 45 and all(lv > 0 for lv in st.levels[-8:])


def test_uplink_reports_follow_stream_time_through_dtx_gaps(codec) -> None:
    """The server reports to a publisher every 4 frames of stream time, so that the
    keep-alives of a silent publisher (one frame in 5) are each acknowledged."""
    from mimirate.transport.client import open_session, parse_url
    from mimirate.transport.wire import FeedbackReport, parse_message

    async def run():
        async with MimirateServer(config(), codec) as srv:
            url = f"http://127.0.0.1:{srv.http_port}/room/up"
            reply = await open_session(parse_url(url), publish=True, subscribe=False, token=None)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(("127.0.0.1", srv.udp_port))
            s.send(bytes(Hello(int(reply["session"]), codec.name, codec.weights_hash)))
            await asyncio.sleep(0.3)
            while _recv(s) is not None:  # the HELLO echo
                pass
            reports = []
            # Frames 0-3 (speech), then keep-alives alone at 8, 13 and 18.
            for seq, first, count in ((0, 0, 2), (1, 2, 2), (2, 8, 1), (3, 13, 1), (4, 18, 1)):
                frames = tuple(FrameCodes(first + i, np.ones(2, np.uint16)) for i in range(count))
                s.send(encode_media(MediaPacket(seq, frames)))
                await asyncio.sleep(0.1)
                got = 0
                while (d := _recv(s)) is not None:
                    got += isinstance(parse_message(d), FeedbackReport)
                reports.append(got)
            s.close()
            return reports, srv.snapshot()["udp"]["handler_errors"]

    # (Before this test, building the report raised on every packet: publishers never
    # heard from the server, and their controllers ran blind.)
    assert asyncio.run(run()) == ([0, 1, 1, 1, 1], 0)


def test_a_broadcast_file_that_cannot_be_read_is_refused_at_construction(codec, tmp_path):
    from mimirate.errors import AudioError

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError):
        MimirateServer(config(broadcast=str(bad)), codec)


def test_a_background_task_that_fails_is_logged(codec, wav, caplog, monkeypatch) -> None:
    """The broadcast source runs as a task nobody awaits: its failure must show in the log
    at once, not vanish with the task (or wait for the garbage collector)."""

    async def broken_source(self, audio) -> None:
        raise RuntimeError("the encoder broke")

    monkeypatch.setattr(MimirateServer, "_broadcast_source", broken_source)

    async def run():
        async with MimirateServer(config(broadcast=str(wav)), codec):
            await asyncio.sleep(0.2)

    with caplog.at_level("ERROR", logger="mimirate.transport.server"):
        asyncio.run(run())
    failed = [
        r
        for r in caplog.records
        if r.name == "mimirate.transport.server" and "broken_source" in r.getMessage()
    ]
    assert failed and "the encoder broke" in str(failed[0].exc_info[1])
