"""The leak scanner: every output of every gateway app in the suite, checked for secrets.

DESIGN.md section 4 rule 1: no upstream token, JWT, Keystone token or password leaves the
gateway — not in a response, a page, a log line, a metric label or a WebSocket close reason.
This module is the one mechanism that proves it for the whole test suite:

* `install()` (called by tests/conftest.py before any test module is imported) wraps
  `gateway.app.create_app`, so every gateway app a test builds — through the make_gateway and
  serve_gateway fixtures or directly — is watched: an `on_response_prepare` signal records each
  response's status line, headers and body (the console page included), and each WebSocket
  close the gateway sends to a browser has its reason recorded.
* A handler on the root logger records every log line *as the gateway's RedactingFormatter
  writes it* (JSON), i.e. after the redaction that production applies; audit events (logger
  gateway.audit) are log lines too and are counted on their own.
* At the end of each test the metric registry of every app the test built is scraped.
* The collected outputs are then scanned for the secrets known at that point: the tokens the
  simulator issued (from the test's fixture values), configured secrets (hs256_secret,
  upstream.token, the Keystone password, a Redis password), every JWT tests.support.mint_jwt
  produced, websockify token names, plus anything shaped like a JWT or a Keystone (Fernet)
  token. Requests are inputs and are never scanned.

A finding fails the test that produced it, at teardown, naming where the secret was found and
a short hash of it — never the secret. A test that writes a secret on purpose (a redaction
test logging a raw token) says so with `@pytest.mark.allow_secret_output("why", channels=...)`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from gateway.config import Settings
from gateway.keys import METRICS, SETTINGS
from gateway.metrics import GatewayMetrics
from gateway.observability import RedactingFormatter, redact
from gateway.simulator.state import ComputeSimulator
from tests.rfb_support import WebsockifyUpstream

# Output channels, as named in findings and in the allow_secret_output marker.
LOG = "log"
RESPONSE = "response"
WS_CLOSE = "ws_close"
METRIC = "metric"
CHANNELS = (LOG, RESPONSE, WS_CLOSE, METRIC)

# Secrets shorter than this (websockify's token "sim") would match ordinary words, so they are
# looked for only where a token would stand: after token=, password= or secret=.
MIN_PLAIN_SECRET = 8
# Anything shaped like a compact JWS (base64url JSON header), encoded dots included.
_JWT_SHAPE = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}(?:\.|%2[Ee])[A-Za-z0-9_-]{2,}(?:\.|%2[Ee])[A-Za-z0-9_-]*"
)
# Keystone's Fernet tokens (and the simulator's imitation) start with the Fernet version byte.
_FERNET_SHAPE = re.compile(r"gAAAAA[A-Za-z0-9_-]{40,}")
_SHAPES = (("jwt (by shape)", _JWT_SHAPE), ("keystone token (by shape)", _FERNET_SHAPE))
_MAX_REPORTED = 10


def secret_hash(value: str) -> str:
    """How a secret is named in reports: never the value, a 12-hex-digit SHA-256 prefix."""
    return "#" + hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Finding:
    channel: str  # LOG, RESPONSE, WS_CLOSE or METRIC
    location: str  # where: "log line 3 (gateway.relay INFO relay.py:120)", "POST /v1/... body"
    kind: str  # what: "upstream console token", "jwt (by shape)", ...
    secret: str  # the hash of the secret, never the secret

    def describe(self) -> str:
        return f"{self.kind} {self.secret} in {self.channel}: {self.location}"


@dataclass
class Item:
    """One recorded output; `parts` name sub-locations by start offset (metric samples)."""

    channel: str
    location: str
    text: str
    parts: list[tuple[int, str]] = field(default_factory=list)

    def where(self, offset: int) -> str:
        part = ""
        for start, name in self.parts:
            if start > offset:
                break
            part = name
        return f"{self.location} {part}".rstrip() if part else f"{self.location} @{offset}"


class SecretSet:
    """The secrets to look for, by kind; variants (percent- and JSON-encoded) included."""

    def __init__(self) -> None:
        # a secret, or an encoding of it -> (kind, the secret): reports hash the secret
        self._plain: dict[str, tuple[str, str]] = {}
        self._short: dict[str, tuple[str, str]] = {}
        self._plain_re: re.Pattern[str] | None = None
        self._short_re: re.Pattern[str] | None = None

    def __len__(self) -> int:
        return len(self._plain) + len(self._short)

    def add(self, kind: str, value: str | None) -> None:
        if not value:
            return
        target = self._plain if len(value) >= MIN_PLAIN_SECRET else self._short
        for variant in {value, quote(value, safe=""), json.dumps(value)[1:-1]}:
            if variant not in target:
                target[variant] = (kind, value)
                self._plain_re = self._short_re = None

    def add_all(self, kind: str, values: Iterable[str]) -> None:
        for value in values:
            self.add(kind, value)

    def mask(self, text: str) -> str:
        """text with every secret in it replaced by its hash (for locations in reports)."""
        merged: list[list[int]] = []
        for start, end in sorted((start, end) for _, _, start, end in self.find(text)):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in reversed(merged):
            text = text[:start] + secret_hash(text[start:end]) + text[end:]
        return text

    def find(self, text: str) -> Iterator[tuple[str, str, int, int]]:
        """(kind, hash, start, end) of each secret in text."""
        if self._plain and self._plain_re is None:
            longest_first = sorted(self._plain, key=len, reverse=True)
            self._plain_re = re.compile("|".join(map(re.escape, longest_first)))
        if self._short and self._short_re is None:
            names = "|".join(map(re.escape, sorted(self._short, key=len, reverse=True)))
            self._short_re = re.compile(
                rf"(?i:token|password|secret)(?:=|%3D|\"?\s*:\s*\"?)({names})(?![A-Za-z0-9._~-])"
            )
        if self._plain_re is not None:
            for match in self._plain_re.finditer(text):
                kind, secret = self._plain[match.group(0)]
                yield kind, secret_hash(secret), match.start(), match.end()
        if self._short_re is not None:
            for match in self._short_re.finditer(text):
                kind, secret = self._short[match.group(1)]
                yield kind, secret_hash(secret), match.start(1), match.end(1)
        for kind, shape in _SHAPES:
            for match in shape.finditer(text):
                yield kind, secret_hash(match.group(0)), match.start(), match.end()


@dataclass
class Counts:
    log_lines: int = 0
    audit_events: int = 0
    responses: int = 0
    body_bytes: int = 0
    unscanned_bodies: int = 0  # streamed answers (static files): headers scanned, body not
    ws_close_reasons: int = 0
    metric_samples: int = 0
    leaks: int = 0
    allowed: int = 0  # findings in tests marked allow_secret_output
    detached: int = 0  # tests that removed the log handler (setup_logging); re-attached after

    def items(self) -> int:
        return self.log_lines + self.responses + self.ws_close_reasons + self.metric_samples


class RecordingHandler(logging.Handler):
    """Formats each record as the gateway's JSON formatter does and hands it to the scanner."""

    def __init__(self, scanner: LeakScanner) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(RedactingFormatter("json"))
        self._scanner = scanner

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "aiohttp.access" and not hasattr(record, "fields"):
            # aiohttp's own access logger: the simulator's and other test servers' lines (the
            # upstream's log, whose URLs legitimately carry tokens). The gateway's
            # AccessLogger always sets `fields`.
            return
        started = time.perf_counter()
        try:
            text = self.format(record)
        except Exception:  # a broken record: scan what it holds, unredacted (stricter)
            text = f"{record.msg!r} {record.args!r}"
        self._scanner.record_log(record, text)
        self._scanner.busy_s += time.perf_counter() - started


