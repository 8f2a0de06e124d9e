"""Shared fixtures: settings builders, a real redis-server per test session, fake Redis."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import fakeredis
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.cli import runner_options
from gateway.config import LoggingSettings, Settings
from gateway.config_loader import load_settings
from gateway.observability import AccessLogger, setup_logging
from gateway.simulator.compute import create_compute_app
from gateway.simulator.console_proxy import create_console_proxy_app
from gateway.simulator.framebuffer import Framebuffer
from gateway.simulator.rfb import serve_rfb_tcp
from gateway.simulator.state import ComputeSimulator
from tests import leaks
from tests.figures import SecurityFigures
from tests.rfb_support import WebsockifyUpstream, stop_process_group, wait_listening
from tests.support import (
    BASE_CONFIG,
    MINTED_JWTS,
    PROJECT,
    SERVER,
    STOPPED_SERVER,
    UPSTREAM_TOKEN,
    bearer,
    deep_merge,
    free_port,
    mint_jwt,
    wait_for_port,
)

GatewayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# Before any test module imports create_app by name: every gateway app is watched for leaks.
leaks.install()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_secret_output(reason, channels=('log',)): this test writes a secret to the "
        f"named outputs ({', '.join(leaks.CHANNELS)}) on purpose; the leak scanner lets it",
    )


@pytest.fixture(scope="session")
def security_figures() -> Iterator[SecurityFigures]:
    """The adversarial suite's figures; written for scripts/security-report at the end."""
    figures = SecurityFigures()
    yield figures
    figures.write()


@pytest.fixture(scope="session", autouse=True)
def leak_scanner_session(security_figures: SecurityFigures) -> Iterator[leaks.LeakScanner]:
    """The session's leak scanner (tests/leaks.py); its counts become the figures' row."""
    scanner = leaks.SCANNER
    leaks.attach()
    tests_scanned = 0
    try:
        yield scanner
        tests_scanned = scanner.tests
        orphans = scanner.end_session(scanner.secrets((), ()))
        scanner.counts.leaks += len(orphans)
        if orphans:
            pytest.fail("outside any test: " + leaks.report(orphans), pytrace=False)
    finally:
        logging.getLogger().removeHandler(scanner.handler)
        counts = scanner.counts
        security_figures.add_background(
            "leak scanner",
            inputs=counts.items(),
            leaks=counts.leaks,
            tests=tests_scanned,
            log_lines=counts.log_lines,
            audit_events=counts.audit_events,
            responses=counts.responses,
            body_bytes=counts.body_bytes,
            unscanned_bodies=counts.unscanned_bodies,
            ws_close_reasons=counts.ws_close_reasons,
            metric_samples=counts.metric_samples,
            allowed_by_marker=counts.allowed,
            handler_removed=counts.detached,
            scanner_s=round(scanner.busy_s, 2),
        )


@pytest.fixture
def leak_scanner(leak_scanner_session: leaks.LeakScanner) -> leaks.LeakScanner:
    """For tests that make secrets of their own: leak_scanner.add_secret(kind, value)."""
    return leak_scanner_session


@pytest.fixture(autouse=True)
def _scan_for_leaks(
    request: pytest.FixtureRequest, leak_scanner_session: leaks.LeakScanner
) -> Iterator[None]:
    """Fails the test, at teardown, if a secret reached a gateway output (tests/leaks.py)."""
    scanner = leak_scanner_session
    allowed = allowed_channels(request.node)
    leaks.attach()
    MINTED_JWTS.clear()
    scanner.begin()
    yield
    if not leaks.attach():  # the test replaced the root handlers (setup_logging)
        scanner.counts.detached += 1
    scanner.tests += 1
    secrets = scanner.secrets(request.node.funcargs.values(), MINTED_JWTS)
    findings = scanner.end(secrets)
    MINTED_JWTS.clear()
    failures = [finding for finding in findings if finding.channel not in allowed]
    scanner.counts.allowed += len(findings) - len(failures)
    scanner.counts.leaks += len(failures)
    if failures:
        pytest.fail(leaks.report(failures), pytrace=False)


