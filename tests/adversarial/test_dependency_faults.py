"""Dependency faults while a console relays and new requests arrive (DESIGN.md 2.4, rule 7).

Each test keeps one console WebSocket doing small RFB round trips through the gateway for the
whole fault, fires requests at the failed dependency, and checks the contract: a fast 503
(502/504 for the compute API), never a 500 or a hang, live consoles unaffected, and recovery
without a restart once the fault clears. What was measured goes to `security_figures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import CacheSettings, Settings
from gateway.errors import StoreUnavailable
from gateway.models import ConsoleTarget, Expiring
from gateway.simulator.state import ComputeSimulator
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from tests.adversarial.faults_support import (
    Answer,
    LatencyProxy,
    ms,
    open_live_console,
    other_routes,
    p50_ms,
    post_console,
    readiness,
    statuses,
    until_ok,
)
from tests.conftest import GatewayServer, RunningGateway
from tests.figures import SecurityFigures
from tests.store.ha_servers import RedisProcess, redis_server, sentinel_group, served
from tests.support import PROJECT

# The gateway's Redis socket timeout in these tests; a request that needs a stuck Redis must
# be answered 503 soon after it (FAST_S leaves room for a loaded 2-core machine).
REDIS_TIMEOUT_S = 1.0
FAST_S = 3.0
RECOVERY_S = 10.0
STUCK_CROWD = 120  # > the gateway's 100 pooled Redis connections


@pytest.fixture
def redis_node(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own on a free port: killing it disturbs nobody else."""
    with redis_server(tmp_path / "redis") as node:
        yield node


def gateway_settings(
    make_settings: Callable[..., Settings], redis_url: str, compute_url: str
) -> Settings:
    return make_settings(
        {"redis": {"url": redis_url, "socket_timeout_s": REDIS_TIMEOUT_S},
         "upstream": {"compute_url": compute_url}}
    )  # fmt: skip


def add_servers(sim: ComputeSimulator, prefix: str, count: int) -> list[str]:
    return [sim.add_server(PROJECT, f"{prefix}-{n}").server_id for n in range(count)]


def console_records(node: RedisProcess) -> int:
    with node.client() as client:
        return len(client.keys("*:console"))


def undocumented(answers: list[Answer], allowed: set[int]) -> list[Answer]:
    return [answer for answer in answers if answer.status not in allowed]


