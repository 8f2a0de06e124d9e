"""GET /openapi.json: the OpenAPI 3.1 document of every route the gateway serves.

Built from the code's own constants (error classes, Nova fault names, id patterns, console types,
microversions), so most of it cannot drift; tests/web/test_openapi.py checks that its paths and
methods are exactly the app's routes and that real responses match its schemas.
`python -m gateway.web.openapi [BASE_URL]` prints it (for docs/).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.keys import SETTINGS
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.models import CONSOLE_TYPES, ID_PATTERN
from gateway.upstream import console_ws  # noqa: F401 - defines UpstreamRefused (its error code)
from gateway.web.errors import NOVA_FAULT_NAMES
from gateway.web.microversion import MAX_VERSION, MIN_VERSION, REMOTE_CONSOLES_MIN
from gateway.web.middlewares import public

Obj = dict[str, Any]

OPENAPI_PATH = "/openapi.json"
# Static files (the console page's script and style, noVNC's core/ and vendor/ trees) are
# documented as one prefix.
STATIC_PATH = "/static/{path}"
_CONSOLE_ID_PATTERN = "^[A-Za-z0-9_-]{43}$"


def _ref(kind: str, name: str) -> Obj:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Obj:
    return _ref("schemas", name)


def _json(schema_name: str, description: str, **extra: Any) -> Obj:
    return {
        "description": description,
        "content": {"application/json": {"schema": _schema(schema_name)}},
        **extra,
    }


def _error_codes() -> list[str]:
    found: list[type[errors.GatewayError]] = []
    pending: list[type[errors.GatewayError]] = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted({cls.code for cls in found})


def _nova_fault_names() -> list[str]:
    return sorted({*NOVA_FAULT_NAMES.values(), "computeFault"})


_NATIVE_ERRORS = {
    400: "Invalid input: a malformed body or id, an unknown field, a bad type/protocol, "
    "JSON nested too deeply, an unknown Content-Encoding (`invalid_request`).",
    401: "Missing, malformed, expired or otherwise invalid JWT (`invalid_token`).",
    403: "The caller may not do this: a project not in its token, not the console's owner "
    "nor an administrator (`forbidden`).",
    404: "Unknown console, or the compute API does not know the server (`not_found`).",
    409: "The server is not in a state to open a console, e.g. SHUTOFF (`conflict`).",
    410: "The console expired or was revoked (`console_gone`).",
    413: "The body is larger than server.max_body_bytes (`payload_too_large`).",
    415: "The body is not uncompressed application/json (`unsupported_media_type`).",
    429: "Too many consoles created by this subject in limits.create_window_s "
    "(`rate_limited`); retry after Retry-After seconds.",
    500: "An unexpected error; the details are logged, never returned (`internal_error`).",
    502: "The compute API gave an unusable answer, refused the gateway's credentials, or "
    "returned a console URL on a host not in upstream.console_hosts "
    "(`upstream_error`, `upstream_refused`).",
    503: "Redis does not answer (`store_unavailable`) or this instance is draining "
    "(`draining`); retry.",
    504: "The compute API did not answer within upstream.timeout_s, or a single-flight "
    "wait exceeded cache.lock_wait_s (`upstream_timeout`).",
}


def _native_error(status: int) -> Obj:
    response = _json("Error", _NATIVE_ERRORS[status])
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _ref("headers", "WWWAuthenticate")}
    elif status == 429:
        response["headers"] = {"Retry-After": _ref("headers", "RetryAfter")}
    return response


def _nova_error(status: int) -> Obj:
    name = NOVA_FAULT_NAMES.get(status, "computeFault")
    text = _NATIVE_ERRORS.get(status, "")
    if status == 404:
        text = (
            "Unknown server, or a microversion below "
            f"{REMOTE_CONSOLES_MIN} (the default 2.1 included), where the route does not exist."
        )
    elif status == 400:
        text = "Invalid body, id, type or protocol, or a malformed microversion header."
    elif status == 406:
        text = f"A microversion outside {MIN_VERSION} to {MAX_VERSION}."
    response = _json("NovaFault", f"`{name}`: {text}")
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _ref("headers", "WWWAuthenticate")}
    elif status == 429:
        response["headers"] = {"Retry-After": _ref("headers", "RetryAfter")}
    return response


def _errors(statuses: Iterable[int], *, nova: bool = False) -> Obj:
    render = _nova_error if nova else _native_error
    return {str(status): render(status) for status in statuses}


def _html(description: str) -> Obj:
    return {
        "description": description,
        "headers": {
            "Content-Security-Policy": {
                "description": "default-src 'none'; script-src 'self'; ... frame-ancestors "
                "<server.allowed_origins>",
                "schema": {"type": "string"},
            },
        },
        "content": {"text/html": {"schema": {"type": "string"}}},
    }


_BEARER: list[Obj] = [{"bearerAuth": []}]
_PUBLIC: list[Obj] = []


def _console_id_parameter(description: str) -> Obj:
    return {
        "name": "console_id",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": _CONSOLE_ID_PATTERN},
    }


def _id_parameter(name: str) -> Obj:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"},
    }


def _microversion_parameters() -> list[Obj]:
    return [
        {
            "name": "OpenStack-API-Version",
            "in": "header",
            "description": f"`compute X.Y` with {REMOTE_CONSOLES_MIN} ≤ X.Y ≤ {MAX_VERSION}, or "
            "`compute latest`; wins over X-OpenStack-Nova-API-Version. Without either header "
            f"the version is {MIN_VERSION}, where this route does not exist (404).",
            "schema": {"type": "string", "examples": ["compute 2.6"]},
        },
        {
            "name": "X-OpenStack-Nova-API-Version",
            "in": "header",
            "description": "The legacy form: `X.Y`.",
            "schema": {"type": "string", "examples": ["2.6"]},
        },
    ]


def _paths() -> Obj:
    versions_doc = _json("Version", "The v2.1 version document (Nova version discovery).")
    return {
        "/v1/consoles": {
            "post": {
                "operationId": "createConsole",
                "tags": ["consoles"],
                "summary": "Create a gateway console for a server",
                "description": "Checks the JWT and its projects claim, gets (or reuses a cached) "
                "console URL from the compute API, and answers with a gateway link carrying only "
                "an opaque 256-bit id. The id is shown only here: keep it like a password.",
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schema("ConsoleRequest")}},
                },
                "responses": {
                    "201": _json("ConsoleEnvelope", "The console was created."),
                    **_errors((400, 401, 403, 404, 409, 413, 415, 429, 500, 502, 503, 504)),
                },
            },
        },
        "/v1/consoles/{console_id}": {
            "parameters": [_console_id_parameter("The id from the console's creation.")],
            "get": {
                "operationId": "getConsole",
                "tags": ["consoles"],
                "summary": "Read a console (its owner or an administrator)",
                "security": _BEARER,
                "responses": {
                    "200": _json("ConsoleDetailsEnvelope", "The console."),
                    **_errors((401, 403, 404, 410, 500, 503)),
                },
            },
            "delete": {
                "operationId": "revokeConsole",
                "tags": ["consoles"],
                "summary": "Revoke a console (its owner or an administrator)",
                "description": "Its live WebSockets on every instance close with 4410 within a "
                "second. Repeating it is harmless.",
                "security": _BEARER,
                "responses": {
                    "204": {"description": "Revoked (also when it was revoked or expired)."},
                    **_errors((401, 403, 404, 500, 503)),
                },
            },
        },
        "/v2.1/{project_id}/servers/{server_id}/remote-consoles": {
            "parameters": [_id_parameter("project_id"), _id_parameter("server_id")],
            "post": {
                "operationId": "novaCreateRemoteConsole",
                "tags": ["nova"],
                "summary": "Nova-compatible remote console (microversion ≥ 2.6)",
                "description": "What OpenStack clients call (python-novaclient "
                "`servers.get_console_url`). Answers in Nova's shape with a gateway link; errors "
                "are Nova faults. The JWT goes in `Authorization: Bearer` or `X-Auth-Token`.",
                "security": [{"bearerAuth": []}, {"novaToken": []}],
                "parameters": _microversion_parameters(),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schema("NovaConsoleRequest")}},
                },
                "responses": {
                    "200": _json(
                        "NovaConsoleEnvelope",
                        "The gateway link, in Nova's shape (200, not 201, as Nova answers).",
                        headers={
                            "OpenStack-API-Version": {
                                "description": "The version used: `compute X.Y`.",
                                "schema": {"type": "string"},
                            },
                            "X-OpenStack-Nova-API-Version": {
                                "description": "The version used: `X.Y`.",
                                "schema": {"type": "string"},
                            },
                        },
                    ),
                    **_errors(
                        (400, 401, 403, 404, 406, 409, 413, 415, 429, 500, 502, 503, 504),
                        nova=True,
                    ),
                },
            },
        },
        "/": {
            "get": {
                "operationId": "novaVersions",
                "tags": ["nova"],
                "summary": "Nova version discovery: the supported versions",
                "security": _PUBLIC,
                "responses": {"200": _json("Versions", "The version list.")},
            },
        },
        "/v2.1": {
            "get": {
                "operationId": "novaVersion",
                "tags": ["nova"],
                "summary": "Nova version discovery: v2.1",
                "security": _PUBLIC,
                "responses": {"200": versions_doc},
            },
        },
        "/v2.1/": {
            "get": {
                "operationId": "novaVersionSlash",
                "tags": ["nova"],
                "summary": "Nova version discovery: v2.1 (with the trailing slash)",
                "security": _PUBLIC,
                "responses": {"200": versions_doc},
            },
        },
        "/console/{console_id}": {
            "parameters": [_console_id_parameter("The console id is the credential.")],
            "get": {
                "operationId": "consolePage",
                "tags": ["browser"],
                "summary": "The console page (noVNC), for a browser",
                "description": "Connects to `../ws/{console_id}`. Refusals are HTML pages too.",
                "security": _PUBLIC,
                "responses": {
                    "200": _html("The console page."),
                    "404": _html("Unknown console link."),
                    "410": _html("The link expired or was revoked."),
                    "503": _html("noVNC is not installed on this gateway, or Redis is down."),
                },
            },
        },
        "/ws/{console_id}": {
            "parameters": [_console_id_parameter("The console id is the credential.")],
            "get": {
                "operationId": "consoleWebSocket",
                "tags": ["browser"],
                "summary": "The console WebSocket (RFB), relayed to the upstream console proxy",
                "description": "Binary frames both ways. After the upgrade, the close code says "
                "why a console ended: 4404 unknown console, 4410 expired or revoked, 1013 over a "
                "connection limit, 1011 the upstream refused or vanished, 1001 the instance is "
                "shutting down (reconnect), 1000 idle or maximum duration, 1003 a text frame, "
                "1009 a frame over relay.max_frame_bytes.",
                "security": _PUBLIC,
                "parameters": [
                    {
                        "name": "Origin",
                        "in": "header",
                        "description": "Must be in server.allowed_origins or be the gateway's "
                        "own; may be absent only with relay.allow_missing_origin.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "Sec-WebSocket-Protocol",
                        "in": "header",
                        "description": "Optional; `binary` is echoed if offered.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "101": {"description": "Switching Protocols: the console WebSocket."},
                    "400": _json("Error", "Not a valid WebSocket handshake (`invalid_request`)."),
                    "403": _json("Error", "The Origin is not allowed (`forbidden`)."),
                    "503": _json(
                        "Error",
                        "This instance is draining (`draining`; the load balancer retries "
                        "elsewhere) or Redis does not answer (`store_unavailable`).",
                    ),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "Liveness",
                "security": _PUBLIC,
                "responses": {"200": _json("Health", "The process is alive.")},
            },
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "Readiness",
                "security": _PUBLIC,
                "responses": {
                    "200": _json("Readiness", "Redis answers and the instance is not draining."),
                    "503": _json("Readiness", "Draining, or Redis does not answer."),
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (the shipped nginx config does not expose it)",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                    },
                },
            },
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            },
        },
        STATIC_PATH: {
            "parameters": [
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "A file of the console page (`console.js`, `console.css`) or "
                    "of noVNC (`novnc/core/...`, `novnc/vendor/...`); may contain slashes.",
                    "schema": {"type": "string"},
                }
            ],
            "get": {
                "operationId": "staticFile",
                "tags": ["browser"],
                "summary": "Static files of the console page (one documented prefix)",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "The file (revalidated: Cache-Control no-cache).",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    "404": {"description": "No such file (directories included)."},
                },
            },
        },
    }


def _schemas() -> Obj:
    console_type = {"type": "string", "enum": sorted(CONSOLE_TYPES)}
    protocol = {"type": "string", "enum": sorted(set(CONSOLE_TYPES.values()))}
    identifier = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"}
    console_properties: Obj = {
        "id": {
            "type": "string",
            "pattern": _CONSOLE_ID_PATTERN,
            "description": "256 random bits, base64url: a capability, shown only on creation "
            "and to the owner.",
        },
        "url": {
            "type": "string",
            "format": "uri",
            "description": "The console page: server.public_base_url + /console/{id}.",
        },
        "websocket_url": {
            "type": "string",
            "format": "uri",
            "description": "The console WebSocket (ws:// or wss://), for custom clients.",
        },
        "type": console_type,
        "protocol": protocol,
        "project_id": identifier,
        "server_id": identifier,
        "expires_at": {
            "type": "string",
            "format": "date-time",
            "description": "UTC; each connect and disconnect slides it to sessions.ttl_s from "
            "then, capped at sessions.max_lifetime_s after creation.",
        },
    }
    console_required = list(console_properties)
    return {
        "ConsoleRequest": {
            "type": "object",
            "required": ["project_id", "server_id"],
            "additionalProperties": False,
            "properties": {
                "project_id": identifier,
                "server_id": identifier,
                "type": {**console_type, "default": "novnc"},
                "protocol": {**protocol, "default": "vnc"},
            },
        },
        "Console": {
            "type": "object",
            "required": console_required,
            "additionalProperties": False,
            "properties": console_properties,
        },
        "ConsoleDetails": {
            "type": "object",
            "required": [*console_required, "owner", "created_at", "status", "live_connections"],
            "additionalProperties": False,
            "properties": {
                **console_properties,
                "owner": {"type": "string", "description": "The creator's JWT `sub`."},
                "created_at": {"type": "string", "format": "date-time"},
                "status": {"type": "string", "enum": ["active"]},
                "live_connections": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Open console WebSockets on all instances.",
                },
            },
        },
        "ConsoleEnvelope": _envelope("console", "Console"),
        "ConsoleDetailsEnvelope": _envelope("console", "ConsoleDetails"),
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "enum": _error_codes()},
                        "message": {"type": "string", "description": "A sentence for people."},
                        "request_id": {
                            "type": "string",
                            "description": "= the X-Request-ID response header.",
                        },
                    },
                },
            },
        },
        "NovaConsoleRequest": {
            "type": "object",
            "required": ["remote_console"],
            "properties": {
                "remote_console": {
                    "type": "object",
                    "required": ["type", "protocol"],
                    "properties": {"type": console_type, "protocol": protocol},
                },
            },
        },
        "NovaConsoleEnvelope": {
            "type": "object",
            "required": ["remote_console"],
            "additionalProperties": False,
            "properties": {
                "remote_console": {
                    "type": "object",
                    "required": ["type", "protocol", "url"],
                    "additionalProperties": False,
                    "properties": {
                        "type": console_type,
                        "protocol": protocol,
                        "url": {"type": "string", "format": "uri"},
                    },
                },
            },
        },
        "NovaFault": {
            "type": "object",
            "description": "Nova's fault shape: one key naming the fault.",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": {"enum": _nova_fault_names()},
            "additionalProperties": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer", "description": "= the HTTP status."},
                    "message": {"type": "string"},
                },
            },
            "examples": [{"itemNotFound": {"code": 404, "message": "Not found."}}],
        },
        "VersionDocument": {
            "type": "object",
            "required": ["id", "status", "version", "min_version", "updated", "links"],
            "properties": {
                "id": {"type": "string", "enum": ["v2.1"]},
                "status": {"type": "string", "enum": ["CURRENT"]},
                "version": {"type": "string", "enum": [str(MAX_VERSION)]},
                "min_version": {"type": "string", "enum": [str(MIN_VERSION)]},
                "updated": {"type": "string", "format": "date-time"},
                "links": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["rel", "href"],
                        "properties": {
                            "rel": {"type": "string"},
                            "href": {"type": "string", "format": "uri"},
                        },
                    },
                },
                "media-types": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"base": {"type": "string"}, "type": {"type": "string"}},
                    },
                },
            },
        },
        "Versions": {
            "type": "object",
            "required": ["versions"],
            "additionalProperties": False,
            "properties": {
                "versions": {"type": "array", "items": _schema("VersionDocument"), "minItems": 1}
            },
        },
        "Version": _envelope("version", "VersionDocument"),
        "Health": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ready", "unready"]},
                "reason": {"type": "string", "enum": ["store_unavailable", "draining"]},
            },
        },
    }


def _envelope(key: str, schema_name: str) -> Obj:
    return {
        "type": "object",
        "required": [key],
        "additionalProperties": False,
        "properties": {key: _schema(schema_name)},
    }


def _components() -> Obj:
    return {
        "schemas": _schemas(),
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An internal JWT: `iss`, `aud`, `sub` and `exp` required, signed "
                "with an algorithm from auth.algorithms; the projects claim lists the projects "
                "(or `*`), the roles claim may hold auth.admin_role.",
            },
            "novaToken": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Auth-Token",
                "description": "The same JWT, as OpenStack clients send their token "
                "(Nova-compatible route only).",
            },
        },
        "headers": {
            "RequestId": {
                "description": "The caller's X-Request-ID if sane (1-64 of `A-Za-z0-9._:-`), "
                "else a generated one; also in logs and audit events.",
                "schema": {"type": "string"},
            },
            "WWWAuthenticate": {
                "description": 'RFC 6750: `Bearer realm="console-gateway", '
                'error="invalid_token"` (no error for a missing token).',
                "required": True,
                "schema": {"type": "string"},
            },
            "RetryAfter": {
                "description": "Seconds until a retry can succeed.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            },
        },
        "parameters": {
            "RequestId": {
                "name": "X-Request-ID",
                "in": "header",
                "description": "Optional correlation id, returned and logged if sane.",
                "schema": {"type": "string", "maxLength": 64},
            },
        },
    }


def _add_request_id(paths: Obj) -> None:
    """Every operation takes X-Request-ID; every response carries it."""
    for item in paths.values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            operation.setdefault("parameters", []).append(_ref("parameters", "RequestId"))
            for response in operation["responses"].values():
                response.setdefault("headers", {})["X-Request-ID"] = _ref("headers", "RequestId")


def _version() -> str:
    try:
        return package_version("console-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def build_document(public_base_url: str) -> Obj:
    paths = _paths()
    _add_request_id(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Console gateway",
            "version": _version(),
            "summary": "Authenticating reverse proxy for virtual-machine consoles.",
            "description": "Native JSON API (`/v1`), a Nova-compatible remote-consoles route "
            "(`/v2.1`), the browser console page and WebSocket, and operations endpoints. Native "
            'errors are `{"error": {"code", "message", "request_id"}}`; the Nova route answers '
            "with Nova faults. Every path answers 405 (with `Allow`) to other methods and every "
            "unknown path 404.",
        },
        "servers": [{"url": public_base_url, "description": "server.public_base_url"}],
        "tags": [
            {"name": "consoles", "description": "Native console API."},
            {"name": "nova", "description": "Nova-compatible API for OpenStack clients."},
            {"name": "browser", "description": "What a browser opens from a console link."},
            {"name": "operations", "description": "Probes, metrics and this document."},
        ],
        "paths": paths,
        "components": _components(),
    }


def add_routes(app: web.Application) -> None:
    body = json.dumps(build_document(app[SETTINGS].server.public_base_url)).encode()

    @public
    async def openapi(request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "no-cache"}
        )

    app.router.add_get(OPENAPI_PATH, openapi, allow_head=False)


def main(argv: list[str]) -> int:
    base_url = argv[0] if argv else "https://gw.example.com"
    print(json.dumps(build_document(base_url), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
