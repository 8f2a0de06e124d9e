"""GatewayMetrics and the store and compute-client hooks, read back as Prometheus text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import fakeredis
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway import errors
from gateway.config import CacheSettings, UpstreamSettings
from gateway.metrics import GatewayMetrics, method_label
from gateway.models import ConsoleTarget, Expiring
from gateway.relay import RelayResult
from gateway.simulator.state import ComputeSimulator
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store, cache_name
from gateway.upstream.client import ComputeClient
from gateway.upstream.credentials import StaticToken
from gateway.upstream.http import create_http_session
from tests.support import MISSING_SERVER, PROJECT, SERVER, UPSTREAM_TOKEN

Labels = tuple[tuple[str, str], ...]
TARGET = ConsoleTarget(PROJECT, SERVER)


def samples(metrics: GatewayMetrics) -> dict[tuple[str, Labels], float]:
    """Every sample of the rendered text, parsed as Prometheus would."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def result(**overrides: Any) -> RelayResult:
    base = RelayResult(
        bytes_to_client=5000, bytes_to_upstream=70, close_code=1000, closed_by="client",
        duration_s=42.0,
    )  # fmt: skip
    return replace(base, **overrides)


# Each action, the sample it must move, and by how much.
ACTIONS: list[tuple[Callable[[GatewayMetrics], object], str, dict[str, str], float]] = [
    (lambda m: m.request("/v1/consoles", "POST", 201, 0.02), "cgw_http_requests_total",
     {"route": "/v1/consoles", "method": "POST", "status": "201"}, 1),
    (lambda m: m.request("/v1/consoles", "POST", 201, 0.02),
     "cgw_http_request_duration_seconds_count", {"route": "/v1/consoles", "method": "POST"}, 1),
    (lambda m: m.request("/ws/{console_id}", "GET", 101, None),
     "cgw_http_request_duration_seconds_count", {"route": "/ws/{console_id}", "method": "GET"}, 0),
    (lambda m: m.request("unmatched", "BREW", 405, 0.001), "cgw_http_requests_total",
     {"route": "unmatched", "method": "other", "status": "405"}, 1),
    (lambda m: m.upstream_call("ok", 0.3), "cgw_upstream_calls_total", {"outcome": "ok"}, 1),
    (lambda m: m.upstream_call("timeout", 5.0), "cgw_upstream_call_duration_seconds_sum",
     {"outcome": "timeout"}, 5.0),
    (lambda m: m.upstream_retry(), "cgw_upstream_calls_total", {"outcome": "retry"}, 1),
    (lambda m: m.cache_lookup("console_url", "hit"), "cgw_cache_lookups_total",
     {"cache": "console_url", "result": "hit"}, 1),
    (lambda m: m.single_flight_wait("shared"), "cgw_single_flight_waits_total",
     {"scope": "shared"}, 1),
    (lambda m: m.redis_error("ConnectionError"), "cgw_redis_errors_total",
     {"kind": "ConnectionError"}, 1),
    (lambda m: m.session_ended(result()), "cgw_relayed_bytes_total", {"direction": "to_client"},
     5000),
    (lambda m: m.session_ended(result()), "cgw_relayed_bytes_total",
     {"direction": "to_upstream"}, 70),
    (lambda m: m.session_ended(result(closed_by="idle")), "cgw_session_duration_seconds_sum",
     {"closed_by": "idle"}, 42.0),
    (lambda m: m.console_created(), "cgw_consoles_created_total", {}, 1),
    (lambda m: m.console_revoked(), "cgw_consoles_revoked_total", {}, 1),
    (lambda m: m.auth_denied("expired"), "cgw_auth_denials_total", {"reason": "expired"}, 1),
    (lambda m: m.rate_limited("ws_subject"), "cgw_rate_limited_total", {"limit": "ws_subject"}, 1),
]  # fmt: skip


