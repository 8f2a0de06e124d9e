"""Store behaviour on fakeredis and a real redis-server: caching, single flight, consoles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from gateway import errors
from gateway.config import RedisSettings
from gateway.models import ConsoleRecord, ConsoleTarget, Expiring
from gateway.store import codec
from gateway.store.connect import create_redis
from gateway.store.redis_store import Store
from tests.store.conftest import Upstream
from tests.support import FakeClock

MakeStore = Callable[..., Store]
Pair = tuple[aioredis.Redis, aioredis.Redis]
TARGET = ConsoleTarget("p1", "s1")


async def flight(store: Store, upstream: Upstream, *, ttl_s: float = 540,
                 min_remaining_s: float = 120) -> Expiring:
    key = store.keyspace.console_url(TARGET)
    return await store.single_flight(key, upstream, ttl_s=ttl_s, min_remaining_s=min_remaining_s)


async def until_gone(client: aioredis.Redis, key: str) -> None:
    for _ in range(200):
        if not await client.exists(key):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} did not expire")


# --- caching -------------------------------------------------------------------------------

async def test_miss_then_hit(redis_client: aioredis.Redis, make_store: MakeStore,
                             upstream: Upstream) -> None:
    store = make_store(redis_client)
    first = await flight(store, upstream)
    second = await flight(store, upstream)
    assert first == second
    assert upstream.calls == 1


async def test_hit_is_shared_between_instances(redis_pair: Pair, make_store: MakeStore,
                                               upstream: Upstream) -> None:
    first = await flight(make_store(redis_pair[0]), upstream)
    assert await flight(make_store(redis_pair[1]), upstream) == first
    assert upstream.calls == 1


@pytest.mark.parametrize(("age_s", "refetched"), [(479, False), (480, False), (480.5, True)])
async def test_entry_near_expiry_is_refreshed_not_served(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream, clock: FakeClock,
    age_s: float, refetched: bool,
) -> None:
    store = make_store(redis_client)
    first = await flight(store, upstream, min_remaining_s=120)  # valid for 600 s
    clock.now += age_s
    second = await flight(store, upstream, min_remaining_s=120)
    assert (second != first) is refetched
    assert upstream.calls == (2 if refetched else 1)


async def test_ttl_is_under_ten_minutes(redis_client: aioredis.Redis, make_store: MakeStore,
                                        upstream: Upstream) -> None:
    store = make_store(redis_client)
    await flight(store, upstream, ttl_s=540)
    ttl_ms = await redis_client.pttl(store.keyspace.console_url(TARGET))
    assert 530_000 < ttl_ms <= 540_000


async def test_ttl_never_outlives_the_value(redis_client: aioredis.Redis, make_store: MakeStore,
                                            upstream: Upstream) -> None:
    store = make_store(redis_client)
    upstream.valid_for_s = 100
    await flight(store, upstream, ttl_s=540, min_remaining_s=0)
    ttl_ms = await redis_client.pttl(store.keyspace.console_url(TARGET))
    assert 90_000 < ttl_ms <= 100_000


async def test_an_already_expired_value_is_returned_but_not_stored(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client)
    upstream.valid_for_s = -1
    result = await flight(store, upstream, min_remaining_s=0)
    assert result.value.endswith("n=1")
    key = store.keyspace.console_url(TARGET)
    assert not await redis_client.exists(key, store.keyspace.lock_for(key))


async def test_invalidate_forces_a_fetch(redis_client: aioredis.Redis, make_store: MakeStore,
                                         upstream: Upstream) -> None:
    store = make_store(redis_client)
    first = await flight(store, upstream)
    await store.invalidate(store.keyspace.console_url(TARGET))
    assert await flight(store, upstream) != first
    assert upstream.calls == 2


async def test_garbage_in_the_cache_is_a_miss(redis_client: aioredis.Redis,
                                              make_store: MakeStore, upstream: Upstream) -> None:
    store = make_store(redis_client)
    await redis_client.set(store.keyspace.console_url(TARGET), b"\xff not json")
    assert (await flight(store, upstream)).value.endswith("n=1")


# --- single flight -------------------------------------------------------------------------

async def test_fifty_callers_on_two_instances_fetch_once(
    redis_pair: Pair, make_store: MakeStore, clock: FakeClock
) -> None:
    upstream = Upstream(clock, delay_s=0.05)
    stores = [make_store(redis_pair[0]), make_store(redis_pair[1])]
    results = await asyncio.gather(*(flight(stores[i % 2], upstream) for i in range(50)))
    assert upstream.calls == 1
    assert len(set(results)) == 1


async def test_an_upstream_error_reaches_every_caller_once_and_promptly(
    redis_pair: Pair, make_store: MakeStore, clock: FakeClock
) -> None:
    upstream = Upstream(clock, delay_s=0.05)
    upstream.error = errors.NotFound("No server s1 in project p1.")
    stores = [make_store(redis_pair[0]), make_store(redis_pair[1])]
    started = time.monotonic()
    results = await asyncio.gather(
        *(flight(stores[i % 2], upstream) for i in range(50)), return_exceptions=True
    )
    assert time.monotonic() - started < stores[0]._cache.lock_wait_s / 4
    assert upstream.calls == 1
    assert all(isinstance(r, errors.NotFound) for r in results)
    assert {str(r) for r in results} == {"No server s1 in project p1."}


async def test_error_marker_is_a_short_negative_cache(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client, error_ttl_s=0.3)
    upstream.error = errors.Conflict("The server is shelved.")
    with pytest.raises(errors.Conflict):
        await flight(store, upstream)
    with pytest.raises(errors.Conflict, match="shelved"):
        await flight(store, upstream)
    assert upstream.calls == 1
    marker = store.keyspace.error_for(store.keyspace.console_url(TARGET))
    assert 0 < await redis_client.pttl(marker) <= 300
    await until_gone(redis_client, marker)
    upstream.error = None
    assert (await flight(store, upstream)).value.endswith("n=2")


async def test_no_error_marker_when_error_ttl_is_zero(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client, error_ttl_s=0)
    upstream.error = errors.UpstreamError()
    for _ in range(2):
        with pytest.raises(errors.UpstreamError):
            await flight(store, upstream)
    assert upstream.calls == 2


async def test_unexpected_exceptions_are_not_cached_and_free_the_lock(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client)
    upstream.error = RuntimeError("bug")
    with pytest.raises(RuntimeError):
        await flight(store, upstream)
    key = store.keyspace.console_url(TARGET)
    ks = store.keyspace
    assert not await redis_client.exists(ks.lock_for(key), ks.error_for(key))
    upstream.error = None
    assert (await flight(store, upstream)).value.endswith("n=2")


async def test_a_waiter_takes_over_from_a_crashed_holder(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client)
    lock = store.keyspace.lock_for(store.keyspace.console_url(TARGET))
    await redis_client.set(lock, "another-instance", px=200)
    result = await flight(store, upstream)
    assert result.value.endswith("n=1")
    assert upstream.calls == 1
    assert not await redis_client.exists(lock)


async def test_waiters_give_up_after_lock_wait(redis_pair: Pair, make_store: MakeStore,
                                                upstream: Upstream) -> None:
    holder = make_store(redis_pair[0], lock_wait_s=0.3, lock_ttl_s=10)
    waiter = make_store(redis_pair[1], lock_wait_s=0.3, lock_ttl_s=10)
    upstream.gate = asyncio.Event()
    held = asyncio.ensure_future(flight(holder, upstream))
    await upstream.entered.wait()
    started = time.monotonic()
    results = await asyncio.gather(*(flight(waiter, upstream) for _ in range(5)),
                                   return_exceptions=True)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert all(isinstance(r, errors.UpstreamTimeout) for r in results)
    upstream.gate.set()
    assert (await held).value.endswith("n=1")
    assert upstream.calls == 1


async def test_local_callers_share_one_lock_attempt(
    redis_server: str, make_store: MakeStore, clock: FakeClock
) -> None:
    client, _ = create_redis(RedisSettings(url=redis_server))
    try:
        await client.flushdb()
        await client.config_resetstat()
        upstream = Upstream(clock, delay_s=0.02)
        store = make_store(client)
        await asyncio.gather(*(flight(store, upstream) for _ in range(1000)))
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    assert upstream.calls == 1
    # The lock SET plus the value SET inside the settle script; 1000 would mean no coalescing.
    assert stats["cmdstat_set"]["calls"] <= 2


async def test_a_cancelled_caller_does_not_cancel_its_peers(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client)
    upstream.gate = asyncio.Event()
    first = asyncio.ensure_future(flight(store, upstream))
    await upstream.entered.wait()
    second = asyncio.ensure_future(flight(store, upstream))
    await asyncio.sleep(0)
    first.cancel()
    upstream.gate.set()
    assert (await second).value.endswith("n=1")
    assert first.cancelled()


# --- console records -----------------------------------------------------------------------

RECORD = ConsoleRecord(
    id_hash="a" * 64, owner="alice", project_id="p1", server_id="s1", type="novnc",
    protocol="vnc", created_at=1_700_000_000.123456, expires_at=1_700_000_900.654321,
)


async def test_console_round_trip_with_ttl(redis_client: aioredis.Redis,
                                           make_store: MakeStore) -> None:
    store = make_store(redis_client)
    await store.put_console(RECORD, keep_s=900)
    assert await store.get_console(RECORD.id_hash) == RECORD
    assert 890_000 < await redis_client.pttl(store.keyspace.console(RECORD.id_hash)) <= 900_000


async def test_unknown_console_is_none(redis_client: aioredis.Redis,
                                       make_store: MakeStore) -> None:
    store = make_store(redis_client)
    assert await store.get_console("b" * 64) is None
    assert await store.revoke_console("b" * 64, at=1.0) is None
    assert not await redis_client.exists(store.keyspace.console("b" * 64))


async def test_revoke_is_idempotent_and_keeps_the_ttl(redis_client: aioredis.Redis,
                                                      make_store: MakeStore) -> None:
    store = make_store(redis_client)
    await store.put_console(RECORD, keep_s=900)
    revoked = await store.revoke_console(RECORD.id_hash, at=1_700_000_100.5)
    again = await store.revoke_console(RECORD.id_hash, at=1_700_000_200.5)
    assert revoked == again == replace(RECORD, revoked_at=1_700_000_100.5)
    assert await store.get_console(RECORD.id_hash) == revoked
    assert 890_000 < await redis_client.pttl(store.keyspace.console(RECORD.id_hash)) <= 900_000


async def test_extend_moves_expiry_later_only_for_live_records(
    redis_client: aioredis.Redis, make_store: MakeStore
) -> None:
    store = make_store(redis_client)
    key = store.keyspace.console(RECORD.id_hash)
    await store.put_console(RECORD, keep_s=60)
    later = RECORD.expires_at + 500
    extended = await store.extend_console(RECORD.id_hash, expires_at=later, keep_s=900)
    assert extended == replace(RECORD, expires_at=later)
    assert 890_000 < await redis_client.pttl(key) <= 900_000
    earlier = await store.extend_console(RECORD.id_hash, expires_at=RECORD.expires_at, keep_s=10)
    assert earlier == extended  # never earlier, TTL untouched
    assert await redis_client.pttl(key) > 10_000
    await store.revoke_console(RECORD.id_hash, at=1.0)
    assert await store.extend_console(RECORD.id_hash, expires_at=later + 1, keep_s=900) is None
    assert (await store.get_console(RECORD.id_hash)) == replace(extended, revoked_at=1.0)
    assert await store.extend_console("c" * 64, expires_at=later, keep_s=900) is None
    assert not await redis_client.exists(store.keyspace.console("c" * 64))


async def test_put_replaces_a_record_and_non_positive_keep_stores_nothing(
    redis_client: aioredis.Redis, make_store: MakeStore
) -> None:
    store = make_store(redis_client)
    await store.put_console(replace(RECORD, revoked_at=5.0), keep_s=60)
    await store.put_console(RECORD, keep_s=60)
    assert await store.get_console(RECORD.id_hash) == RECORD
    await store.put_console(RECORD, keep_s=0)
    assert await store.get_console(RECORD.id_hash) is None


async def test_ping(redis_client: aioredis.Redis, make_store: MakeStore) -> None:
    await make_store(redis_client).ping()


class RacingRedis(fakeredis.FakeAsyncRedis):
    """Runs `just_before_lock` right before the lock SET: another instance finishing first."""

    just_before_lock: Callable[[aioredis.Redis], Awaitable[object]] | None = None

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("nx") and self.just_before_lock is not None:
            hook, self.just_before_lock = self.just_before_lock, None
            await hook(self)
        return await super().set(*args, **kwargs)


@pytest.mark.parametrize("outcome", ["value", "error"])
async def test_the_lock_holder_uses_a_flight_that_settled_just_before(
    make_store: MakeStore, upstream: Upstream, clock: FakeClock, outcome: str
) -> None:
    client = RacingRedis(server=fakeredis.FakeServer())
    store = make_store(client)
    key = store.keyspace.console_url(TARGET)
    settled = Expiring("https://console.example/?other", clock() + 600)
    if outcome == "value":
        client.just_before_lock = lambda c: c.set(key, codec.encode_expiring(settled))
    else:
        marker = codec.encode_error(errors.Conflict("The server is shelved."))
        client.just_before_lock = lambda c: c.set(store.keyspace.error_for(key), marker)
    try:
        if outcome == "value":
            assert await flight(store, upstream) == settled
        else:
            with pytest.raises(errors.Conflict, match="shelved"):
                await flight(store, upstream)
        assert not await client.exists(store.keyspace.lock_for(key))
    finally:
        await client.aclose()
    assert upstream.calls == 0


async def test_a_holder_whose_lock_expired_leaves_the_new_lock_alone(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client, lock_ttl_s=0.1)
    key = store.keyspace.console_url(TARGET)
    upstream.gate = asyncio.Event()
    held = asyncio.ensure_future(flight(store, upstream))
    await upstream.entered.wait()
    await until_gone(redis_client, store.keyspace.lock_for(key))
    await redis_client.set(store.keyspace.lock_for(key), "next-holder", px=10_000)
    upstream.gate.set()
    assert (await held).value.endswith("n=1")
    assert await redis_client.get(store.keyspace.lock_for(key)) == b"next-holder"


async def test_a_success_clears_an_error_marker_written_meanwhile(
    redis_client: aioredis.Redis, make_store: MakeStore, upstream: Upstream
) -> None:
    store = make_store(redis_client)
    key = store.keyspace.console_url(TARGET)
    upstream.gate = asyncio.Event()
    held = asyncio.ensure_future(flight(store, upstream))
    await upstream.entered.wait()
    await redis_client.set(store.keyspace.error_for(key), codec.encode_error(errors.Conflict()))
    upstream.gate.set()
    await held
    assert not await redis_client.exists(store.keyspace.error_for(key))
