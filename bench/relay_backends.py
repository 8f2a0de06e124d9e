"""The relay benchmark's simulated cloud, one process: compute APIs, TCP backends, light upstream.

`python -m bench.relay_backends --ports JSON --token-dir DIR --service-token T` serves, until
SIGTERM, on 127.0.0.1:

- compute      the real simulator's compute API (gateway/simulator/compute.py) whose console
               URLs point at websockify; every token it issues is written to websockify's
               TokenFile directory, routed by server id to one of the TCP backends below;
- stream/echo/sink  TCP "VNC servers": each sends an RFB greeting first (the gateway waits
               for it), then `stream` writes 64 KiB chunks as fast as the socket takes them,
               `echo` sends back what it reads, `sink` reads and sends one byte per MiB read;
- idle_compute a second simulator whose console URLs point at `light`;
- light        an aiohttp WebSocket console proxy that checks the token, greets and echoes:
               websockify forks a process per connection and cannot hold thousands, so the
               idle-console figures use this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import WSMsgType, web

from gateway.simulator.compute import create_compute_app
from gateway.simulator.state import ComputeSimulator, IssuedConsoleToken

PROJECT = "bench-project"
GREETING = b"RFB 003.008\n"
CHUNK = 64 * 1024
MIB = 1024 * 1024
TCP_BACKENDS = ("stream", "echo", "sink")
IDLE_SERVER = "idle"
PORT_NAMES = ("compute", "websockify", "idle_compute", "light", *TCP_BACKENDS)


def raise_nofile() -> int:
    """Soft open-files limit up to the hard one (which nobody here can raise); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


async def _stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    chunk = bytes(range(256)) * (CHUNK // 256)

    async def discard() -> None:
        while await reader.read(CHUNK):
            pass

    drain = asyncio.ensure_future(discard())
    try:
        writer.write(GREETING)
        while not drain.done():
            writer.write(chunk)
            await writer.drain()
    finally:
        drain.cancel()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    total = 0
    while data := await reader.read(4 * CHUNK):
        before, total = total // MIB, total + len(data)
        if total // MIB > before:
            writer.write(b"\x01" * (total // MIB - before))  # one ack byte per MiB received
            await writer.drain()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _guarded(handler: Handler) -> Handler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return run


def _token_writer(token_dir: Path, ports: dict[str, int]) -> Callable[[IssuedConsoleToken], None]:
    """Teach websockify (TokenFile over a directory) each issued token, atomically."""

    def write(issued: IssuedConsoleToken) -> None:
        port = ports[issued.server.server_id]
        fd, tmp = tempfile.mkstemp(dir=token_dir.parent)
        with os.fdopen(fd, "w") as sink:
            sink.write(f"{issued.token}: 127.0.0.1:{port}\n")
        os.replace(tmp, token_dir / issued.token)

    return write


def light_proxy_app(sim: ComputeSimulator) -> web.Application:
    """Checks the token like a console proxy, greets, then echoes binary frames."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=0)
        await ws.prepare(request)
        if sim.check_console_token(request.query.get("token", "")) is None:
            await ws.close()
            return ws
        await ws.send_bytes(GREETING)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def serve(ports: dict[str, int], token_dir: Path, service_token: str) -> None:
    cloud = ComputeSimulator(
        console_base_url=f"http://127.0.0.1:{ports['websockify']}", service_tokens=[service_token]
    )
    for name in TCP_BACKENDS:
        cloud.add_server(PROJECT, name)
    backend_ports = {name: ports[name] for name in TCP_BACKENDS}
    cloud.token_listeners.append(_token_writer(token_dir, backend_ports))
    idle = ComputeSimulator(
        console_base_url=f"http://127.0.0.1:{ports['light']}", service_tokens=[service_token]
    )
    idle.add_server(PROJECT, IDLE_SERVER)

    servers: list[asyncio.Server] = []
    for name, handler in (("stream", _stream), ("echo", _echo), ("sink", _sink)):
        servers.append(await asyncio.start_server(_guarded(handler), "127.0.0.1", ports[name]))
    runners: list[web.AppRunner] = []
    for app, port in (
        (create_compute_app(cloud), ports["compute"]),
        (create_compute_app(idle), ports["idle_compute"]),
        (light_proxy_app(idle), ports["light"]),
    ):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", required=True, help="JSON object: name -> port")
    parser.add_argument("--token-dir", required=True)
    parser.add_argument("--service-token", required=True)
    args = parser.parse_args()
    raise_nofile()
    ports = {name: int(port) for name, port in json.loads(args.ports).items()}
    asyncio.run(serve(ports, Path(args.token_dir), args.service_token))


if __name__ == "__main__":
    main()
