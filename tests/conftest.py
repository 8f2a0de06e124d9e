"""Shared fixtures: settings builders, a real redis-server per test session, fake Redis."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Settings
from gateway.config_loader import load_settings
from gateway.observability import AccessLogger
from gateway.simulator.compute import create_compute_app
from gateway.simulator.state import ComputeSimulator
from tests.support import (
    BASE_CONFIG,
    PROJECT,
    SERVER,
    STOPPED_SERVER,
    UPSTREAM_TOKEN,
    deep_merge,
    free_port,
    wait_for_port,
)

GatewayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings from BASE_CONFIG with nested overrides, through the real YAML loader."""
    import yaml

    def build(
        overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> Settings:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(deep_merge(BASE_CONFIG, overrides or {})))
        return load_settings(path, env or {})

    return build


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of our own on a free port (never the machine's 6379)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; .ci/run installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
        ],
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def real_redis(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the session's redis-server, flushed before each test."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def simulator() -> ComputeSimulator:
    """A simulated cloud with one running and one stopped server in PROJECT."""
    sim = ComputeSimulator(
        console_base_url="http://127.0.0.1:6080", service_tokens=[UPSTREAM_TOKEN]
    )
    sim.add_server(PROJECT, SERVER)
    sim.add_server(PROJECT, STOPPED_SERVER, status="SHUTOFF")
    return sim


@pytest.fixture
async def compute_url(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], simulator: ComputeSimulator
) -> str:
    server = await aiohttp_server(create_compute_app(simulator))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def make_gateway(
    make_settings: Callable[..., Settings],
    compute_url: str,
    aiohttp_client: Callable[[TestServer], Awaitable[TestClient[Any, Any]]],
) -> GatewayFactory:
    """A gateway app in front of the simulator, on the Redis client the test chooses."""

    async def make(
        redis: aioredis.Redis,
        overrides: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TestClient[web.Request, web.Application]:
        settings = make_settings(
            deep_merge({"upstream": {"compute_url": compute_url}}, overrides or {})
        )
        # Started here because TestServer drops runner options given to its constructor.
        server = TestServer(create_app(settings, redis=redis, clock=clock))
        await server.start_server(access_log_class=AccessLogger)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(server)
        return client

    return make
