"""/openapi.json: a valid OpenAPI 3.1 document naming exactly the app's routes, whose statuses
the code can produce, and whose schemas the real answers match."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway import errors
from gateway.app import create_app
from gateway.config import Settings
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.simulator.state import ComputeSimulator
from gateway.upstream.console_ws import UpstreamRefused
from gateway.web import openapi
from tests.support import (
    MISSING_SERVER,
    OTHER_PROJECT,
    PROJECT,
    SERVER,
    STOPPED_SERVER,
    bearer,
    mint_jwt,
)

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]
Obj = dict[str, Any]

BASE_URL = "https://console.example.test"
DOC_URI = "urn:console-gateway:openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
BODY = {"project_id": PROJECT, "server_id": SERVER}
NOVA_PATH = f"/v2.1/{PROJECT}/servers/{{server}}/remote-consoles"
NOVA_BODY = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
NOVA_26 = {"OpenStack-API-Version": "compute 2.6"}
# DESIGN 2.4: the statuses of the native API's errors.
DESIGN_ERRORS = {400, 401, 403, 404, 409, 413, 415, 429, 502, 503, 504}


def all_error_classes() -> list[type[errors.GatewayError]]:
    assert issubclass(UpstreamRefused, errors.GatewayError)  # imported: it is a subclass too
    found, pending = [], [errors.GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERROR_STATUSES = {cls.status for cls in all_error_classes()}


def served_by_create_app(app: web.Application) -> bool:
    return any(
        getattr(resource, "canonical", None) == openapi.OPENAPI_PATH
        for resource in app.router.resources()
    )


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
    compute_url: str,
    aiohttp_client: Callable[[TestServer], Awaitable[Client]],
    fake_redis: aioredis.Redis,
) -> ClientFactory:
    """The real app in front of the simulator (like make_gateway), with /openapi.json."""

    async def make(overrides: Obj | None = None) -> Client:
        base = {"upstream": {"compute_url": compute_url}, "server": {"public_base_url": BASE_URL}}
        settings = make_settings({**base, **(overrides or {})})
        server = TestServer(create_app(settings, redis=fake_redis))
        await server.start_server()
        return await aiohttp_client(server)

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> Client:
    return await make_client()


@pytest.fixture
def document() -> Obj:
    return openapi.build_document(BASE_URL)


def resolve(doc: Obj, node: Obj) -> Obj:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def operations(doc: Obj) -> dict[tuple[str, str], Obj]:
    return {
        (method.upper(), path): operation
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, canonical path) of every route; static trees as the one documented prefix."""
    found = set()
    for route in app.router.routes():
        assert route.method != "*", "a catch-all method cannot be documented"
        if route.method == "HEAD":
            continue
        resource = route.resource
        assert resource is not None
        if isinstance(resource, web.StaticResource):
            assert resource.canonical.startswith("/static")
            found.add((route.method, openapi.STATIC_PATH))
        else:
            found.add((route.method, resource.canonical))
    return found


