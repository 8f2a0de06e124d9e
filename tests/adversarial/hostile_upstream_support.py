"""A hostile compute API and console proxy for tests/adversarial/test_hostile_upstream.py.

The compute API answers POST /v2.1/{project}/servers/{server}/remote-consoles with the
behaviour registered under the server id (so one gateway instance meets every case, and each
case has its own cache key). Every console URL it hands out carries a token that contains
SECRET, which the tests then look for in everything the gateway shows or logs.

The servers run without access logs: their own request lines carry the hostile tokens and
would otherwise be mistaken for gateway leaks in the captured logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

SECRET = "HOSTILE-SECRET-5c0ffee"  # inside every token this upstream hands out
HUGE_BYTES = 50 * 1024 * 1024
CHUNK = 64 * 1024
DRIP_MAX_BYTES = 30  # one per second: the drip ends by itself within 30 s at worst

Behaviour = Callable[[web.Request, "HostileCompute"], Awaitable[web.StreamResponse]]


def hostile_token(case: str) -> str:
    return f"{SECRET}.{case}"


@dataclass
class Servers:
    """aiohttp apps on loopback addresses of our choosing (127.0.0.2 too), no access log."""

    runners: list[web.AppRunner] = field(default_factory=list)

    async def start(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> str:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        self.runners.append(runner)
        site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
        await site.start()
        server = site._server  # the port chosen for port 0
        assert isinstance(server, asyncio.Server)
        port = int(server.sockets[0].getsockname()[1])
        scheme = "https" if ssl_context is not None else "http"
        return f"{scheme}://{host}:{port}"

    async def close(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()


class ConnectionCounter:
    """A listener on a disallowed address that counts every TCP connection made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.2") -> None:
        self._server = await asyncio.start_server(self._accepted, host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.host = host

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class HostileCompute:
    """The remote-consoles route; behaviour per server id; what it did is recorded here."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    handler_seconds: dict[str, float] = field(default_factory=dict)
    finished: dict[str, asyncio.Event] = field(default_factory=dict)
    auth_tokens: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2.1/{project}/servers/{server}/remote-consoles", self.handle)
        return app

    def case(self, server: str) -> str:
        # "<case>-nova" is the same case met through the gateway's Nova-compatible API.
        return server.removesuffix("-nova")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        server = request.match_info["server"]
        self.calls[server] += 1
        self.auth_tokens.append(request.headers.get("X-Auth-Token", ""))
        done = self.finished.setdefault(server, asyncio.Event())
        done.clear()
        started = time.monotonic()
        try:
            return await self.behaviours[self.case(server)](request, self)
        finally:
            self.handler_seconds[server] = time.monotonic() - started
            done.set()


# ---- behaviours ---------------------------------------------------------------------------


def raw(body: bytes, status: int = 200, content_type: str = "application/json") -> Behaviour:
    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return answer


def console(url: str, **extra: object) -> Behaviour:
    body = json.dumps({"remote_console": {"type": "novnc", "protocol": "vnc", "url": url, **extra}})
    return raw(body.encode())


def huge(*, declared: bool) -> Behaviour:
    """50 MiB of a JSON string, streamed; stops when the gateway stops reading."""

    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        server = request.match_info["server"]
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declared:
            resp.content_length = HUGE_BYTES
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b'{"remote_console": {"url": "' + b"A" * (CHUNK - 28)
        with contextlib.suppress(ConnectionError, RuntimeError):
            while compute.bytes_sent[server] < HUGE_BYTES:
                await resp.write(chunk)
                compute.bytes_sent[server] += len(chunk)
                chunk = b"A" * CHUNK
        return resp

    return answer


def gzip_bomb() -> Behaviour:
    """About 50 KiB on the wire that inflates to 50 MiB of JSON whitespace."""
    body = gzip.compress(b"[" + b" " * HUGE_BYTES + b"]", compresslevel=9)

    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return web.Response(body=body, headers=headers)

    return answer


def unknown_encoding() -> Behaviour:
    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        headers = {"Content-Type": "application/json", "Content-Encoding": "x-hostile"}
        return web.Response(body=b"\x00\x01garbage" + SECRET.encode(), headers=headers)

    return answer


def drip() -> Behaviour:
    """Headers at once, then one byte of a valid answer per second."""

    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        server = request.match_info["server"]
        body = json.dumps({"remote_console": {"url": "http://127.0.0.1/?token=t"}}).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for byte in body[:DRIP_MAX_BYTES]:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                await resp.write(bytes([byte]))
                compute.bytes_sent[server] += 1
                await asyncio.sleep(1)
        return resp

    return answer


def reset(*, after_headers: bool) -> Behaviour:
    """The connection dies: before any answer, or after the headers and part of the body."""

    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        if after_headers:
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                b'{"remote_console": {"url": "http://127.0.0.1/?token=' + SECRET.encode()
            )
            transport.write(head)
            await asyncio.sleep(0.05)
        transport.abort()
        return web.Response()  # never written: the connection is gone

    return answer


def raw_wire(data: bytes) -> Behaviour:
    """Bytes that are not (valid) HTTP, then the connection closes."""

    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.write(data)
        await asyncio.sleep(0.05)
        transport.close()
        return web.Response()  # never written: the connection is gone

    return answer


def redirect(status: int, location: Callable[[], str]) -> Behaviour:
    async def answer(request: web.Request, compute: HostileCompute) -> web.StreamResponse:
        body = json.dumps({"remote_console": {"url": location() + "?token=" + SECRET}})
        return web.Response(
            status=status, body=body.encode(), headers={"Location": location()},
            content_type="application/json",
        )  # fmt: skip

    return answer


def status(code: int) -> Behaviour:
    # Nova's fault shape, with a secret and a stack trace the gateway must not pass on.
    body = json.dumps(
        {"computeFault": {"code": code, "message": f"Traceback token={SECRET} at nova/api"}}
    ).encode()
    return raw(body, status=code)


# ---- the console proxy side ---------------------------------------------------------------


async def drop_with_fin(request: web.Request) -> web.StreamResponse:
    """Accepts the upgrade, then closes the TCP connection without a close frame (nova)."""
    ws = web.WebSocketResponse(protocols=("binary",))
    await ws.prepare(request)
    assert request.transport is not None
    request.transport.close()
    return ws


def ws_redirect(counter: ConnectionCounter) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        raise web.HTTPFound(counter.url("/websockify?token=" + SECRET))

    return answer


async def greet_then_text(request: web.Request) -> web.StreamResponse:
    """A proper start, then a text frame mid-session."""
    ws = web.WebSocketResponse(protocols=("binary",))
    await ws.prepare(request)
    await ws.send_bytes(b"RFB 003.008\n")
    await ws.send_str(f"not RFB {SECRET}")
    async for _ in ws:
        pass
    return ws


async def greet_then_drop(request: web.Request) -> web.StreamResponse:
    """A proper start, then the TCP connection reset without a close frame."""
    ws = web.WebSocketResponse(protocols=("binary",))
    await ws.prepare(request)
    await ws.send_bytes(b"RFB 003.008\n")
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return ws


def count_requests(hits: Counter[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware counting requests per path: proof each hostile proxy was reached."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hits[request.path] += 1
        return await handler(request)

    return middleware
