"""GET /ws/{id}: the console WebSocket, relayed to the upstream console proxy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from aiohttp import WSCloseCode, web

from gateway import audit, errors
from gateway.connections import Admission
from gateway.keys import (
    CONNECTIONS,
    CONNECTOR,
    CONSOLES,
    HEALTH,
    LIVE_SOCKETS,
    METRICS,
    ORIGINS,
    SETTINGS,
)
from gateway.models import ConsoleRecord
from gateway.observability import console_ref
from gateway.relay import CLOSE_TIMEOUT_S, close_within, relay
from gateway.sessions import UPSTREAM_PROTOCOLS, UpstreamConnection
from gateway.web.middlewares import public
from gateway.web.origin import origin_allowed

log = logging.getLogger("gateway.ws")

# RFC 6455 section 5.5: a close frame's reason must fit in 123 bytes.
_MAX_REASON_BYTES = 123
# Application close codes (RFC 6455 section 7.4.2, 4000-4999) the console page understands.
CLOSE_UNKNOWN_CONSOLE = 4404
CLOSE_CONSOLE_GONE = 4410
_GONE_CODES: dict[type[errors.GatewayError], int] = {
    errors.NotFound: CLOSE_UNKNOWN_CONSOLE,
    errors.Gone: CLOSE_CONSOLE_GONE,
}


@public
async def console_websocket(request: web.Request) -> web.StreamResponse:
    """Refuse with plain HTTP before the upgrade; relay after it."""
    app = request.app
    relay_settings = app[SETTINGS].relay
    allow_missing = relay_settings.allow_missing_origin
    if not origin_allowed(request.headers.get("Origin"), app[ORIGINS], allow_missing=allow_missing):
        raise errors.Forbidden("This origin may not open consoles.")
    app[HEALTH].ensure_accepting()  # 503 while draining: the load balancer retries elsewhere
    client = web.WebSocketResponse(
        protocols=UPSTREAM_PROTOCOLS,  # echoed only if the browser asked for it
        heartbeat=relay_settings.heartbeat_s,
        max_msg_size=relay_settings.max_frame_bytes + 1,  # aiohttp refuses sizes >= this
    )
    if not client.can_prepare(request).ok:
        raise errors.BadRequest("A valid WebSocket handshake is required.")
    try:
        record = await _live_record(request)
    except (errors.NotFound, errors.Gone) as exc:
        # The page's script stops reconnecting on these codes; an HTTP 404/410 on the
        # handshake would reach it only as an anonymous 1006.
        return await _accept_and_close(client, request, _GONE_CODES[type(exc)], exc)
    try:
        admission = await app[CONNECTIONS].admit(client, record)
    except errors.RateLimited as exc:
        app[METRICS].rate_limited(exc.limit)  # type: ignore[arg-type]
        return await _accept_and_close(client, request, WSCloseCode.TRY_AGAIN_LATER, exc)
    try:
        return await _open_and_relay(client, request, record, admission)
    finally:
        await app[CONNECTIONS].release(admission)


async def _open_and_relay(
    client: web.WebSocketResponse,
    request: web.Request,
    record: ConsoleRecord,
    admission: Admission,
) -> web.WebSocketResponse:
    try:
        upstream = await request.app[CONNECTOR].open(record.target)
    except errors.GatewayError as exc:
        log.warning(
            "console upstream unavailable: %s %s",
            exc.status,
            exc.code,
            extra={"fields": {"event": "console_refused", "console": console_ref(record.id_hash)}},
        )
        return await _accept_and_close(client, request, WSCloseCode.INTERNAL_ERROR, exc)
    return await _relay(client, request, upstream, record, admission)


async def _live_record(request: web.Request) -> ConsoleRecord:
    consoles = request.app[CONSOLES]
    record = await consoles.lookup(request.match_info["console_id"])
    consoles.ensure_live(record)
    return await consoles.extend(record)


async def _relay(
    client: web.WebSocketResponse,
    request: web.Request,
    upstream: UpstreamConnection,
    record: ConsoleRecord,
    admission: Admission,
) -> web.WebSocketResponse:
    app = request.app
    try:
        await client.prepare(request)
    except Exception:
        await upstream.websocket.close()
        raise
    if admission.close_requested is not None:  # revoked while the upstream was opening
        code, reason = admission.close_requested
        await upstream.websocket.close()
        await client.close(code=code, message=reason.encode())
        return client
    app[LIVE_SOCKETS].add(client)
    audit.console_connected(request, record, upstream_retried=upstream.retried)
    try:
        with app[METRICS].live_websocket():
            result = await relay(
                client, upstream.websocket, app[SETTINGS].relay, first_chunk=upstream.first_chunk
            )
    finally:
        app[LIVE_SOCKETS].discard(client)
    requested = _close_requested(admission)  # set meanwhile by a revocation, if any
    if requested is not None and result.closed_by == "shutdown":
        # The registry closed it: report the code the browser was actually sent.
        result = dataclasses.replace(result, close_code=requested[0], closed_by="revoked")
    app[METRICS].session_ended(result)
    audit.console_disconnected(request, record, result)
    await _extend_quietly(request, record)
    return client


def _close_requested(admission: Admission) -> tuple[int, str] | None:
    return admission.close_requested


async def _accept_and_close(
    client: web.WebSocketResponse, request: web.Request, code: int, error: errors.GatewayError
) -> web.WebSocketResponse:
    """Accept only to say why: browsers hide a refused handshake's status from scripts."""
    await client.prepare(request)
    await client.close(code=code, message=error.message.encode()[:_MAX_REASON_BYTES])
    return client


async def _extend_quietly(request: web.Request, record: ConsoleRecord) -> None:
    # A reconnect soon after a long session must still find the link alive; a store
    # outage here must not turn a finished session into an error.
    with contextlib.suppress(errors.GatewayError):
        await request.app[CONSOLES].extend(record)


async def close_live_sockets(app: web.Application) -> None:
    """On shutdown, close every console with 1001 so clients reconnect elsewhere."""
    live = app[LIVE_SOCKETS]
    await asyncio.gather(
        *(
            close_within(socket, WSCloseCode.GOING_AWAY, "server shutdown", CLOSE_TIMEOUT_S)
            for socket in list(live)
        )
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws/{console_id}", console_websocket)
    app.on_shutdown.append(close_live_sockets)
