"""Helpers of the schema-driven fuzzer (tests/adversarial/test_fuzz.py).

- cases from /openapi.json through schemathesis' hypothesis strategies (positive and negative),
  collected by a seeded, derandomized hypothesis run per operation;
- hostile bodies (deep nesting, huge numbers, odd unicode, wrong content types, compression)
  from a hypothesis strategy of our own;
- the auth mix (valid, admin, none, expired, forged, alg none, wrong audience, generated junk);
- a Redis keyspace-event watcher that attributes every write to the one request in flight;
- the contract's error shapes (native and Nova).
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation

from gateway.web.errors import NOVA_FAULT_NAMES, is_nova_path
from tests.support import HS_SECRET, PROJECT, mint_jwt

Operation = APIOperation[Any, Any, Any, Any]
FuzzCase = Case[Operation]
NOVA_FAULTS = {*NOVA_FAULT_NAMES.values(), "computeFault"}
FUZZ_SETTINGS = settings(
    database=None,
    derandomize=True,  # the same cases on every run
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# Headers schemathesis adds that say nothing about the gateway; the hop-by-hop ones are aiohttp's.
_DROPPED_HEADERS = {"content-length", "connection", "transfer-encoding", "host"}


# --- schemathesis cases ---------------------------------------------------------------------


def load_operations(document: dict[str, Any]) -> list[Operation]:
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the document has an invalid operation"
    return operations


def generate_cases(operation: Operation, mode: GenerationMode, count: int) -> list[FuzzCase]:
    """Up to `count` cases (fewer when the space is small), the same ones on every run."""
    cases: list[FuzzCase] = []

    @settings(FUZZ_SETTINGS, max_examples=count)
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case: FuzzCase) -> None:
        cases.append(case)

    collect()
    return cases


@dataclass
class Wire:
    """One request as it goes on the wire (prepared by requests, sent by aiohttp)."""

    method: str
    url: str  # already percent-encoded
    headers: dict[str, str]
    body: bytes | None
    prepared: requests.PreparedRequest

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def set_header(self, name: str, value: str | None) -> None:
        for key in [k for k in self.headers if k.lower() == name.lower()]:
            del self.headers[key]
        if value is not None:
            self.headers[name] = value


def to_wire(case: FuzzCase, base_url: str) -> Wire | None:
    """The case as bytes, or None when it cannot be expressed in HTTP/1.1 at all."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    try:
        prepared = requests.Request(
            method=kwargs["method"],
            url=kwargs["url"],
            headers=kwargs.get("headers"),
            params=kwargs.get("params"),
            cookies=kwargs.get("cookies"),
            json=kwargs.get("json"),
            data=kwargs.get("data"),
        ).prepare()
    except (ValueError, TypeError, UnicodeError, requests.RequestException):
        return None
    headers: dict[str, str] = {}
    for name, value in prepared.headers.items():
        if name.lower() in _DROPPED_HEADERS:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if any(ch in text for ch in "\r\n\x00") or not _latin1(text) or not _latin1(name):
            return None  # no HTTP client can send it; not a gateway input
        headers[name] = text
    raw = prepared.body
    body = raw.encode() if isinstance(raw, str) else raw if isinstance(raw, bytes) else None
    assert prepared.method is not None and prepared.url is not None
    return Wire(prepared.method, prepared.url, headers, body, prepared)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


# --- hostile bodies -------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileBody:
    kind: str
    content_type: str | None
    content_encoding: str | None
    body: bytes
    chunked: bool = False


def _nested(depth: int, opener: str) -> str:
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


_HUGE_NUMBERS = [
    "1" * 5000,  # past Python's int-from-text digit limit
    "1e999999",  # inf as a float
    "-1e-999999",
    "123456789012345678901234567890.5e308",
    "NaN",
    "Infinity",
    "-Infinity",
]

