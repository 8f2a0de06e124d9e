"""Redaction is the one place secrets are removed from log lines; it must catch every form."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import LoggingSettings
from gateway.consoles import hash_console_id
from gateway.observability import (
    AccessLogger,
    RedactingFormatter,
    console_ref,
    redact,
    setup_logging,
    short_hash,
)
from gateway.web.forwarded import forwarded_middleware
from gateway.web.middlewares import request_id_middleware

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
CONSOLE_ID = "A" * 20 + "b-_" + "C" * 20  # 43 base64url characters


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://n.example.com/vnc_auto.html?token=80fa7c8d-37fe&lang=EN", "80fa7c8d-37fe"),
        ("url=/vnc_lite.html?path=%3Ftoken%3Dabc123def", "abc123def"),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        ("authorization=Bearer sometoken", "sometoken"),
        (f"token is {JWT} here", JWT),
        ("X-Auth-Token: gAAAAABsecretvalue", "gAAAAABsecretvalue"),
        ("{'X-Subject-Token': 'kstoken123'}", "kstoken123"),
        ('{"password": "hunter2-long"}', "hunter2-long"),
        ("password=hunter2-long&user=x", "hunter2-long"),
        (f"GET /console/{CONSOLE_ID} 200", CONSOLE_ID),
        (f"/ws/{CONSOLE_ID}?x=1", CONSOLE_ID),
    ],
)
def test_redact_removes_secret(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_console_id_becomes_a_stable_short_hash() -> None:
    console_id = secrets.token_urlsafe(32)
    redacted = redact(f"/console/{console_id}")
    assert redacted == f"/console/{short_hash(console_id)}"
    assert len(short_hash(console_id)) == 13


@pytest.mark.parametrize(
    "text", ["POST /v1/consoles 201", "project 13c67a214ced4afb88d911ae4bd5721a", "status=ok"]
)
def test_redact_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


def _format(record: logging.LogRecord, fmt: str = "json") -> str:
    return RedactingFormatter(fmt).format(record)


def test_json_formatter_redacts_message_arguments_and_traceback() -> None:
    try:
        raise RuntimeError(f"failed with Bearer {JWT}")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "calling %s",
            ("https://h/?token=tok-SECRET",),
            sys.exc_info(),
        )
    line = _format(record)
    assert "tok-SECRET" not in line and JWT not in line
    parsed = json.loads(line)
    assert parsed["level"] == "error"
    assert "RuntimeError" in parsed["msg"]


def test_setup_logging_routes_library_loggers_through_redaction() -> None:
    stream = io.StringIO()
    handler = setup_logging(LoggingSettings(format="text"), stream)
    try:
        logging.getLogger("aiohttp.access").warning("GET /console/%s", CONSOLE_ID)
        logging.getLogger("redis").warning("Authorization: Bearer %s", JWT)
    finally:
        logging.getLogger().removeHandler(handler)
    output = stream.getvalue()
    assert CONSOLE_ID not in output and JWT not in output
    assert short_hash(CONSOLE_ID) in output


def test_console_ref_matches_the_short_hash_redaction_writes() -> None:
    console_id = secrets.token_urlsafe(32)
    assert console_ref(hash_console_id(console_id)) == short_hash(console_id)
    assert console_ref(hash_console_id(console_id)) in redact(f"GET /ws/{console_id}")


async def _logged_socket(request: web.Request) -> web.WebSocketResponse:
    logging.getLogger("gateway.test").info("inside the session")
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close()
    return ws


async def _logged_page(request: web.Request) -> web.Response:
    logging.getLogger("gateway.test").info("inside the handler")
    return web.Response(text="ok")


def _lines_for(logs: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    return [line for line in lines if line["request_id"] == request_id]


@pytest.mark.parametrize("path", ["/page", "/socket"])
async def test_every_line_of_a_request_carries_its_id_access_log_included(
    captured_logs: io.StringIO, path: str
) -> None:
    # In create_app's order: the id first, so that it is on the request aiohttp logs.
    trusted = forwarded_middleware([ip_network("127.0.0.0/8")])
    app = web.Application(middlewares=[request_id_middleware, trusted])
    app.router.add_get("/page", _logged_page)
    app.router.add_get("/socket", _logged_socket)
    server = TestServer(app)
    await server.start_server(access_log_class=AccessLogger)
    try:
        async with TestClient(server) as client:
            headers = {"X-Request-ID": "req-7", "X-Forwarded-For": "203.0.113.9"}
            if path == "/socket":
                async with client.ws_connect(path, headers=headers) as ws:
                    await ws.receive()
            else:
                await client.get(path, headers=headers)
            for _ in range(200):  # the access line is written once the handler has returned
                if any(
                    line["logger"] == "aiohttp.access"
                    for line in _lines_for(captured_logs, "req-7")
                ):
                    break
                await asyncio.sleep(0.01)
    finally:
        await server.close()
    lines = {line["logger"]: line for line in _lines_for(captured_logs, "req-7")}
    assert set(lines) == {"gateway.test", "aiohttp.access"}
    assert lines["aiohttp.access"]["remote"] == "203.0.113.9"  # the client, not the proxy
