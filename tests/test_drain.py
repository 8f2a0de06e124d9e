"""Graceful drain on a served gateway with live consoles: unready, refuse, 1001, exit."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType

from gateway.drain import DRAIN_REASON, Drainer, drain_on_signal
from gateway.keys import HEALTH, LIVE_SOCKETS, SETTINGS
from gateway.simulator.state import ComputeSimulator
from gateway.tasks import spawn
from tests.conftest import RunningGateway
from tests.rfb_support import ws_rfb_client

PORTAL = {"Origin": "https://portal.example.com"}
GRACE_S = 0.3
STALL_UPDATES = 40  # full 640x400x4 frames: 40 MB, far past every buffer on the way
Serve = Callable[..., Awaitable[RunningGateway]]


async def _serve(serve_gateway: Serve, redis: aioredis.Redis, deadline_s: float) -> RunningGateway:
    return await serve_gateway(redis, {"drain": {"grace_s": GRACE_S, "deadline_s": deadline_s}})


async def _open_console(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> aiohttp.ClientWebSocketResponse:
    """A relayed console whose RFB greeting has arrived: live on the gateway."""
    console = await gateway.new_console(http)
    ws = await http.ws_connect(gateway.ws_url(console), headers=PORTAL)
    greeting = await ws.receive(timeout=5)
    assert greeting.type is WSMsgType.BINARY and greeting.data.startswith(b"RFB ")
    assert len(gateway.app[LIVE_SOCKETS]) == 1
    return ws


async def _readyz(gateway: RunningGateway, http: aiohttp.ClientSession) -> tuple[int, Any]:
    async with http.get(f"{gateway.url}/readyz") as response:
        return response.status, await response.json()


async def _wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_drain_turns_unready_refuses_then_closes_with_1001_after_grace(
    serve_gateway: Serve,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await _serve(serve_gateway, fake_redis, deadline_s=10)
    assert await _readyz(gateway, http) == (200, {"status": "ready"})
    live = await _open_console(gateway, http)
    second_console = await gateway.new_console(http)

    started = time.monotonic()
    drain = spawn(Drainer(gateway.app, gateway.app[SETTINGS].drain).drain(), name="test-drain")
    await _wait_until(lambda: gateway.app[HEALTH].draining)
    assert await _readyz(gateway, http) == (503, {"status": "unready", "reason": "draining"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(gateway.ws_url(second_console), headers=PORTAL)
    assert refused.value.status == 503
    assert not drain.done()

    closing = await live.receive(timeout=5)
    closed_after = time.monotonic() - started
    assert closing.type is WSMsgType.CLOSE
    assert (closing.data, closing.extra) == (1001, DRAIN_REASON)
    assert closed_after >= GRACE_S  # the load balancer had its grace first
    assert await asyncio.wait_for(drain, timeout=5) == 0
    assert time.monotonic() - started < 10  # returned when empty, long before the deadline
    # The API still answers during and after the drain: only new WebSockets are refused.
    assert (await _readyz(gateway, http))[0] == 503


async def test_drain_without_live_consoles_returns_after_the_grace(
    serve_gateway: Serve, fake_redis: aioredis.Redis
) -> None:
    gateway = await _serve(serve_gateway, fake_redis, deadline_s=10)
    started = time.monotonic()
    assert await Drainer(gateway.app, gateway.app[SETTINGS].drain).drain() == 0
    assert GRACE_S <= time.monotonic() - started < 5


async def test_a_client_that_stopped_reading_is_cut_at_the_deadline(
    serve_gateway: Serve,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
) -> None:
    deadline_s = 1.2
    gateway = await _serve(serve_gateway, fake_redis, deadline_s=deadline_s)
    console = await gateway.new_console(http)
    stuck = await http.ws_connect(gateway.ws_url(console), headers=PORTAL)
    screen = ws_rfb_client(stuck)
    init = await screen.handshake()
    # Ask for far more screen than the buffers hold, and never read it: the gateway's
    # sends stall, so its close frame cannot get through either.
    for _ in range(STALL_UPDATES):
        await screen.request_update(False, 0, 0, init.width, init.height)
    await _wait_until(lambda: len(gateway.app[LIVE_SOCKETS]) == 1)
    started = time.monotonic()
    left = await asyncio.wait_for(
        Drainer(gateway.app, gateway.app[SETTINGS].drain).drain(), timeout=deadline_s + 5
    )
    elapsed = time.monotonic() - started
    assert deadline_s - 0.05 <= elapsed < deadline_s + 1  # held to the deadline, not longer
    assert left in (0, 1)  # cut at the deadline; the abort may land just before the count
    sockets = gateway.app[LIVE_SOCKETS]
    await _wait_until(lambda: all(ws.closed for ws in list(sockets)))


async def test_a_second_signal_ends_the_drain_at_once(
    serve_gateway: Serve,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await serve_gateway(fake_redis, {"drain": {"grace_s": 30, "deadline_s": 60}})
    stop = signal.SIGUSR1  # a signal of our own: SIGTERM/SIGINT belong to pytest here
    waiting = spawn(
        drain_on_signal(gateway.app, gateway.app[SETTINGS].drain, signals=[stop]),
        name="test-drain-on-signal",
    )
    await _wait_until(lambda: signal.getsignal(stop) is not signal.SIG_DFL)  # installed
    signal.raise_signal(stop)
    await _wait_until(lambda: gateway.app[HEALTH].draining)
    assert not waiting.done()  # in its 30 s grace
    signal.raise_signal(stop)
    await asyncio.wait_for(waiting, timeout=5)
    assert signal.getsignal(stop) is signal.SIG_DFL  # handler removed again
