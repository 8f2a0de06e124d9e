"""The native API end to end: simulator upstream, fake Redis, real HTTP over loopback."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.simulator.state import ComputeSimulator
from tests.conftest import GatewayFactory
from tests.support import (
    MISSING_SERVER,
    OTHER_PROJECT,
    PROJECT,
    SERVER,
    STOPPED_SERVER,
    FakeClock,
    bearer,
    free_port,
    mint_jwt,
    redis_keys,
)

Client = TestClient[web.Request, web.Application]
BODY = {"project_id": PROJECT, "server_id": SERVER}


@pytest.fixture
async def client(make_gateway: GatewayFactory, fake_redis: aioredis.Redis) -> Client:
    return await make_gateway(fake_redis)


async def create(client: Client, token: str | None = None, body: Any = BODY) -> dict[str, Any]:
    response = await client.post("/v1/consoles", json=body, headers=bearer(token or mint_jwt()))
    assert response.status == 201, await response.text()
    data: dict[str, dict[str, Any]] = await response.json()
    return data["console"]


async def redis_snapshot(redis: aioredis.Redis) -> dict[str, Any]:
    return {key: await redis.dump(key) for key in await redis_keys(redis)}


async def test_create_returns_a_gateway_link(
    client: Client, simulator: ComputeSimulator, fake_redis: aioredis.Redis
) -> None:
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    console = (await response.json())["console"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", console["id"])
    assert console["url"] == f"https://gw.example.com/console/{console['id']}"
    assert console["websocket_url"] == f"wss://gw.example.com/ws/{console['id']}"
    assert (console["type"], console["protocol"]) == ("novnc", "vnc")
    assert (console["project_id"], console["server_id"]) == (PROJECT, SERVER)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", console["expires_at"])
    assert simulator.console_calls == 1
    text = await response.text()
    assert all(token not in text for token in simulator.console_tokens)
    # Only the hash of the id is stored.
    keys = await redis_keys(fake_redis)
    digest = hashlib.sha256(console["id"].encode()).hexdigest()
    assert any(digest in key for key in keys)
    assert not any(console["id"] in key for key in keys)


async def test_defaults_type_and_protocol_and_accepts_them_explicitly(client: Client) -> None:
    console = await create(client, body={**BODY, "type": "novnc", "protocol": "vnc"})
    assert console["type"] == "novnc"


async def test_burst_on_one_instance_is_one_upstream_call(
    client: Client, simulator: ComputeSimulator
) -> None:
    first = await create(client)
    second = await create(client)
    assert first["id"] != second["id"]
    assert simulator.console_calls == 1


async def test_public_link_ignores_host_header(client: Client) -> None:
    headers = {
        **bearer(mint_jwt()),
        "Host": "evil.example.net",
        "X-Forwarded-Host": "evil.example.net",
    }
    response = await client.post("/v1/consoles", json=BODY, headers=headers)
    console = (await response.json())["console"]
    assert console["url"].startswith("https://gw.example.com/")


async def test_get_console_by_owner_and_admin(client: Client) -> None:
    console = await create(client)
    own = await client.get(f"/v1/consoles/{console['id']}", headers=bearer(mint_jwt()))
    assert own.status == 200
    state = (await own.json())["console"]
    assert state["owner"] == "alice" and state["server_id"] == SERVER
    assert state["status"] == "active"
    admin = mint_jwt(sub="root", projects=[], roles=["console-admin"])
    assert (await client.get(f"/v1/consoles/{console['id']}", headers=bearer(admin))).status == 200


async def test_other_user_may_neither_read_nor_revoke(client: Client) -> None:
    console = await create(client)
    mallory = bearer(mint_jwt(sub="mallory"))
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/v1/consoles/{console['id']}", headers=mallory)
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    still = await client.get(f"/v1/consoles/{console['id']}", headers=bearer(mint_jwt()))
    assert still.status == 200


async def test_revoke_then_gone(client: Client) -> None:
    console = await create(client)
    url = f"/v1/consoles/{console['id']}"
    assert (await client.delete(url, headers=bearer(mint_jwt()))).status == 204
    gone = await client.get(url, headers=bearer(mint_jwt()))
    assert gone.status == 410
    assert (await gone.json())["error"]["code"] == "console_gone"
    assert (await client.delete(url, headers=bearer(mint_jwt()))).status == 204


async def test_expired_console_is_gone_then_unknown(
    make_gateway: GatewayFactory, fake_redis: aioredis.Redis
) -> None:
    clock = FakeClock()
    client = await make_gateway(fake_redis, clock=clock)
    console = await create(client)
    clock.now += 901
    response = await client.get(f"/v1/consoles/{console['id']}", headers=bearer(mint_jwt()))
    assert response.status == 410
    assert "expired" in (await response.json())["error"]["message"]


@pytest.mark.parametrize("console_id", ["x" * 43, "short", "a" * 44, "%2e%2e", "A" * 42 + "!"])
async def test_unknown_or_malformed_console_id_is_404(client: Client, console_id: str) -> None:
    response = await client.get(f"/v1/consoles/{console_id}", headers=bearer(mint_jwt()))
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_request_id_is_echoed_or_made(client: Client) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "req-123"})
    assert given.headers["X-Request-ID"] == "req-123"
    insane = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["X-Request-ID"])
    error = await client.post("/v1/consoles", json=BODY)
    assert (await error.json())["error"]["request_id"] == error.headers["X-Request-ID"]


async def test_unknown_route_and_method_answer_json(client: Client) -> None:
    missing = await client.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    wrong = await client.put("/v1/consoles", headers=bearer(mint_jwt()))
    assert wrong.status == 405
    assert (await wrong.json())["error"]["code"] == "method_not_allowed"


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_unreachable_redis_is_503_and_unready(
    make_gateway: GatewayFactory, simulator: ComputeSimulator
) -> None:

    dead = aioredis.Redis(port=free_port(), socket_timeout=0.5, socket_connect_timeout=0.5)
    client = await make_gateway(dead)
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "store_unavailable"
    assert simulator.console_calls == 0
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["reason"] == "store_unavailable"
    await dead.aclose()


EXPIRED = mint_jwt(exp=1_000_000_000, iat=999_999_000)


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, BODY, 401, "invalid_token"),
        (bearer("garbage"), BODY, 401, "invalid_token"),
        (bearer(EXPIRED), BODY, 401, "invalid_token"),
        (bearer(mint_jwt(aud="other")), BODY, 401, "invalid_token"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, BODY, 401, "invalid_token"),
        ({"X-Auth-Token": mint_jwt()}, BODY, 401, "invalid_token"),  # only the Nova route takes it
        (bearer(mint_jwt(projects=[OTHER_PROJECT])), BODY, 403, "forbidden"),
        (bearer(mint_jwt()), {**BODY, "project_id": OTHER_PROJECT}, 403, "forbidden"),
        (bearer(mint_jwt()), {**BODY, "server_id": "../../x"}, 400, "invalid_request"),
        (bearer(mint_jwt()), {**BODY, "server_id": "a" * 65}, 400, "invalid_request"),
        (bearer(mint_jwt()), {**BODY, "server_id": ""}, 400, "invalid_request"),
        (bearer(mint_jwt()), {**BODY, "server_id": 7}, 400, "invalid_request"),
        (bearer(mint_jwt()), {"project_id": PROJECT}, 400, "invalid_request"),
        (bearer(mint_jwt()), {**BODY, "type": "spice-html5"}, 400, "invalid_request"),
        (bearer(mint_jwt()), {**BODY, "protocol": "rdp"}, 400, "invalid_request"),
        (bearer(mint_jwt()), {**BODY, "extra": 1}, 400, "invalid_request"),
        (bearer(mint_jwt()), [BODY], 400, "invalid_request"),
    ],
)
async def test_refused_requests_change_nothing(
    client: Client,
    simulator: ComputeSimulator,
    fake_redis: aioredis.Redis,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: str,
) -> None:
    before = await redis_snapshot(fake_redis)
    response = await client.post("/v1/consoles", json=body, headers=headers)
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert simulator.console_calls == 0
    assert await redis_snapshot(fake_redis) == before


async def test_401_carries_rfc6750_challenge(client: Client) -> None:
    missing = await client.post("/v1/consoles", json=BODY)
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in missing.headers["WWW-Authenticate"]
    invalid = await client.post("/v1/consoles", json=BODY, headers=bearer("x.y.z"))
    assert 'error="invalid_token"' in invalid.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("data", "headers", "status", "code"),
    [
        (b"{bad json", {"Content-Type": "application/json"}, 400, "invalid_request"),
        (
            b"[" * 50_000 + b"]" * 50_000,
            {"Content-Type": "application/json"},
            413,
            "payload_too_large",
        ),
        (b"[" * 5_000 + b"]" * 5_000, {"Content-Type": "application/json"}, 400, "invalid_request"),
        (
            b'{"a": "' + b"x" * 20_000 + b'"}',
            {"Content-Type": "application/json"},
            413,
            "payload_too_large",
        ),
        (
            b"project_id=x",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (
            b"\x1f\x8b\x08\x00",
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            415,
            "unsupported_media_type",
        ),
        (
            b"{}",
            {"Content-Type": "application/json", "Content-Encoding": "x-unknown"},
            415,
            "unsupported_media_type",
        ),
    ],
)
async def test_bad_bodies_change_nothing(
    client: Client,
    simulator: ComputeSimulator,
    fake_redis: aioredis.Redis,
    data: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    before = await redis_snapshot(fake_redis)
    response = await client.post(
        "/v1/consoles", data=data, headers={**bearer(mint_jwt()), **headers}
    )
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert simulator.console_calls == 0
    assert await redis_snapshot(fake_redis) == before


async def test_chunked_oversize_body_is_413(client: Client) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b" " * 1024

    response = await client.post(
        "/v1/consoles",
        data=chunks(),
        headers={**bearer(mint_jwt()), "Content-Type": "application/json"},
    )
    assert response.status == 413


@pytest.mark.parametrize(
    ("server_id", "status", "code"),
    [(MISSING_SERVER, 404, "not_found"), (STOPPED_SERVER, 409, "conflict")],
)
async def test_upstream_refusals_create_no_console(
    client: Client, fake_redis: aioredis.Redis, server_id: str, status: int, code: str
) -> None:
    response = await client.post(
        "/v1/consoles", json={**BODY, "server_id": server_id}, headers=bearer(mint_jwt())
    )
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert await redis_keys(fake_redis, "*console*") == []


async def test_garbage_upstream_is_502(
    client: Client, simulator: ComputeSimulator, fake_redis: aioredis.Redis
) -> None:
    simulator.faults.garbage_body = True
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 502
    body = await response.json()
    assert body["error"]["code"] == "upstream_error"
    assert "Traceback" not in await response.text()
    assert await redis_keys(fake_redis, "*console*") == []


async def test_console_on_foreign_host_is_502(client: Client, simulator: ComputeSimulator) -> None:
    simulator.faults.console_host = "evil.example.net"
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 502
    assert "evil" not in await response.text()


async def test_slow_upstream_is_504(
    make_gateway: GatewayFactory, fake_redis: aioredis.Redis, simulator: ComputeSimulator
) -> None:
    client = await make_gateway(fake_redis, {"upstream": {"timeout_s": 0.5}})
    simulator.faults.delay_s = 3
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "upstream_timeout"
    assert await redis_keys(fake_redis, "*console*") == []


async def test_upstream_503_burst_is_retried(client: Client, simulator: ComputeSimulator) -> None:
    simulator.faults.statuses = [503, 503]
    await create(client)
    assert simulator.console_calls == 3
