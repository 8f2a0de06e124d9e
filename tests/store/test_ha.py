"""The store and the gateway on a real 3-master Redis Cluster and a real Sentinel group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.config import CacheSettings, RedisSettings, Settings
from gateway.models import ConsoleRecord, ConsoleTarget, Expiring
from gateway.simulator.state import ComputeSimulator
from gateway.store.connect import RedisClient, create_pubsub_redis, create_redis
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from gateway.tasks import spawn
from tests.rfb_support import RfbClient, ws_rfb_client
from tests.store.ha_servers import Cluster, SentinelGroup, redis_cluster, sentinel_group, served
from tests.support import PROJECT, SERVER, FakeClock, bearer, mint_jwt

PORTAL = {"Origin": "https://portal.example.com"}
RECOVERY_S = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A group of its own for each test: a failover leaves it without a replica."""
    with sentinel_group(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[str], RedisClient]]:
    clients: list[RedisClient] = []

    def make(url: str) -> RedisClient:
        client, embedded = create_redis(RedisSettings(url=url, socket_timeout_s=1))
        assert not embedded
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def store_on(client: RedisClient, clock: FakeClock) -> Store:
    return Store(client, KeySpace("ha:"), CacheSettings(), clock=clock)


def record(clock: FakeClock, id_hash: str) -> ConsoleRecord:
    now = clock()
    return ConsoleRecord(
        id_hash=id_hash, owner="alice", project_id=PROJECT, server_id="vm-1",
        type="novnc", protocol="vnc", created_at=now, expires_at=now + 900,
    )  # fmt: skip


class CountingFetch:
    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.calls = clock, 0

    async def __call__(self) -> Expiring:
        self.calls += 1
        await asyncio.sleep(0.2)  # lets the other callers pile up behind the lock
        return Expiring(f"https://console.example/?n={self.calls}", self.clock() + 600)


