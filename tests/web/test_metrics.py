"""/metrics and the request-metrics and denial middlewares, on a small app of their own."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.policy import require_project
from gateway.auth.verifier import create_verifier
from gateway.config import Settings
from gateway.keys import PRINCIPAL, VERIFIER
from gateway.metrics import GatewayMetrics
from gateway.web import metrics as web_metrics
from gateway.web.errors import error_middleware
from gateway.web.middlewares import auth_middleware, public, request_id_middleware
from tests.support import bearer, mint_jwt

Client = TestClient[web.Request, web.Application]
THING_ID = "Zq3xVb7m0cK2pL9sT4wY8dN1fH6jR5aE0gU3iO7kM2n"  # id-shaped: must never be a label


async def thing(request: web.Request) -> web.Response:
    require_project(request[PRINCIPAL], "project-a")
    return web.Response(text="thing")


@public
async def socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close()
    return ws


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(process_metrics=False)


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    make_settings: Callable[..., Settings],
    metrics: GatewayMetrics,
) -> AsyncIterator[Client]:
    app = web.Application(
        middlewares=[
            request_id_middleware,
            web_metrics.request_metrics_middleware(metrics),
            error_middleware,
            web_metrics.denials_middleware(metrics),
            auth_middleware,
        ]
    )
    async with aiohttp.ClientSession() as session:
        app[VERIFIER] = create_verifier(make_settings().auth, session)
        app.router.add_get("/v1/things/{thing_id}", thing)
        app.router.add_get("/ws/{thing_id}", socket)
        web_metrics.add_routes(app, metrics)
        yield await aiohttp_client(app)


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert THING_ID not in text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests(route: str, method: str, status: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"route": route, "method": method, "status": str(status)}
    return ("cgw_http_requests_total", tuple(sorted(labels.items())))


def denials(reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("cgw_auth_denials_total", (("reason", reason),))


async def test_metrics_is_public_prometheus_text(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name for f in text_string_to_metric_families(await response.text())}
    assert {"cgw_http_requests", "cgw_websockets_live", "cgw_upstream_calls"} <= families


async def test_requests_are_counted_by_route_template(client: Client) -> None:
    route = "/v1/things/{thing_id}"
    jwt = mint_jwt(projects=["project-a"])
    before = await scrape(client)
    assert (await client.get(f"/v1/things/{THING_ID}", headers=bearer(jwt))).status == 200
    after = await scrape(client)
    assert after[requests(route, "GET", 200)] - before.get(requests(route, "GET", 200), 0) == 1
    latency = ("cgw_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert after[latency] - before.get(latency, 0) == 1


async def test_unknown_paths_and_methods_share_one_label(client: Client) -> None:
    assert (await client.get(f"/nowhere/{THING_ID}")).status == 404
    assert (await client.put("/metrics")).status == 405
    found = await scrape(client)
    assert found[requests("unmatched", "GET", 404)] == 1
    assert found[requests("unmatched", "PUT", 405)] == 1


async def test_websocket_upgrade_counts_as_101_without_latency(client: Client) -> None:
    async with client.ws_connect(f"/ws/{THING_ID}") as ws:
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    route = "/ws/{thing_id}"
    for _ in range(100):  # the handler finishes after the client saw the close
        found = await scrape(client)
        if requests(route, "GET", 101) in found:
            break
    assert found[requests(route, "GET", 101)] == 1
    latency = ("cgw_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert latency not in found


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "missing_token"),
        (bearer(mint_jwt(exp=1)), 401, "expired"),
        (bearer(mint_jwt(aud="other")), 401, "wrong_audience"),
        (bearer(mint_jwt(projects=["project-b"])), 403, "project_not_allowed"),
    ],
)
async def test_denials_are_counted_and_audited(
    client: Client, captured_logs: io.StringIO, headers: dict[str, str], status: int, reason: str
) -> None:
    before = await scrape(client)
    response = await client.get(f"/v1/things/{THING_ID}", headers=headers)
    assert response.status == status
    after = await scrape(client)
    assert after[denials(reason)] - before.get(denials(reason), 0) == 1
    assert after[requests("/v1/things/{thing_id}", "GET", status)] == 1
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    (event,) = [line for line in lines if line.get("event") == "auth_denied"]
    assert event["reason"] == reason and event["status"] == status
    assert event["route"] == "/v1/things/{thing_id}"
    assert event["request_id"] == response.headers["X-Request-ID"]
    assert event["subject"] == ("alice" if status == 403 else None)
    logs = captured_logs.getvalue()
    assert THING_ID not in logs
    for value in headers.values():
        assert value.removeprefix("Bearer ") not in logs
