"""The native JSON API: create, inspect and revoke gateway consoles."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway import audit, errors
from gateway.config import Settings
from gateway.consoles import IssuedConsole, hash_console_id, validate_target
from gateway.fleet import broadcast_revocation
from gateway.keys import CONNECTIONS, CONSOLES, METRICS, PRINCIPAL, SETTINGS
from gateway.models import ConsoleRecord
from gateway.web.bodies import read_json_object

_ALLOWED_FIELDS = {"project_id", "server_id", "type", "protocol"}


def iso8601(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def console_links(settings: Settings, console_id: str) -> dict[str, str]:
    """Links come from the configured public base URL, never from the request's Host header."""
    base = settings.server.public_base_url
    ws_base = (
        "wss://" + base.removeprefix("https://")
        if base.startswith("https://")
        else ("ws://" + base.removeprefix("http://"))
    )
    return {"url": f"{base}/console/{console_id}", "websocket_url": f"{ws_base}/ws/{console_id}"}


def record_fields(record: ConsoleRecord) -> dict[str, Any]:
    return {
        "type": record.type,
        "protocol": record.protocol,
        "project_id": record.project_id,
        "server_id": record.server_id,
        "expires_at": iso8601(record.expires_at),
    }


def issued_console_body(settings: Settings, issued: IssuedConsole) -> dict[str, Any]:
    return {
        "console": {
            "id": issued.console_id,
            **console_links(settings, issued.console_id),
            **record_fields(issued.record),
        }
    }


async def create_console(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_json_object(
        request, max_bytes=settings.server.max_body_bytes, max_depth=settings.server.max_json_depth
    )
    unknown = set(body) - _ALLOWED_FIELDS
    if unknown:
        raise errors.BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))[:200]}.")
    target = validate_target(
        body.get("project_id"),
        body.get("server_id"),
        body.get("type", "novnc"),
        body.get("protocol", "vnc"),
    )
    issued = await request.app[CONSOLES].create(request[PRINCIPAL], target)
    record_creation(request, issued.record)
    return no_store(web.json_response(issued_console_body(settings, issued), status=201))


def record_creation(request: web.Request, record: ConsoleRecord) -> None:
    audit.console_created(request, record)
    request.app[METRICS].console_created()


async def get_console(request: web.Request) -> web.Response:
    console_id = request.match_info["console_id"]
    record = await request.app[CONSOLES].get(request[PRINCIPAL], console_id)
    body = {
        "console": {
            "id": console_id,
            **console_links(request.app[SETTINGS], console_id),
            **record_fields(record),
            "owner": record.owner,
            "created_at": iso8601(record.created_at),
            "status": "active",
            "live_connections": await request.app[CONNECTIONS].live_connections(record.id_hash),
        }
    }
    return no_store(web.json_response(body))


async def delete_console(request: web.Request) -> web.Response:
    console_id = request.match_info["console_id"]
    revoked = await request.app[CONSOLES].revoke(request[PRINCIPAL], console_id)
    if revoked is not None:
        audit.console_revoked(request, revoked)
        request.app[METRICS].console_revoked()
    # Also when it was revoked already: a retried DELETE repeats a broadcast that failed.
    await broadcast_revocation(request.app, hash_console_id(console_id))
    return web.Response(status=204)


def no_store(response: web.Response) -> web.Response:
    # Responses carry capability links: no shared cache may keep them.
    response.headers["Cache-Control"] = "no-store"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/consoles", create_console)
    app.router.add_get("/v1/consoles/{console_id}", get_console, allow_head=False)
    app.router.add_delete("/v1/consoles/{console_id}", delete_console)
