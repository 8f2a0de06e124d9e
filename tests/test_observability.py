"""Redaction is the one place secrets are removed from log lines; it must catch every form."""

from __future__ import annotations

import io
import json
import logging
import secrets

import pytest

from gateway.config import LoggingSettings
from gateway.observability import RedactingFormatter, redact, setup_logging, short_hash

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
