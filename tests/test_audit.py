"""Audit events: one JSON line each, with the fields an operator needs and no secret or id."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import audit, errors
from gateway.auth.policy import Principal, extract_bearer, require_project
from gateway.auth.verifier import create_verifier
from gateway.config import Settings
from gateway.consoles import hash_console_id, new_console_id
from gateway.keys import PRINCIPAL
from gateway.models import ConsoleRecord
from gateway.observability import short_hash
from gateway.relay import RelayResult
from gateway.web.middlewares import request_id_middleware
from tests.support import PROJECT, SERVER, mint_jwt

Client = TestClient[web.Request, web.Application]
CONSOLE_ID = new_console_id()
RECORD = ConsoleRecord(
    id_hash=hash_console_id(CONSOLE_ID), owner="alice", project_id=PROJECT, server_id=SERVER,
    type="novnc", protocol="vnc", created_at=1_800_000_000.0, expires_at=1_800_000_900.0,
)  # fmt: skip
RESULT = RelayResult(
    bytes_to_client=123_456, bytes_to_upstream=789, close_code=1000, closed_by="client",
    duration_s=61.23456,
)  # fmt: skip
ADMIN = Principal("root", frozenset(), True, frozenset({"admin"}), True)
CONSOLE_FIELDS = {"console": short_hash(CONSOLE_ID), "project_id": PROJECT, "server_id": SERVER}
COMMON = {"ts", "level", "logger", "msg", "event", "request_id", "client"}


async def emit_all(request: web.Request) -> web.Response:
    """One of each event, as the console routes will emit them."""
    audit.console_created(request, RECORD)
    audit.console_connected(request, RECORD, upstream_retried=True)
    audit.console_disconnected(request, RECORD, RESULT)
    request[PRINCIPAL] = ADMIN
    audit.console_revoked(request, RECORD)
    audit.auth_denied(request, errors.Unauthenticated("The token has expired."), route="/x/{id}")
    return web.Response(text="ok")


@pytest.fixture
async def client(aiohttp_client: Callable[[web.Application], Awaitable[Client]]) -> Client:
    app = web.Application(middlewares=[request_id_middleware])
    app.router.add_post("/emit", emit_all)
    return await aiohttp_client(app)


def audit_events(logs: io.StringIO) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    return {line["event"]: line for line in lines if line["logger"] == "gateway.audit"}


async def test_every_event_has_its_fields_and_no_secret(
    client: Client, captured_logs: io.StringIO
) -> None:
    response = await client.post(f"/emit?token={mint_jwt()}", headers={"X-Request-ID": "req-42"})
    assert response.status == 200
    events = audit_events(captured_logs)
    expected: dict[str, dict[str, Any]] = {
        "console_created": {
            "subject": "alice", **CONSOLE_FIELDS, "expires_at": "2027-01-15T08:15:00Z",
        },
        "console_connected": {"subject": "alice", **CONSOLE_FIELDS, "upstream_retried": True},
        "console_disconnected": {
            "subject": "alice", **CONSOLE_FIELDS, "bytes_to_client": 123_456,
            "bytes_to_upstream": 789, "duration_s": 61.235, "close_code": 1000,
            "closed_by": "client",
        },
        "console_revoked": {"subject": "root", "owner": "alice", **CONSOLE_FIELDS},
        "auth_denied": {
            "subject": "root", "status": 401, "reason": "expired", "method": "POST",
            "route": "/x/{id}",
        },
    }  # fmt: skip
    assert set(events) == set(expected)
    for name, fields in expected.items():
        event = events[name]
        assert set(event) == COMMON | set(fields), name
        assert {k: event[k] for k in fields} == fields, name
        assert (event["request_id"], event["client"], event["msg"]) == ("req-42", "127.0.0.1", name)
    assert CONSOLE_ID not in captured_logs.getvalue()
    assert RECORD.id_hash not in captured_logs.getvalue()  # the full hash is the Redis key


async def test_request_id_is_generated_when_none_is_given(
    client: Client, captured_logs: io.StringIO
) -> None:
    response = await client.post("/emit")
    ids = {event["request_id"] for event in audit_events(captured_logs).values()}
    assert ids == {response.headers["X-Request-ID"]}


async def auth_error(make: Callable[[], Awaitable[object]]) -> errors.GatewayError:
    with pytest.raises(errors.GatewayError) as caught:
        await make()
    return caught.value


def raising(func: Callable[..., object], *args: Any, **kwargs: Any) -> Callable[[], Awaitable[Any]]:
    async def call() -> object:
        return func(*args, **kwargs)

    return call


ALICE = Principal("alice", frozenset({"other"}), False, frozenset(), False)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": 1}, "expired"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"iss": "https://evil.example.com"}, "untrusted_issuer"),
        ({"sub": None}, "missing_claim"),
        ({"projects": "all"}, "bad_claims"),
        ({"secret": "another-secret-that-is-long-enough-for-hs256"}, "bad_signature"),
        ({"algorithm": "HS384", "secret": "s" * 48}, "algorithm_refused"),
    ],
)
async def test_denial_reason_of_real_verifier_errors(
    make_settings: Callable[..., Settings], claims: dict[str, Any], reason: str
) -> None:
    settings = make_settings()
    token = mint_jwt(**claims)  # secret and algorithm are mint_jwt's own arguments
    async with aiohttp.ClientSession() as session:
        verifier = create_verifier(settings.auth, session)
        error = await auth_error(lambda: verifier.verify(token))
    assert audit.denial_reason(error) == reason


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (raising(extract_bearer, None, None, allow_x_auth_token=False), "missing_token"),
        (raising(extract_bearer, "Basic abc", None, allow_x_auth_token=False), "malformed"),
        (raising(extract_bearer, None, "a b", allow_x_auth_token=True), "malformed"),
        (raising(require_project, ALICE, PROJECT), "project_not_allowed"),
    ],
)
async def test_denial_reason_of_policy_errors(
    make: Callable[[], Awaitable[object]], reason: str
) -> None:
    assert audit.denial_reason(await auth_error(make)) == reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.Forbidden("This origin may not open consoles."), "origin_not_allowed"),
        (
            errors.Forbidden("Only the console's owner or an administrator may do this."),
            "not_owner",
        ),
        (errors.Forbidden(), "forbidden"),
        (errors.Unauthenticated("Something new."), "invalid_token"),
        (errors.Unauthenticated("The token's signing key is unknown."), "unknown_key"),
    ],
)
def test_denial_reason_fallbacks(error: errors.GatewayError, reason: str) -> None:
    assert audit.denial_reason(error) == reason
