"""The Nova-compatible face: remote-consoles and the version documents clients read first."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import errors
from gateway.consoles import validate_target
from gateway.keys import CONSOLES, PRINCIPAL, SETTINGS
from gateway.web.api import console_links, no_store, record_creation
from gateway.web.bodies import read_json_object
from gateway.web.microversion import (
    MAX_VERSION,
    MIN_VERSION,
    REMOTE_CONSOLES_MIN,
    negotiate,
    version_headers,
)
from gateway.web.middlewares import public

_UPDATED = "2013-07-23T11:33:21Z"  # what nova reports for v2.1


def version_document(base_url: str) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": str(MAX_VERSION),
        "min_version": str(MIN_VERSION),
        "updated": _UPDATED,
        "links": [{"rel": "self", "href": f"{base_url}/v2.1/"}],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }


@public
async def versions(request: web.Request) -> web.Response:
    doc = version_document(request.app[SETTINGS].server.public_base_url)
    return web.json_response({"versions": [doc]})


@public
async def version(request: web.Request) -> web.Response:
    base_url = request.app[SETTINGS].server.public_base_url
    return web.json_response({"version": version_document(base_url)})


def _console_request(body: dict[str, Any]) -> dict[str, Any]:
    console = body.get("remote_console")
    if not isinstance(console, dict):
        raise errors.BadRequest("Invalid input for field/attribute remote_console.")
    for field in ("type", "protocol"):
        if field not in console:
            raise errors.BadRequest(f"'{field}' is a required property")
    return console


async def remote_consoles(request: web.Request) -> web.Response:
    version = negotiate(request.headers)
    if version < REMOTE_CONSOLES_MIN:
        # Below 2.6 nova has no such route; it answers exactly like an unknown URL.
        raise errors.NotFound("The resource could not be found.")
    settings = request.app[SETTINGS]
    body = await read_json_object(
        request, max_bytes=settings.server.max_body_bytes, max_depth=settings.server.max_json_depth
    )
    console = _console_request(body)
    target = validate_target(
        request.match_info["project_id"],
        request.match_info["server_id"],
        console["type"],
        console["protocol"],
    )
    issued = await request.app[CONSOLES].create(request[PRINCIPAL], target)
    record_creation(request, issued.record)
    answer = {
        "remote_console": {
            "protocol": target.protocol,
            "type": target.type,
            "url": console_links(settings, issued.console_id)["url"],
        }
    }
    return no_store(web.json_response(answer, headers=version_headers(version)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", versions, allow_head=False)
    app.router.add_get("/v2.1", version, allow_head=False)
    app.router.add_get("/v2.1/", version, allow_head=False)
    app.router.add_post("/v2.1/{project_id}/servers/{server_id}/remote-consoles", remote_consoles)
