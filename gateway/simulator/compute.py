"""A Nova-like compute API: remote-consoles, version documents, microversions and faults."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.simulator import keystone
from gateway.simulator.state import ComputeSimulator, SimServer

SIM = web.AppKey("simulator", ComputeSimulator)

_VERSION_RE = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")  # nova's APIVersionRequest format
MIN_VERSION = (2, 1)
REMOTE_CONSOLES_MIN = (2, 6)
_UPDATED = "2013-07-23T11:33:21Z"
# nova's wsgi.Fault names; anything else is a computeFault.
_FAULT_NAMES = {
    400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
    405: "badMethod", 409: "conflictingRequest", 413: "overLimit", 415: "badMediaType",
    429: "overLimit", 501: "notImplemented", 503: "serviceUnavailable",
}
_CONSOLE_TYPES = {"novnc": "vnc"}  # the only console this simulator serves
_VM_STATES = {"SHUTOFF": "stopped", "SHELVED_OFFLOADED": "shelved_offloaded"}
_VARY = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
Version = tuple[int, int]


class _Fault(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def fault_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    name = _FAULT_NAMES.get(status, "computeFault")
    body = {name: {"code": status, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def parse_version(text: str) -> Version:
    match = _VERSION_RE.match(text)
    if match is None:
        raise _Fault(400, f"API Version String {text} is of invalid format. "
                          "Must be of format MajorNum.MinorNum.")
    return int(match.group(1)), int(match.group(2))


def fmt(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def requested_version(headers: CIMultiDictProxy[str], max_version: Version) -> Version:
    """OpenStack-API-Version's compute entry wins; no header at all means 2.1."""
    text: str | None = None
    for value in headers.getall("OpenStack-API-Version", []):
        for item in value.split(","):
            service, _, version = item.strip().partition(" ")
            if service.lower() == "compute" and text is None:
                text = version.strip()
    if text is None:
        legacy = headers.get("X-OpenStack-Nova-API-Version")
        text = legacy.strip() if legacy is not None else None
    if text is None:
        return MIN_VERSION
    if text.lower() == "latest":
        return max_version
    asked = parse_version(text)
    if not MIN_VERSION <= asked <= max_version:
        raise _Fault(406, f"Version {fmt(asked)} is not supported by the API. "
                          f"Minimum is {fmt(MIN_VERSION)} and maximum is {fmt(max_version)}.")
    return asked


def version_headers(version: Version) -> dict[str, str]:
    return {
        "OpenStack-API-Version": f"compute {fmt(version)}",
        "X-OpenStack-Nova-API-Version": fmt(version),
        "Vary": _VARY,
    }


def validate_body(body: object) -> tuple[str, str]:
    """nova's create_v26 schema, narrowed to the one console type simulated."""
    if not isinstance(body, dict) or set(body) != {"remote_console"}:
        raise _Fault(400, "Invalid input for field/attribute remote_console.")
    console = body["remote_console"]
    if not isinstance(console, dict) or not {"type", "protocol"} <= set(console):
        raise _Fault(400, "Invalid input for field/attribute remote_console. "
                          "'protocol' and 'type' are required properties")
    if set(console) - {"type", "protocol"}:
        raise _Fault(400, "Additional properties are not allowed in remote_console.")
    console_type, protocol = console["type"], console["protocol"]
    if not isinstance(console_type, str) or not isinstance(protocol, str):
        raise _Fault(400, "Invalid input for field/attribute remote_console.")
    if _CONSOLE_TYPES.get(console_type) != protocol:
        raise _Fault(400, f"Unavailable console type {console_type} for protocol {protocol}.")
    return console_type, protocol


def version_document(base_url: str, max_version: Version) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": fmt(max_version),
        "min_version": fmt(MIN_VERSION),
        "updated": _UPDATED,
        "links": [{"rel": "self", "href": f"{base_url}/v2.1/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }


async def versions(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    doc = version_document(str(request.url.origin()), parse_version(sim.max_microversion))
    return web.json_response({"versions": [doc]})


async def version(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    doc = version_document(str(request.url.origin()), parse_version(sim.max_microversion))
    return web.json_response({"version": doc})


async def remote_consoles(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    sim.console_calls += 1
    if sim.faults.take_drop():
        if request.transport is not None:
            request.transport.abort()
        # aiohttp takes a cancelled handler for a client disconnect: it writes no 500 and
        # logs nothing above debug, so the peer just sees the connection reset.
        raise asyncio.CancelledError
    if sim.faults.delay_s:
        await asyncio.sleep(sim.faults.delay_s)
    injected = sim.faults.take_status()
    if injected is not None:
        return fault_response(injected, "Injected fault.")
    try:
        return await _create_console(request, sim)
    except _Fault as exc:
        return fault_response(exc.status, exc.message, exc.headers)


async def _create_console(request: web.Request, sim: ComputeSimulator) -> web.Response:
    if not sim.is_authorized(request.headers.get("X-Auth-Token")):
        return keystone.unauthorized(request)
    version = requested_version(request.headers, parse_version(sim.max_microversion))
    headers = version_headers(version)
    if version < REMOTE_CONSOLES_MIN:
        raise _Fault(404, "The resource could not be found.", headers)
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise _Fault(400, "Malformed request body", headers) from None
    try:
        console_type, protocol = validate_body(body)
    except _Fault as exc:
        raise _Fault(exc.status, exc.message, headers) from None
    server_id = request.match_info["server_id"]
    server = sim.find_server(request.match_info["project_id"], server_id)
    if server is None:
        raise _Fault(404, f"Instance {server_id} could not be found.", headers)
    if server.status != "ACTIVE":
        vm_state = _VM_STATES.get(server.status, server.status.lower())
        raise _Fault(409, f"Cannot 'get_vnc_console' instance {server_id} while it is in "
                          f"vm_state {vm_state}", headers)
    return _success(sim, server, console_type, protocol, headers)


def _success(
    sim: ComputeSimulator,
    server: SimServer,
    console_type: str,
    protocol: str,
    headers: dict[str, str],
) -> web.Response:
    if sim.faults.garbage_body:
        return web.Response(text="<html>upstream proxy error</html>", content_type="text/html",
                            headers=headers)
    if sim.faults.raw_body is not None:
        return web.Response(body=sim.faults.raw_body, content_type="application/json",
                            headers=headers)
    url = sim.issue_console_url(server)
    body = {"remote_console": {"protocol": protocol, "type": console_type, "url": url}}
    return web.json_response(body, headers=headers)


def create_compute_app(sim: ComputeSimulator) -> web.Application:
    app = web.Application()
    app[SIM] = sim
    app.router.add_get("/", versions)
    app.router.add_get("/v2.1", version)
    app.router.add_get("/v2.1/", version)
    app.router.add_post("/v2.1/{project_id}/servers/{server_id}/remote-consoles", remote_consoles)
    keystone.add_routes(app, SIM)
    return app
