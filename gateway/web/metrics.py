"""GET /metrics, and the middlewares that count requests and audit refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import audit, errors
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.web.middlewares import public

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED = "unmatched"
# nginx's code for a request whose client went away before the answer.
_CLIENT_GONE = 499


def route_label(request: web.Request) -> str:
    """The route's template (/ws/{console_id}), never the raw path: labels must not hold ids."""
    if request.match_info.http_exception is not None:
        return UNMATCHED  # 404 and 405: the path is arbitrary caller input
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def request_metrics_middleware(metrics: GatewayMetrics) -> Middleware:
    """Counts every request with its final status: place it outside error_middleware."""

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = _CLIENT_GONE
            raise
        finally:
            # A 101 answer returns only when its WebSocket session ends: that is a session
            # duration (cgw_session_duration_seconds), not request latency.
            seconds = None if status == 101 else time.monotonic() - started
            metrics.request(route_label(request), request.method, status, seconds)

    return count_requests


def denials_middleware(metrics: GatewayMetrics) -> Middleware:
    """Audits and counts each 401/403 (and counts 429s): inside error_middleware, outside auth."""

    @web.middleware
    async def audit_denials(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (errors.Unauthenticated, errors.Forbidden) as exc:
            metrics.auth_denied(audit.denial_reason(exc))
            audit.auth_denied(request, exc, route=route_label(request))
            raise
        except errors.RateLimited:
            metrics.rate_limited("create")  # WebSocket limits close after the upgrade instead
            raise

    return audit_denials


def metrics_handler(metrics: GatewayMetrics) -> Handler:
    @public
    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        return web.Response(body=metrics.render(), headers=headers)

    return serve_metrics


def add_routes(app: web.Application, metrics: GatewayMetrics) -> None:
    app.router.add_get("/metrics", metrics_handler(metrics), allow_head=False)
