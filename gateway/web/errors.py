"""The one place errors become HTTP responses: native shape on /v1, Nova's shape on /v2.1."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import errors
from gateway.keys import REQUEST_ID

log = logging.getLogger("gateway.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# nova/api/openstack/wsgi.py names its faults by status; anything else is a computeFault.
NOVA_FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}

# aiohttp raises these itself (unknown route, wrong method, body over client_max_size).
_AIOHTTP_STATUS_TO_ERROR: dict[int, type[errors.GatewayError]] = {
    400: errors.BadRequest,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def is_nova_path(path: str) -> bool:
    return path == "/" or path == "/v2.1" or path.startswith(("/v2.1/", "/v2/"))


def render(error: errors.GatewayError, *, nova: bool, request_id: str) -> web.Response:
    if nova:
        body = {
            NOVA_FAULT_NAMES.get(error.status, "computeFault"): {
                "code": error.status,
                "message": error.message,
            }
        }
    else:
        body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    response = web.json_response(body, status=error.status, headers=error.headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def _from_http_exception(exc: web.HTTPException) -> errors.GatewayError:
    cls = _AIOHTTP_STATUS_TO_ERROR.get(exc.status)
    if cls is errors.NotFound:
        return errors.NotFound("No such resource.")
    error = cls() if cls is not None else errors.GatewayError()
    if "Allow" in exc.headers:
        error.headers["Allow"] = exc.headers["Allow"]
    return error


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.GatewayError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http_exception(exc)
    except Exception:
        # The traceback goes to the (redacting) log only; the client gets a generic 500.
        log.exception("unhandled error in %s %s", request.method, request.path)
        error = errors.GatewayError()
    if error.status >= 500:
        log.warning("request failed: %s %s", error.status, error.code)
    return render(error, nova=is_nova_path(request.path), request_id=request.get(REQUEST_ID, "-"))
