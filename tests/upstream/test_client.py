"""The compute client against the real simulator app: success, every fault, retries, deadline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import errors
from gateway.config import UpstreamSettings
from gateway.models import ConsoleTarget
from gateway.simulator.state import ComputeSimulator
from gateway.upstream.client import ComputeClient, console_url_from_body, error_for_status
from gateway.upstream.credentials import StaticToken
from gateway.upstream.http import create_http_session
from tests.support import MISSING_SERVER, PROJECT, SERVER, STOPPED_SERVER, UPSTREAM_TOKEN, free_port

TARGET = ConsoleTarget(PROJECT, SERVER)
MakeClient = Callable[..., Awaitable[ComputeClient]]


class Sleeps:
    """Records backoff delays instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make_client(compute_url: str, sleeps: Sleeps) -> AsyncIterator[MakeClient]:
    sessions: list[aiohttp.ClientSession] = []

    async def make(token: str = UPSTREAM_TOKEN, **overrides: Any) -> ComputeClient:
        values: dict[str, Any] = {"compute_url": compute_url, "token": token,
                                  "console_hosts": ["127.0.0.1"], "retries": 2,
                                  "retry_backoff_s": 0.1, "timeout_s": 5, **overrides}
        settings = UpstreamSettings.model_validate(values)
        session = create_http_session(settings)
        sessions.append(session)
        return ComputeClient(settings, session, StaticToken(token), sleep=sleeps)

    yield make
    for session in sessions:
        await session.close()


def assert_no_secrets(caplog: pytest.LogCaptureFixture, simulator: ComputeSimulator) -> None:
    text = caplog.text
    assert UPSTREAM_TOKEN not in text
    for token in simulator.console_tokens:
        assert token not in text


async def test_success(
    make_client: MakeClient, simulator: ComputeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    console = await (await make_client()).create_remote_console(TARGET)
    assert console.host == "127.0.0.1"
    assert simulator.check_console_token(console.token) is simulator.servers[SERVER]
    assert console.url.endswith(f"?token={console.token}")
    assert simulator.console_calls == 1
    assert_no_secrets(caplog, simulator)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (ConsoleTarget(PROJECT, MISSING_SERVER), errors.NotFound),
        (ConsoleTarget(PROJECT, STOPPED_SERVER), errors.Conflict),
        (ConsoleTarget(PROJECT, SERVER, "xvpvnc", "vnc"), errors.BadRequest),
    ],
)
async def test_nova_faults_map_to_gateway_errors(
    make_client: MakeClient, simulator: ComputeSimulator, target: ConsoleTarget,
    error: type[errors.GatewayError],
) -> None:
    with pytest.raises(error) as caught:
        await (await make_client()).create_remote_console(target)
    assert type(caught.value) is error
    assert target.server_id not in caught.value.message  # fixed messages, no upstream text
    assert simulator.console_calls == 1


@pytest.mark.parametrize("status", [500, 501, 302, 403, 429])
async def test_other_statuses_are_upstream_errors_without_retry(
    make_client: MakeClient, simulator: ComputeSimulator, sleeps: Sleeps, status: int
) -> None:
    simulator.faults.statuses = [status]
    with pytest.raises(errors.UpstreamError):
        await (await make_client()).create_remote_console(TARGET)
    assert simulator.console_calls == 1
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_statuses_are_retried(
    make_client: MakeClient, simulator: ComputeSimulator, sleeps: Sleeps, status: int
) -> None:
    simulator.faults.statuses = [status]
    console = await (await make_client()).create_remote_console(TARGET)
    assert simulator.check_console_token(console.token) is not None
    assert simulator.console_calls == 2
    assert sleeps.delays == [0.1]


async def test_retries_are_bounded_with_exponential_backoff(
    make_client: MakeClient, simulator: ComputeSimulator, sleeps: Sleeps
) -> None:
    simulator.faults.statuses = [503, 503, 503, 503]
    with pytest.raises(errors.UpstreamError, match="503"):
        await (await make_client(retries=2)).create_remote_console(TARGET)
    assert simulator.console_calls == 3
    assert sleeps.delays == [0.1, 0.2]


async def test_refused_static_token_is_tried_once_more_then_reported(
    make_client: MakeClient, simulator: ComputeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(errors.UpstreamError, match="credentials were refused") as caught:
        await (await make_client(token="stale-token-SECRET")).create_remote_console(TARGET)
    assert "stale-token-SECRET" not in caught.value.message
    assert "stale-token-SECRET" not in caplog.text
    assert simulator.console_calls == 2


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"remote_console": null}',
        b'{"remote_console": {"url": 42}}',
        b'{"console": {"url": "http://127.0.0.1/vnc_auto.html?token=t"}}',
        b'{"remote_console": {"url": "http://127.0.0.1:6080/vnc_auto.html"}}',
        b'{"remote_console": {"url": "http://127.0.0.1:6080/vnc_auto.html?token="}}',
    ],
)
async def test_unusable_bodies(
    make_client: MakeClient, simulator: ComputeSimulator, body: bytes
) -> None:
    simulator.faults.raw_body = body
    with pytest.raises(errors.UpstreamError):
        await (await make_client()).create_remote_console(TARGET)


