"""Request ids and authentication: every route needs a valid JWT unless marked @public."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from gateway.auth.policy import extract_bearer
from gateway.keys import PRINCIPAL, REQUEST_ID, VERIFIER
from gateway.observability import request_id_var
from gateway.web.errors import is_nova_path

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PUBLIC_ATTR = "_cgw_public"


def public(handler: H) -> H:
    """Exempt a handler from JWT authentication (health checks, capability-link routes)."""
    setattr(handler, _PUBLIC_ATTR, True)
    return handler


def choose_request_id(header: str | None) -> str:
    """Keep a caller's X-Request-ID for correlation if it is harmless, else make one."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = choose_request_id(request.headers.get("X-Request-ID"))
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        request_id_var.reset(token)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


async def request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also WebSocket upgrades (101), which the middleware cannot reach."""
    if REQUEST_ID in request:
        response.headers.setdefault("X-Request-ID", request[REQUEST_ID])


def _is_public(request: web.Request) -> bool:
    route = request.match_info.route
    # Unmatched paths fall through so that they answer 404/405, not 401.
    if request.match_info.http_exception is not None:
        return True
    return bool(getattr(route.handler, _PUBLIC_ATTR, False))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _is_public(request):
        token = extract_bearer(
            request.headers.get("Authorization"),
            request.headers.get("X-Auth-Token"),
            allow_x_auth_token=is_nova_path(request.path),
        )
        request[PRINCIPAL] = await request.app[VERIFIER].verify(token)
    return await handler(request)
