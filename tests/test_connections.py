"""Live-connection limits across instances, leases that outlive no instance, closing by console."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import errors
from gateway.config import LimitSettings
from gateway.connections import Admission, ConnectionRegistry
from gateway.models import ConsoleRecord
from gateway.store.keyspace import KeySpace
from gateway.tasks import spawn
from tests.support import FakeClock, free_port

KS = KeySpace("test:")
LEASE_S = 30.0
CONSOLE_X, CONSOLE_Y = "a" * 64, "b" * 64
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def make_registry(
    redis: aioredis.Redis, clock: FakeClock | None = None, instance: str = "gw-a", **limits: int
) -> ConnectionRegistry:
    settings = LimitSettings(**{"ws_per_console": 4, "ws_per_subject": 20, **limits})
    return ConnectionRegistry(
        redis, KS, settings, instance, clock=clock or FakeClock(), lease_s=LEASE_S
    )


def record(id_hash: str = CONSOLE_X, owner: str = "alice") -> ConsoleRecord:
    return ConsoleRecord(id_hash, owner, "p1", "s1", "novnc", "vnc", 1.0, 2e9)


async def admit(
    registry: ConnectionRegistry, id_hash: str = CONSOLE_X, owner: str = "alice"
) -> Admission:
    return await registry.admit(web.WebSocketResponse(), record(id_hash, owner))


# --- limits across two instances sharing one Redis -------------------------------------------


async def test_console_limit_spans_instances(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    a = make_registry(redis_pair[0], instance="gw-a", ws_per_console=3)
    b = make_registry(redis_pair[1], instance="gw-b", ws_per_console=3)
    await admit(a)
    await admit(b)
    await admit(a)
    for registry in (a, b):
        with pytest.raises(errors.RateLimited, match="console has too many") as refused:
            await admit(registry)
        assert refused.value.headers["Retry-After"] == "5"
    await admit(b, CONSOLE_Y)  # another console is not affected
    assert await a.live_connections(CONSOLE_X) == await b.live_connections(CONSOLE_X) == 3
    assert (a.local_count(), b.local_count()) == (2, 2)


async def test_subject_limit_spans_instances_and_consoles(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    a = make_registry(redis_pair[0], instance="gw-a", ws_per_subject=2)
    b = make_registry(redis_pair[1], instance="gw-b", ws_per_subject=2)
    await admit(a, CONSOLE_X)
    await admit(b, CONSOLE_Y)
    with pytest.raises(errors.RateLimited, match="You have too many"):
        await admit(a, "c" * 64)
    await admit(b, CONSOLE_X, owner="bob")


async def test_subject_refusal_gives_the_console_slot_back(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    registry = make_registry(redis_pair[0], ws_per_subject=1)
    await admit(registry, CONSOLE_X)
    with pytest.raises(errors.RateLimited):
        await admit(registry, CONSOLE_Y)
    assert await registry.live_connections(CONSOLE_Y) == 0
    assert registry.local_count() == 1


async def test_instance_limit_is_per_instance(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    a = make_registry(redis_pair[0], instance="gw-a", ws_per_instance=2)
    b = make_registry(redis_pair[1], instance="gw-b", ws_per_instance=2)
    await admit(a, CONSOLE_X)
    await admit(a, CONSOLE_Y, owner="bob")
    with pytest.raises(errors.RateLimited, match="instance"):
        await admit(a, "c" * 64, owner="carol")
    await admit(b, "c" * 64, owner="carol")


async def test_concurrent_admits_take_exactly_the_free_slots(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    a = make_registry(redis_pair[0], instance="gw-a", ws_per_console=5)
    b = make_registry(redis_pair[1], instance="gw-b", ws_per_console=5)
    results = await asyncio.gather(
        *(admit(a if i % 2 else b) for i in range(40)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, errors.RateLimited)]
    assert (len(admitted), len(refused)) == (5, 35)
    assert await a.live_connections(CONSOLE_X) == 5
    assert a.local_count() + b.local_count() == 5


async def test_concurrent_admits_respect_the_instance_limit(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    registry = make_registry(redis_pair[0], ws_per_instance=3, ws_per_console=100)
    results = await asyncio.gather(*(admit(registry) for _ in range(10)), return_exceptions=True)
    assert sum(isinstance(r, Admission) for r in results) == 3
    assert await registry.live_connections(CONSOLE_X) == 3


# --- release and leases ------------------------------------------------------------------------


async def test_release_is_idempotent(redis_pair: tuple[aioredis.Redis, aioredis.Redis]) -> None:
    registry = make_registry(redis_pair[0], ws_per_console=1, ws_per_subject=1)
    first = await admit(registry)
    await registry.release(first)
    await registry.release(first)
    assert registry.local_count() == 0
    assert await registry.live_connections(CONSOLE_X) == 0
    second = await admit(registry)  # both slots are free again, and only once
    with pytest.raises(errors.RateLimited):
        await admit(registry)
    await registry.release(second)


async def test_a_crashed_instances_connections_expire(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    clock = FakeClock(1000.0)
    crashed = make_registry(redis_pair[0], clock, instance="gw-a", ws_per_console=2)
    survivor = make_registry(redis_pair[1], clock, instance="gw-b", ws_per_console=2)
    await admit(crashed)
    await admit(crashed)
    with pytest.raises(errors.RateLimited):
        await admit(survivor)
    clock.now += LEASE_S + 0.001  # gw-a never renews: it is gone
    assert await survivor.live_connections(CONSOLE_X) == 0
    await admit(survivor)
    await admit(survivor)


async def test_refresh_keeps_leases_alive(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    clock = FakeClock(1000.0)
    alive = make_registry(redis_pair[0], clock, instance="gw-a")
    stalled = make_registry(redis_pair[1], clock, instance="gw-b")
    await admit(alive)
    await admit(stalled)
    for _ in range(3):
        clock.now += LEASE_S * 0.6
        await alive.refresh()
    assert await alive.live_connections(CONSOLE_X) == 1


async def test_refresh_restores_leases_lost_with_redis_data(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    registry = make_registry(redis_pair[0])
    await admit(registry)
    await redis_pair[0].flushdb()  # a Redis restarted without persistence
    await registry.refresh()
    assert await registry.live_connections(CONSOLE_X) == 1


class FirstPipelineWaits:
    """A Redis client whose first pipeline runs only when the test opens the gate."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self.waiting, self.gate = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._redis.pipeline(transaction=transaction)
        if self.waiting.is_set():
            return pipe
        self.waiting.set()
        run = pipe.execute

        async def execute(*args: Any, **kwargs: Any) -> Any:
            await self.gate.wait()
            return await run(*args, **kwargs)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