@pytest.mark.parametrize(("act", "name", "labels", "delta"), ACTIONS)
def test_each_recorder_moves_its_sample(
    act: Callable[[GatewayMetrics], object], name: str, labels: dict[str, str], delta: float
) -> None:
    metrics = GatewayMetrics(process_metrics=False)
    before = value(metrics, name, **labels)
    act(metrics)
    assert value(metrics, name, **labels) - before == pytest.approx(delta)


def test_known_series_exist_before_anything_happens() -> None:
    found = samples(GatewayMetrics(process_metrics=False))
    assert found[("cgw_cache_lookups_total", (("cache", "console_url"), ("result", "miss")))] == 0
    assert found[("cgw_websockets_live", ())] == 0
    assert found[("cgw_rate_limited_total", (("limit", "create"),))] == 0


def test_apps_in_one_process_have_separate_registries() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()  # would raise on a shared registry
    first.console_created()
    assert value(first, "cgw_consoles_created_total") == 1
    assert value(second, "cgw_consoles_created_total") == 0
    assert value(first, "process_open_fds") > 0


def test_live_websocket_gauge_returns_to_zero_even_on_error() -> None:
    metrics = GatewayMetrics(process_metrics=False)
    with metrics.live_websocket(), metrics.live_websocket():
        assert value(metrics, "cgw_websockets_live") == 2
    with pytest.raises(RuntimeError), metrics.live_websocket():
        raise RuntimeError("relay failed")
    assert value(metrics, "cgw_websockets_live") == 0


@pytest.mark.parametrize(
    ("method", "label"), [("GET", "GET"), ("DELETE", "DELETE"), ("BREW", "other"), ("get", "other")]
)
def test_method_label_is_a_closed_set(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("cgw:{t:p/s}:url:novnc:vnc", "console_url"),
        (KeySpace("cgw:").console_url(TARGET), "console_url"),
        (KeySpace("cgw:").keystone_token("https://ks", "u", "p"), "keystone_token"),
        ("cgw:{x}:something", "other"),
    ],
)
def test_cache_name(key: str, name: str) -> None:
    assert cache_name(key) == name


# --- store hooks ---------------------------------------------------------------------------


