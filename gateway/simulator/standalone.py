"""`console-gateway simulate`: the simulated cloud alone (compute API + console proxy)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from gateway.simulator.compute import create_compute_app
from gateway.simulator.console_proxy import create_console_proxy_app
from gateway.simulator.state import ComputeSimulator

DEMO_PROJECT = "demo-project"
SERVERS = {"demo-server": "ACTIVE", "demo-stopped": "SHUTOFF"}


@dataclass(frozen=True)
class SimulatorOptions:
    host: str
    compute_port: int
    console_port: int
    public_host: str  # how gateways reach the console proxy: it goes into console URLs
    service_token: str


def build_simulator(options: SimulatorOptions) -> ComputeSimulator:
    simulator = ComputeSimulator(
        console_base_url=f"http://{options.public_host}:{options.console_port}",
        service_tokens=[options.service_token],
    )
    for server_id, status in SERVERS.items():
        simulator.add_server(DEMO_PROJECT, server_id, status=status)
    return simulator


@asynccontextmanager
async def started_simulator(options: SimulatorOptions) -> AsyncIterator[ComputeSimulator]:
    simulator = build_simulator(options)
    runners: list[web.AppRunner] = []
    try:
        for app, port in (
            (create_compute_app(simulator), options.compute_port),
            (create_console_proxy_app(simulator), options.console_port),
        ):
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, options.host, port).start()
        yield simulator
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def run_simulator(options: SimulatorOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with started_simulator(options):
        print(
            f"simulated compute API on {options.host}:{options.compute_port}, "
            f"console proxy on {options.host}:{options.console_port}",
            flush=True,
        )
        await stop.wait()
