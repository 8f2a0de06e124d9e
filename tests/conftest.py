"""Shared fixtures: settings builders, a real redis-server per test session, fake Redis."""

from __future__ import annotations

import copy
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from gateway.config import Settings, load_settings

HS_SECRET = "test-secret-that-is-long-enough-for-hs256!"

BASE_CONFIG: dict[str, Any] = {
    "server": {
        "public_base_url": "https://gw.example.com",
        "allowed_origins": ["https://portal.example.com"],
    },
    "auth": {
        "issuer": "https://portal.example.com",
        "audience": "console-gateway",
        "algorithms": ["HS256"],
        "hs256_secret": HS_SECRET,
    },
    "upstream": {
        "compute_url": "http://127.0.0.1:1",
        "token": "upstream-service-token-SECRET",
        "console_hosts": ["127.0.0.1"],
        "timeout_s": 5,
        "retry_backoff_s": 0.01,
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings from BASE_CONFIG with nested overrides, through the real YAML loader."""
    import yaml

    def build(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(deep_merge(BASE_CONFIG, overrides or {})))
        return load_settings(path, env or {})

    return build


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of our own on a free port (never the machine's 6379)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; .ci/run installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
    )
    try:
        _wait_for_port(port)
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