async def test_redis_killed_mid_burst_fails_fast_keeps_consoles_and_recovers(
    redis_node: RedisProcess,
    make_settings: Callable[..., Settings],
    compute_url: str,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    servers = add_servers(console_proxy, "vm-killed", 8)
    settings = gateway_settings(make_settings, redis_node.url, compute_url)
    async with served(settings) as gateway, contextlib.AsyncExitStack() as stack:
        console = await open_live_console(http, gateway, stack)
        # A slow upstream keeps the burst mid-request (single-flight locks held, URLs not yet
        # cached, records not yet written) when Redis dies.
        console_proxy.faults.delay_s = 0.3
        burst = [asyncio.ensure_future(post_console(http, gateway, s)) for s in servers * 2]
        await asyncio.sleep(0.1)
        fault_started = time.monotonic()
        await asyncio.to_thread(redis_node.kill)
        in_flight = list(await asyncio.gather(*burst))
        console_proxy.faults.delay_s = 0.0
        arriving = [await post_console(http, gateway, s) for s in servers[:4]]
        unready = await readiness(http, gateway)
        elsewhere = await other_routes(http, gateway, console.console_id)
        await asyncio.sleep(0.3)  # the console keeps relaying with Redis gone
        await asyncio.to_thread(redis_node.start)  # same port, empty
        restarted = time.monotonic()
        during_fault = console.trips_between(fault_started, restarted)
        recovery_s, not_yet = await until_ok(lambda: post_console(http, gateway), want=201)
        ready = await readiness(http, gateway)
        await console.stop()
        fresh = await open_live_console(http, gateway, stack)  # the whole path works again
        await fresh.stop()
    records = console_records(redis_node)

    answers = in_flight + arriving + not_yet
    # Redis came back empty: only what succeeded after that may be in it.
    extra_records = records - statuses(answers)[201] - 2  # the recovery's 201, the fresh one
    assert undocumented(answers, {201, 503}) == []
    assert all(a.code == "store_unavailable" for a in answers if a.status == 503)
    refused = statuses(answers)[503]
    assert statuses(in_flight)[503] >= 1, in_flight  # mid-request deaths end in 503, not 500
    assert [a.status for a in arriving] == [503] * len(arriving)
    assert max(a.elapsed_s for a in arriving) < FAST_S
    assert (unready.status, unready.code) == (503, "store_unavailable")
    assert unready.elapsed_s < FAST_S
    assert [a.status for a in elsewhere] == [503] * 3, elsewhere  # state, page, WebSocket
    assert max(a.elapsed_s for a in elsewhere) < FAST_S
    assert ready.status == 200
    assert console.failures == [] and fresh.failures == []
    assert during_fault >= 1
    assert recovery_s < RECOVERY_S
    assert extra_records == 0
    security_figures.add(
        "faults: redis killed",
        inputs=len(answers) + 1 + len(elsewhere),
        refused=refused + 1 + len(elsewhere),
        server_errors=len(undocumented(answers + elsewhere, {201, 503})),
        state_changes=extra_records,
        faults_survived=1,
        time_to_503_ms=ms(max(a.elapsed_s for a in arriving)),
        time_to_503_p50_ms=p50_ms([a.elapsed_s for a in arriving]),
        in_flight_503_max_ms=ms(max(a.elapsed_s for a in in_flight if a.status == 503)),
        readyz_503_ms=ms(unready.elapsed_s),
        recovery_ms=ms(recovery_s),
        live_roundtrips_during_fault=during_fault,
        live_roundtrip_max_ms=console.max_latency_ms(),
        answers_while_recovering=len(not_yet),
    )


async def test_slow_redis_answers_slower_or_503_within_the_timeout(
    redis_node: RedisProcess,
    make_settings: Callable[..., Settings],
    compute_url: str,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    servers = add_servers(console_proxy, "vm-slow", 8)
    proxy = LatencyProxy(redis_node.port)
    await proxy.start()
    try:
        settings = gateway_settings(make_settings, proxy.url, compute_url)
        async with served(settings) as gateway, contextlib.AsyncExitStack() as stack:
            console = await open_live_console(http, gateway, stack)
            fault_started = time.monotonic()
            proxy.delay_s = 0.2  # well under the timeout: slower, still served
            slower = list(
                await asyncio.gather(*(post_console(http, gateway, s) for s in servers[:4]))
            )
            proxy.delay_s = 2.0  # past the timeout: a clean 503, never a hang
            # More callers than the pool has connections: the rest queue, bounded too.
            crowd = [servers[4 + n % 4] for n in range(STUCK_CROWD)]
            stuck = list(await asyncio.gather(*(post_console(http, gateway, s) for s in crowd)))
            unready = await readiness(http, gateway)
            proxy.delay_s = 0.0
            fault_ended = time.monotonic()
            during_fault = console.trips_between(fault_started, fault_ended)
            recovery_s, not_yet = await until_ok(
                lambda: post_console(http, gateway, servers[0]), want=201
            )
            ready = await readiness(http, gateway)
            await console.stop()
        records = console_records(redis_node)
    finally:
        await proxy.close()

    answers = slower + stuck + not_yet
    extra_records = records - statuses(answers)[201] - 2  # the live console, the recovery's
    assert undocumented(answers, {201, 503}) == []
    assert all(a.code == "store_unavailable" for a in answers if a.status == 503)
    assert [a.status for a in slower] == [201] * len(slower)
    assert max(a.elapsed_s for a in slower) < 10.0  # slower, but served
    assert [a.status for a in stuck] == [503] * len(stuck)
    # Bounded by the timeout, not by the delay: at most a wait for a pooled connection
    # (redis.socket_timeout_s) plus one command's timeout, never the 2 s delay times N.
    assert max(a.elapsed_s for a in stuck) < 2 * REDIS_TIMEOUT_S + 2.0
    assert (unready.status, unready.code) == (503, "store_unavailable")
    assert unready.elapsed_s < FAST_S
    assert ready.status == 200
    assert console.failures == [] and during_fault >= 1
    assert recovery_s < RECOVERY_S
    assert extra_records == 0
    security_figures.add(
        "faults: redis slow",
        inputs=len(answers) + 1,
        refused=statuses(answers)[503] + 1,
        server_errors=len(undocumented(answers, {201, 503})),
        state_changes=extra_records,
        faults_survived=1,
        redis_timeout_ms=ms(REDIS_TIMEOUT_S),
        redis_connections_opened=proxy.connections,
        served_at_200ms_p50_ms=p50_ms([a.elapsed_s for a in slower]),
        served_at_200ms_max_ms=ms(max(a.elapsed_s for a in slower)),
        time_to_503_ms=ms(max(a.elapsed_s for a in stuck)),
        readyz_503_ms=ms(unready.elapsed_s),
        recovery_ms=ms(recovery_s),
        live_roundtrips_during_fault=during_fault,
        live_roundtrip_max_ms=console.max_latency_ms(),
        answers_while_recovering=len(not_yet),
    )


async def test_sentinel_failover_refuses_cleanly_and_heals_while_consoles_relay(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    compute_url: str,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    with sentinel_group(tmp_path / "sentinel") as group:
        settings = gateway_settings(make_settings, group.url, compute_url)
        async with served(settings) as gateway, contextlib.AsyncExitStack() as stack:
            console = await open_live_console(http, gateway, stack)
            old_master = group.master_port()
            fault_started = time.monotonic()
            failover = asyncio.ensure_future(asyncio.to_thread(group.fail_over))
            answers: list[Answer] = []
            while not failover.done():
                answers.append(await post_console(http, gateway))
                await asyncio.sleep(0.05)
            await failover
            promoted_s = time.monotonic() - fault_started
            waited_s, not_yet = await until_ok(lambda: post_console(http, gateway), want=201)
            recovery_s = time.monotonic() - fault_started
            during_fault = console.trips_between(fault_started, time.monotonic())
            answers += not_yet
            ready = await readiness(http, gateway)
            await console.stop()
        assert group.master_port() != old_master

    refused = [a for a in answers if a.status == 503]
    assert undocumented(answers, {201, 503}) == []
    assert all(a.code == "store_unavailable" for a in refused)
    assert refused, "requests during the failover reached a dead master and still succeeded?"
    assert max(a.elapsed_s for a in answers) < FAST_S
    assert ready.status == 200
    assert console.failures == [] and during_fault >= 1
    assert waited_s < RECOVERY_S
    security_figures.add(
        "faults: sentinel failover",
        inputs=len(answers),
        refused=len(refused),
        server_errors=len(undocumented(answers, {201, 503})),
        faults_survived=1,
        time_to_503_ms=ms(max(a.elapsed_s for a in refused)),
        time_to_503_p50_ms=p50_ms([a.elapsed_s for a in refused]),
        promotion_ms=ms(promoted_s),
        recovery_ms=ms(recovery_s),
        recovery_after_promotion_ms=ms(waited_s),
        live_roundtrips_during_fault=during_fault,
        live_roundtrip_max_ms=console.max_latency_ms(),
        answers_while_recovering=len(not_yet),
    )


UPSTREAM_TIMEOUT_S = 2.0
RETRIES = 2
CONCURRENT = 20


async def wave(
    http: aiohttp.ClientSession, gateways: list[RunningGateway], server: str, count: int
) -> list[Answer]:
    """`count` concurrent creations for one server, spread over the instances."""
    return list(
        await asyncio.gather(*(
            post_console(http, gateways[n % len(gateways)], server) for n in range(count)
        ))
    )  # fmt: skip


async def test_upstream_503_burst_is_retried_bounded_and_recovers(
    real_redis: aioredis.Redis,
    serve_gateway: GatewayServer,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    sim = console_proxy
    short, dropped, long, slow = add_servers(sim, "vm-503", 4)
    overrides = {"upstream": {"timeout_s": UPSTREAM_TIMEOUT_S, "retries": RETRIES,
                              "retry_backoff_s": 0.05}}  # fmt: skip
    gateway = await serve_gateway(real_redis, overrides)
    # A second instance on the same Redis: the single-flight lock spans instances.
    gateways = [gateway, await serve_gateway(real_redis, overrides)]
    async with contextlib.AsyncExitStack() as stack:
        console = await open_live_console(http, gateway, stack)
        fault_started = time.monotonic()

        # A burst shorter than the retries: the caller never notices.
        calls = sim.console_calls
        sim.faults.statuses = [503] * RETRIES
        ridden_out = [await post_console(http, gateway, short)]
        short_calls = sim.console_calls - calls
        calls = sim.console_calls
        sim.faults.drop_connections = RETRIES  # resets without an answer: retried the same
        ridden_out.append(await post_console(http, gateway, dropped))
        dropped_calls = sim.console_calls - calls

        # A burst that outlasts them: N concurrent callers, one flight, a bounded call count.
        sim.faults.statuses = [503] * 10_000
        calls = sim.console_calls
        first = await wave(http, gateways, long, CONCURRENT)
        first_calls = sim.console_calls - calls
        calls = sim.console_calls
        second = await wave(http, gateways, long, CONCURRENT)  # the failure is shared a moment
        second_calls = sim.console_calls - calls

        # Slow 503s: retries stop at the one deadline for the whole operation.
        sim.faults.delay_s = 0.8
        calls = sim.console_calls
        deadline = await post_console(http, gateway, slow)
        deadline_calls = sim.console_calls - calls

        sim.faults.statuses.clear()
        sim.faults.delay_s = 0.0
        cleared = time.monotonic()
        during_fault = console.trips_between(fault_started, cleared)
        # The freshest failure (slow's 504) is shared for cache.error_ttl_s, then retried.
        recovery_s, not_yet = await until_ok(lambda: post_console(http, gateway, slow), want=201)
        healed = await post_console(http, gateway, long)
        await console.stop()
    records = len(await real_redis.keys("*:console"))

    burst = first + second
    answers = [*ridden_out, *burst, deadline, *not_yet]
    assert healed.status == 201
    extra_records = records - statuses(answers)[201] - 3  # live console, recovery, `healed`
    assert [a.status for a in ridden_out] == [201, 201], ridden_out
    assert short_calls == dropped_calls == RETRIES + 1
    assert {(a.status, a.code) for a in burst} == {(502, "upstream_error")}
    assert 1 <= first_calls <= RETRIES + 1, first_calls  # not one call per caller
    assert second_calls <= RETRIES + 1, second_calls
    assert max(a.elapsed_s for a in burst) < FAST_S
    assert (deadline.status, deadline.code) == (504, "upstream_timeout")
    assert deadline.elapsed_s < UPSTREAM_TIMEOUT_S + FAST_S
    assert 2 <= deadline_calls <= RETRIES + 1  # it did retry, within the deadline
    assert all(a.status in (502, 504) for a in not_yet)
    assert console.failures == [] and during_fault >= 1
    assert recovery_s < RECOVERY_S
    assert extra_records == 0  # a refused creation leaves no console behind
    security_figures.add(
        "faults: upstream 503 burst",
        inputs=len(answers),
        refused=sum(1 for a in answers if a.status in (502, 504)),
        server_errors=len(undocumented(answers, {201, 502, 504})),
        state_changes=extra_records,
        faults_survived=1,
        concurrent_requests=CONCURRENT,
        upstream_calls_first_wave=first_calls,
        upstream_calls_second_wave=second_calls,
        upstream_calls_short_burst=short_calls,
        instances=len(gateways),
        time_to_502_ms=ms(max(a.elapsed_s for a in burst)),
        time_to_504_ms=ms(deadline.elapsed_s),
        upstream_timeout_ms=ms(UPSTREAM_TIMEOUT_S),
        recovery_ms=ms(recovery_s),
        live_roundtrips_during_fault=during_fault,
        live_roundtrip_max_ms=console.max_latency_ms(),
        answers_while_recovering=len(not_yet),
    )


async def test_redis_partition_mid_flight_leaves_no_lock_that_blocks_recovery(
    redis_node: RedisProcess,
    make_settings: Callable[..., Settings],
    compute_url: str,
    console_proxy: ComputeSimulator,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    """Bytes vanish (no reset) while flights hold their single-flight locks.

    The flights cannot release their locks, which stay in Redis for cache.lock_ttl_s; the
    first request for those servers once the network heals must not wait that out (it
    used to wait cache.lock_wait_s, 12 s, and get a 504).
    """
    servers = add_servers(console_proxy, "vm-partition", 4)
    proxy = LatencyProxy(redis_node.port)
    await proxy.start()
    try:
        settings = gateway_settings(make_settings, proxy.url, compute_url)
        async with served(settings) as gateway, contextlib.AsyncExitStack() as stack:
            console = await open_live_console(http, gateway, stack)
            console_proxy.faults.delay_s = 0.3  # the partition starts mid-fetch
            burst = [asyncio.ensure_future(post_console(http, gateway, s)) for s in servers * 2]
            await asyncio.sleep(0.15)
            fault_started = time.monotonic()
            proxy.partitioned = True
            cut_off = list(await asyncio.gather(*burst))
            unready = await readiness(http, gateway)
            console_proxy.faults.delay_s = 0.0
            proxy.partitioned = False
            healed = time.monotonic()
            during_fault = console.trips_between(fault_started, healed)
            after = [await post_console(http, gateway, s) for s in servers]
            recovery_s = time.monotonic() - healed
            await console.stop()
        with redis_node.client() as client:
            locks_left = len(client.keys("*:lock"))
        records = console_records(redis_node)
    finally:
        await proxy.close()

    answers = cut_off + after
    extra_records = records - statuses(answers)[201] - 1  # the live console's
    assert undocumented(answers, {201, 503}) == []
    assert {(a.status, a.code) for a in cut_off} == {(503, "store_unavailable")}
    assert max(a.elapsed_s for a in cut_off) < FAST_S
    assert (unready.status, unready.code) == (503, "store_unavailable")
    assert [a.status for a in after] == [201] * len(after), after
    assert max(a.elapsed_s for a in after) < FAST_S
    assert locks_left == 0
    assert extra_records == 0
    assert console.failures == [] and during_fault >= 1
    security_figures.add(
        "faults: redis slow",
        inputs=len(answers) + 1,
        refused=statuses(answers)[503] + 1,
        server_errors=len(undocumented(answers, {201, 503})),
        state_changes=extra_records,
        faults_survived=1,
        partition_time_to_503_ms=ms(max(a.elapsed_s for a in cut_off)),
        partition_first_request_after_ms=ms(max(a.elapsed_s for a in after)),
        partition_recovery_ms=ms(recovery_s),
        partition_live_roundtrips=during_fault,
    )


class LostSetReply(aioredis.Redis):
    """A real client on a real Redis whose next SET runs but whose reply never arrives."""

    lose_next_set = False

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        answer = await super().set(*args, **kwargs)
        if self.lose_next_set:
            self.lose_next_set = False
            raise RedisTimeoutError("Timeout reading from socket")  # as redis-py says it
        return answer


async def test_a_lock_taken_whose_reply_was_lost_does_not_block_the_next_burst(
    redis_server: str, real_redis: aioredis.Redis
) -> None:
    """SET NX ran on Redis but the gateway saw a timeout: the lock is still this flight's."""
    client = LostSetReply.from_url(redis_server)
    assert isinstance(client, LostSetReply)
    try:
        store = Store(client, KeySpace("lost:"), CacheSettings())
        key = store.keyspace.console_url(ConsoleTarget(PROJECT, "vm-lost-reply"))
        calls = 0

        async def fetch() -> Expiring:
            nonlocal calls
            calls += 1
            return Expiring(f"https://console.example/?n={calls}", time.time() + 600)

        client.lose_next_set = True
        with pytest.raises(StoreUnavailable):
            await store.single_flight(key, fetch, ttl_s=540, min_remaining_s=120)
        assert calls == 0
        assert await real_redis.exists(store.keyspace.lock_for(key)) == 1  # the orphan
        started = time.monotonic()
        value = await store.single_flight(key, fetch, ttl_s=540, min_remaining_s=120)
        assert time.monotonic() - started < FAST_S  # not lock_wait_s (12 s), then a 504
        assert (value.value, calls) == ("https://console.example/?n=1", 1)
        assert await real_redis.exists(store.keyspace.lock_for(key)) == 0
    finally:
        await client.aclose()
