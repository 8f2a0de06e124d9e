"""The baseline: a bare aiohttp WebSocket-to-WebSocket relay with no features at all.

`python -m bench.relay_bare --port P --upstream ws://127.0.0.1:W/websockify`: a client on
/ws/{token} gets the upstream WebSocket `<upstream>?token={token}`, opened per connection,
and binary frames are pumped both ways until either side closes. No auth, Redis, limits,
heartbeats, watchdog, metrics or logging: what is left is the cost of relaying itself, on
the same event loop implementation as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiohttp
from aiohttp import WSMsgType, web

from bench.relay_backends import raise_nofile
from gateway.cli import run_async

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type is not WSMsgType.BINARY:
            break
        await sink.send_bytes(msg.data)
    await sink.close()


async def handle(request: web.Request) -> web.StreamResponse:
    url = f"{request.app[UPSTREAM]}?token={request.match_info['token']}"
    upstream = await request.app[SESSION].ws_connect(url, protocols=("binary",), max_msg_size=0)
    client = web.WebSocketResponse(protocols=("binary",), max_msg_size=0)
    await client.prepare(request)
    down = asyncio.ensure_future(_pump(upstream, client))
    try:
        await _pump(client, upstream)
    finally:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(down, 5)
    return client


async def _session(app: web.Application) -> None:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def _close_session(app: web.Application) -> None:
    await app[SESSION].close()


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app.on_startup.append(_session)
    app.on_cleanup.append(_close_session)
    app.router.add_get("/ws/{token}", handle)
    return app


async def serve(upstream: str, port: int) -> None:
    runner = web.AppRunner(create_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="ws://host:port/path of the upstream")
    args = parser.parse_args()
    raise_nofile()
    run_async(serve(args.upstream, args.port))  # the gateway's own event loop choice


if __name__ == "__main__":
    main()
