"""Tiny upstream console proxies for relay tests: real aiohttp WebSocket servers that record."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

RFB_GREETING = b"RFB 003.008\n"
FLOOD_FRAME = 64 * 1024


@dataclass
class Backend:
    """One app, a route per behaviour; what the gateway sent and did is recorded here."""

    received: list[bytes] = field(default_factory=list)
    close_codes: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    pings: asyncio.Queue[float] = field(default_factory=asyncio.Queue)
    headers: list[dict[str, str]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    flood_sent: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled handlers

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/echo", self.echo)
        app.router.add_get("/greet", self.greet)
        app.router.add_get("/flood", self.flood)
        app.router.add_get("/pings", self.ping_recorder)
        app.router.add_get("/close", self.closer)
        app.router.add_get("/drop", self.dropper)
        app.router.add_get("/sink", self.sink)
        app.router.add_get("/text", self.texter)
        app.router.add_get("/refuse", self.refuser)
        app.router.add_get("/hang", self.hanger)
        return app

    def _record(self, request: web.Request) -> None:
        self.headers.append(dict(request.headers))
        self.queries.append(dict(request.query))

    async def _accept(self, request: web.Request, **kwargs: bool) -> web.WebSocketResponse:
        self._record(request)
        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=0, **kwargs)
        await ws.prepare(request)
        return ws

    async def _echo_until_closed(self, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                self.received.append(msg.data)
                await ws.send_bytes(msg.data)
        # After a close frame from the gateway this is the code it carried.
        self.close_codes.put_nowait(ws.close_code)
        return ws

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        return await self._echo_until_closed(await self._accept(request))

    async def greet(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._accept(request)
        await ws.send_bytes(RFB_GREETING)
        return await self._echo_until_closed(ws)

    async def flood(self, request: web.Request) -> web.WebSocketResponse:
        """Offers `total` bytes in 64 KiB frames whose first byte counts frames."""
        ws = await self._accept(request)
        total = int(request.query["total"])
        frame = bytearray(FLOOD_FRAME)
        # The gateway may abort a flood nobody reads; that ends this handler quietly.
        with contextlib.suppress(ConnectionError):
            while self.flood_sent < total and not ws.closed:
                frame[0] = (self.flood_sent // FLOOD_FRAME) % 256
                await ws.send_bytes(bytes(frame))
                self.flood_sent += FLOOD_FRAME
        return await self._echo_until_closed(ws)

    async def ping_recorder(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._accept(request, autoping=False)
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if msg.type is WSMsgType.PING:
                self.pings.put_nowait(loop.time())
                await ws.pong(msg.data)
        self.close_codes.put_nowait(ws.close_code)
        return ws

    async def closer(self, request: web.Request) -> web.WebSocketResponse:
        """Closes with ?code= after the first message."""
        ws = await self._accept(request)
        await ws.receive()
        await ws.close(code=int(request.query["code"]), message=b"upstream reason")
        return ws

    async def dropper(self, request: web.Request) -> web.WebSocketResponse:
        """Ends the TCP connection without a close frame after ?after= messages: with a
        reset, or (?how=fin) a plain close as nova-novncproxy does for a refused token."""
        ws = await self._accept(request)
        for _ in range(int(request.query.get("after", "0"))):
            await ws.receive()
        assert request.transport is not None
        if request.query.get("how") == "fin":
            request.transport.close()
        else:
            request.transport.abort()
        return ws

    async def sink(self, request: web.Request) -> web.WebSocketResponse:
        """Accepts and never reads, like a stalled console proxy."""
        ws = await self._accept(request)
        await asyncio.wait_for(self.release.wait(), timeout=60)
        return ws

    async def texter(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._accept(request)
        await ws.send_str("not RFB")
        return await self._echo_until_closed(ws)

    async def refuser(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(status=403, text="token expired")

    async def hanger(self, request: web.Request) -> web.StreamResponse:
        """Holds the handshake unanswered until released."""
        await asyncio.wait_for(self.release.wait(), timeout=60)
        return web.Response(status=503)
