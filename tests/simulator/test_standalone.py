"""The standalone simulated cloud: compute API and console proxy on their own ports."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp

from gateway.simulator.standalone import SimulatorOptions, started_simulator
from tests.rfb_support import ws_rfb_client
from tests.support import free_port


async def test_console_urls_name_the_public_host_and_open_a_console() -> None:
    options = SimulatorOptions("127.0.0.1", free_port(), free_port(), "127.0.0.1", "svc-token")
    body = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
    headers = {"X-Auth-Token": "svc-token", "OpenStack-API-Version": "compute 2.6"}
    compute = f"http://127.0.0.1:{options.compute_port}/v2.1/demo-project/servers"
    async with started_simulator(options), aiohttp.ClientSession() as http:
        async with http.post(
            f"{compute}/demo-server/remote-consoles", json=body, headers=headers
        ) as r:
            url = (await r.json())["remote_console"]["url"]
        assert url.startswith(f"http://127.0.0.1:{options.console_port}/vnc_auto.html?token=")
        ws = await http.ws_connect(url.replace("http://", "ws://"))
        assert (await ws_rfb_client(ws).handshake()).width > 0
        await ws.close()
        async with http.post(
            f"{compute}/demo-stopped/remote-consoles", json=body, headers=headers
        ) as r:
            assert r.status == 409


def test_simulate_command_requires_a_service_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGW_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "simulate", "--compute-port", "0"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "CGW_SIM_SERVICE_TOKEN" in result.stderr