def allowed_channels(item: pytest.Item) -> frozenset[str]:
    """The channels a test's allow_secret_output marker names; it must give a reason."""
    marker = item.get_closest_marker("allow_secret_output")
    if marker is None:
        return frozenset()
    reason = marker.args[0] if marker.args else marker.kwargs.get("reason")
    channels = tuple(marker.kwargs.get("channels", (leaks.LOG,)))
    if not isinstance(reason, str) or not reason.strip():
        raise pytest.UsageError(f"{item.nodeid}: allow_secret_output needs a reason")
    unknown = set(channels) - set(leaks.CHANNELS)
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: allow_secret_output: unknown {sorted(unknown)}")
    return frozenset(channels)


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
        server = TestServer(leaks.SCANNER.watch(create_app(settings, redis=redis, clock=clock)))
        await server.start_server(access_log_class=AccessLogger)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(server)
        return client

    return make


@dataclass
class RunningGateway:
    """A gateway served as in production (AppRunner + TCPSite: no handler cancellation)."""

    url: str
    app: web.Application

    def ws_url(self, console_id: str) -> str:
        return self.url.replace("http://", "ws://") + f"/ws/{console_id}"

    async def new_console(self, http: aiohttp.ClientSession) -> str:
        """A console on SERVER for the default test user; its id."""
        body = {"project_id": PROJECT, "server_id": SERVER}
        async with http.post(
            f"{self.url}/v1/consoles", json=body, headers=bearer(mint_jwt())
        ) as response:
            assert response.status == 201
            answer: dict[str, dict[str, str]] = await response.json()
        return answer["console"]["id"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP/WebSocket client for served gateways."""
    async with aiohttp.ClientSession() as session:
        yield session


GatewayServer = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def serve_gateway(
    make_settings: Callable[..., Settings], compute_url: str
) -> AsyncIterator[GatewayServer]:
    runners: list[web.AppRunner] = []

    async def start(
        redis: aioredis.Redis,
        overrides: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> RunningGateway:
        settings = make_settings(
            deep_merge({"upstream": {"compute_url": compute_url}}, overrides or {})
        )
        app = leaks.SCANNER.watch(create_app(settings, redis=redis, clock=clock))
        runner = web.AppRunner(app, **runner_options(settings))  # as `console-gateway serve`
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return RunningGateway(f"http://127.0.0.1:{port}", runner.app)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def console_proxy(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], simulator: ComputeSimulator
) -> ComputeSimulator:
    """The simulated nova-novncproxy; the simulator's console URLs now point at it."""
    server = await aiohttp_server(create_console_proxy_app(simulator))
    simulator.console_base_url = str(server.make_url("")).rstrip("/")
    return simulator


@pytest.fixture
async def websockify_upstream(tmp_path: Path) -> AsyncIterator[WebsockifyUpstream]:
    """websockify --token-plugin TokenFile on a free port; token `sim` opens the screen."""
    live: set[asyncio.StreamWriter] = set()
    screen = Framebuffer(title="SIM BEHIND WEBSOCKIFY")
    server = await serve_rfb_tcp("127.0.0.1", 0, framebuffer=screen, live=live)
    vnc_port = int(server.sockets[0].getsockname()[1])
    token_dir = tmp_path / "websockify-tokens"
    token_dir.mkdir()
    upstream = WebsockifyUpstream(free_port(), vnc_port, token_dir, screen, live)
    upstream.add_token(upstream.default_token)
    log = tmp_path / "websockify.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "websockify", "--token-plugin", "TokenFile",
            "--token-source", str(token_dir), f"127.0.0.1:{upstream.port}",
            stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True,
        )  # fmt: skip
    try:
        await wait_listening(upstream.port, proc, log)
        yield upstream
    finally:
        await stop_process_group(proc)
        server.close()
        for writer in list(live):
            writer.close()
        await server.wait_closed()
        for _ in range(100):  # handlers end once their sockets are closed
            if not live:
                break
            await asyncio.sleep(0.01)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = setup_logging(LoggingSettings(level="DEBUG", format="json"), stream)
    leaks.attach()  # setup_logging replaced the root handlers; the leak scanner stays
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


@pytest.fixture(params=["fake", "real"])
async def redis_pair(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    """Two clients on one Redis, as two gateway instances would have."""
    clients: tuple[aioredis.Redis, aioredis.Redis]
    if request.param == "fake":
        server = fakeredis.FakeServer()
        clients = (fakeredis.FakeAsyncRedis(server=server), fakeredis.FakeAsyncRedis(server=server))
    else:
        url: str = request.getfixturevalue("redis_server")
        clients = (aioredis.Redis.from_url(url), aioredis.Redis.from_url(url))
        await clients[0].flushdb()
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()
