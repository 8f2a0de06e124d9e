"""The demo answers the curl it prints: a dev JWT gets a console from the simulator."""

from __future__ import annotations

import aiohttp

from gateway.demo import DEMO_PROJECT, DEMO_SERVER, STOPPED_SERVER, instructions, started_demo
from tests.support import free_port


async def test_demo_serves_consoles_with_the_printed_jwt() -> None:
    async with started_demo("127.0.0.1", free_port()) as demo, aiohttp.ClientSession() as http:
        text = instructions(demo)
        assert demo.dev_jwt in text and demo.gateway_url in text and demo.console_url in text
        assert demo.console_url.startswith(f"{demo.gateway_url}/console/")
        headers = {"Authorization": f"Bearer {demo.dev_jwt}"}
        body = {"project_id": DEMO_PROJECT, "server_id": DEMO_SERVER}
        async with http.post(f"{demo.gateway_url}/v1/consoles", json=body, headers=headers) as resp:
            assert resp.status == 201
            console = (await resp.json())["console"]
        assert console["url"] == f"{demo.gateway_url}/console/{console['id']}"
        stopped = {**body, "server_id": STOPPED_SERVER}
        async with http.post(
            f"{demo.gateway_url}/v1/consoles", json=stopped, headers=headers
        ) as resp:
            assert resp.status == 409
        assert demo.simulator.console_calls == 2  # start-up console + 409; the 201 hit the cache
