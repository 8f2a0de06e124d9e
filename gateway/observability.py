"""Logging for the gateway: JSON lines, request ids, and the one place secrets are redacted."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.config import LoggingSettings
from gateway.keys import CLIENT_ADDRESS, REQUEST_ID

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Each pattern finds a secret or a capability; the replacement keeps enough to correlate.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_QUERY_SECRET = re.compile(
    r"(?i)((?:token|password|secret|jwt|access_token|auth)=|%3Ftoken%3D|%26token%3D)[^&\s\"'#]+"
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_HEADER_SECRET = re.compile(
    r"(?i)(x-auth-token|x-subject-token|authorization)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
)
_JSON_SECRET = re.compile(r"(?i)(\"(?:password|token|secret|hs256_secret)\"\s*:\s*\")[^\"]*")
# Literals (lower case) without which _HEADER_SECRET and _JSON_SECRET cannot match.
_HEADER_NAMES = ("x-auth-token", "x-subject-token", "authorization")
_JSON_NAMES = ('"password"', '"token"', '"secret"', '"hs256_secret"')
# A gateway console id: 43 base64url characters (256 bits); logged only as a short hash.
# What a console id in a log line is (the reference for tests); redact() uses _ID_RUN.
_CONSOLE_ID = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
# The same matches, faster: every maximal run of 43 or more such characters (the leftmost
# match starts a run and is greedy), of which _console_ref keeps only the 43-long ones.
_ID_RUN = re.compile(r"[A-Za-z0-9_-]{43,}")
_CONSOLE_ID_CHARS = 43


def short_hash(value: str) -> str:
    return "#" + hashlib.sha256(value.encode()).hexdigest()[:12]


def console_ref(id_hash: str) -> str:
    """A stored console's log name: equal to short_hash(its id), as redact() writes it in paths."""
    return "#" + id_hash[:12]


def redact(text: str) -> str:
    """Remove tokens, JWTs, passwords and console ids from text bound for a log line."""
    # Every line goes through here (two per API request): a pattern runs only when the
    # literal it cannot match without is present. The case-insensitive ones are scanned
    # for in lower case only in ASCII text, where IGNORECASE has no other variants (it
    # matches U+017F for "s" and the Kelvin sign for "k"); anything else runs them all.
    ascii_only = text.isascii()
    low = text.lower() if ascii_only else ""
    if "eyJ" in text:
        text = _JWT.sub("<jwt>", text)
    if "=" in text or "%3" in text:
        text = _QUERY_SECRET.sub(lambda m: m.group(1) + "<redacted>", text)
    if not ascii_only or "bearer" in low or "basic" in low:
        text = _AUTH_SCHEME.sub(lambda m: m.group(1) + " <redacted>", text)
    if not ascii_only or any(name in low for name in _HEADER_NAMES):
        text = _HEADER_SECRET.sub(lambda m: m.group(1) + m.group(2) + "<redacted>", text)
    if not ascii_only or any(name in low for name in _JSON_NAMES):
        text = _JSON_SECRET.sub(lambda m: m.group(1) + "<redacted>", text)
    return _ID_RUN.sub(_console_ref, text)


def _console_ref(match: re.Match[str]) -> str:
    run = match.group(0)
    return short_hash(run) if len(run) == _CONSOLE_ID_CHARS else run


class RedactingFormatter(logging.Formatter):
    """Formats a record, as JSON or text, and redacts the whole line, traceback included."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "msg": message,
        }
        fields.update(getattr(record, "fields", {}))
        if self._json:
            return redact(json.dumps(fields, default=str))
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("ts", "msg", "level"))
        return redact(f"{fields['ts']} {fields['level']:<7} {message} [{extra}]")


def setup_logging(settings: LoggingSettings, stream: Any = None) -> logging.Handler:
    """Route every logger (aiohttp's and redis's included) through one redacting handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(settings.format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    return handler


def access_request_id(request: web.BaseRequest, response: web.StreamResponse) -> str:
    """The request's id once its middleware has returned (and reset request_id_var).

    The request mapping has it for every answer, WebSocket upgrades included, whose
    already-sent headers the middleware cannot extend; the header is the fallback.
    """
    stored = request.get(REQUEST_ID)
    if isinstance(stored, str):
        return stored
    return response.headers.get("X-Request-ID", "-")


def access_remote(request: web.BaseRequest) -> str | None:
    """The real client: aiohttp logs the request it made, not the trusted-proxy clone."""
    recorded = request.get(CLIENT_ADDRESS)
    return recorded if isinstance(recorded, str) else request.remote


class AccessLogger(AbstractAccessLogger):
    """One line per request; redact() turns console ids in the path into short hashes."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": access_request_id(request, response),
                "fields": {
                    "event": "http_request",
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "duration_ms": round(time * 1000, 2),
                    "remote": access_remote(request),
                },
            },
        )