_VALID = json.dumps({"project_id": PROJECT, "server_id": "x"}).encode()
_RAW_BODIES = [
    b'{"project_id": "\\ud800", "server_id": "\\udfff"}',  # lone surrogates
    b'{"project_id": "a\\u0000b", "server_id": "x"}',
    b"\xef\xbb\xbf" + _VALID,  # a BOM
    b'{"project_id": "\xff\xfe", "server_id": "x"}',  # not UTF-8
    b'{"project_id": "\xc0\xaf", "server_id": "x"}',  # overlong
    _VALID[:-1],  # truncated
    _VALID + b" trailing",
    b"",
    b"null",
    b"[]",
    b'"a string"',
    b'{"project_id": "a", "project_id": "b", "server_id": "x"}',
    b'{"__proto__": {"admin": true}, "project_id": "a", "server_id": "x"}',
    ("{" + ",".join(f'"k{i}": {i}' for i in range(1500)) + "}").encode(),  # many keys
]

_WRONG_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "application/json-patch+json",
    "application/jsonx",
    "",
    "application/json; charset=latin-1",
    "APPLICATION/JSON",
    'application/json; boundary="',
    "*/*",
]

_ENCODINGS = ["gzip", "deflate", "br", "zstd", "x-unknown", "gzip, identity", "compress", "  GZIP "]


def _body_dict(value: Any) -> bytes:
    return json.dumps({"project_id": PROJECT, "server_id": value}).encode()


def _compress(encoding: str, raw: bytes) -> bytes:
    token = encoding.split(",")[0].strip().lower()
    if token == "gzip":
        return gzip.compress(raw, mtime=0)
    if token == "deflate":
        return zlib.compress(raw)
    return raw  # claims a coding it is not in: the gateway must refuse it unread anyway


def hostile_bodies() -> st.SearchStrategy[HostileBody]:
    """Every branch has a random part, so hypothesis (which never repeats an example) keeps
    drawing from all of them in about equal shares."""
    text = st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=80
    )
    valid = text.map(_body_dict)  # well-formed JSON with a random server_id
    space = st.text(alphabet=" \t\r\n", max_size=16)  # JSON whitespace
    deep = st.builds(
        lambda depth, opener: HostileBody(
            f"deep{opener}", "application/json", None, _nested(depth, opener).encode()
        ),
        st.one_of(st.integers(9, 100), st.integers(100, 2700), st.integers(2700, 200_000)),
        st.sampled_from(["[", "{"]),
    )
    numbers = st.one_of(
        st.integers(300, 6000).map(lambda digits: "9" * digits),
        st.integers(309, 10**7).map(lambda exponent: f"1e{exponent}"),
        st.integers(309, 10**7).map(lambda exponent: f"-0.5e-{exponent}"),
        st.sampled_from(_HUGE_NUMBERS),
    )
    huge = st.builds(
        lambda number, where: HostileBody(
            "huge_number",
            "application/json",
            None,
            (
                f'{{"project_id": {number}, "server_id": "x"}}'
                if where
                else f'{{"project_id": "{PROJECT}", "server_id": "x", "type": {number}}}'
            ).encode(),
        ),
        numbers,
        st.booleans(),
    )
    unicode_ids = valid.map(lambda raw: HostileBody("unicode", "application/json", None, raw))
    raw_json = st.builds(
        lambda raw, before, after: HostileBody(
            "raw_json", "application/json", None, before.encode() + raw + after.encode()
        ),
        st.sampled_from(_RAW_BODIES),
        space,
        space,
    )
    wrong_type = st.builds(
        lambda ctype, raw: HostileBody("content_type", ctype, None, raw),
        st.sampled_from(_WRONG_TYPES),
        valid,
    )
    encoded = st.builds(
        lambda enc, raw: HostileBody(
            "content_encoding", "application/json", enc, _compress(enc, raw)
        ),
        st.sampled_from(_ENCODINGS),
        valid,
    )
    oversize = st.builds(
        lambda size, chunked: HostileBody(
            "oversize", "application/json", None, b'{"a": "' + b"x" * size + b'"}', chunked
        ),
        st.one_of(st.integers(16 * 1024 - 8, 40_000), st.just(1024 * 1024 + 7)),
        st.booleans(),
    )
    chunked = st.builds(
        lambda raw: HostileBody("chunked", "application/json", None, raw, True),
        st.one_of(valid, st.sampled_from(_RAW_BODIES)),
    )
    return st.one_of(deep, huge, unicode_ids, raw_json, wrong_type, encoded, oversize, chunked)


