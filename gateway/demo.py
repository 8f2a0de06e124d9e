"""`console-gateway demo`: gateway, simulated cloud and embedded store in one process."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TextIO

import aiohttp
import jwt
from aiohttp import web

from gateway.app import create_app
from gateway.config import LoggingSettings, Settings
from gateway.observability import AccessLogger, setup_logging
from gateway.simulator.compute import create_compute_app
from gateway.simulator.console_proxy import create_console_proxy_app
from gateway.simulator.state import ComputeSimulator

DEMO_PROJECT = "demo-project"
DEMO_SERVER = "demo-server"
STOPPED_SERVER = "demo-stopped"
DEMO_ISSUER = "console-gateway-demo"
DEMO_AUDIENCE = "console-gateway"


@dataclass(frozen=True)
class DemoHandle:
    gateway_url: str
    compute_url: str
    dev_jwt: str
    simulator: ComputeSimulator
    console_url: str  # a console created at start-up, to open in a browser


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def demo_settings(
    host: str, port: int, compute_url: str, hs_secret: str, service_token: str
) -> Settings:
    public = f"http://{host}:{port}"
    return Settings.model_validate(
        {
            "server": {
                "host": host,
                "port": port,
                "public_base_url": public,
                "allowed_origins": [public],
            },
            "auth": {
                "issuer": DEMO_ISSUER,
                "audience": DEMO_AUDIENCE,
                "algorithms": ["HS256"],
                "hs256_secret": hs_secret,
            },
            "upstream": {
                "compute_url": compute_url,
                "token": service_token,
                "console_hosts": ["127.0.0.1"],
            },
            "redis": {"url": ""},
            "sessions": {"ttl_s": 3600},
            "logging": {"format": "text"},
        }
    )


def mint_dev_jwt(hs_secret: str, *, lifetime_s: int = 8 * 3600) -> str:
    now = int(time.time())
    claims = {
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": "demo-user",
        "iat": now,
        "exp": now + lifetime_s,
        "projects": [DEMO_PROJECT],
        "roles": [],
    }
    return jwt.encode(claims, hs_secret, algorithm="HS256")


@asynccontextmanager
async def started_demo(host: str = "127.0.0.1", port: int = 8080) -> AsyncIterator[DemoHandle]:
    """Start the simulator and the gateway; stop both on exit."""
    hs_secret, service_token = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    proxy_port = _free_port("127.0.0.1")
    simulator = ComputeSimulator(
        console_base_url=f"http://127.0.0.1:{proxy_port}", service_tokens=[service_token]
    )
    simulator.add_server(DEMO_PROJECT, DEMO_SERVER)
    simulator.add_server(DEMO_PROJECT, STOPPED_SERVER, status="SHUTOFF")
    runners: list[web.AppRunner] = []
    try:
        runners.append(await _start(create_console_proxy_app(simulator), "127.0.0.1", proxy_port))
        compute_port = _free_port("127.0.0.1")
        runners.append(await _start(create_compute_app(simulator), "127.0.0.1", compute_port))
        compute_url = f"http://127.0.0.1:{compute_port}"
        settings = demo_settings(host, port, compute_url, hs_secret, service_token)
        runners.append(await _start(create_app(settings), host, port))
        gateway_url, dev_jwt = settings.server.public_base_url, mint_dev_jwt(hs_secret)
        console_url = await create_console(gateway_url, dev_jwt)
        yield DemoHandle(gateway_url, compute_url, dev_jwt, simulator, console_url)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def create_console(gateway_url: str, dev_jwt: str) -> str:
    """Ask the running gateway for a console, exactly as a portal would."""
    body = {"project_id": DEMO_PROJECT, "server_id": DEMO_SERVER}
    headers = {"Authorization": f"Bearer {dev_jwt}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway_url}/v1/consoles", json=body, headers=headers) as response,
    ):
        response.raise_for_status()
        answer = await response.json()
    return str(answer["console"]["url"])


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def instructions(handle: DemoHandle) -> str:
    url = handle.gateway_url
    body = f'{{"project_id": "{DEMO_PROJECT}", "server_id": "{DEMO_SERVER}"}}'
    return f"""
Console gateway demo: {url}  (simulated compute API at {handle.compute_url}, embedded store)

Open this console in a browser (a simulated VM: type and click to see it react):
  {handle.console_url}

Dev JWT for subject demo-user, project {DEMO_PROJECT} (valid 8 hours):
  export JWT={handle.dev_jwt}

Ask for a console (native API):
  curl -s -X POST {url}/v1/consoles -H "Authorization: Bearer $JWT" \\
       -H 'Content-Type: application/json' -d '{body}'

The same through the Nova-compatible route:
  curl -s -X POST {url}/v2.1/{DEMO_PROJECT}/servers/{DEMO_SERVER}/remote-consoles \\
       -H "X-Auth-Token: $JWT" -H 'OpenStack-API-Version: compute 2.6' \\
       -H 'Content-Type: application/json' \\
       -d '{{"remote_console": {{"type": "novnc", "protocol": "vnc"}}}}'

Server {STOPPED_SERVER} is stopped (409). Ctrl-C stops the demo.
"""


async def run_demo(host: str, port: int, out: TextIO = sys.stdout) -> None:
    setup_logging(LoggingSettings(format="text"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with started_demo(host, port) as handle:
        print(instructions(handle), file=out, flush=True)
        await stop.wait()
