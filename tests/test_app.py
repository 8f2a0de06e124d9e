"""Whole gateways on a real redis-server: single flight across instances, TTLs, no leaks."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.observability import short_hash
from gateway.simulator.state import ComputeSimulator
from tests.conftest import GatewayFactory
from tests.support import (
    MISSING_SERVER,
    PROJECT,
    SERVER,
    STOPPED_SERVER,
    UPSTREAM_TOKEN,
    bearer,
    mint_jwt,
    redis_keys,
)

Client = TestClient[web.Request, web.Application]
BODY = {"project_id": PROJECT, "server_id": SERVER}


@pytest.fixture
async def two_instances(
    make_gateway: GatewayFactory, redis_server: str, real_redis: aioredis.Redis
) -> list[Client]:
    """Two gateway apps, each with its own connection pool to the same real Redis."""
    clients = []
    for _ in range(2):
        pool: aioredis.Redis = aioredis.Redis.from_url(redis_server)
        clients.append(await make_gateway(pool))
    return clients


async def burst(clients: list[Client], body: dict[str, Any], n: int = 50) -> list[Any]:
    token = mint_jwt()

    async def one(i: int) -> tuple[int, Any]:
        response = await clients[i % len(clients)].post(
            "/v1/consoles", json=body, headers=bearer(token)
        )
        return response.status, await response.json()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_fifty_concurrent_requests_over_two_instances_make_one_upstream_call(
    two_instances: list[Client], simulator: ComputeSimulator
) -> None:
    simulator.faults.delay_s = 0.3  # keep the first call in flight while the rest arrive
    results = await burst(two_instances, BODY)
    assert [status for status, _ in results] == [201] * 50
    assert simulator.console_calls == 1
    assert len({body["console"]["id"] for _, body in results}) == 50


@pytest.mark.parametrize(("server", "status"), [(STOPPED_SERVER, 409), (MISSING_SERVER, 404)])
async def test_failing_upstream_gives_every_waiter_the_same_error_promptly(
    two_instances: list[Client], simulator: ComputeSimulator, server: str, status: int
) -> None:
    simulator.faults.delay_s = 0.3
    started = time.monotonic()
    results = await burst(two_instances, {**BODY, "server_id": server})
    elapsed = time.monotonic() - started
    assert {s for s, _ in results} == {status}
    assert len({body["error"]["message"] for _, body in results}) == 1
    assert simulator.console_calls == 1
    assert elapsed < 5  # well under cache.lock_wait_s (12 s)


async def test_cached_url_ttl_is_under_600_seconds(
    two_instances: list[Client], real_redis: aioredis.Redis
) -> None:
    response = await two_instances[0].post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 201
    keys = await redis_keys(real_redis, "*:url:*")
    [url_key] = [k for k in keys if not k.endswith(("lock", "err"))]
    ttl = await real_redis.ttl(url_key)
    assert 0 < ttl < 600
    assert ttl <= 540


async def test_console_created_on_one_instance_is_managed_on_the_other(
    two_instances: list[Client],
) -> None:
    first, second = two_instances
    response = await first.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    console_id = (await response.json())["console"]["id"]
    assert (
        await second.get(f"/v1/consoles/{console_id}", headers=bearer(mint_jwt()))
    ).status == 200
    assert (
        await second.delete(f"/v1/consoles/{console_id}", headers=bearer(mint_jwt()))
    ).status == 204
    assert (await first.get(f"/v1/consoles/{console_id}", headers=bearer(mint_jwt()))).status == 410


async def test_no_token_jwt_or_console_id_leaks_into_logs_or_responses(
    make_gateway: GatewayFactory,
    real_redis: aioredis.Redis,
    simulator: ComputeSimulator,
    captured_logs: io.StringIO,
) -> None:
    client = await make_gateway(real_redis)
    jwt_token = mint_jwt()
    seen: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        response = await client.request(method, path, **kwargs)
        seen.append(f"{response.status} {dict(response.headers)} {await response.text()}")
        return response

    auth = bearer(jwt_token)
    created = await call("POST", "/v1/consoles", json=BODY, headers=auth)
    console_id = (await created.json())["console"]["id"]
    await call("GET", f"/v1/consoles/{console_id}", headers=auth)
    nova = {"X-Auth-Token": jwt_token, "OpenStack-API-Version": "compute 2.6"}
    body = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
    await call("POST", f"/v2.1/{PROJECT}/servers/{SERVER}/remote-consoles", json=body, headers=nova)
    simulator.faults.console_host = "evil.example.net"
    simulator.add_server(PROJECT, "second-server")
    foreign = {**BODY, "server_id": "second-server"}
    await call("POST", "/v1/consoles", json=foreign, headers=auth)  # 502: URL on a foreign host
    simulator.faults.console_host = None
    simulator.faults.garbage_body = True
    simulator.add_server(PROJECT, "third-server")
    await call("POST", "/v1/consoles", json={**BODY, "server_id": "third-server"}, headers=auth)
    await call("POST", "/v1/consoles", json=BODY, headers=bearer(jwt_token + "x"))
    await call("DELETE", f"/v1/consoles/{console_id}", headers=auth)
    await call("GET", f"/v1/consoles/{console_id}", headers=auth)

    logs = captured_logs.getvalue()
    assert '"path": "/v1/consoles", "status": 201' in logs  # the access log was captured
    secrets = [UPSTREAM_TOKEN, jwt_token, *simulator.console_tokens]
    assert len(simulator.console_tokens) >= 2
    for secret in secrets:
        assert secret not in logs
        assert not any(secret in text for text in seen)
    assert console_id not in logs
    assert short_hash(console_id) in logs  # ...as a short hash
    assert [text.split(" ")[0] for text in seen] == [
        "201",
        "200",
        "200",
        "502",
        "502",
        "401",
        "204",
        "410",
    ]


async def test_keystone_token_is_shared_by_instances_and_renewed_once_on_401(
    make_gateway: GatewayFactory,
    redis_server: str,
    real_redis: aioredis.Redis,
    simulator: ComputeSimulator,
    compute_url: str,
) -> None:
    simulator.keystone_users["svc-console"] = "keystone-password-SECRET"
    keystone = {
        "auth_url": f"{compute_url}/identity/v3",
        "username": "svc-console",
        "password": "keystone-password-SECRET",
        "project_id": "service-project",
    }
    overrides = {"upstream": {"token": "", "keystone": keystone}}
    first, second = [
        await make_gateway(aioredis.Redis.from_url(redis_server), overrides) for _ in range(2)
    ]
    body = {**BODY, "server_id": SERVER}
    for client in (first, second):
        response = await client.post("/v1/consoles", json=body, headers=bearer(mint_jwt()))
        assert response.status == 201
        await real_redis.delete(*await redis_keys(real_redis, "*:url:*"))  # force upstream calls
    assert simulator.keystone_calls == 1  # the second instance used the token from Redis
    assert simulator.console_calls == 2

    simulator.revoke_keystone_tokens()  # the cloud forgets the token before it expires
    response = await second.post("/v1/consoles", json=body, headers=bearer(mint_jwt()))
    assert response.status == 201
    assert simulator.keystone_calls == 2
    assert simulator.console_calls == 4  # one refused with 401, one retried with the new token


async def test_keystone_refusing_the_gateway_is_502(
    make_gateway: GatewayFactory, real_redis: aioredis.Redis, compute_url: str
) -> None:
    keystone = {
        "auth_url": f"{compute_url}/identity/v3",
        "username": "nobody",
        "password": "wrong",
        "project_id": "service-project",
    }
    client = await make_gateway(real_redis, {"upstream": {"token": "", "keystone": keystone}})
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 502
    assert "wrong" not in await response.text()


async def test_embedded_store_warns_and_serves(
    make_settings: Callable[..., Settings],
    compute_url: str,
    captured_logs: io.StringIO,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    settings = make_settings({"upstream": {"compute_url": compute_url}, "redis": {"url": ""}})
    client = await aiohttp_client(create_app(settings))
    assert "embedded in-process store" in captured_logs.getvalue()
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 201
    assert (await client.get("/readyz")).status == 200


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip", "x-unknown"])
async def test_any_content_encoding_is_a_json_415_not_aiohttps_plain_400(
    make_gateway: GatewayFactory,
    real_redis: aioredis.Redis,
    simulator: ComputeSimulator,
    encoding: str,
) -> None:
    """Found by tests/adversarial/test_fuzz.py: `br` got aiohttp's text/plain 400."""
    client = await make_gateway(real_redis)
    headers = {**bearer(mint_jwt()), "Content-Type": "application/json"}
    response = await client.post(
        "/v1/consoles",
        data=b"\x8b\x00\x80garbage",
        headers={**headers, "Content-Encoding": encoding},
    )
    assert response.status == 415
    error = (await response.json())["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert await redis_keys(real_redis) == []
    assert simulator.console_calls == 0
