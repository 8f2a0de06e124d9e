"""Two served instances on one real Redis: limits, live counts, audit trail and metrics."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.simulator.state import ComputeSimulator
from tests.conftest import GatewayServer, RunningGateway
from tests.rfb_support import ws_rfb_client
from tests.support import PROJECT, SERVER, UPSTREAM_TOKEN, bearer, mint_jwt

PORTAL = {"Origin": "https://portal.example.com"}
BODY = {"project_id": PROJECT, "server_id": SERVER}
LIMITS = {"limits": {"create_per_window": 3, "create_window_s": 60, "ws_per_console": 1}}


async def two_gateways(
    serve_gateway: GatewayServer, redis_server: str, overrides: dict[str, Any]
) -> list[RunningGateway]:
    return [await serve_gateway(aioredis.Redis.from_url(redis_server), overrides) for _ in range(2)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def metrics_of(http: aiohttp.ClientSession, gateway: RunningGateway) -> dict[Any, float]:
    async with http.get(f"{gateway.url}/metrics") as response:
        assert response.status == 200
        return samples(await response.text())


async def test_creation_rate_limit_is_shared_by_instances(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    redis_server: str,
    real_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    first, second = await two_gateways(serve_gateway, redis_server, LIMITS)
    statuses = []
    for gateway in (first, second, first, second):
        async with http.post(
            f"{gateway.url}/v1/consoles", json=BODY, headers=bearer(mint_jwt())
        ) as response:
            statuses.append(response.status)
            last = response
            body = await response.json()
    assert statuses == [201, 201, 201, 429]
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(last.headers["Retry-After"]) <= 60
    other_user = bearer(mint_jwt(sub="bob"))
    async with http.post(f"{first.url}/v1/consoles", json=BODY, headers=other_user) as response:
        assert response.status == 201  # the limit is per subject
    limited = await metrics_of(http, second)
    assert limited[("cgw_rate_limited_total", (("limit", "create"),))] == 1


async def test_connection_limit_and_live_count_span_instances(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    redis_server: str,
    real_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    first, second = await two_gateways(serve_gateway, redis_server, LIMITS)
    console_id = await first.new_console(http)
    ws = await http.ws_connect(first.ws_url(console_id), headers=PORTAL)
    await ws_rfb_client(ws).handshake()
    refused = await http.ws_connect(second.ws_url(console_id), headers=PORTAL)
    message = await refused.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert message.data == 1013  # try again later
    async with http.get(
        f"{second.url}/v1/consoles/{console_id}", headers=bearer(mint_jwt())
    ) as response:
        assert (await response.json())["console"]["live_connections"] == 1
    limited = await metrics_of(http, second)
    assert limited[("cgw_rate_limited_total", (("limit", "ws_console"),))] == 1
    await ws.close()
    for _ in range(100):  # the lease is released once the relay has ended
        async with http.get(
            f"{second.url}/v1/consoles/{console_id}", headers=bearer(mint_jwt())
        ) as response:
            if (await response.json())["console"]["live_connections"] == 0:
                break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the connection lease was not released")


def audit_events(logs: str) -> dict[str, list[dict[str, Any]]]:
    events: dict[str, list[dict[str, Any]]] = {}
    for line in logs.splitlines():
        entry = json.loads(line)
        if entry["logger"] == "gateway.audit":
            events.setdefault(entry["event"], []).append(entry)
    return events


async def test_audit_trail_metrics_and_no_secrets(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
    captured_logs: io.StringIO,
) -> None:
    gateway = await serve_gateway(real_redis)
    before = await metrics_of(http, gateway)
    jwt = mint_jwt()
    console_id = await gateway.new_console(http)
    ws = await http.ws_connect(gateway.ws_url(console_id), headers=PORTAL)
    rfb = ws_rfb_client(ws)
    init = await rfb.handshake()
    await rfb.request_update(False, 0, 0, init.width, init.height)
    await rfb.read_update()
    async with http.delete(f"{gateway.url}/v1/consoles/{console_id}", headers=bearer(jwt)):
        pass
    closing = await ws.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == 4410
    async with http.post(f"{gateway.url}/v1/consoles", json=BODY, headers=bearer("x.y.z")):
        pass
    for _ in range(100):
        if "console_disconnected" in captured_logs.getvalue():
            break
        await asyncio.sleep(0.02)
    after = await metrics_of(http, gateway)

    logs = captured_logs.getvalue()
    events = audit_events(logs)
    assert set(events) >= {
        "console_created", "console_connected", "console_disconnected", "console_revoked",
        "auth_denied",
    }  # fmt: skip
    [created] = events["console_created"]
    assert created["subject"] == "alice" and created["server_id"] == SERVER
    assert created["console"].startswith("#") and created["client"] == "127.0.0.1"
    [gone] = events["console_disconnected"]
    assert gone["bytes_to_client"] > init.width * init.height * 4
    assert gone["close_code"] == 4410 and gone["duration_s"] >= 0
    assert events["auth_denied"][0]["status"] == 401
    assert all(event["request_id"] not in ("", "-") for e in events.values() for event in e)
    for secret in (jwt, console_id, UPSTREAM_TOKEN, *console_proxy.console_tokens):
        assert secret not in logs

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("cgw_consoles_created_total") == 1
    assert moved("cgw_consoles_revoked_total") == 1
    assert moved("cgw_upstream_calls_total", outcome="ok") == 1
    assert moved("cgw_relayed_bytes_total", direction="to_client") > init.width * init.height
    assert moved("cgw_auth_denials_total", reason="malformed") == 1
    route = "/v1/consoles"
    assert moved("cgw_http_requests_total", route=route, method="POST", status="201") == 1
    assert after[("cgw_websockets_live", ())] == 0
    assert not any(console_id in str(labels) for _, labels in after)
