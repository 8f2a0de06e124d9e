"""The Nova-compatible route: Nova's microversions, fault shapes and version documents."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.simulator.state import ComputeSimulator
from tests.conftest import GatewayFactory
from tests.support import MISSING_SERVER, OTHER_PROJECT, PROJECT, SERVER, STOPPED_SERVER, mint_jwt

Client = TestClient[web.Request, web.Application]
BODY = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
V26 = {"OpenStack-API-Version": "compute 2.6"}


def route(project: str = PROJECT, server: str = SERVER) -> str:
    return f"/v2.1/{project}/servers/{server}/remote-consoles"


@pytest.fixture
async def client(make_gateway: GatewayFactory, fake_redis: aioredis.Redis) -> Client:
    return await make_gateway(fake_redis)


@pytest.mark.parametrize(
    "auth",
    [{"X-Auth-Token": "{jwt}"}, {"Authorization": "Bearer {jwt}"}],
)
async def test_remote_console_in_nova_shape(
    client: Client, simulator: ComputeSimulator, auth: dict[str, str]
) -> None:
    headers = {k: v.format(jwt=mint_jwt()) for k, v in auth.items()} | V26
    response = await client.post(route(), json=BODY, headers=headers)
    assert response.status == 200
    console = (await response.json())["remote_console"]
    assert console["type"] == "novnc" and console["protocol"] == "vnc"
    assert console["url"].startswith("https://gw.example.com/console/")
    assert response.headers["OpenStack-API-Version"] == "compute 2.6"
    assert response.headers["X-OpenStack-Nova-API-Version"] == "2.6"
    assert simulator.console_calls == 1
    text = await response.text()
    assert all(t not in text for t in simulator.console_tokens)


async def test_legacy_header_and_latest(client: Client) -> None:
    for headers, echoed in (
        ({"X-OpenStack-Nova-API-Version": "2.8"}, "2.8"),
        ({"OpenStack-API-Version": "compute latest"}, "2.96"),
    ):
        response = await client.post(
            route(), json=BODY, headers={"X-Auth-Token": mint_jwt(), **headers}
        )
        assert response.status == 200
        assert response.headers["X-OpenStack-Nova-API-Version"] == echoed


def fault(body: dict[str, Any]) -> tuple[str, int]:
    [(name, detail)] = body.items()
    return name, detail["code"]


@pytest.mark.parametrize(
    ("path", "headers", "body", "expected"),
    [
        (route(), {}, BODY, ("itemNotFound", 404)),  # no microversion = 2.1: no such route
        (route(), {"X-OpenStack-Nova-API-Version": "2.5"}, BODY, ("itemNotFound", 404)),
        (route(), {"X-OpenStack-Nova-API-Version": "2.x"}, BODY, ("badRequest", 400)),
        (route(), {"X-OpenStack-Nova-API-Version": "3.0"}, BODY, ("computeFault", 406)),
        (route(), V26, {"remote_console": {"type": "novnc"}}, ("badRequest", 400)),
        (route(), V26, {"console": {}}, ("badRequest", 400)),
        (
            route(),
            V26,
            {"remote_console": {"type": "spice-html5", "protocol": "spice"}},
            ("badRequest", 400),
        ),
        (route(server="bad.id"), V26, BODY, ("badRequest", 400)),
        (route(project=OTHER_PROJECT), V26, BODY, ("forbidden", 403)),
    ],
)
async def test_refusals_in_nova_shape(
    client: Client,
    simulator: ComputeSimulator,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any],
    expected: tuple[str, int],
) -> None:
    response = await client.post(path, json=body, headers={"X-Auth-Token": mint_jwt(), **headers})
    assert response.status == expected[1]
    assert fault(await response.json()) == expected
    assert simulator.console_calls == 0


@pytest.mark.parametrize(
    ("server", "expected"),
    [(MISSING_SERVER, ("itemNotFound", 404)), (STOPPED_SERVER, ("conflictingRequest", 409))],
)
async def test_upstream_refusals_in_nova_shape(
    client: Client, server: str, expected: tuple[str, int]
) -> None:
    headers = {"X-Auth-Token": mint_jwt(), **V26}
    response = await client.post(route(server=server), json=BODY, headers=headers)
    assert fault(await response.json()) == expected


async def test_unauthenticated_in_nova_shape(client: Client) -> None:
    response = await client.post(route(), json=BODY, headers={"X-Auth-Token": "nope", **V26})
    assert response.status == 401
    assert fault(await response.json()) == ("unauthorized", 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_dot_segments_cannot_escape_the_project(
    client: Client, simulator: ComputeSimulator
) -> None:
    # The client normalises nothing; the path the gateway routes on is what it authorizes.
    raw = f"/v2.1/{PROJECT}/servers/..%2F..%2F{OTHER_PROJECT}%2Fservers%2F{SERVER}/remote-consoles"
    response = await client.post(raw, json=BODY, headers={"X-Auth-Token": mint_jwt(), **V26})
    assert response.status in (400, 404)
    assert simulator.console_calls == 0
    dotted = f"/v2.1/{PROJECT}/../{OTHER_PROJECT}/servers/{SERVER}/remote-consoles"
    response = await client.post(dotted, json=BODY, headers={"X-Auth-Token": mint_jwt(), **V26})
    assert response.status == 403
    assert simulator.console_calls == 0


async def test_version_documents_are_public(client: Client) -> None:
    root = await client.get("/")
    assert root.status == 200
    [doc] = (await root.json())["versions"]
    assert doc["id"] == "v2.1" and doc["min_version"] == "2.1" and doc["version"] == "2.96"
    assert doc["links"][0]["href"] == "https://gw.example.com/v2.1/"
    for path in ("/v2.1", "/v2.1/"):
        single = await client.get(path)
        assert (await single.json())["version"]["status"] == "CURRENT"
