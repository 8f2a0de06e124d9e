"""Audit events: one JSON line each on logger "gateway.audit", never with a token or console id."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import errors
from gateway.keys import PRINCIPAL, REQUEST_ID
from gateway.models import ConsoleRecord
from gateway.observability import console_ref, request_id_var

if TYPE_CHECKING:
    from gateway.relay import RelayResult

log = logging.getLogger("gateway.audit")

# Error messages are fixed strings chosen by the gateway (never token text), so a reason
# category can be read from them; the first fragment found wins.
_DENIAL_REASONS: tuple[tuple[str, str], ...] = (
    ("has expired", "expired"),
    ("not yet valid", "not_yet_valid"),
    ("not meant for this service", "wrong_audience"),
    ("issuer is not trusted", "untrusted_issuer"),
    ("lacks a required claim", "missing_claim"),
    ("too large", "token_too_large"),
    ("malformed", "malformed"),
    ("must be 'Bearer <token>'", "malformed"),
    ("algorithm is not accepted", "algorithm_refused"),
    ("critical extension", "unsupported_extension"),
    ("signing key is unknown", "unknown_key"),
    ("has no subject", "bad_claims"),
    ("claim must be", "bad_claims"),
    ("token is invalid", "bad_signature"),
    ("origin may not", "origin_not_allowed"),
    ("in this project", "project_not_allowed"),
    ("owner or an administrator", "not_owner"),
)


def denial_reason(error: errors.GatewayError) -> str:
    """A small, fixed category for a 401/403, safe as a log field and a metric label (pure)."""
    challenge = error.headers.get("WWW-Authenticate", "")
    if isinstance(error, errors.Unauthenticated) and "error=" not in challenge:
        return "missing_token"  # RFC 6750 section 3.1: no credentials, no error code
    for fragment, reason in _DENIAL_REASONS:
        if fragment in error.message:
            return reason
    return "invalid_token" if isinstance(error, errors.Unauthenticated) else "forbidden"


def _emit(event: str, request: web.Request, fields: dict[str, Any]) -> None:
    request_id = request.get(REQUEST_ID) or request_id_var.get()
    base = {"event": event, "request_id": request_id, "client": request.remote}
    log.info(event, extra={"request_id": request_id, "fields": {**base, **fields}})


def _console(record: ConsoleRecord) -> dict[str, Any]:
    return {
        "console": console_ref(record.id_hash),
        "project_id": record.project_id,
        "server_id": record.server_id,
    }


def _subject(request: web.Request) -> str | None:
    principal = request.get(PRINCIPAL)
    return principal.subject if principal is not None else None


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def console_created(request: web.Request, record: ConsoleRecord) -> None:
    fields = {"subject": record.owner, **_console(record), "expires_at": _iso(record.expires_at)}
    _emit("console_created", request, fields)


def console_connected(
    request: web.Request, record: ConsoleRecord, *, upstream_retried: bool = False
) -> None:
    # A WebSocket carries no JWT: the console's owner is the subject it acts for.
    fields = {"subject": record.owner, **_console(record), "upstream_retried": upstream_retried}
    _emit("console_connected", request, fields)


def console_disconnected(request: web.Request, record: ConsoleRecord, result: RelayResult) -> None:
    fields = {
        "subject": record.owner,
        **_console(record),
        "bytes_to_client": result.bytes_to_client,
        "bytes_to_upstream": result.bytes_to_upstream,
        "duration_s": round(result.duration_s, 3),
        "close_code": result.close_code,
        "closed_by": result.closed_by,
    }
    _emit("console_disconnected", request, fields)


def console_revoked(request: web.Request, record: ConsoleRecord) -> None:
    fields = {"subject": _subject(request), "owner": record.owner, **_console(record)}
    _emit("console_revoked", request, fields)


def auth_denied(request: web.Request, error: errors.GatewayError, *, route: str) -> None:
    """A 401 or 403; route is the route template, never the raw path (it may hold an id)."""
    fields = {
        "subject": _subject(request),
        "status": error.status,
        "reason": denial_reason(error),
        "method": request.method,
        "route": route,
    }
    _emit("auth_denied", request, fields)
