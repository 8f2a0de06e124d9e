"""Redis goes away and comes back: fail fast, keep live consoles, recover without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import Settings
from gateway.simulator.state import ComputeSimulator
from tests.conftest import RunningGateway
from tests.rfb_support import RfbClient, ws_rfb_client
from tests.store.ha_servers import RedisProcess, redis_server, served
from tests.support import PROJECT, SERVER, bearer, mint_jwt

PORTAL = {"Origin": "https://portal.example.com"}
RECOVERY_S = 10.0


@pytest.fixture
def redis_node(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_server(tmp_path / "redis") as node:
        yield node


@pytest.fixture
async def gateway(
    redis_node: RedisProcess,
    make_settings: Callable[..., Settings],
    compute_url: str,
    console_proxy: ComputeSimulator,
) -> AsyncIterator[RunningGateway]:
    settings = make_settings(
        {"redis": {"url": redis_node.url, "socket_timeout_s": 1},
         "upstream": {"compute_url": compute_url}}
    )  # fmt: skip
    async with served(settings) as running:
        yield running


async def post_console(http: aiohttp.ClientSession, gateway: RunningGateway) -> tuple[int, str]:
    body = {"project_id": PROJECT, "server_id": SERVER}
    async with http.post(
        f"{gateway.url}/v1/consoles", json=body, headers=bearer(mint_jwt())
    ) as answer:
        payload = await answer.json()
        code = payload["error"]["code"] if "error" in payload else ""
        return answer.status, code


async def readiness(http: aiohttp.ClientSession, gateway: RunningGateway) -> tuple[int, str]:
    async with http.get(f"{gateway.url}/readyz") as answer:
        payload = await answer.json()
        return answer.status, payload.get("reason", "")


async def one_update(rfb: RfbClient, width: int) -> None:
    await rfb.request_update(False, 0, 0, width, 1)
    [(rect, pixels)] = await rfb.read_update()
    assert rect == (0, 0, width, 1) and len(pixels) == width * 4


async def test_an_outage_fails_fast_keeps_live_consoles_and_heals_by_itself(
    redis_node: RedisProcess, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    console_id = await gateway.new_console(http)
    async with http.ws_connect(gateway.ws_url(console_id), headers=PORTAL) as ws:
        rfb = ws_rfb_client(ws)
        init = await rfb.handshake()
        await one_update(rfb, init.width)

        redis_node.stop()
        started = time.monotonic()
        assert await post_console(http, gateway) == (503, "store_unavailable")
        assert time.monotonic() - started < 3
        assert await readiness(http, gateway) == (503, "store_unavailable")
        await one_update(rfb, init.width)  # the live console never needed Redis

        redis_node.start()  # same port, empty: nothing was persisted
        assert await until_ready(http, gateway) < RECOVERY_S
        assert await post_console(http, gateway) == (201, "")
        await one_update(rfb, init.width)
    fresh = await gateway.new_console(http)
    async with http.ws_connect(gateway.ws_url(fresh), headers=PORTAL) as again:
        rfb = ws_rfb_client(again)
        await one_update(rfb, (await rfb.handshake()).width)


async def until_ready(http: aiohttp.ClientSession, gateway: RunningGateway) -> float:
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < RECOVERY_S:
        if await readiness(http, gateway) == (200, ""):
            return elapsed
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz still 503 {RECOVERY_S}s after Redis came back")