class Fetch:
    """A fetch() that holds until released, so callers can pile up behind it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Expiring:
        self.calls += 1
        await self.release.wait()
        return Expiring("https://console.example/?token=t", 4_000_000_000.0)


def make_store(client: aioredis.Redis, metrics: GatewayMetrics) -> Store:
    return Store(client, KeySpace("test:"), CacheSettings(), metrics=metrics)


async def flight(store: Store, fetch: Fetch) -> Expiring:
    key = store.keyspace.console_url(TARGET)
    return await store.single_flight(key, fetch, ttl_s=540, min_remaining_s=120)


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 5 s")


def lookups(metrics: GatewayMetrics, result: str) -> float:
    return value(metrics, "cgw_cache_lookups_total", cache="console_url", result=result)


async def test_store_counts_misses_local_waits_then_hits(fake_redis: aioredis.Redis) -> None:
    metrics = GatewayMetrics(process_metrics=False)
    store, fetch = make_store(fake_redis, metrics), Fetch()
    callers = [asyncio.ensure_future(flight(store, fetch)) for _ in range(3)]
    await wait_until(lambda: fetch.calls == 1 and lookups(metrics, "miss") == 3)
    fetch.release.set()
    await asyncio.gather(*callers)
    assert value(metrics, "cgw_single_flight_waits_total", scope="local") == 2
    assert lookups(metrics, "hit") == 0
    await flight(store, fetch)
    assert lookups(metrics, "hit") == 1 and fetch.calls == 1


async def test_store_counts_a_wait_on_another_instances_lock() -> None:
    server = fakeredis.FakeServer()
    clients = [fakeredis.FakeAsyncRedis(server=server) for _ in range(2)]
    holder_metrics, waiter_metrics = GatewayMetrics(process_metrics=False), GatewayMetrics()
    fetch = Fetch()
    try:
        holder = asyncio.ensure_future(flight(make_store(clients[0], holder_metrics), fetch))
        await wait_until(lambda: fetch.calls == 1)
        waiter = asyncio.ensure_future(flight(make_store(clients[1], waiter_metrics), fetch))
        await wait_until(
            lambda: value(waiter_metrics, "cgw_single_flight_waits_total", scope="shared") == 1
        )
        fetch.release.set()
        assert await waiter == await holder
    finally:
        for client in clients:
            await client.aclose()
    assert value(holder_metrics, "cgw_single_flight_waits_total", scope="shared") == 0
    assert fetch.calls == 1


async def test_store_counts_redis_errors() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    metrics = GatewayMetrics(process_metrics=False)
    server.connected = False  # every command now fails with a ConnectionError
    try:
        with pytest.raises(errors.StoreUnavailable):
            await make_store(client, metrics).ping()
    finally:
        await client.aclose()
    assert value(metrics, "cgw_redis_errors_total", kind="ConnectionError") == 1


async def test_store_without_metrics_still_works(fake_redis: aioredis.Redis) -> None:
    store, fetch = Store(fake_redis, KeySpace("test:"), CacheSettings()), Fetch()
    fetch.release.set()
    assert (await flight(store, fetch)).value.startswith("https://")


# --- compute client hooks ------------------------------------------------------------------


@pytest.fixture
async def compute(compute_url: str) -> AsyncIterator[Callable[..., ComputeClient]]:
    sessions: list[aiohttp.ClientSession] = []

    async def no_sleep(_: float) -> None:
        return None

    def make(metrics: GatewayMetrics, **overrides: Any) -> ComputeClient:
        values: dict[str, Any] = {
            "compute_url": compute_url, "token": UPSTREAM_TOKEN, "console_hosts": ["127.0.0.1"],
            "retries": 2, "retry_backoff_s": 0.01, "timeout_s": 5, **overrides,
        }  # fmt: skip
        settings = UpstreamSettings.model_validate(values)
        sessions.append(create_http_session(settings))
        return ComputeClient(
            settings, sessions[-1], StaticToken(UPSTREAM_TOKEN), sleep=no_sleep, metrics=metrics
        )

    yield make
    for session in sessions:
        await session.close()


def calls(metrics: GatewayMetrics, outcome: str) -> float:
    return value(metrics, "cgw_upstream_calls_total", outcome=outcome)


async def test_client_counts_success_and_latency(
    compute: Callable[..., ComputeClient],
) -> None:
    metrics = GatewayMetrics(process_metrics=False)
    await compute(metrics).create_remote_console(TARGET)
    assert calls(metrics, "ok") == 1
    assert value(metrics, "cgw_upstream_call_duration_seconds_count", outcome="ok") == 1
    assert value(metrics, "cgw_upstream_call_duration_seconds_sum", outcome="ok") > 0


async def test_client_counts_retries_and_the_final_outcome(
    compute: Callable[..., ComputeClient], simulator: ComputeSimulator
) -> None:
    metrics = GatewayMetrics(process_metrics=False)
    simulator.faults.statuses = [503, 502]
    await compute(metrics).create_remote_console(TARGET)
    assert (calls(metrics, "retry"), calls(metrics, "ok")) == (2, 1)
    with pytest.raises(errors.NotFound):
        await compute(metrics).create_remote_console(ConsoleTarget(PROJECT, MISSING_SERVER))
    assert calls(metrics, "not_found") == 1


async def test_client_counts_a_timeout(
    compute: Callable[..., ComputeClient], simulator: ComputeSimulator
) -> None:
    metrics = GatewayMetrics(process_metrics=False)
    simulator.faults.delay_s = 5
    with pytest.raises(errors.UpstreamTimeout):
        await compute(metrics, timeout_s=0.2).create_remote_console(TARGET)
    assert calls(metrics, "timeout") == 1 and calls(metrics, "ok") == 0