class Checker:
    """Checks real answers against the document: status documented, body valid, headers there."""

    def __init__(self, doc: Obj) -> None:
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(
            DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        self.seen: set[tuple[str, str, int]] = set()

    async def check(self, response: ClientResponse, method: str, path: str) -> Any:
        operation = operations(self.doc)[(method, path)]
        responses = operation["responses"]
        status = response.status
        assert str(status) in responses, f"{method} {path} answered undocumented {status}"
        self.seen.add((method, path, status))
        spec = resolve(self.doc, responses[str(status)])
        for name, header in spec.get("headers", {}).items():
            if resolve(self.doc, header).get("required"):
                assert name in response.headers, f"{method} {path} {status}: no {name}"
        assert "X-Request-ID" in spec["headers"] and "X-Request-ID" in response.headers
        body = await response.read()
        content = spec.get("content")
        if content is None:
            assert body == b"", f"{method} {path} {status}: a body where none is documented"
            return None
        content_type = response.headers["Content-Type"]
        if content_type.split(";")[0] == "application/json":
            (media,) = (v for k, v in content.items() if k == "application/json")
            data = json.loads(body)
            self.validate(data, media["schema"])
            return data
        accepted = {content_type, content_type.split(";")[0], "*/*"}
        assert accepted & set(content), f"{method} {path} {status}: {content_type} undocumented"
        return body

    def validate(self, data: Any, schema: Obj) -> None:
        validator = Draft202012Validator(
            {"$ref": DOC_URI + schema["$ref"]} if "$ref" in schema else schema,
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        validator.validate(data)


# --- the document itself ---------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(document: Obj) -> None:
    assert document["openapi"] == "3.1.0"
    validate_spec(document)  # picks the 3.1 validator from the "openapi" field
    ids = [operation["operationId"] for operation in operations(document).values()]
    assert len(ids) == len(set(ids))


async def test_every_route_is_documented_and_nothing_else(client: Client, document: Obj) -> None:
    routes = app_routes(client.app)
    documented = set(operations(document))
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the app does not serve"
    assert ("GET", openapi.STATIC_PATH) in routes  # the console page's own files at least


def test_create_app_serves_it(make_settings: Callable[..., Settings]) -> None:
    assert served_by_create_app(create_app(make_settings())), "wire openapi.add_routes in app.py"


async def test_served_without_a_token_with_the_public_base_url(client: Client) -> None:
    response = await client.get(openapi.OPENAPI_PATH)
    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    assert served == openapi.build_document(BASE_URL)
    assert served["servers"][0]["url"] == BASE_URL
    assert "X-Request-ID" in response.headers


def test_operations_declare_their_authentication(document: Obj) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["novaToken"]["in"] == "header" and schemes["novaToken"]["name"] == "X-Auth-Token"
    for (method, path), operation in operations(document).items():
        security = operation["security"]  # explicit everywhere: no inherited default
        if path.startswith("/v1/"):
            assert security == [{"bearerAuth": []}], (method, path)
        elif path.endswith("/remote-consoles"):
            assert security == [{"bearerAuth": []}, {"novaToken": []}]
        else:
            assert security == [], (method, path)


def test_documented_error_statuses_are_ones_the_code_produces(document: Obj) -> None:
    for (method, path), operation in operations(document).items():
        statuses = {int(status) for status in operation["responses"]}
        failures = {s for s in statuses if s >= 400}
        assert failures <= ERROR_STATUSES, (method, path, failures - ERROR_STATUSES)
    create = {int(s) for s in operations(document)[("POST", "/v1/consoles")]["responses"]}
    assert create - {201} <= ERROR_STATUSES
    assert create >= DESIGN_ERRORS | {201}
    nova_path = "/v2.1/{project_id}/servers/{server_id}/remote-consoles"
    nova = {int(s) for s in operations(document)[("POST", nova_path)]["responses"]}
    assert nova >= DESIGN_ERRORS | {200, 406}


def test_error_codes_are_the_error_classes_codes(document: Obj) -> None:
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["properties"]["code"]["enum"]) == {cls.code for cls in all_error_classes()}


def test_printable_for_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    assert openapi.main(["https://gw.example.org"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == openapi.build_document("https://gw.example.org")


# --- real answers match the document ---------------------------------------------------------


async def test_native_api_answers_match(client: Client, document: Obj) -> None:
    checker, path = Checker(document), "/v1/consoles"
    auth = bearer(mint_jwt())
    created = await checker.check(await client.post(path, json=BODY, headers=auth), "POST", path)
    console_id = created["console"]["id"]
    assert created["console"]["url"] == f"{BASE_URL}/console/{console_id}"
    for body, headers in (
        (BODY, {}),  # no token: 401 with WWW-Authenticate
        ({**BODY, "server_id": STOPPED_SERVER}, auth),
        ({**BODY, "server_id": MISSING_SERVER}, auth),
        ({**BODY, "project_id": OTHER_PROJECT}, auth),
        ({**BODY, "colour": "red"}, auth),
    ):
        await checker.check(await client.post(path, json=body, headers=headers), "POST", path)
    await checker.check(
        await client.post(path, data="x", headers={**auth, "Content-Type": "text/plain"}),
        "POST",
        path,
    )
    await checker.check(
        await client.post(path, json={"pad": "x" * 20000, **BODY}, headers=auth), "POST", path
    )
    one = "/v1/consoles/{console_id}"
    url = f"/v1/consoles/{console_id}"
    await checker.check(await client.get(url, headers=auth), "GET", one)
    other = bearer(mint_jwt(sub="mallory"))
    await checker.check(await client.get(url, headers=other), "GET", one)
    await checker.check(await client.delete(url, headers=auth), "DELETE", one)
    await checker.check(await client.get(url, headers=auth), "GET", one)
    await checker.check(await client.get("/v1/consoles/" + "A" * 43, headers=auth), "GET", one)
    assert {s for m, p, s in checker.seen if (m, p) == ("POST", path)} == {
        201, 400, 401, 403, 404, 409, 413, 415,
    }  # fmt: skip
    assert {s for m, p, s in checker.seen if p == one} == {200, 204, 403, 404, 410}


async def test_limits_and_upstream_failures_match(
    make_client: ClientFactory, simulator: ComputeSimulator, document: Obj
) -> None:
    client = await make_client({"limits": {"create_per_window": 1}})
    checker, path, auth = Checker(document), "/v1/consoles", bearer(mint_jwt())
    simulator.faults.garbage_body = True
    await checker.check(await client.post(path, json=BODY, headers=auth), "POST", path)
    await checker.check(await client.post(path, json=BODY, headers=auth), "POST", path)
    assert {s for _, _, s in checker.seen} == {502, 429}


async def test_nova_answers_match(client: Client, document: Obj) -> None:
    checker = Checker(document)
    template = "/v2.1/{project_id}/servers/{server_id}/remote-consoles"
    auth = {"X-Auth-Token": mint_jwt()}
    for server, headers in (
        (SERVER, NOVA_26),
        (SERVER, {}),  # 2.1: the route does not exist
        (SERVER, {"OpenStack-API-Version": "compute two"}),
        (SERVER, {"OpenStack-API-Version": "compute 2.97"}),
        (STOPPED_SERVER, NOVA_26),
        (MISSING_SERVER, NOVA_26),
    ):
        url = NOVA_PATH.format(server=server)
        response = await client.post(url, json=NOVA_BODY, headers={**auth, **headers})
        await checker.check(response, "POST", template)
    response = await client.post(NOVA_PATH.format(server=SERVER), json=NOVA_BODY, headers=NOVA_26)
    await checker.check(response, "POST", template)
    assert {s for _, _, s in checker.seen} == {200, 400, 401, 404, 406, 409}
    for path in ("/", "/v2.1", "/v2.1/"):
        await checker.check(await client.get(path), "GET", path)


async def test_browser_and_operations_answers_match(client: Client, document: Obj) -> None:
    checker = Checker(document)
    response = await client.post("/v1/consoles", json=BODY, headers=bearer(mint_jwt()))
    console_id = (await response.json())["console"]["id"]
    page = "/console/{console_id}"
    await checker.check(await client.get(f"/console/{console_id}"), "GET", page)
    await checker.check(await client.get("/console/" + "A" * 43), "GET", page)
    ws = "/ws/{console_id}"
    await checker.check(await client.get(f"/ws/{console_id}"), "GET", ws)  # no Origin: 403
    await checker.check(
        await client.get(f"/ws/{console_id}", headers={"Origin": BASE_URL}), "GET", ws
    )  # not a WebSocket handshake: 400
    async with client.ws_connect("/ws/" + "A" * 43, headers={"Origin": BASE_URL}) as socket:
        assert "101" in operations(document)[("GET", ws)]["responses"]
        await socket.receive()
        assert socket.close_code == 4404  # documented in the operation's description
        assert "4404" in operations(document)[("GET", ws)]["description"]
    for path in ("/healthz", "/readyz", openapi.OPENAPI_PATH):
        await checker.check(await client.get(path), "GET", path)
    metrics = await client.get("/metrics")
    assert metrics.headers["Content-Type"] == METRICS_CONTENT_TYPE
    await checker.check(metrics, "GET", "/metrics")
    static = openapi.STATIC_PATH
    await checker.check(await client.get("/static/console.js"), "GET", static)
    await checker.check(await client.get("/static/no-such-file.js"), "GET", static)
    assert {(p, s) for _, p, s in checker.seen if p in (ws, static)} == {
        (ws, 403), (ws, 400), (static, 200), (static, 404),
    }  # fmt: skip
