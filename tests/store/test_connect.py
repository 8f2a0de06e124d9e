"""create_redis: embedded or real client, refused schemes, and failing fast when Redis is away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway import errors
from gateway.config import CacheSettings, ConfigError, RedisSettings
from gateway.models import Expiring
from gateway.store.connect import create_redis
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from tests.support import free_port


def store_on(client: aioredis.Redis) -> Store:
    return Store(client, KeySpace("t:"), CacheSettings())


async def test_empty_url_is_an_embedded_store_with_lua() -> None:
    client, embedded = create_redis(RedisSettings(url=""))
    try:
        assert embedded
        store = store_on(client)
        await store.ping()
        script = client.register_script("return redis.call('INCR', KEYS[1])")
        assert await script(keys=["n"]) == 1
    finally:
        await client.aclose()


async def test_embedded_stores_are_separate() -> None:
    first, _ = create_redis(RedisSettings(url=""))
    second, _ = create_redis(RedisSettings(url=""))
    try:
        await first.set("k", "v")
        assert await second.get("k") is None
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_url_connects_with_the_configured_timeouts(redis_server: str) -> None:
    client, embedded = create_redis(RedisSettings(url=redis_server, socket_timeout_s=1.5))
    try:
        assert not embedded
        await store_on(client).ping()
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.5
    finally:
        await client.aclose()


@pytest.mark.parametrize("embedded", [True, False])
async def test_a_burst_of_a_thousand_hits_does_not_exhaust_the_pool(
    redis_server: str, embedded: bool
) -> None:
    client, _ = create_redis(RedisSettings(url="" if embedded else redis_server))
    try:
        await client.set("hot", "1")
        results = await asyncio.gather(*(client.get("hot") for _ in range(1000)))
    finally:
        await client.aclose()
    assert set(results) == {b"1"}


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://127.0.0.1:26379/mymaster", "redis+cluster://127.0.0.1:7000",
     "rediss+cluster://127.0.0.1:7000"],
)
def test_sentinel_and_cluster_are_not_supported_yet(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^redis\.url: .*not yet supported"):
        create_redis(RedisSettings(url=url))


async def test_nothing_listening_fails_fast_as_store_unavailable() -> None:
    client, _ = create_redis(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"))
    store = store_on(client)
    started = time.monotonic()
    try:
        with pytest.raises(errors.StoreUnavailable):
            await store.ping()
        with pytest.raises(errors.StoreUnavailable):
            await store.get_console("a" * 64)

        async def never_called() -> Expiring:
            raise AssertionError("fetch must not run without a store")

        with pytest.raises(errors.StoreUnavailable):
            await store.single_flight("t:k", never_called, ttl_s=540, min_remaining_s=120)
    finally:
        await client.aclose()
    assert time.monotonic() - started < 3


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers, like a wedged Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_wedged_redis_fails_within_the_socket_timeout(silent_port: int) -> None:
    settings = RedisSettings(url=f"redis://127.0.0.1:{silent_port}/0", socket_timeout_s=0.3)
    client, _ = create_redis(settings)
    started = time.monotonic()
    try:
        with pytest.raises(errors.StoreUnavailable):
            await store_on(client).ping()
    finally:
        await client.aclose()
    assert time.monotonic() - started < 3
