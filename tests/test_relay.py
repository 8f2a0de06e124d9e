"""The relay between real WebSockets on 127.0.0.1: data, limits, heartbeats, closes, buffering."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMessage, WSMsgType, web
from yarl import URL

from gateway.config import RelaySettings
from gateway.relay import (
    RelayResult,
    client_ending,
    close_for_client,
    code_for_upstream,
    relay,
    sendable,
    upstream_ending,
)
from gateway.tasks import spawn
from tests.support import FakeClock
from tests.ws_backends import FLOOD_FRAME, RFB_GREETING, Backend

WAIT_S = 10.0  # generous bound for anything that should happen "promptly"
PING_SLACK_S = 1.0  # on top of two heartbeats, for a loaded test machine


@dataclass
class Gateway:
    """The gateway side of each relayed connection, as the test handler saw it."""

    results: asyncio.Queue[RelayResult] = field(default_factory=asyncio.Queue)
    clients: list[web.WebSocketResponse] = field(default_factory=list)
    upstreams: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)
    transports: list[asyncio.Transport] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def buffered(self) -> int:
        """Bytes the gateway holds: unsent to the client plus unread from the upstream."""
        # _reader._size: aiohttp's count of queued, unread frame bytes (no public accessor).
        return self.transports[0].get_write_buffer_size() + self.upstreams[0]._reader._size


@dataclass
class Rig:
    backend: Backend
    gateway: Gateway
    base: URL
    session: aiohttp.ClientSession

    async def connect(
        self, mode: str, *, query: dict[str, int | str] | None = None, autoping: bool = True
    ) -> aiohttp.ClientWebSocketResponse:
        params = {k: str(v) for k, v in (query or {}).items()}
        url = self.base.with_path(f"/relay/{mode}").with_query(params)
        return await self.session.ws_connect(url, protocols=("binary",), autoping=autoping)

    async def result(self) -> RelayResult:
        return await asyncio.wait_for(self.gateway.results.get(), WAIT_S)


def gateway_app(
    upstream_base: URL,
    settings: RelaySettings,
    gateway: Gateway,
    upstream_session: aiohttp.ClientSession,
    first_chunk: bytes,
    close_timeout_s: float,
    clock: Callable[[], float],
) -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse(
            protocols=("binary",),
            heartbeat=settings.heartbeat_s,
            max_msg_size=settings.max_frame_bytes,
        )
        await client.prepare(request)
        url = upstream_base.with_path("/" + request.match_info["mode"]).with_query(request.query)
        upstream = await upstream_session.ws_connect(
            url,
            protocols=("binary",),
            heartbeat=settings.heartbeat_s,
            max_msg_size=settings.max_frame_bytes,
        )
        assert request.transport is not None
        gateway.clients.append(client)
        gateway.upstreams.append(upstream)
        gateway.transports.append(request.transport)
        task = asyncio.current_task()
        assert task is not None
        gateway.tasks.append(task)
        result = await relay(
            client,
            upstream,
            settings,
            first_chunk=first_chunk,
            clock=clock,
            close_timeout_s=close_timeout_s,
        )
        gateway.results.put_nowait(result)
        return client

    app = web.Application()
    app.router.add_get("/relay/{mode}", handler)
    return app


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[RigFactory]:
    sessions: list[aiohttp.ClientSession] = []
    backends: list[Backend] = []
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> URL:
        # Not aiohttp's TestServer: it cancels handlers whose client disconnects, which
        # web.run_app (production) does not.
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return URL.build(scheme="http", host=host, port=port)

    async def make(
        *,
        first_chunk: bytes = RFB_GREETING,
        close_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        **relay: Any,
    ) -> Rig:
        backend = Backend()
        backends.append(backend)
        upstream_base = await serve(backend.app())
        upstream_session, client_session = aiohttp.ClientSession(), aiohttp.ClientSession()
        sessions.extend([upstream_session, client_session])
        settings = RelaySettings.model_validate(relay)
        gateway = Gateway()
        app = gateway_app(
            upstream_base,
            settings,
            gateway,
            upstream_session,
            first_chunk,
            close_timeout_s,
            clock,
        )
        return Rig(backend, gateway, await serve(app), client_session)

    yield make
    for backend in backends:
        backend.release.set()
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int, reason: str = "") -> None:
    """The next message the client sees is a close frame with this code and reason."""
    msg = await ws.receive(timeout=WAIT_S)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, code, reason)


async def backend_close_code(rig: Rig) -> int | None:
    return await asyncio.wait_for(rig.backend.close_codes.get(), WAIT_S)


# ---- pure close-code rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        (1000, True),
        (1001, True),
        (1003, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1009, True),
        (1011, True),
        (1014, True),
        (1015, False),
        (2999, False),
        (3000, True),
        (4001, True),
        (4999, True),
        (5000, False),
        (0, False),
        (None, False),
    ],
)
def test_sendable(code: int | None, ok: bool) -> None:
    assert sendable(code) is ok


@pytest.mark.parametrize(
    ("client_code", "upstream_code"),
    [
        (1000, 1000),
        (1001, 1001),
        (4001, 4001),
        (3000, 3000),
        (1005, 1000),
        (1006, 1000),
        (0, 1000),
        (None, 1000),
    ],
)
def test_code_for_upstream(client_code: int | None, upstream_code: int) -> None:
    assert code_for_upstream(client_code) == upstream_code


@pytest.mark.parametrize(
    ("upstream_code", "client_close"),
    [
        (4001, (4001, "")),
        (1000, (1000, "")),
        (1011, (1011, "")),
        (1005, (1000, "")),
        (0, (1000, "")),
        (1015, (1000, "")),
        (None, (1011, "upstream connection lost")),
    ],
)
def test_close_for_client(upstream_code: int | None, client_close: tuple[int, str]) -> None:
    assert close_for_client(upstream_code) == client_close


TOO_BIG = aiohttp.WebSocketError(1009, "too big")
LOST = ConnectionResetError()
PROTOCOL, GONE = "upstream protocol error", "upstream connection lost"


@pytest.mark.parametrize(
    ("msg", "ended", "outcome"),
    [
        (WSMessage(WSMsgType.CLOSE, 4001, ""), False, ("client", 4001, "", 4001)),
        (WSMessage(WSMsgType.CLOSE, 0, ""), False, ("client", 1005, "", 1000)),
        (WSMessage(WSMsgType.TEXT, "hi", ""), False, ("error", 1003, "binary frames only", 1000)),
        (WSMessage(WSMsgType.ERROR, TOO_BIG, None), False, ("error", 1009, "", 1000)),
        (WSMessage(WSMsgType.ERROR, LOST, None), False, ("client", 1006, "", 1000)),
        (WSMessage(WSMsgType.CLOSED, None, None), False, ("client", 1006, "", 1000)),
        (WSMessage(WSMsgType.CLOSING, None, None), False, ("shutdown", 1001, "", 1001)),
        (WSMessage(WSMsgType.CLOSING, None, None), True, ("client", 1006, "", 1000)),
    ],
)
def test_client_ending(msg: WSMessage, ended: bool, outcome: tuple[Any, ...]) -> None:
    ending = client_ending(msg, ended=ended)
    assert (ending.closed_by, ending.client_code, ending.reason, ending.upstream_code) == outcome


@pytest.mark.parametrize(
    ("msg", "outcome"),
    [
        (WSMessage(WSMsgType.CLOSE, 4001, "r"), ("upstream", 4001, "", 1000)),
        (WSMessage(WSMsgType.CLOSE, 0, ""), ("upstream", 1000, "", 1000)),
        (WSMessage(WSMsgType.TEXT, "x", ""), ("error", 1011, PROTOCOL, 1003)),
        (WSMessage(WSMsgType.ERROR, TOO_BIG, None), ("error", 1011, PROTOCOL, 1000)),
        (WSMessage(WSMsgType.ERROR, LOST, None), ("upstream", 1011, GONE, 1000)),
        (WSMessage(WSMsgType.CLOSED, None, None), ("upstream", 1011, GONE, 1000)),
    ],
)  # fmt: skip
def test_upstream_ending(msg: WSMessage, outcome: tuple[Any, ...]) -> None:
    ending = upstream_ending(msg)
    assert (ending.closed_by, ending.client_code, ending.reason, ending.upstream_code) == outcome


# ---- data ---------------------------------------------------------------------------------


async def test_echo_is_byte_exact_both_ways_and_counted(make_rig: RigFactory) -> None:
    rig = await make_rig()
    ws = await rig.connect("echo")
    assert ws.protocol == "binary"
    first = await ws.receive(timeout=WAIT_S)
    assert (first.type, first.data) == (WSMsgType.BINARY, RFB_GREETING)
    payloads = [b"\x00", os.urandom(1000), os.urandom(1024 * 1024), b"\xff" * 70_000]
    for payload in payloads:
        await ws.send_bytes(payload)
        echoed = await ws.receive(timeout=WAIT_S)
        assert (echoed.type, echoed.data) == (WSMsgType.BINARY, payload)
    await ws.close()
    result = await rig.result()
    sent = sum(map(len, payloads))
    assert result == RelayResult(
        bytes_to_client=len(RFB_GREETING) + sent,
        bytes_to_upstream=sent,
        close_code=1000,
        closed_by="client",
        duration_s=result.duration_s,
    )
    assert rig.backend.received == payloads
    assert await backend_close_code(rig) == 1000


async def test_duration_comes_from_the_injected_clock(make_rig: RigFactory) -> None:
    clock = FakeClock(1000.0)
    rig = await make_rig(clock=clock)
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    clock.now += 42
    await ws.close()
    assert (await rig.result()).duration_s == 42


# ---- closes -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4001])
async def test_client_close_code_reaches_upstream(make_rig: RigFactory, code: int) -> None:
    rig = await make_rig()
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    await ws.close(code=code)
    assert await backend_close_code(rig) == code
    result = await rig.result()
    assert (result.closed_by, result.close_code) == ("client", code)


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4001])
async def test_upstream_close_code_reaches_client(make_rig: RigFactory, code: int) -> None:
    rig = await make_rig(first_chunk=b"")
    ws = await rig.connect("close", query={"code": code})
    await ws.send_bytes(b"x")
    await expect_close(ws, code)  # the upstream's reason text is not passed on
    result = await rig.result()
    assert (result.closed_by, result.close_code) == ("upstream", code)


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_upstream_drop_closes_client_with_1011(make_rig: RigFactory, how: str) -> None:
    rig = await make_rig(first_chunk=b"")
    ws = await rig.connect("drop", query={"after": 1, "how": how})
    await ws.send_bytes(b"x")
    await expect_close(ws, 1011, "upstream connection lost")
    result = await rig.result()
    assert (result.closed_by, result.close_code) == ("upstream", 1011)


async def test_client_drop_closes_upstream_with_1000(make_rig: RigFactory) -> None:
    rig = await make_rig()
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    sock = ws.get_extra_info("socket")
    sock.shutdown(socket.SHUT_RDWR)  # a TCP close with no close frame
    assert await backend_close_code(rig) == 1000
    result = await rig.result()
    assert (result.closed_by, result.close_code) == ("client", 1006)
    await ws.close()


async def test_client_text_frame_closes_with_1003(make_rig: RigFactory) -> None:
    rig = await make_rig()
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    await ws.send_str("hello")
    await expect_close(ws, 1003, "binary frames only")
    assert await backend_close_code(rig) == 1000
    result = await rig.result()
    assert (result.closed_by, result.close_code) == ("error", 1003)


async def test_upstream_text_frame_is_a_protocol_error(make_rig: RigFactory) -> None:
    rig = await make_rig(first_chunk=b"")
    ws = await rig.connect("text")
    await expect_close(ws, 1011, "upstream protocol error")
    assert await backend_close_code(rig) == 1003
    assert (await rig.result()).closed_by == "error"


async def test_oversize_client_frame_closes_both(make_rig: RigFactory) -> None:
    rig = await make_rig(max_frame_bytes=1024)
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    await ws.send_bytes(b"x" * 4096)
    await expect_close(ws, 1009)
    assert await backend_close_code(rig) == 1000
    result = await rig.result()
    assert (result.closed_by, result.close_code, result.bytes_to_upstream) == ("error", 1009, 0)


async def test_shutdown_closes_both_with_1001(make_rig: RigFactory) -> None:
    rig = await make_rig()
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    # What the application's shutdown hook does, from its own task.
    await rig.gateway.clients[0].close(code=1001, message=b"server shutdown")
    await expect_close(ws, 1001, "server shutdown")
    assert await backend_close_code(rig) == 1001
    result = await rig.result()
    assert (result.closed_by, result.close_code) == ("shutdown", 1001)


async def test_cancelled_handler_still_closes_upstream(make_rig: RigFactory) -> None:
    rig = await make_rig()
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    rig.gateway.tasks[0].cancel()
    assert await backend_close_code(rig) == 1001
    await ws.close()


# ---- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("heartbeat_s", [20, 0.1])  # pings are not data
async def test_idle_timeout_closes_both_with_1000(make_rig: RigFactory, heartbeat_s: float) -> None:
    rig = await make_rig(idle_timeout_s=0.3, heartbeat_s=heartbeat_s)
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    await expect_close(ws, 1000, "idle timeout")
    assert await backend_close_code(rig) == 1000
    result = await rig.result()
    assert result.closed_by == "idle" and result.duration_s >= 0.3


async def test_data_in_either_direction_postpones_idle(make_rig: RigFactory) -> None:
    rig = await make_rig(idle_timeout_s=1.0)
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    for i in range(15):  # 1.5 s of traffic, at most 0.1 s apart
        await ws.send_bytes(bytes([i]))
        echoed = await ws.receive(timeout=WAIT_S)
        assert echoed.data == bytes([i])
        await asyncio.sleep(0.1)
    await ws.close()
    assert (await rig.result()).closed_by == "client"


async def test_max_duration_closes_both_with_1000(make_rig: RigFactory) -> None:
    rig = await make_rig(max_duration_s=0.5)
    ws = await rig.connect("echo")
    await ws.receive(timeout=WAIT_S)
    await expect_close(ws, 1000, "maximum session duration")
    assert await backend_close_code(rig) == 1000
    result = await rig.result()
    assert result.closed_by == "max_duration" and result.duration_s >= 0.5


async def test_max_duration_ends_a_client_that_stopped_reading(make_rig: RigFactory) -> None:
    rig = await make_rig(max_duration_s=0.5, close_timeout_s=0.5)
    ws = await rig.connect("flood", query={"total": 200 * 1024 * 1024})
    # The client never reads: the gateway's close frame cannot even be written; the
    # connection is aborted instead of waiting on the client for ever.
    result = await rig.result()
    assert result.closed_by == "max_duration"
    await ws.close()


async def test_max_duration_ends_an_upstream_that_stopped_reading(make_rig: RigFactory) -> None:
    rig = await make_rig(max_duration_s=0.5, close_timeout_s=0.5, first_chunk=b"")
    ws = await rig.connect("sink")

    async def flood() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(100_000):
                await ws.send_bytes(bytes(FLOOD_FRAME))

    flooding = spawn(flood(), name="test-flood")
    result = await rig.result()
    assert result.closed_by == "max_duration"
    assert result.bytes_to_upstream < 64 * 1024 * 1024
    flooding.cancel()
    await asyncio.wait({flooding})
    await ws.close()


# ---- heartbeats ---------------------------------------------------------------------------


async def test_both_legs_are_pinged(make_rig: RigFactory) -> None:
    heartbeat = 0.3
    rig = await make_rig(heartbeat_s=heartbeat, first_chunk=b"")
    ws = await rig.connect("pings", autoping=False)
    loop = asyncio.get_running_loop()
    start = loop.time()
    client_pings: list[float] = []
    while len(client_pings) < 2:
        msg = await ws.receive(timeout=2 * heartbeat + PING_SLACK_S)
        assert msg.type is WSMsgType.PING
        client_pings.append(loop.time())
        await ws.pong(msg.data)
    upstream_pings = [
        await asyncio.wait_for(rig.backend.pings.get(), 2 * heartbeat + PING_SLACK_S)
        for _ in range(2)
    ]
    # Both legs heard from the gateway within a couple of heartbeats and stayed open.
    assert upstream_pings[0] - start < 2 * heartbeat + PING_SLACK_S
    assert not ws.closed and not rig.gateway.upstreams[0].closed
    await ws.close()
    assert (await rig.result()).closed_by == "client"


# ---- backpressure -------------------------------------------------------------------------

FLOOD_TOTAL = 200 * 1024 * 1024
# What aiohttp lets the gateway hold for one stalled connection: the client transport's
# write buffer (asyncio's 64 KiB high-water mark, overshot by up to two frames before the
# writer drains) plus the upstream reader's queue (paused above 2 x 64 KiB, overshot by one
# socket read of up to 256 KiB): about 0.6 MiB for 64 KiB frames, and 2 frames more for
# bigger ones. Measured at the stall: 580-645 KiB, with the backend stopped after 9.4 MB
# of the 200 MB and the process RSS up 1.6-2.2 MB.
BUFFER_BOUND = 1024 * 1024
RSS_BOUND = 48 * 1024 * 1024  # the whole test process, gateway, backend and client included


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def sample_until_stalled(rig: Rig) -> int:
    """The peak gateway buffering seen until the flood makes no progress for 0.3 s."""
    peak, last, still = 0, -1, 0
    for _ in range(3000):  # 30 s at most
        if rig.gateway.transports:
            peak = max(peak, rig.gateway.buffered())
        sent = rig.backend.flood_sent
        still = still + 1 if sent == last and sent > 0 else 0
        if still >= 30:
            return peak
        last = sent
        await asyncio.sleep(0.01)
    raise AssertionError("the flood never stalled")


async def test_backpressure_bounds_what_the_gateway_buffers(make_rig: RigFactory) -> None:
    rig = await make_rig(first_chunk=b"")
    rss_before = rss_bytes()
    ws = await rig.connect("flood", query={"total": FLOOD_TOTAL})
    peak = await sample_until_stalled(rig)  # the client reads nothing meanwhile
    stalled_at, rss_growth = rig.backend.flood_sent, rss_bytes() - rss_before
    assert peak < BUFFER_BOUND, peak
    assert stalled_at < FLOOD_TOTAL // 4, stalled_at  # the rest stayed with the backend
    assert rss_growth < RSS_BOUND, rss_growth
    received = 0
    while received < FLOOD_TOTAL:
        msg = await ws.receive(timeout=WAIT_S)
        assert msg.type is WSMsgType.BINARY and len(msg.data) == FLOOD_FRAME
        assert msg.data[0] == (received // FLOOD_FRAME) % 256  # in order, none lost
        received += len(msg.data)
    await ws.close()
    result = await rig.result()
    assert (result.bytes_to_client, result.closed_by) == (FLOOD_TOTAL, "client")
