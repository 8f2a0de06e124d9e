"""The simulated nova-novncproxy: 101 first, bare close on a bad token or Origin, then RFB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.simulator.console_proxy import create_console_proxy_app, origin_allowed
from gateway.simulator.state import ComputeSimulator
from gateway.tasks import spawn
from tests.rfb_support import ws_rfb_client
from tests.support import PROJECT, SERVER, FakeClock

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
FULL_SCREEN_BYTES = 640 * 400 * 4


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> ComputeSimulator:
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080", clock=clock)
    sim.add_server(PROJECT, SERVER)
    return sim


@pytest.fixture
async def base(aiohttp_server: ServerFactory, sim: ComputeSimulator) -> str:
    server = await aiohttp_server(create_console_proxy_app(sim))
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def issue_token(sim: ComputeSimulator) -> str:
    url = sim.issue_console_url(sim.servers[SERVER])
    return parse_qs(urlsplit(url).query)["token"][0]


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 5 s")


async def assert_dropped(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Closed before any RFB byte, and without a close frame (1006 is never sent on the wire)."""
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR), msg
    assert ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE


# -- pure ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        (None, "127.0.0.1:6080", "http", True),  # non-browser clients send none
        ("http://127.0.0.1:9999", "127.0.0.1:6080", "http", True),  # ports are not compared
        ("http://CONSOLE.example.com", "console.example.com", "http", True),
        ("https://console.example.com", "console.example.com", "http", False),  # scheme
        ("http://evil.example.com", "console.example.com", "http", False),
        ("http://[::1]:8080", "[::1]:6080", "http", True),
        ("null", "127.0.0.1", "http", False),
        ("http://127.0.0.1", None, "http", False),
    ],
)
def test_origin_allowed(origin: str | None, host: str | None, scheme: str, allowed: bool) -> None:
    assert origin_allowed(origin, host, scheme) is allowed


# -- accepted ------------------------------------------------------------------------------
async def test_a_valid_token_opens_a_working_console(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{base}/websockify?token={issue_token(sim)}"
    async with http.ws_connect(url, protocols=("binary",), max_msg_size=0) as ws:
        assert ws.protocol == "binary"
        client = ws_rfb_client(ws)
        init = await client.handshake()
        assert (init.width, init.height, init.name) == (640, 400, "console-gateway simulator")
        await client.request_update(False, 0, 0, 640, 400)
        [(rect, pixels)] = await client.read_update()
        assert rect == (0, 0, 640, 400) and len(pixels) == FULL_SCREEN_BYTES
        await client.request_update(True, 0, 0, 640, 400)
        await client.send(b"\x04\x01\x00\x00\x00\x00\x00\x41")  # KeyEvent down "A"
        assert await client.read_update()
        assert (sim.console_proxy.live, sim.console_proxy.total) == (1, 1)
    await wait_until(lambda: sim.console_proxy.live == 0)
    assert sim.console_proxy.subprotocols == ["binary"]
    assert sim.console_proxy.refused == 0


async def test_the_token_cookie_works_and_no_subprotocol_is_forced(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    headers = {"Cookie": f"token={issue_token(sim)}"}
    async with http.ws_connect(f"{base}/any/path", headers=headers) as ws:
        assert ws.protocol is None
        assert (await ws_rfb_client(ws).handshake()).width == 640


async def test_a_matching_origin_is_accepted(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{base}/?token={issue_token(sim)}"
    async with http.ws_connect(url, origin="http://127.0.0.1:1234") as ws:
        assert await ws_rfb_client(ws).read_exactly(12) == b"RFB 003.008\n"
    assert sim.console_proxy.origins == ["http://127.0.0.1:1234"]


async def test_connections_to_one_server_share_its_screen(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{base}/websockify?token={issue_token(sim)}"
    async with http.ws_connect(url) as first_ws, http.ws_connect(url) as second_ws:
        first, second = ws_rfb_client(first_ws), ws_rfb_client(second_ws)
        await first.handshake()
        await second.handshake()
        await second.request_update(False, 0, 0, 640, 400)
        await second.read_update()
        await second.request_update(True, 0, 0, 640, 400)
        await first.send(b"\x05\x01\x00\x64\x00\x64")  # PointerEvent: button 1 at (100, 100)
        assert await second.read_update()
        assert sim.console_proxy.live == 2


# -- refused -------------------------------------------------------------------------------
async def test_an_unknown_token_is_dropped_after_the_upgrade(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{base}/websockify?token=unknown") as ws:
        await assert_dropped(ws)
    assert (sim.console_proxy.upgrades, sim.console_proxy.refused) == (1, 1)
    assert sim.console_proxy.total == 0


async def test_a_missing_token_is_dropped(base: str, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"{base}/websockify") as ws:
        await assert_dropped(ws)


async def test_a_foreign_origin_is_dropped(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{base}/?token={issue_token(sim)}"
    async with http.ws_connect(url, origin="http://portal.example.com") as ws:
        await assert_dropped(ws)
    assert sim.console_proxy.refused == 1


async def test_an_expired_token_is_dropped(
    base: str, sim: ComputeSimulator, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    token = issue_token(sim)
    clock.now += sim.console_token_ttl_s
    async with http.ws_connect(f"{base}/?token={token}") as ws:
        await assert_dropped(ws)


async def test_the_refuse_all_tokens_fault(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    sim.console_proxy.refuse_all_tokens = True
    async with http.ws_connect(f"{base}/?token={issue_token(sim)}") as ws:
        await assert_dropped(ws)


async def test_the_close_after_bytes_fault(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    sim.console_proxy.close_after_bytes = 14  # the version and the security types
    async with http.ws_connect(f"{base}/?token={issue_token(sim)}") as ws:
        client = ws_rfb_client(ws)
        assert await client.read_exactly(12) == b"RFB 003.008\n"
        await client.send(b"RFB 003.008\n")
        assert await client.read_exactly(2) == b"\x01\x01"
        await assert_dropped(ws)
    await wait_until(lambda: sim.console_proxy.live == 0)


async def test_a_text_frame_is_a_protocol_error(
    base: str, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{base}/?token={issue_token(sim)}") as ws:
        await ws_rfb_client(ws).read_exactly(12)
        await ws.send_str("RFB 003.008\n")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.PROTOCOL_ERROR


async def test_plain_http_is_told_to_upgrade(base: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base}/vnc_auto.html?token=x") as response:
        assert response.status == 400


async def test_shutdown_closes_live_consoles_with_1001(
    aiohttp_server: ServerFactory, sim: ComputeSimulator, http: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(create_console_proxy_app(sim))
    async with http.ws_connect(f"http://127.0.0.1:{server.port}/?token={issue_token(sim)}") as ws:
        await ws_rfb_client(ws).handshake()
        closing = spawn(server.close(), name="test-close-console-proxy")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        await ws.close()
        await asyncio.wait_for(closing, 10)
