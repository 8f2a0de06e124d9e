"""The simulated Keystone issues password-auth tokens the compute API then accepts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.simulator.compute import create_compute_app
from gateway.simulator.keystone import TOKENS_PATH, password_credentials
from gateway.simulator.state import ComputeSimulator
from tests.support import PROJECT

Client = TestClient[web.Request, web.Application]
NOW = 1_800_000_000.0


def auth_body(
    name: str = "svc", password: str = "pw", domain: str = "Default", project: str = PROJECT
) -> dict[str, Any]:
    user = {"name": name, "domain": {"name": domain}, "password": password}
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                     "scope": {"project": {"id": project}}}}


@pytest.fixture
def sim() -> ComputeSimulator:
    return ComputeSimulator(console_base_url="http://127.0.0.1:6080", keystone_users={"svc": "pw"},
                            keystone_token_ttl_s=3600, clock=lambda: NOW)


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]], sim: ComputeSimulator
) -> Client:
    return await aiohttp_client(create_compute_app(sim))


async def test_password_auth_issues_a_token(client: Client, sim: ComputeSimulator) -> None:
    resp = await client.post(TOKENS_PATH, json=auth_body())
    assert resp.status == 201
    token = resp.headers["X-Subject-Token"]
    assert sim.is_authorized(token)
    body = (await resp.json())["token"]
    assert body["expires_at"].endswith("Z")
    assert datetime.fromisoformat(body["expires_at"]).timestamp() == NOW + 3600
    assert datetime.fromisoformat(body["issued_at"]).timestamp() == NOW
    assert body["project"]["id"] == PROJECT and body["catalog"] == []
    assert sim.keystone_calls == 1


@pytest.mark.parametrize("body", [auth_body(password="nope"), auth_body(name="mallory")])
async def test_bad_credentials_are_401(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post(TOKENS_PATH, json=body)
    assert resp.status == 401
    assert "X-Subject-Token" not in resp.headers


async def test_malformed_auth_body_is_400(client: Client) -> None:
    assert (await client.post(TOKENS_PATH, data=b"{")).status == 400
    assert (await client.post(TOKENS_PATH, json={"auth": {}})).status == 400


@pytest.mark.parametrize(
    "body",
    [
        auth_body(domain=""),
        auth_body(project=""),
        {"auth": {"identity": {"methods": "password"}}},
        {"auth": {"identity": {"methods": ["token"], "password": {}}}},
        [],
    ],
)
def test_password_credentials_refuses_incomplete_bodies(body: object) -> None:
    assert password_credentials(body) is None


def test_password_credentials_reads_a_complete_body() -> None:
    assert password_credentials(auth_body()) == ("svc", "pw", PROJECT)
