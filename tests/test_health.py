"""Readiness: ready with a store, unready while draining or without Redis; liveness regardless."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import errors
from gateway.config import CacheSettings
from gateway.health import Health
from gateway.keys import HEALTH
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from tests.support import free_port


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    """A client for a port where nothing listens."""
    client = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        yield client
    finally:
        await client.aclose()


def _health(redis: aioredis.Redis) -> Health:
    return Health(Store(redis, KeySpace("t:"), CacheSettings()))


async def test_ready_while_the_store_answers(fake_redis: aioredis.Redis) -> None:
    health = _health(fake_redis)
    assert await health.readiness_problem() is None
    health.ensure_accepting()  # does not raise


async def test_draining_is_unready_and_refuses_new_work(fake_redis: aioredis.Redis) -> None:
    health = _health(fake_redis)
    health.start_draining()
    assert await health.readiness_problem() == "draining"
    with pytest.raises(errors.Draining) as refused:
        health.ensure_accepting()
    assert (refused.value.status, refused.value.code) == (503, "draining")


async def test_store_down_is_unready_but_still_accepting(dead_redis: aioredis.Redis) -> None:
    health = _health(dead_redis)
    assert await health.readiness_problem() == "store_unavailable"
    health.ensure_accepting()  # live consoles keep working without Redis; only new ones fail


async def test_draining_wins_over_a_store_outage(dead_redis: aioredis.Redis) -> None:
    health = _health(dead_redis)
    health.start_draining()
    assert await health.readiness_problem() == "draining"


GatewayFactory = Callable[..., Awaitable[Any]]


async def test_routes_report_draining_and_stay_alive(
    make_gateway: GatewayFactory, fake_redis: aioredis.Redis
) -> None:
    client = await make_gateway(fake_redis)
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready"})
    client.app[HEALTH].start_draining()
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (503, {"status": "unready", "reason": "draining"})
    assert ready.headers["Cache-Control"] == "no-store"
    alive = await client.get("/healthz")
    assert (alive.status, await alive.json()) == (200, {"status": "ok"})


async def test_readyz_names_a_store_outage(
    make_gateway: GatewayFactory, dead_redis: aioredis.Redis
) -> None:
    client = await make_gateway(dead_redis)
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["reason"] == "store_unavailable"