def generate_hostile(count: int) -> list[HostileBody]:
    found: list[HostileBody] = []

    @settings(FUZZ_SETTINGS, max_examples=count)
    @given(hostile_bodies())
    def collect(body: HostileBody) -> None:
        found.append(body)

    collect()
    return found


# --- the auth mix ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(**claims: Any) -> str:
    """alg: none, otherwise a perfectly good token."""
    now = int(time.time())
    body = {
        "iss": "https://portal.example.com",
        "aud": "console-gateway",
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "projects": ["*"],
        "roles": ["console-admin"],
        **claims,
    }
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(body).encode())}."


# name -> (header value builder, accepted by the gateway?)
AUTH_KINDS: dict[str, tuple[Callable[[], str | None], bool]] = {
    "valid": (lambda: f"Bearer {mint_jwt()}", True),
    "admin": (lambda: f"Bearer {mint_jwt(projects='*', roles=['console-admin'])}", True),
    "other_user": (lambda: f"Bearer {mint_jwt(sub='mallory', projects=[])}", True),
    "none": (lambda: None, False),
    "expired": (
        lambda: f"Bearer {mint_jwt(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)}",
        False,
    ),
    "forged": (lambda: f"Bearer {mint_jwt(secret=HS_SECRET[::-1])}", False),
    "alg_none": (lambda: f"Bearer {unsigned_jwt()}", False),
    "wrong_audience": (lambda: f"Bearer {mint_jwt(aud='someone-else')}", False),
    "wrong_issuer": (lambda: f"Bearer {mint_jwt(iss='https://evil.example.com')}", False),
    "basic": (lambda: "Basic YWxpY2U6cGFzc3dvcmQ=", False),
}


class AuthMix:
    """Authorization headers by kind; tokens minted once (a fresh 5-minute token is plenty)."""

    def __init__(self) -> None:
        self.values = {name: build() for name, (build, _) in AUTH_KINDS.items()}

    def accepted(self, kind: str) -> bool:
        return kind in AUTH_KINDS and AUTH_KINDS[kind][1]


def pick_auth_kinds(rng: random.Random, count: int) -> list[str]:
    """`count` distinct kinds: "generated" keeps what schemathesis drew (random strings)."""
    kinds = [*AUTH_KINDS, "generated", "valid", "admin"]  # the accepted ones weigh more
    picked: list[str] = []
    while len(picked) < count:
        kind = rng.choice(kinds)
        if kind not in picked:
            picked.append(kind)
    return picked


# --- Redis writes, attributed ---------------------------------------------------------------