async def test_cluster_fetches_once_for_two_instances_with_keys_in_one_slot(
    cluster: Cluster, connect: Callable[[str], RedisClient]
) -> None:
    clock = FakeClock()
    first, second = (store_on(connect(cluster.url), clock) for _ in range(2))
    key = first.keyspace.console_url(ConsoleTarget(PROJECT, "vm-single-flight"))
    fetch = CountingFetch(clock)
    results = await asyncio.gather(*(
        store.single_flight(key, fetch, ttl_s=540, min_remaining_s=120)
        for store in (first, second) * 10
    ))  # fmt: skip
    assert fetch.calls == 1
    assert {result.value for result in results} == {"https://console.example/?n=1"}
    keys = (key, first.keyspace.lock_for(key), first.keyspace.error_for(key))
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_cluster_spreads_targets_over_the_masters(cluster: Cluster) -> None:
    keyspace = KeySpace("ha:")
    slots = {
        key_slot(keyspace.console_url(ConsoleTarget(PROJECT, f"vm-{n}")).encode())
        for n in range(30)
    }
    thirds = {slot * 3 // 16384 for slot in slots}  # each master holds a third of the slots
    assert thirds == {0, 1, 2}


async def test_cluster_console_records_and_ping(
    cluster: Cluster, connect: Callable[[str], RedisClient]
) -> None:
    clock = FakeClock()
    store = store_on(connect(cluster.url), clock)
    await store.ping()
    for n in range(6):  # ids whose hash tags land on different masters
        await exercise_console_record(store, clock, f"{n:064x}")


async def exercise_console_record(store: Store, clock: FakeClock, id_hash: str) -> None:
    await store.put_console(record(clock, id_hash), keep_s=60)
    assert await store.get_console(id_hash) == record(clock, id_hash)
    extended = await store.extend_console(id_hash, expires_at=clock() + 1000, keep_s=60)
    assert extended is not None and extended.expires_at == clock() + 1000
    revoked = await store.revoke_console(id_hash, at=clock() + 1)
    assert revoked is not None and revoked.revoked_at == clock() + 1
    assert await store.extend_console(id_hash, expires_at=clock() + 2000, keep_s=60) is None


async def test_cluster_burst_of_a_thousand_hits_queues_instead_of_failing(
    cluster: Cluster, connect: Callable[[str], RedisClient]
) -> None:
    client = connect(cluster.url)
    await client.set("ha:{burst}:hot", "1")
    results = await asyncio.gather(*(client.get("ha:{burst}:hot") for _ in range(1000)))
    assert set(results) == {b"1"}


async def received(pubsub: Any, channel: str) -> bytes:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None and message["channel"] == channel.encode():
            data: bytes = message["data"]
            return data
    raise AssertionError(f"nothing arrived on {channel}")


async def test_cluster_pubsub_reaches_subscribers_through_any_node(
    cluster: Cluster, connect: Callable[[str], RedisClient]
) -> None:
    client = connect(cluster.url)
    listener = create_pubsub_redis(client)
    try:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe("ha:revoked")
            for node in cluster.nodes:  # classic PUBLISH is broadcast to the whole cluster
                async with aioredis.Redis(port=node.port) as publisher:
                    await publisher.publish("ha:revoked", f"from {node.port}")
                assert await received(pubsub, "ha:revoked") == f"from {node.port}".encode()
    finally:
        await listener.aclose()


async def test_cluster_pubsub_skips_a_node_that_is_down(cluster: Cluster) -> None:
    dead = "127.0.0.1:1"  # nothing listens on port 1
    live = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
    client, _ = create_redis(RedisSettings(url=f"redis+cluster://{dead},{live}"))
    assert isinstance(client, RedisCluster)
    listener = create_pubsub_redis(client)
    try:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe("ha:any")
            async with aioredis.Redis(port=cluster.nodes[0].port) as publisher:
                await publisher.publish("ha:any", "hello")
            assert await received(pubsub, "ha:any") == b"hello"
    finally:
        await listener.aclose()
        await client.aclose()


async def until_it_works(operation: Callable[[], Awaitable[Any]]) -> float:
    """Seconds until operation() first succeeds; fails the test after RECOVERY_S."""
    started = time.monotonic()
    while True:
        try:
            await operation()
            return time.monotonic() - started
        except Exception:
            if time.monotonic() - started > RECOVERY_S:
                raise
            await asyncio.sleep(0.1)


async def test_sentinel_store_keeps_working_across_a_failover(
    sentinels: SentinelGroup, connect: Callable[[str], RedisClient]
) -> None:
    clock = FakeClock()
    client = connect(sentinels.url)
    store = store_on(client, clock)
    await store.put_console(record(clock, "a" * 64), keep_s=60)
    await client.execute_command("WAIT", 1, 2000)  # the replica has it before the crash
    listener = create_pubsub_redis(client)
    try:
        await pubsub_round_trip(client, listener, "before")
        killed = await asyncio.to_thread(sentinels.fail_over)
        await until_it_works(store.ping)
        assert sentinels.master_port() != killed.port
        assert await store.get_console("a" * 64) == record(clock, "a" * 64)
        await exercise_console_record(store, clock, "b" * 64)
        key = store.keyspace.console_url(ConsoleTarget(PROJECT, "vm-after-failover"))
        fetch = CountingFetch(clock)
        await store.single_flight(key, fetch, ttl_s=540, min_remaining_s=120)
        await pubsub_round_trip(client, listener, "after")
    finally:
        await listener.aclose()


async def pubsub_round_trip(client: RedisClient, listener: aioredis.Redis, text: str) -> None:
    async with listener.pubsub() as pubsub:
        await pubsub.subscribe("ha:events")
        await client.publish("ha:events", text)
        assert await received(pubsub, "ha:events") == text.encode()


async def test_sentinel_failover_keeps_live_consoles_and_new_ones_work_again(
    sentinels: SentinelGroup,
    make_settings: Callable[..., Settings],
    compute_url: str,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings(
        {"redis": {"url": sentinels.url, "socket_timeout_s": 1},
         "upstream": {"compute_url": compute_url}}
    )  # fmt: skip
    async with served(settings) as gateway:
        console_id = await gateway.new_console(http)
        async with http.ws_connect(gateway.ws_url(console_id), headers=PORTAL) as ws:
            rfb = ws_rfb_client(ws)
            init = await rfb.handshake()
            await one_update(rfb, init.width)
            failover = spawn(asyncio.to_thread(sentinels.fail_over), name="failover")
            while not failover.done():  # the live console relays all through the failover
                await one_update(rfb, init.width)
            await failover
            await until_it_works(lambda: create_console(http, gateway.url))
            await one_update(rfb, init.width)
        async with http.get(f"{gateway.url}/readyz") as ready:
            assert ready.status == 200


async def one_update(rfb: RfbClient, width: int) -> None:
    await rfb.request_update(False, 0, 0, width, 1)
    [(rect, pixels)] = await rfb.read_update()
    assert rect == (0, 0, width, 1) and len(pixels) == width * 4


async def create_console(http: aiohttp.ClientSession, url: str) -> None:
    body = {"project_id": PROJECT, "server_id": SERVER}
    async with http.post(f"{url}/v1/consoles", json=body, headers=bearer(mint_jwt())) as answer:
        assert answer.status == 201, await answer.text()