async def test_non_json_body(make_client: MakeClient, simulator: ComputeSimulator) -> None:
    simulator.faults.garbage_body = True
    with pytest.raises(errors.UpstreamError, match="not JSON") as caught:
        await (await make_client()).create_remote_console(TARGET)
    assert "html" not in caught.value.message


async def test_console_host_outside_the_allow_list(
    make_client: MakeClient, simulator: ComputeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.faults.console_host = "evil.example.net"
    with pytest.raises(errors.UpstreamError, match="console URL") as caught:
        await (await make_client()).create_remote_console(TARGET)
    (token,) = simulator.console_tokens
    assert token not in caught.value.message and "evil" not in caught.value.message
    assert_no_secrets(caplog, simulator)


async def test_oversized_body(make_client: MakeClient, simulator: ComputeSimulator) -> None:
    url = "http://127.0.0.1:6080/vnc_auto.html?token=t"
    simulator.faults.raw_body = json.dumps(
        {"remote_console": {"url": url, "padding": "x" * 4096}}
    ).encode()
    with pytest.raises(errors.UpstreamError, match="oversized"):
        await (await make_client(max_response_bytes=1024)).create_remote_console(TARGET)
    # The same body under a large enough bound is fine, so the bound is what refused it.
    console = await (await make_client(max_response_bytes=8192)).create_remote_console(TARGET)
    assert console.token == "t"


async def test_slow_upstream_times_out_within_the_deadline(
    make_client: MakeClient, simulator: ComputeSimulator
) -> None:
    simulator.faults.delay_s = 30
    client = await make_client(timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(errors.UpstreamTimeout):
        await client.create_remote_console(TARGET)
    assert time.monotonic() - started < 10  # far below the upstream's 30 s


async def test_dropped_connection_is_retried(
    make_client: MakeClient, simulator: ComputeSimulator, sleeps: Sleeps
) -> None:
    simulator.faults.drop_connections = 1
    console = await (await make_client()).create_remote_console(TARGET)
    assert simulator.check_console_token(console.token) is not None
    assert simulator.console_calls == 2 and sleeps.delays == [0.1]


async def test_dropped_connections_exhaust_the_retries(
    make_client: MakeClient, simulator: ComputeSimulator
) -> None:
    simulator.faults.drop_connections = 5
    with pytest.raises(errors.UpstreamError, match="unreachable"):
        await (await make_client(retries=1)).create_remote_console(TARGET)
    assert simulator.console_calls == 2


async def test_nothing_listening_is_unreachable(make_client: MakeClient, sleeps: Sleeps) -> None:
    client = await make_client(compute_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.UpstreamError, match="unreachable"):
        await client.create_remote_console(TARGET)
    assert sleeps.delays == [0.1, 0.2]


async def test_request_shape(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], make_client: MakeClient
) -> None:
    seen: list[web.Request] = []
    bodies: list[Any] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.json())
        url = "http://127.0.0.1:6080/vnc_auto.html?token=t"
        return web.json_response({"remote_console": {"url": url}})

    app = web.Application()
    app.router.add_post("/v2.1/{project}/servers/{server}/remote-consoles", record)
    server = await aiohttp_server(app)
    client = await make_client(compute_url=str(server.make_url("")).rstrip("/"),
                               microversion="2.8")
    await client.create_remote_console(ConsoleTarget("p-1", "s_2", "novnc", "vnc"))
    (request,) = seen
    assert request.path == "/v2.1/p-1/servers/s_2/remote-consoles"
    assert request.headers["X-Auth-Token"] == UPSTREAM_TOKEN
    assert request.headers["OpenStack-API-Version"] == "compute 2.8"
    assert request.headers["X-OpenStack-Nova-API-Version"] == "2.8"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "console-gateway/0.1"
    assert bodies == [{"remote_console": {"type": "novnc", "protocol": "vnc"}}]


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, errors.BadRequest), (404, errors.NotFound), (409, errors.Conflict),
     (401, errors.UpstreamError), (301, errors.UpstreamError), (500, errors.UpstreamError)],
)
def test_error_for_status(status: int, error: type[errors.GatewayError]) -> None:
    assert type(error_for_status(status)) is error


def test_console_url_from_body_checks_the_host() -> None:
    body = {"remote_console": {"url": "http://10.1.1.1/vnc_auto.html?token=t"}}
    assert console_url_from_body(body, ("10.1.1.1",)).token == "t"
    with pytest.raises(errors.UpstreamError):
        console_url_from_body(body, ("127.0.0.1",))