async def test_a_renewal_racing_a_release_leaves_no_ghost(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    gated = FirstPipelineWaits(redis_pair[0])
    registry = make_registry(gated)  # type: ignore[arg-type]
    admission = await admit(registry)
    renewal = spawn(registry.refresh(), name="refresh")
    await asyncio.wait_for(gated.waiting.wait(), 2)  # the renewal took its snapshot
    await registry.release(admission)  # the member is removed first...
    gated.gate.set()  # ...then the renewal's ZADD puts it back
    await renewal
    assert await registry.live_connections(CONSOLE_X) == 0


async def test_live_keys_expire_after_two_leases(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    registry = make_registry(redis_pair[0])
    await admit(registry)
    for key in (KS.live_on_console(CONSOLE_X), KS.live_of_subject("alice")):
        assert 2 * LEASE_S * 1000 - 1000 < await redis_pair[0].pttl(key) <= 2 * LEASE_S * 1000


async def test_members_name_their_instance(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    registry = make_registry(redis_pair[0], instance="gw-a")
    admission = await admit(registry)
    members = await redis_pair[0].zrange(KS.live_on_console(CONSOLE_X), 0, -1)
    assert members == [admission.member.encode()]
    assert admission.member.startswith("gw-a:")


# --- Redis unavailable ---------------------------------------------------------------------------


async def test_admit_with_redis_down_is_store_unavailable() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_timeout=1)
    registry = make_registry(client)
    try:
        with pytest.raises(errors.StoreUnavailable):
            await admit(registry)
        with pytest.raises(errors.StoreUnavailable):
            await registry.live_connections(CONSOLE_X)
        assert registry.local_count() == 0
    finally:
        await client.aclose()


async def test_release_and_heartbeat_survive_an_outage(
    fake_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make_registry(fake_redis)
    admission = await admit(registry)
    server: Any = fake_redis.connection_pool.connection_kwargs["server"]
    server.connected = False
    caplog.set_level(logging.INFO, logger="gateway.connections")
    heartbeat = spawn(registry.run_heartbeat(0.005), name="heartbeat")
    try:
        await wait_for(lambda: "cannot renew" in caplog.text)
        for _ in range(20):  # many failed renewals...
            await asyncio.sleep(0.005)
        assert caplog.text.count("cannot renew") == 1  # ...one line per outage
        server.connected = True
        await wait_for(lambda: "renewed again" in caplog.text)
        server.connected = False
        await registry.release(admission)  # no error: the lease expires by itself
    finally:
        heartbeat.cancel()
        server.connected = True
    assert registry.local_count() == 0


# --- closing a console's sockets -----------------------------------------------------------------


def registry_app(registry: ConnectionRegistry) -> web.Application:
    """A tiny WebSocket app: /ws/{id_hash}?owner=… admits, relays nothing, releases on close."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        rec = record(request.match_info["id_hash"], request.query.get("owner", "alice"))
        admission = await registry.admit(ws, rec)
        try:
            await ws.prepare(request)
            if admission.close_requested is not None:
                code, reason = admission.close_requested
                await ws.close(code=code, message=reason.encode())
            async for _ in ws:
                pass
        finally:
            await registry.release(admission)
        return ws

    app = web.Application()
    app.router.add_get("/ws/{id_hash}", handler)
    return app


async def connect(
    http: aiohttp.ClientSession, server: TestServer, id_hash: str
) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(server.make_url(f"/ws/{id_hash}"))


async def test_close_console_closes_only_that_console(
    fake_redis: aioredis.Redis, aiohttp_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    registry = make_registry(fake_redis)
    server = await aiohttp_server(registry_app(registry))
    x1, x2 = await connect(http, server, CONSOLE_X), await connect(http, server, CONSOLE_X)
    y = await connect(http, server, CONSOLE_Y)
    await wait_for(lambda: len(registry.sockets()) == 3)
    assert registry.close_console(CONSOLE_X, 4410, "console revoked") == 2
    for client in (x1, x2):
        message = await asyncio.wait_for(client.receive(), 2)
        assert (message.type, message.data, message.extra) == (
            aiohttp.WSMsgType.CLOSE, 4410, "console revoked"
        )  # fmt: skip
    await wait_for(lambda: registry.local_count() == 1)
    assert not y.closed and registry.close_console(CONSOLE_X, 4410, "again") == 0
    await y.close()


async def test_close_before_prepare_is_remembered(fake_redis: aioredis.Redis) -> None:
    registry = make_registry(fake_redis)
    admission = await admit(registry)
    assert registry.close_console(CONSOLE_X, 4410, "console revoked") == 1
    assert admission.close_requested == (4410, "console revoked")
    assert registry.sockets() == []


async def test_refresh_closes_consoles_revoked_meanwhile(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
    aiohttp_server: ServerFactory,
    http: aiohttp.ClientSession,
) -> None:
    registry = make_registry(redis_pair[0])
    server = await aiohttp_server(registry_app(registry))
    revoked, kept = await connect(http, server, CONSOLE_X), await connect(http, server, CONSOLE_Y)
    await wait_for(lambda: len(registry.sockets()) == 2)
    await redis_pair[1].hset(KS.console(CONSOLE_X), mapping={"revoked_at": "1.0"})
    await redis_pair[1].hset(KS.console(CONSOLE_Y), mapping={"expires_at": "2e9"})
    await registry.refresh()
    message = await asyncio.wait_for(revoked.receive(), 2)
    assert (message.data, message.extra) == (4410, "console revoked")
    await wait_for(lambda: registry.local_count() == 1)
    assert not kept.closed
    await kept.close()


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached within 5 s")
