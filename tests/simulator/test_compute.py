"""The simulated compute API behaves like nova: microversions, auth, faults, version documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.simulator.compute import create_compute_app
from gateway.simulator.state import ComputeSimulator
from tests.support import (
    MISSING_SERVER,
    OTHER_PROJECT,
    PROJECT,
    SERVER,
    STOPPED_SERVER,
    UPSTREAM_TOKEN,
)

Client = TestClient[web.Request, web.Application]
BODY = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
PATH = f"/v2.1/{PROJECT}/servers/{SERVER}/remote-consoles"
V26 = {"OpenStack-API-Version": "compute 2.6"}


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]], simulator: ComputeSimulator
) -> Client:
    return await aiohttp_client(create_compute_app(simulator))


async def post(
    client: Client,
    headers: dict[str, str] | None = None,
    body: Any = BODY,
    path: str = PATH,
    token: str | None = UPSTREAM_TOKEN,
) -> aiohttp.ClientResponse:
    sent = dict(V26 if headers is None else headers)
    if token is not None:
        sent["X-Auth-Token"] = token
    return await client.post(path, json=body, headers=sent)


async def test_success_answers_200_with_a_console_url(
    client: Client, simulator: ComputeSimulator
) -> None:
    resp = await post(client)
    assert resp.status == 200
    console = (await resp.json())["remote_console"]
    assert console["type"] == "novnc" and console["protocol"] == "vnc"
    prefix = "http://127.0.0.1:6080/vnc_auto.html?token="
    assert console["url"].startswith(prefix)
    token = console["url"][len(prefix):]
    checked = simulator.check_console_token(token)
    assert checked is not None and checked.server_id == SERVER
    assert simulator.console_calls == 1


@pytest.mark.parametrize(
    ("headers", "status", "answered"),
    [
        ({}, 404, "2.1"),
        ({"X-OpenStack-Nova-API-Version": "2.1"}, 404, "2.1"),
        ({"X-OpenStack-Nova-API-Version": "2.5"}, 404, "2.5"),
        ({"X-OpenStack-Nova-API-Version": "2.6"}, 200, "2.6"),
        ({"OpenStack-API-Version": "compute 2.6"}, 200, "2.6"),
        ({"OpenStack-API-Version": "image 2.3, compute 2.8"}, 200, "2.8"),
        ({"OpenStack-API-Version": "compute 2.6", "X-OpenStack-Nova-API-Version": "2.1"}, 200,
         "2.6"),
        ({"OpenStack-API-Version": "compute 2.1", "X-OpenStack-Nova-API-Version": "2.6"}, 404,
         "2.1"),
        ({"OpenStack-API-Version": "image 2.6", "X-OpenStack-Nova-API-Version": "2.7"}, 200,
         "2.7"),
        ({"OpenStack-API-Version": "compute latest"}, 200, "2.96"),
        ({"X-OpenStack-Nova-API-Version": "LATEST"}, 200, "2.96"),
        ({"OpenStack-API-Version": "compute 2.96"}, 200, "2.96"),
    ],
)
async def test_microversion_negotiation(
    client: Client, headers: dict[str, str], status: int, answered: str
) -> None:
    resp = await post(client, headers)
    assert resp.status == status
    assert resp.headers["OpenStack-API-Version"] == f"compute {answered}"
    assert resp.headers["X-OpenStack-Nova-API-Version"] == answered
    assert "OpenStack-API-Version" in resp.headers["Vary"]
    if status == 404:
        assert set(await resp.json()) == {"itemNotFound"}


@pytest.mark.parametrize(
    ("value", "status", "fault"),
    [
        ("2.x", 400, "badRequest"),
        ("2", 400, "badRequest"),
        ("2.06", 400, "badRequest"),
        ("", 400, "badRequest"),
        ("3.0", 406, "computeFault"),
        ("2.999", 406, "computeFault"),
        ("2.97", 406, "computeFault"),
        ("2.0", 406, "computeFault"),
        ("1.1", 406, "computeFault"),
    ],
)
async def test_bad_microversions(client: Client, value: str, status: int, fault: str) -> None:
    resp = await post(client, {"X-OpenStack-Nova-API-Version": value})
    assert resp.status == status
    body = await resp.json()
    assert body[fault]["code"] == status


async def test_max_microversion_is_configurable(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080",
                           service_tokens=[UPSTREAM_TOKEN], max_microversion="2.10")
    sim.add_server(PROJECT, SERVER)
    client = await aiohttp_client(create_compute_app(sim))
    assert (await post(client, {"OpenStack-API-Version": "compute 2.11"})).status == 406
    resp = await post(client, {"OpenStack-API-Version": "compute latest"})
    assert resp.headers["X-OpenStack-Nova-API-Version"] == "2.10"


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
async def test_unauthenticated_is_401(client: Client, token: str | None) -> None:
    resp = await post(client, token=token)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == 401
    assert resp.headers["WWW-Authenticate"].startswith("Keystone uri=")


@pytest.mark.parametrize(
    "path",
    [
        f"/v2.1/{PROJECT}/servers/{MISSING_SERVER}/remote-consoles",
        f"/v2.1/{OTHER_PROJECT}/servers/{SERVER}/remote-consoles",
    ],
)
async def test_unknown_or_foreign_server_is_404(client: Client, path: str) -> None:
    resp = await post(client, path=path)
    assert resp.status == 404
    assert "could not be found" in (await resp.json())["itemNotFound"]["message"]


async def test_stopped_server_is_409(client: Client) -> None:
    resp = await post(client, path=f"/v2.1/{PROJECT}/servers/{STOPPED_SERVER}/remote-consoles")
    assert resp.status == 409
    message = (await resp.json())["conflictingRequest"]["message"]
    assert STOPPED_SERVER in message and "vm_state stopped" in message
    assert resp.headers["X-OpenStack-Nova-API-Version"] == "2.6"


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        "text",
        {"remote_console": "novnc"},
        {"remote_console": {"type": "novnc"}},
        {"remote_console": {"protocol": "vnc"}},
        {"remote_console": {"type": "novnc", "protocol": "spice"}},
        {"remote_console": {"type": "spice-html5", "protocol": "spice"}},
        {"remote_console": {"type": "xvpvnc", "protocol": "vnc"}},
        {"remote_console": {"type": 1, "protocol": "vnc"}},
        {"remote_console": {"type": "novnc", "protocol": "vnc", "extra": 1}},
        {"remote_console": {"type": "novnc", "protocol": "vnc"}, "extra": 1},
    ],
)
async def test_bad_bodies_are_400(client: Client, body: Any) -> None:
    resp = await post(client, body=body)
    assert resp.status == 400
    assert (await resp.json())["badRequest"]["code"] == 400


async def test_non_json_body_is_400(client: Client) -> None:
    headers = {**V26, "X-Auth-Token": UPSTREAM_TOKEN, "Content-Type": "application/json"}
    resp = await client.post(PATH, data=b"{not json", headers=headers)
    assert resp.status == 400


async def test_injected_statuses_are_consumed_in_order(
    client: Client, simulator: ComputeSimulator
) -> None:
    simulator.faults.statuses = [503, 502]
    assert (await post(client)).status == 503
    second = await post(client)
    assert second.status == 502
    assert set(await second.json()) == {"computeFault"}
    assert (await post(client)).status == 200
    assert simulator.console_calls == 3


async def test_garbage_body_and_console_host(client: Client, simulator: ComputeSimulator) -> None:
    simulator.faults.console_host = "evil.example.org"
    url = (await (await post(client)).json())["remote_console"]["url"]
    assert url.startswith("http://evil.example.org:6080/vnc_auto.html?token=")
    simulator.faults.garbage_body = True
    resp = await post(client)
    assert resp.status == 200
    with pytest.raises(aiohttp.ContentTypeError):
        await resp.json()


async def test_dropped_connection_then_recovery(
    client: Client, simulator: ComputeSimulator
) -> None:
    simulator.faults.drop_connections = 1
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(client)
    assert (await post(client)).status == 200
    assert simulator.console_calls == 2


async def test_keystone_token_is_accepted_until_revoked(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080", keystone_users={"svc": "pw"})
    sim.add_server(PROJECT, SERVER)
    client = await aiohttp_client(create_compute_app(sim))
    issued = sim.issue_keystone_token("svc", "pw", PROJECT)
    assert issued is not None
    assert (await post(client, token=issued.token)).status == 200
    sim.revoke_keystone_tokens()
    assert (await post(client, token=issued.token)).status == 401


async def test_versions_root(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    (doc,) = (await resp.json())["versions"]
    assert doc["id"] == "v2.1" and doc["status"] == "CURRENT"
    assert doc["links"][0]["href"] == str(client.make_url("/v2.1/"))


@pytest.mark.parametrize("path", ["/v2.1", "/v2.1/"])
async def test_single_version_document(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    doc = (await resp.json())["version"]
    assert (doc["min_version"], doc["version"], doc["status"]) == ("2.1", "2.96", "CURRENT")
    assert doc["links"][0]["rel"] == "self"