@dataclass
class WriteWatch:
    """Every key write on the Redis server (keyspace events), drained per request.

    Requests are sent one at a time; after each response a PING goes down the subscriber's
    connection, and Redis delivers the pong after every event of commands it ran before it. So
    the events drained up to the pong are exactly the writes done while the request was served.
    Expirations are Redis' own doing, not a request's, and are left out.
    """

    client: aioredis.Redis
    pubsub: Any = None
    pings: int = 0
    previous_setting: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def start(self) -> None:
        config: dict[Any, Any] = dict(await self.client.config_get("notify-keyspace-events"))
        value = config.get("notify-keyspace-events", config.get(b"notify-keyspace-events", ""))
        self.previous_setting = _text(value)
        await self.client.config_set("notify-keyspace-events", "EA")
        self.pubsub = self.client.pubsub()
        await self.pubsub.psubscribe("__keyevent@*__:*")
        await self.drain()  # the subscribe confirmation

    async def drain(self) -> list[tuple[str, str]]:
        """(event, key) of the writes since the last drain."""
        self.pings += 1
        marker = f"fuzz-{self.pings}"
        await self.pubsub.ping(marker)
        writes: list[tuple[str, str]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = _text(message.get("type"))
            if kind == "pong" and _text(message.get("data")) == marker:
                return writes
            if kind != "pmessage":
                continue
            event = _text(message["channel"]).rsplit(":", 1)[-1]
            if event in ("expired", "evicted"):
                continue
            writes.append((event, _text(message["data"])))
        raise AssertionError("the keyspace-event watcher lost its pong")

    async def stop(self) -> None:
        if self.pubsub is not None:
            await self.pubsub.punsubscribe()
            await self.pubsub.aclose()
        await self.client.config_set("notify-keyspace-events", self.previous_setting)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# Writes an authorized, well-formed create may leave even when the cloud answers 404/409:
# the subject's rate-limit window (counts attempts), the single-flight lock and the negative
# cache of the upstream's answer.
UPSTREAM_REFUSAL_KEYS = (":creates", ":lock", ":err")


def writes_allowed_for_refusal(status: int, writes: list[tuple[str, str]]) -> bool:
    if not writes:
        return True
    if status not in (404, 409):
        return False
    return all(key.endswith(UPSTREAM_REFUSAL_KEYS) for _, key in writes)


# --- contract shapes ------------------------------------------------------------------------


def error_shape_problems(
    path: str, status: int, headers: dict[str, str], body: bytes
) -> Iterator[str]:
    """What is wrong with a 4xx/5xx answer, by DESIGN 2.2/2.4 (empty when nothing)."""
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "")
    if path.startswith("/static/") and status == 404:
        # aiohttp's FileResponse answers a missing file itself, after every middleware: an
        # empty 404, as /openapi.json documents it (no content).
        if body:
            yield f"static 404 with a body {body[:60]!r}"
        return
    if path.startswith("/console/") and status in (404, 410, 503):
        if not content_type.startswith("text/html"):
            yield f"console page refusal is {content_type!r}, not HTML"
        return
    if not content_type.startswith("application/json"):
        yield f"error content type {content_type!r}"
        return
    try:
        doc = json.loads(body)
    except ValueError:
        yield "error body is not JSON"
        return
    if is_nova_path(path):
        if not (isinstance(doc, dict) and len(doc) == 1):
            yield f"Nova fault is not one key: {str(doc)[:80]}"
            return
        ((name, fault),) = doc.items()
        if name not in NOVA_FAULTS:
            yield f"unknown Nova fault name {name!r}"
        if not (isinstance(fault, dict) and set(fault) == {"code", "message"}):
            yield f"Nova fault body {str(fault)[:80]}"
        elif fault["code"] != status or not isinstance(fault["message"], str):
            yield f"Nova fault code {fault['code']!r} for status {status}"
    else:
        error = doc.get("error") if isinstance(doc, dict) else None
        if not (isinstance(doc, dict) and set(doc) == {"error"} and isinstance(error, dict)):
            yield f"native error is not {{'error': ...}}: {str(doc)[:80]}"
            return
        if set(error) != {"code", "message", "request_id"}:
            yield f"native error keys {sorted(error)}"
        elif error["request_id"] != lower.get("x-request-id"):
            yield "request_id differs from X-Request-ID"
        elif not (isinstance(error["code"], str) and error["code"].replace("_", "").isalpha()):
            yield f"error code {error['code']!r} is not snake_case"
    if status == 401 and not lower.get("www-authenticate", "").startswith("Bearer"):
        yield "401 without a Bearer WWW-Authenticate"
    if status == 429 and not lower.get("retry-after", "").isdigit():
        yield "429 without Retry-After"
    if status == 405 and not lower.get("allow"):
        yield "405 without Allow"
