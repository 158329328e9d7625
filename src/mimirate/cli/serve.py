"""``mimirate serve``, ``mimirate send`` and ``mimirate listen``: the real-time service."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from typing import Any

from mimirate.config import DEFAULT_MODEL
from mimirate.errors import ConfigError

#: The default port of ``serve`` (HTTP and UDP on the same number).
DEFAULT_PORT = 8750
#: ``send --mic`` records with sox from the default audio device, as raw float32 mono.
MIC_COMMAND = "sox -q -d -t raw -e floating-point -b 32 -c 1 -r {rate} -"


def _levels(text: str) -> int:
    v = int(text)
    if not 1 <= v <= 32:
        raise argparse.ArgumentTypeError("levels must be in 1..32")
    return v


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("give HOST:PORT")
    return host, int(port)


def _add_model(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--model", default=default, help="model preset name (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights file or directory for the model")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random weights (seed 0): for tests and load benchmarks only",
    )


def _add_sender(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", type=_levels, default=8, help="levels to start with (1-32)")
    p.add_argument("--frames-per-packet", type=int, choices=(1, 2, 3, 4), default=1)
    p.add_argument("--redundancy", type=int, default=2, help="base levels repeated (0 = none)")
    p.add_argument(
        "--fixed", action="store_true", help="keep these settings (no network-adaptive control)"
    )
    p.add_argument(
        "--quality-table",
        default=None,
        help="quality table for the controller: model name or JSON (default: the model's)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the real-time server (page, signalling, UDP media)",
        description="Serve rooms of live speech: calls, a broadcast and voice messages. "
        "Media goes over UDP on the same port number as HTTP.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (0: any free)")
    p.add_argument("--udp-port", type=int, default=None, help="UDP port (default: --port)")
    p.add_argument("--max-sessions", type=int, default=32, help="concurrent sessions")
    p.add_argument(
        "--token",
        default=os.environ.get("MIMIRATE_TOKEN"),
        help="require this token from every client (default: $MIMIRATE_TOKEN, else none)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="another page origin allowed to open WebSockets (repeatable)",
    )
    p.add_argument("--broadcast", default=None, help="audio file to broadcast (looped)")
    p.add_argument("--messages", default=None, help="folder of .mimi voice messages to serve")
    _add_model(p, DEFAULT_MODEL)
    _add_sender(p)
    p.add_argument("--json", action="store_true", help="print the ports as JSON when ready")
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "send",
        help="publish a file or the microphone to a room (and hear the other party)",
        description="Encode in real time and send to http://HOST:PORT/room/NAME over UDP.",
    )
    p.add_argument("file", nargs="?", help="audio file to send")
    p.add_argument("url", help="http://HOST:PORT/room/NAME")
    p.add_argument("--mic", action="store_true", help="send the default microphone (sox)")
    p.add_argument("--receive", default=None, metavar="OUT.wav", help="a call: also listen")
    p.add_argument("--token", default=os.environ.get("MIMIRATE_TOKEN"))
    p.add_argument("--via", type=_address, default=None, help="send media via HOST:PORT")
    p.add_argument(
        "--no-dtx",
        action="store_true",
        help="send silent frames too (by default the controller leaves them out)",
    )
    _add_model(p, None)
    _add_sender(p)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_send)

    p = sub.add_parser(
        "listen",
        help="play a room or download a voice message into a WAV file",
        description="URL is http://HOST:PORT/room/NAME (live) or .../messages/NAME.mimi.",
    )
    p.add_argument("url")
    p.add_argument("out", help="output WAV file")
    p.add_argument("--seconds", type=float, default=None, help="stop after this much audio")
    p.add_argument("--level-cap", type=_levels, default=32, help="most levels to receive")
    p.add_argument("--jitter-frames", type=int, default=2, help="initial playout delay")
    p.add_argument("--token", default=os.environ.get("MIMIRATE_TOKEN"))
    p.add_argument("--via", type=_address, default=None, help="send media via HOST:PORT")
    p.add_argument("--rate-kbps", type=float, default=None, help="read a message this slowly")
    _add_model(p, None)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_listen)


def _one_thread() -> None:
    import torch

    # One intra-op thread per codec call: a real-time process shares the CPU with its
    # peers, and OpenMP threads spinning against each other on a busy machine run ten
    # times slower than one thread. The server gets parallelism from its worker pool.
    torch.set_num_threads(1)


def _load(model: str, weights: str | None, random_init: bool) -> Any:
    from mimirate.models.loading import load_codec

    _one_thread()

    if random_init:
        return load_codec(model, random_init=True, seed=0)
    return load_codec(model, path=weights)


async def _server_model(url: str, token: str | None) -> str:
    import aiohttp

    from mimirate.transport.client import TransportError, parse_url

    target = parse_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"{target.base_url}/api/info", headers=headers) as r,
        ):
            if r.status != 200:
                raise TransportError(f"{target.base_url}: {r.status} {await r.text()}")
            return str((await r.json())["model"])
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as e:
        raise TransportError(f"cannot ask {target.base_url} for its model: {e}") from None


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import signal

    from mimirate.transport.limits import Limits
    from mimirate.transport.server import MimirateServer, ServerConfig

    _one_thread()
    if args.max_sessions < 1:
        raise ConfigError("--max-sessions must be at least 1")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        udp_port=args.udp_port,
        model=args.model,
        model_path=args.weights,
        random_init=args.random_init,
        token=args.token or None,
        allowed_origins=tuple(args.allow_origin),
        broadcast=args.broadcast,
        messages_dir=args.messages,
        limits=Limits(max_sessions=args.max_sessions),
        levels=args.levels,
        frames_per_packet=args.frames_per_packet,
        redundancy_levels=args.redundancy,
        adaptive=not args.fixed,
        quality_table=args.quality_table,
    )

    async def main() -> None:
        server = MimirateServer(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        try:
            url = f"http://{config.host}:{server.http_port}/"
            if args.json:
                print(
                    json.dumps(
                        {
                            "url": url,
                            "http_port": server.http_port,
                            "udp_port": server.udp_port,
                            "model": server.codec.name,
                        }
                    ),
                    flush=True,
                )
            else:
                print(
                    f"serving {url} (UDP media on port {server.udp_port}, "
                    f"model {server.codec.name}); Ctrl-C stops",
                    flush=True,
                )
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except OSError as e:
        raise ConfigError(f"cannot open {config.host}:{config.port}: {e.strerror}") from None
    return 0


def _send(args: argparse.Namespace) -> int:
    import asyncio
    import shlex

    from mimirate.audio import read_audio, write_wav
    from mimirate.transport.client import ClientOptions, StreamClient, command_frames

    if args.mic == (args.file is not None):
        raise ConfigError("give an audio FILE or --mic, not both")
    options = ClientOptions(
        token=args.token or None,
        levels=args.levels,
        frames_per_packet=args.frames_per_packet,
        redundancy_levels=args.redundancy,
        adaptive=not args.fixed,
        via=args.via,
        quality_table=args.quality_table,
        dtx=not args.no_dtx,
    )

    async def main() -> Any:
        model = args.model or await _server_model(args.url, options.token)
        codec = _load(model, args.weights, args.random_init)
        if args.mic:
            argv = shlex.split(MIC_COMMAND.format(rate=codec.sample_rate))
            source: Any = command_frames(argv, codec.frame_size)
        else:
            source = read_audio(args.file, codec.sample_rate).samples
        result = await StreamClient(args.url, codec, options).run(source, args.receive is not None)
        return codec, result

    codec, result = asyncio.run(main())
    if args.receive is not None and result.audio is not None:
        write_wav(args.receive, result.audio, codec.sample_rate)
    out = {
        "send": asdict(result.send) if result.send else None,
        "listen": _listen_json(result.listen),
    }
    _report(out, args.json)
    return 0


def _listen_json(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    d = asdict(stats)
    levels = d.pop("levels")
    d["levels_timeline"] = list(levels)
    return d


def _report(out: dict[str, Any], as_json: bool) -> None:
    from mimirate.cli import print_json

    if as_json:
        print_json(out)
        return
    for part, d in out.items():
        if not d:
            continue
        shown = {k: v for k, v in d.items() if k not in ("levels_timeline", "levels", "progress")}
        text = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
        print(f"{part}: {text}", file=sys.stdout)


def _listen(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np

    from mimirate.audio import write_wav
    from mimirate.transport.client import (
        ClientOptions,
        StreamClient,
        fetch_message,
        parse_url,
    )

    target = parse_url(args.url)
    token = args.token or None

    if target.kind == "message":

        async def get() -> Any:
            rate = args.rate_kbps * 1000 if args.rate_kbps else None
            return await fetch_message(args.url, token=token, rate_bps=rate)

        msg = asyncio.run(get())
        codec = _load(args.model or msg.model, args.weights, args.random_init)
        if msg.weights_hash != codec.weights_hash:
            raise ConfigError("the message was made with other weights than this model's")
        levels = np.minimum(msg.levels, args.level_cap)
        audio = codec.decode(msg.codes[: int(levels.max())], levels)[: msg.num_samples]
        write_wav(args.out, audio, codec.sample_rate)
        out = {
            "message": {
                "frames": int(msg.codes.shape[1]),
                "mean_levels": float(levels.mean()),
                "first_audio_s": msg.first_audio_s,
                "complete_s": msg.complete_s,
                "progress": [asdict(p) for p in msg.progress],
            }
        }
        _report(out, args.json)
        return 0

    options = ClientOptions(
        token=token,
        level_cap=args.level_cap,
        via=args.via,
        seconds=args.seconds,
        jitter_frames=args.jitter_frames,
    )

    async def main() -> Any:
        model = args.model or await _server_model(args.url, token)
        codec = _load(model, args.weights, args.random_init)
        return codec, await StreamClient(args.url, codec, options).run(None, True)

    codec, result = asyncio.run(main())
    write_wav(args.out, result.audio, codec.sample_rate)
    _report({"listen": _listen_json(result.listen)}, args.json)
    return 0
