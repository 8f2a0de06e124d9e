"""GET /ws/{id} through a served gateway to the simulated nova-novncproxy, over loopback."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.simulator.state import ComputeSimulator
from tests.conftest import GatewayServer, RunningGateway
from tests.rfb_support import ws_rfb_client
from tests.support import (
    PROJECT,
    SERVER,
    UPSTREAM_TOKEN,
    FakeClock,
    bearer,
    mint_jwt,
    redis_keys,
)

PORTAL = {"Origin": "https://portal.example.com"}
BODY = {"project_id": PROJECT, "server_id": SERVER}


@pytest.fixture
async def gateway(
    serve_gateway: GatewayServer, fake_redis: aioredis.Redis, console_proxy: ComputeSimulator
) -> RunningGateway:
    return await serve_gateway(fake_redis)


async def open_console(
    http: aiohttp.ClientSession, url: str, **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    ws: aiohttp.ClientWebSocketResponse = await http.ws_connect(
        url, headers=kwargs.pop("headers", PORTAL), **kwargs
    )
    return ws


async def test_rfb_reaches_the_browser_through_the_gateway(
    http: aiohttp.ClientSession, gateway: RunningGateway, console_proxy: ComputeSimulator
) -> None:
    console_id = await gateway.new_console(http)
    ws = await open_console(http, gateway.ws_url(console_id))
    rfb = ws_rfb_client(ws)
    init = await rfb.handshake()
    await rfb.request_update(False, 0, 0, init.width, init.height)
    [(rect, pixels)] = await rfb.read_update()
    assert rect == (0, 0, init.width, init.height)
    assert len(pixels) == init.width * init.height * 4
    await ws.close()
    proxy = console_proxy.console_proxy
    # The upstream saw the Origin it expects (its own), never the portal's.
    assert proxy.origins == [console_proxy.console_base_url]
    assert proxy.subprotocols == ["binary"]


async def test_subprotocol_is_echoed_only_when_asked(
    http: aiohttp.ClientSession, gateway: RunningGateway
) -> None:
    console_id = await gateway.new_console(http)
    plain = await open_console(http, gateway.ws_url(console_id))
    assert plain.protocol is None  # noVNC >= 1.2 asks for none
    assert plain._response.headers["X-Request-ID"]  # the 101 answer carries one too
    await plain.close()
    binary = await open_console(http, gateway.ws_url(console_id), protocols=("binary",))
    assert binary.protocol == "binary"
    await binary.close()


async def test_refused_cached_url_is_retried_once_invisibly(
    http: aiohttp.ClientSession, gateway: RunningGateway, console_proxy: ComputeSimulator
) -> None:
    console_id = await gateway.new_console(http)
    calls = console_proxy.console_calls
    console_proxy.console_tokens.clear()  # the cloud forgot the cached token (migration, expiry)
    ws = await open_console(http, gateway.ws_url(console_id))
    init = await ws_rfb_client(ws).handshake()
    assert init.width > 0
    await ws.close()
    assert console_proxy.console_calls == calls + 1
    assert console_proxy.console_proxy.refused == 1


async def test_second_refusal_closes_with_a_reason(
    http: aiohttp.ClientSession, gateway: RunningGateway, console_proxy: ComputeSimulator
) -> None:
    console_id = await gateway.new_console(http)
    console_proxy.console_proxy.refuse_all_tokens = True
    ws = await open_console(http, gateway.ws_url(console_id))
    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert message.data == 1011
    assert "refused" in str(message.extra)
    assert console_proxy.console_proxy.refused == 2


async def test_fresh_url_per_connect(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    gateway = await serve_gateway(fake_redis, {"relay": {"fresh_url_per_connect": True}})
    console_id = await gateway.new_console(http)
    calls = console_proxy.console_calls
    for _ in range(2):
        ws = await open_console(http, gateway.ws_url(console_id))
        await ws_rfb_client(ws).handshake()
        await ws.close()
    assert console_proxy.console_calls == calls + 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example.net"},
        {"Origin": "http://portal.example.com"},
        {"Origin": "null"},
        {},  # no Origin: only for configured non-browser clients
    ],
)
async def test_forbidden_origin_is_refused_before_any_upstream_work(
    http: aiohttp.ClientSession,
    gateway: RunningGateway,
    console_proxy: ComputeSimulator,
    headers: dict[str, str],
) -> None:
    console_id = await gateway.new_console(http)
    calls = console_proxy.console_calls
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_console(http, gateway.ws_url(console_id), headers=headers)
    assert refused.value.status == 403
    assert console_proxy.console_calls == calls
    assert console_proxy.console_proxy.upgrades == 0


async def test_missing_origin_allowed_when_configured(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    gateway = await serve_gateway(fake_redis, {"relay": {"allow_missing_origin": True}})
    console_id = await gateway.new_console(http)
    ws = await open_console(http, gateway.ws_url(console_id), headers={})
    await ws_rfb_client(ws).handshake()
    await ws.close()


async def close_code_of(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.CLOSE
    # The code in the close frame: aiohttp's own close_code turns into 1006 when the server
    # drops TCP before the client's close reply is out, although a browser reports the code.
    return int(message.data)


async def test_unknown_expired_and_revoked_consoles_close_without_upstream_work(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    clock = FakeClock()
    gateway = await serve_gateway(fake_redis, clock=clock)
    expired, revoked = await gateway.new_console(http), await gateway.new_console(http)
    async with http.delete(
        f"{gateway.url}/v1/consoles/{revoked}", headers=bearer(mint_jwt())
    ) as response:
        assert response.status == 204
    calls = console_proxy.console_calls
    unknown = await open_console(http, gateway.ws_url("A" * 43))
    assert await close_code_of(unknown) == 4404
    assert await close_code_of(await open_console(http, gateway.ws_url(revoked))) == 4410
    clock.now += 901
    assert await close_code_of(await open_console(http, gateway.ws_url(expired))) == 4410
    assert console_proxy.console_calls == calls
    assert console_proxy.console_proxy.upgrades == 0


async def test_plain_get_is_a_clear_400(
    http: aiohttp.ClientSession, gateway: RunningGateway
) -> None:
    console_id = await gateway.new_console(http)
    async with http.get(f"{gateway.url}/ws/{console_id}", headers=PORTAL) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-WebSocket-Version": "6"},
        {"Sec-WebSocket-Version": "abc"},
        {"Sec-WebSocket-Key": "not base64!"},
        {"Sec-WebSocket-Key": ""},
    ],
)
async def test_malformed_handshakes_are_400_not_500(
    http: aiohttp.ClientSession, gateway: RunningGateway, headers: dict[str, str]
) -> None:
    console_id = await gateway.new_console(http)
    handshake = {
        **PORTAL,
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **headers,
    }
    async with http.get(f"{gateway.url}/ws/{console_id}", headers=handshake) as response:
        assert response.status == 400


async def test_use_keeps_the_link_alive_past_its_first_expiry(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    clock = FakeClock()
    gateway = await serve_gateway(fake_redis, clock=clock)
    console_id = await gateway.new_console(http)
    for _ in range(3):  # three sessions, 10 minutes apart: 30 minutes > sessions.ttl_s
        clock.now += 600
        ws = await open_console(http, gateway.ws_url(console_id))
        await ws_rfb_client(ws).handshake()
        await ws.close()


async def test_shutdown_closes_live_consoles_with_1001(
    http: aiohttp.ClientSession, gateway: RunningGateway
) -> None:
    console_id = await gateway.new_console(http)
    ws = await open_console(http, gateway.ws_url(console_id))
    await ws_rfb_client(ws).handshake()
    await gateway.app.shutdown()
    assert await close_code_of(ws) == 1001


async def test_long_session_outlives_the_upstream_http_timeout(
    http: aiohttp.ClientSession,
    serve_gateway: GatewayServer,
    fake_redis: aioredis.Redis,
    console_proxy: ComputeSimulator,
) -> None:
    # upstream.timeout_s bounds API calls; it must not cut a console WebSocket.
    gateway = await serve_gateway(fake_redis, {"upstream": {"timeout_s": 0.5}})
    console_id = await gateway.new_console(http)
    ws = await open_console(http, gateway.ws_url(console_id))
    rfb = ws_rfb_client(ws)
    init = await rfb.handshake()
    await asyncio.sleep(1.5)
    await rfb.request_update(False, 0, 0, 8, 8)
    [(rect, _)] = await rfb.read_update()
    assert rect == (0, 0, 8, 8) and init.width > 8
    await ws.close()


async def test_no_token_or_console_id_in_logs(
    http: aiohttp.ClientSession,
    gateway: RunningGateway,
    console_proxy: ComputeSimulator,
    captured_logs: io.StringIO,
    fake_redis: aioredis.Redis,
) -> None:
    issued: list[str] = []
    console_proxy.token_listeners.append(lambda token: issued.append(token.token))
    console_id = await gateway.new_console(http)
    bodies = []
    for path in (f"/console/{console_id}", "/static/console.js", f"/v1/consoles/{console_id}"):
        async with http.get(f"{gateway.url}{path}", headers=bearer(mint_jwt())) as response:
            assert response.status == 200
            bodies.append(f"{dict(response.headers)} {await response.text()}")
    console_proxy.console_tokens.clear()  # force a refusal and a retry, logged
    ws = await open_console(http, gateway.ws_url(console_id))
    await ws_rfb_client(ws).handshake()
    await ws.close()
    for _ in range(100):  # the disconnect line is written after the close completes
        if "console_disconnected" in captured_logs.getvalue():
            break
        await asyncio.sleep(0.02)
    logs = captured_logs.getvalue()
    assert "console_connected" in logs and "console_disconnected" in logs
    assert console_id not in logs and UPSTREAM_TOKEN not in logs
    assert len(set(issued)) == 2  # the refused one and the fresh one
    for token in issued:
        assert token not in logs
        assert not any(token in body for body in bodies)
    assert await redis_keys(fake_redis, f"*{console_id}*") == []
