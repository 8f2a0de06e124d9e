"""Browser-side client -> gateway -> the real websockify (TokenFile) -> a real RFB server."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.simulator.state import ComputeSimulator, IssuedConsoleToken
from tests.conftest import GatewayServer, RunningGateway
from tests.rfb_support import WebsockifyUpstream, ws_rfb_client

PORTAL = {"Origin": "https://portal.example.com"}


@pytest.fixture
def cloud_behind_websockify(
    simulator: ComputeSimulator, websockify_upstream: WebsockifyUpstream
) -> ComputeSimulator:
    """Console URLs point at websockify, which learns each token the cloud issues."""
    simulator.console_base_url = f"http://127.0.0.1:{websockify_upstream.port}"

    def register(issued: IssuedConsoleToken) -> None:
        websockify_upstream.add_token(issued.token)

    simulator.token_listeners.append(register)
    return simulator


@pytest.fixture
async def gateway(
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    cloud_behind_websockify: ComputeSimulator,
) -> RunningGateway:
    return await serve_gateway(real_redis)


async def test_rfb_handshake_and_framebuffer_update_through_websockify(
    http: aiohttp.ClientSession,
    gateway: RunningGateway,
    websockify_upstream: WebsockifyUpstream,
) -> None:
    console_id = await gateway.new_console(http)
    ws = await http.ws_connect(gateway.ws_url(console_id), headers=PORTAL)
    rfb = ws_rfb_client(ws)
    init = await rfb.handshake()
    screen = websockify_upstream.framebuffer
    assert (init.width, init.height) == (screen.width, screen.height)
    await rfb.request_update(False, 0, 0, init.width, init.height)
    [(rect, pixels)] = await rfb.read_update()
    assert rect == (0, 0, init.width, init.height)
    assert len(set(pixels[i : i + 4] for i in range(0, len(pixels), 4))) > 4  # a pattern
    # Input reaches the VM through the relay, and its answer comes back as an update.
    await ws.send_bytes(bytes([4, 1, 0, 0]) + (0x41).to_bytes(4, "big"))  # KeyEvent 'A' down
    await rfb.request_update(True, 0, 0, init.width, init.height)
    assert await rfb.read_update()
    assert screen.keys == 1
    await ws.close()


async def test_websockify_refusing_a_cached_token_is_retried_with_a_fresh_one(
    http: aiohttp.ClientSession,
    gateway: RunningGateway,
    websockify_upstream: WebsockifyUpstream,
    cloud_behind_websockify: ComputeSimulator,
) -> None:
    console_id = await gateway.new_console(http)
    for token in list(cloud_behind_websockify.console_tokens):
        websockify_upstream.remove_token(token)  # plain websockify refuses before answering
    calls = cloud_behind_websockify.console_calls
    ws = await http.ws_connect(gateway.ws_url(console_id), headers=PORTAL)
    assert (await ws_rfb_client(ws).handshake()).width > 0
    await ws.close()
    assert cloud_behind_websockify.console_calls == calls + 1


async def test_websockify_refusing_twice_closes_with_a_reason(
    http: aiohttp.ClientSession,
    gateway: RunningGateway,
    websockify_upstream: WebsockifyUpstream,
    cloud_behind_websockify: ComputeSimulator,
) -> None:
    console_id = await gateway.new_console(http)
    cloud_behind_websockify.token_listeners.clear()  # fresh tokens stay unknown to websockify
    for token in list(cloud_behind_websockify.console_tokens):
        websockify_upstream.remove_token(token)
    ws = await http.ws_connect(gateway.ws_url(console_id), headers=PORTAL)
    message = await ws.receive(timeout=15)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert message.data == 1011
    assert "refused" in str(message.extra)
