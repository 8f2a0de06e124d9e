"""create_redis: URL forms, embedded/direct/Sentinel/Cluster clients, failing fast without Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from gateway import errors
from gateway.config import CacheSettings, ConfigError, RedisSettings
from gateway.models import Expiring
from gateway.store.connect import (
    RedisClient,
    RedisTarget,
    create_pubsub_redis,
    create_redis,
    parse_redis_url,
)
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from tests.support import free_port


def store_on(client: RedisClient) -> Store:
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
        assert not embedded and isinstance(client, aioredis.Redis)
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
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", RedisTarget("direct")),
        ("rediss://:pw@redis.example:6380/0", RedisTarget("direct")),
        ("unix:///run/redis.sock?db=1", RedisTarget("direct")),
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/mymaster",
            RedisTarget("sentinel", (("s1", 26380), ("s2", 26379), ("::1", 26381)), "mymaster"),
        ),
        (
            "redis+sentinel://:p%40ss@s1:26379/svc/3",
            RedisTarget("sentinel", (("s1", 26379),), "svc", 3, password="p@ss"),
        ),
        (
            "redis+sentinel://gw:secret@s1/svc/",
            RedisTarget("sentinel", (("s1", 26379),), "svc", username="gw", password="secret"),
        ),
        (
            "redis+cluster://n1:7000,n2:7001",
            RedisTarget("cluster", (("n1", 7000), ("n2", 7001))),
        ),
        ("redis+cluster://n1/0", RedisTarget("cluster", (("n1", 6379),))),
        (
            "rediss+cluster://:pw@n1:7000/",
            RedisTarget("cluster", (("n1", 7000),), password="pw", tls=True),
        ),
    ],
)
def test_redis_urls_parse(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://:hunter2@s1:26379", "names /<service_name>"),
        ("redis+sentinel://s1:26379/svc/0/extra", "names /<service_name>"),
        ("redis+sentinel://:hunter2@s1:26379/svc/zero", "db must be a number"),
        ("redis+sentinel://s1:port/svc", "port must be a number"),
        ("redis+cluster://:hunter2@n1:7000/1", "only database 0"),
        ("redis+cluster://n1:7000,,n2", "every host of the list"),
        ("redis+cluster://n1:7000?ssl_cert_reqs=none", "no query"),
        ("memcached://:hunter2@m1:11211", "not supported"),
    ],
)
def test_bad_redis_urls_name_the_key_and_hide_the_password(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=r"^redis\.url: ") as caught:
        parse_redis_url(url)
    assert complaint in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_sentinel_url_makes_a_master_client_with_the_settings() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:26400,127.0.0.1:26401/svc/2"
    client, embedded = create_redis(RedisSettings(url=url, socket_timeout_s=1.5))
    try:
        assert not embedded and isinstance(client, aioredis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, aioredis.BlockingConnectionPool)
        assert pool.service_name == "svc" and pool.is_master  # type: ignore[attr-defined]
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "pw", 1.5)
        sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26400, 26401]
    finally:
        await client.aclose()


async def test_cluster_url_makes_a_cluster_client_with_the_settings() -> None:
    client, embedded = create_redis(
        RedisSettings(
            url="rediss+cluster://:pw@127.0.0.1:7100,127.0.0.1:7101", socket_timeout_s=1.5
        )
    )
    try:
        assert not embedded and isinstance(client, RedisCluster)
        nodes = client.nodes_manager.startup_nodes
        assert sorted(nodes) == ["127.0.0.1:7100", "127.0.0.1:7101"]
        kwargs = client.nodes_manager.connection_kwargs
        assert (kwargs["password"], kwargs["socket_timeout"]) == ("pw", 1.5)
        assert issubclass(kwargs["connection_class"], SSLConnection)
    finally:
        await client.aclose()


@pytest.mark.parametrize("embedded", [True, False])
async def test_pubsub_client_shares_the_store_pool(redis_server: str, embedded: bool) -> None:
    client, _ = create_redis(RedisSettings(url="" if embedded else redis_server))
    listener = create_pubsub_redis(client)
    try:
        assert isinstance(client, aioredis.Redis)
        assert listener.connection_pool is client.connection_pool
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe("news")
            await client.publish("news", "hello")
            message = None
            for _ in range(50):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    break
            assert message is not None and message["data"] == b"hello"
        await listener.aclose()
        assert await client.ping()  # closing the pub/sub client left the shared pool open
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:{}/0", "redis+sentinel://127.0.0.1:{}/svc", "redis+cluster://127.0.0.1:{}"],
)
async def test_nothing_listening_fails_fast_as_store_unavailable(url: str) -> None:
    client, _ = create_redis(RedisSettings(url=url.format(free_port())))
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