WatchedApps = weakref.WeakSet[web.Application]


class LeakScanner:
    """Collects outputs between begin() and end(), then scans them for secrets."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.handler = RecordingHandler(self)
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._apps: list[web.Application] = []
        self._watched: WatchedApps = weakref.WeakSet()
        self._orphans: list[Item] = []  # outputs between tests (session fixtures)
        self.extra: list[tuple[str, str]] = []  # (kind, secret) registered by the running test
        self.busy_s = 0.0  # time spent recording and scanning: the scanner's own cost
        self.tests = 0  # tests whose outputs were scanned

    def add_secret(self, kind: str, value: str) -> None:
        """A secret the running test made itself (a password it configured, a token it forged)."""
        self.extra.append((kind, value))

    # -- recording -------------------------------------------------------------------------

    def _add(self, item: Item) -> None:
        with self._lock:
            self._items.append(item)

    def record_log(self, record: logging.LogRecord, text: str) -> None:
        self.counts.log_lines += 1
        if record.name == "gateway.audit":
            self.counts.audit_events += 1
        where = f"{Path(record.pathname).name}:{record.lineno}"
        location = f"log line {self.counts.log_lines} ({record.name} {record.levelname} {where})"
        self._add(Item(LOG, location, text))

    def watch(self, app: web.Application) -> web.Application:
        """Record what `app` sends; call before the app starts (its signals freeze then)."""
        if app in self._watched:
            return app
        self._watched.add(app)
        app.on_response_prepare.append(self._on_response_prepare)
        with self._lock:
            self._apps.append(app)
        return app

    def is_watched(self, app: web.Application) -> bool:
        return app in self._watched

    async def _on_response_prepare(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        started = time.perf_counter()
        try:
            self._record_response(request, response)
        finally:
            self.busy_s += time.perf_counter() - started

    def _record_response(self, request: web.Request, response: web.StreamResponse) -> None:
        where = f"{request.method} {redact(request.path)} -> {response.status}"
        head = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        self.counts.responses += 1
        self._add(Item(RESPONSE, f"{where} status/headers", f"{response.reason}\n{head}"))
        if isinstance(response, web.WebSocketResponse):
            self._record_ws_closes(response, redact(request.path))
        elif isinstance(response, web.FileResponse):
            self.counts.unscanned_bodies += 1
        elif isinstance(response, web.Response):
            body = _body_text(response)
            if body is None:
                self.counts.unscanned_bodies += 1
            else:
                self.counts.body_bytes += len(body)
                self._add(Item(RESPONSE, f"{where} body", body))

    def _record_ws_closes(self, ws: web.WebSocketResponse, path: str) -> None:
        """Every close frame the gateway sends this browser goes through ws.close()."""
        close: Callable[..., Awaitable[bool]] = ws.close

        @functools.wraps(close)
        async def recording_close(*, code: int = 1000, message: bytes = b"", **kw: Any) -> bool:
            self.counts.ws_close_reasons += 1
            reason = bytes(message).decode("utf-8", "replace")
            self._add(Item(WS_CLOSE, f"close reason of {path} (code {code})", reason))
            return await close(code=code, message=message, **kw)

        setattr(ws, "close", recording_close)  # noqa: B010  (an instance attribute, on purpose)

    def scrape_metrics(self) -> None:
        """Every sample of every app built since begin(): names and label values."""
        with self._lock:
            apps = list(self._apps)
        for app in apps:
            metrics = app.get(METRICS)
            if not isinstance(metrics, GatewayMetrics):
                continue
            lines: list[str] = []
            parts: list[tuple[int, str]] = []
            offset = 0
            for family in metrics.registry.collect():
                for sample in family.samples:
                    labels = ",".join(f"{k}={v}" for k, v in sample.labels.items())
                    parts.append((offset, f"sample {sample.name}{{{','.join(sample.labels)}}}"))
                    line = f"{sample.name}{{{labels}}}"
                    lines.append(line)
                    offset += len(line) + 1
            self.counts.metric_samples += len(lines)
            self._add(Item(METRIC, "metrics registry", "\n".join(lines), parts))

    # -- secrets ---------------------------------------------------------------------------

    def secrets(self, fixture_values: Iterable[Any], minted_jwts: Iterable[str]) -> SecretSet:
        found = SecretSet()
        from tests.support import HS_SECRET, UPSTREAM_TOKEN

        found.add("jwt signing secret", HS_SECRET)
        found.add("upstream service token", UPSTREAM_TOKEN)
        found.add_all("jwt (minted)", minted_jwts)
        for token in minted_jwts:  # the signature alone is what forges nothing but proves all
            found.add("jwt signature (minted)", token.rsplit(".", 1)[-1])
        with self._lock:
            apps = list(self._apps)
        for app in apps:
            settings = app.get(SETTINGS)
            if isinstance(settings, Settings):
                add_settings_secrets(found, settings)
        for value in _fixture_objects(fixture_values):
            if isinstance(value, ComputeSimulator):
                add_simulator_secrets(found, value)
            elif isinstance(value, WebsockifyUpstream):
                add_websockify_secrets(found, value)
            elif isinstance(value, Settings):
                add_settings_secrets(found, value)
        for kind, value in self.extra:
            found.add(kind, value)
        return found

    # -- a test's lifetime -----------------------------------------------------------------

    def begin(self) -> None:
        """A test starts: what was recorded since the last end() belongs to no test."""
        with self._lock:
            self._orphans.extend(self._items)
            self._items = []
            self._apps = []
        self.extra = []

    def end(self, secrets: SecretSet) -> list[Finding]:
        """Scrape metrics, scan everything recorded since begin(), forget it."""
        started = time.perf_counter()
        self.scrape_metrics()
        with self._lock:
            items, self._items, self._apps = self._items, [], []
        self.extra = []
        findings = scan(items, secrets)
        self.busy_s += time.perf_counter() - started
        return findings

    def end_session(self, secrets: SecretSet) -> list[Finding]:
        """Scan the outputs no test owned (session fixtures' set-up and teardown)."""
        with self._lock:
            items, self._orphans = self._orphans + self._items, []
            self._items = []
        return scan(items, secrets)


def scan(items: Iterable[Item], secrets: SecretSet) -> list[Finding]:
    findings: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    for item in items:
        for kind, hashed, offset, _ in secrets.find(item.text):
            key = (item.channel, item.location, hashed)
            if key not in seen:
                seen.add(key)
                where = secrets.mask(item.where(offset))  # a path may hold a test's input
                findings.append(Finding(item.channel, where, kind, hashed))
    return findings


def report(findings: list[Finding]) -> str:
    """The failure message: where, what kind, which hash — never a secret."""
    lines = [
        f"leak scanner: {len(findings)} secret(s) in gateway outputs "
        "(DESIGN.md section 4 rule 1; secrets are shown as SHA-256 prefixes):"
    ]
    lines += [f"  - {finding.describe()}" for finding in findings[:_MAX_REPORTED]]
    if len(findings) > _MAX_REPORTED:
        lines.append(f"  ... and {len(findings) - _MAX_REPORTED} more")
    return "\n".join(lines)


def add_settings_secrets(found: SecretSet, settings: Settings) -> None:
    if settings.auth.hs256_secret is not None:
        found.add("jwt signing secret", settings.auth.hs256_secret.get_secret_value())
    found.add("upstream service token", settings.upstream.token.get_secret_value())
    if settings.upstream.keystone is not None:
        found.add("keystone password", settings.upstream.keystone.password.get_secret_value())
    if settings.redis.url:
        found.add("redis password", urlsplit(settings.redis.url).password)


def add_simulator_secrets(found: SecretSet, sim: ComputeSimulator) -> None:
    found.add_all("upstream console token", list(sim.console_tokens))
    found.add_all("keystone token", list(sim.keystone_tokens))
    found.add_all("upstream service token", list(sim.service_tokens))
    found.add_all("keystone password", list(sim.keystone_users.values()))


def add_websockify_secrets(found: SecretSet, upstream: WebsockifyUpstream) -> None:
    found.add("websockify token", upstream.default_token)
    if upstream.token_dir.is_dir():
        found.add_all("websockify token", (p.stem for p in upstream.token_dir.glob("*.conf")))


def _fixture_objects(values: Iterable[Any]) -> Iterator[Any]:
    """Fixture values, the items of containers and the attributes of objects, one level deep."""
    for value in values:
        yield value
        inner: Iterable[Any] = ()
        if isinstance(value, Mapping):
            inner = list(value.values())
        elif isinstance(value, list | tuple | set):
            inner = list(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            try:
                inner = list(vars(value).values())
            except TypeError:
                inner = ()
        yield from (v for v in inner if isinstance(v, ComputeSimulator | WebsockifyUpstream))


def _body_text(response: web.Response) -> str | None:
    body: Any = response.body
    if body is None:
        return ""
    raw = getattr(body, "_value", body)  # aiohttp's BytesPayload keeps its bytes there
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw).decode("latin-1")  # byte-exact: ASCII secrets match as they are
    if isinstance(raw, str):
        return raw
    return None


# The session's scanner: process-wide because gateway.app.create_app is.
SCANNER = LeakScanner()


def install() -> None:
    """Watch every gateway app: wrap gateway.app.create_app, once.

    Must run before test modules import create_app by name: tests/conftest.py calls it at
    import time (its own fixtures call SCANNER.watch() on the apps they build).
    """
    import gateway.app as app_module

    original = app_module.create_app
    if not getattr(original, "_leak_scanner", False):

        @functools.wraps(original)
        def create_app(*args: Any, **kwargs: Any) -> web.Application:
            return SCANNER.watch(original(*args, **kwargs))

        create_app._leak_scanner = True  # type: ignore[attr-defined]
        setattr(app_module, "create_app", create_app)  # noqa: B010


def attach() -> bool:
    """Put the recording handler on the root logger (again); False if it had been removed."""
    root = logging.getLogger()
    present = SCANNER.handler in root.handlers
    if not present:
        root.addHandler(SCANNER.handler)
    if root.level > logging.DEBUG or root.level == logging.NOTSET:
        root.setLevel(logging.DEBUG)  # every line a gateway could write, DEBUG included
    return present
