"""The JWT attack matrix, end to end over HTTP (issue 6, item 1).

Every hostile bearer token goes to each authenticating route of a gateway on the real
redis-server, in front of the simulator, and must be refused with 401, the RFC 6750 challenge
and the documented body, with no token echoed, no upstream call and no Redis command. Each
test first creates a console with a valid token and checks that the harness saw its writes
and its upstream call, so a matrix that saw nothing could not pass; the leeway and
positive-control cases are accepted (201) through the same harness.

Decisions the matrix pins down: a request without Bearer credentials where the gateway reads
them (none, a query-string or cookie token, X-Auth-Token on native routes) gets a challenge
without an error code (RFC 6750 section 3.1); any other scheme (Basic, ...) or a malformed
Bearer header counts as an invalid token. A token over auth.max_token_bytes is a 401; a header
over aiohttp's 8190-byte field limit never reaches the gateway's code and is aiohttp's plain
400 (behind the shipped nginx, nginx's own 400 comes first).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import random
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization

from gateway.simulator.state import ComputeSimulator
from tests.adversarial.jwt_attacks_support import (
    EC_KID,
    LEEWAY_S,
    OCT_KID,
    OCT_SECRET,
    RSA_KID,
    JwksEndpoint,
    Keys,
    KeyUrlListener,
    claims,
    hs_secret,
    leaked,
    make_keys,
    secret_fragments,
    snapshot,
    store_changes,
)
from tests.figures import SecurityFigures
from tests.jwt_support import DROP, b64url, forge
from tests.support import PROJECT, SERVER, deep_merge

Client = TestClient[web.Request, web.Application]
GatewayFactory = Callable[..., Awaitable[Client]]
AioServer = Callable[[web.Application], Awaitable[TestServer]]

NATIVE_BODY = {"project_id": PROJECT, "server_id": SERVER}
NOVA_PATH = f"/v2.1/{PROJECT}/servers/{SERVER}/remote-consoles"
NOVA_BODY = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
V26 = {"OpenStack-API-Version": "compute 2.6"}
CHALLENGE_INVALID = 'error="invalid_token"'


# --- gateways under attack -------------------------------------------------------------------


@dataclass(frozen=True)
class KeySetup:
    name: str
    alg: str  # the one algorithm the gateway is configured for
    source: str  # "secret", "pem" or "jwks"

    @property
    def kid(self) -> str | None:
        return {"RS256": RSA_KID, "ES256": EC_KID}.get(self.alg)


SETUPS = {
    s.name: s
    for s in (
        KeySetup("hs256", "HS256", "secret"),
        KeySetup("rs256-pem", "RS256", "pem"),
        KeySetup("es256-pem", "ES256", "pem"),
        KeySetup("rs256-jwks", "RS256", "jwks"),
        KeySetup("es256-jwks", "ES256", "jwks"),
    )
}
ALL_SETUPS = tuple(SETUPS)
ASYMMETRIC = ("rs256-pem", "es256-pem", "rs256-jwks", "es256-jwks")


@dataclass(frozen=True)
class Ctx:
    """What a token builder may use: the gateway's real keys and an attacker's."""

    setup: KeySetup
    keys: Keys
    listener_url: str
    jwks_url: str | None = None

    def real_key(self) -> Any:
        return {"HS256": hs_secret(), "RS256": self.keys.rsa, "ES256": self.keys.ec}[self.setup.alg]

    def attacker_key(self) -> Any:
        return {
            "HS256": b"an-attacker-guessed-secret-that-is-long-enough",
            "RS256": self.keys.attacker_rsa,
            "ES256": self.keys.attacker_ec,
        }[self.setup.alg]

    def public_pem(self) -> bytes:
        return self.keys.rsa_pem() if self.setup.alg == "RS256" else self.keys.ec_pem()

    def headers(self, **extra: Any) -> dict[str, Any]:
        header: dict[str, Any] = {} if self.setup.kid is None else {"kid": self.setup.kid}
        header.update(extra)
        return {k: v for k, v in header.items() if v is not DROP}

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        """Signed with the gateway's own key: only the spoiled part may make it invalid."""
        return self._encode(payload, self.real_key(), header)

    def attacker_sign(self, payload: dict[str, Any], **header: Any) -> str:
        return self._encode(payload, self.attacker_key(), header)

    def _encode(self, payload: dict[str, Any], key: Any, header: dict[str, Any]) -> str:
        # PyJWS, not jwt.encode: it signs claims of any shape (jwt.encode refuses some).
        body = json.dumps(payload).encode()
        return jwt.PyJWS().encode(body, key, self.setup.alg, headers=self.headers(**header))

    def valid(self) -> str:
        return self.sign(claims())


@dataclass
class Harness:
    setup: KeySetup
    client: Client
    redis: aioredis.Redis
    simulator: ComputeSimulator
    jwks: JwksEndpoint | None
    listener: KeyUrlListener
    logs: io.StringIO
    ctx: Ctx
    console_id: str = ""

    def upstream_calls(self) -> int:
        return self.simulator.console_calls + self.simulator.keystone_calls


@pytest.fixture(scope="module")
def jwt_keys() -> Keys:
    return make_keys()


@pytest.fixture
async def key_url_listener() -> AsyncIterator[KeyUrlListener]:
    listener = KeyUrlListener()
    await listener.start()
    yield listener
    await listener.stop()


@pytest.fixture
def start_gateway(
    make_gateway: GatewayFactory,
    real_redis: aioredis.Redis,
    simulator: ComputeSimulator,
    aiohttp_server: AioServer,
    tmp_path: Path,
    jwt_keys: Keys,
    key_url_listener: KeyUrlListener,
    captured_logs: io.StringIO,
) -> Callable[..., Awaitable[Harness]]:
    """A gateway configured for one key setup, with one console created by a valid token."""

    async def start(setup_name: str, overrides: dict[str, Any] | None = None) -> Harness:
        setup = SETUPS[setup_name]
        auth: dict[str, Any] = {"algorithms": [setup.alg]}
        jwks: JwksEndpoint | None = None
        if setup.source != "secret":
            auth["hs256_secret"] = None
        if setup.source == "pem":
            pem = tmp_path / f"{setup.name}.pem"
            pem.write_bytes(jwt_keys.rsa_pem() if setup.alg == "RS256" else jwt_keys.ec_pem())
            auth["public_key_file"] = str(pem)
        elif setup.source == "jwks":
            jwks = JwksEndpoint(jwt_keys.jwks_document())
            server = await aiohttp_server(jwks.app())
            jwks.url = str(server.make_url("/jwks.json"))
            auth["jwks_url"] = jwks.url
        config = deep_merge({"auth": auth}, overrides or {})
        client = await make_gateway(real_redis, config)
        ctx = Ctx(setup, jwt_keys, key_url_listener.url, jwks.url if jwks else None)
        harness = Harness(
            setup, client, real_redis, simulator, jwks, key_url_listener, captured_logs, ctx
        )
        harness.console_id = await create_control_console(harness)
        return harness

    return start


async def create_control_console(h: Harness) -> str:
    """Proves the harness sees what a request changes: a valid creation writes and calls up."""
    before, calls = await snapshot(h.redis), h.upstream_calls()
    response = await h.client.post(
        "/v1/consoles", json=NATIVE_BODY, headers={"Authorization": f"Bearer {h.ctx.valid()}"}
    )
    assert response.status == 201, await response.text()
    console_id: str = (await response.json())["console"]["id"]
    changes = store_changes(before, await snapshot(h.redis))
    assert any(c.startswith("key ") for c in changes), changes
    assert any(c.startswith("command ") for c in changes), changes
    assert h.upstream_calls() == calls + 1
    if h.jwks is not None:
        assert h.jwks.gets == 1
    return console_id


# --- sending a token to every authenticating route -------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # "{id}" is the control console's id
    nova: bool
    x_auth_token: bool = False  # the token goes in X-Auth-Token instead of Authorization


ROUTES = (
    Route("native-create", "POST", "/v1/consoles", nova=False),
    Route("nova-create", "POST", NOVA_PATH, nova=True),
    Route("nova-x-auth-token", "POST", NOVA_PATH, nova=True, x_auth_token=True),
    Route("native-get", "GET", "/v1/consoles/{id}", nova=False),
    Route("native-delete", "DELETE", "/v1/consoles/{id}", nova=False),
)
NATIVE_ROUTES = tuple(r for r in ROUTES if not r.nova)


@dataclass
class Tally:
    """What one test sent and saw; becomes the area's figures."""

    inputs: int = 0
    refused: int = 0
    server_errors: int = 0
    state_changes: int = 0
    leaks: int = 0
    refusal_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def record(self, figures: SecurityFigures, area: str = "jwt attacks") -> None:
        measures: dict[str, float] = {}
        if self.refusal_ms:
            ordered = sorted(self.refusal_ms)
            measures["refusal_ms_p50"] = round(ordered[len(ordered) // 2], 2)
            measures["refusal_ms_max"] = round(ordered[-1], 2)
        figures.add(
            area,
            inputs=self.inputs,
            refused=self.refused,
            server_errors=self.server_errors,
            state_changes=self.state_changes,
            leaks=self.leaks,
        )
        # Per-test measures would overwrite each other under one area; keep the worst.
        row = figures.areas[area].measures
        for name, value in measures.items():
            previous = row.get(name)
            if not isinstance(previous, int | float) or value > previous:
                row[name] = value


async def send(
    h: Harness,
    route: Route,
    token: str | None,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[ClientResponse, str, float]:
    request_headers = dict(V26 if route.nova else {})
    if token is not None:
        if route.x_auth_token:
            request_headers["X-Auth-Token"] = token
        else:
            request_headers["Authorization"] = f"Bearer {token}"
    request_headers.update(headers or {})
    body = (NOVA_BODY if route.nova else NATIVE_BODY) if route.method == "POST" else None
    started = time.perf_counter()
    response = await h.client.request(
        route.method,
        route.path.replace("{id}", h.console_id),
        json=body,
        headers=request_headers,
        params=params,
    )
    text = await response.text()
    return response, text, (time.perf_counter() - started) * 1000


def refusal_defects(
    route: Route, response: ClientResponse, text: str, secret: str | None, *, missing: bool
) -> list[str]:
    """Everything wrong with a response that should be the documented 401."""
    defects: list[str] = []
    if response.status != 401:
        return [f"status {response.status}: {text[:200]}"]
    challenge = response.headers.get("WWW-Authenticate", "")
    if not challenge.startswith("Bearer"):
        defects.append(f"challenge {challenge!r}")
    if (CHALLENGE_INVALID in challenge) == missing:
        defects.append(f"challenge {challenge!r} (credentials {'absent' if missing else 'sent'})")
    if response.headers.get("Cache-Control") != "no-store":
        defects.append("no Cache-Control: no-store")
    try:
        body = json.loads(text)
    except ValueError:
        return [*defects, f"body is not JSON: {text[:200]}"]
    if route.nova:
        fault = body.get("unauthorized") if isinstance(body, dict) else None
        if not (
            isinstance(fault, dict)
            and set(fault) == {"code", "message"}
            and fault["code"] == 401
            and isinstance(fault["message"], str)
        ):
            defects.append(f"nova body {text[:200]}")
    else:
        error = body.get("error") if isinstance(body, dict) else None
        if not (
            isinstance(error, dict)
            and set(error) == {"code", "message", "request_id"}
            and error["code"] == "invalid_token"
            and isinstance(error["message"], str)
            and error["request_id"] == response.headers.get("X-Request-ID")
        ):
            defects.append(f"native body {text[:200]}")
    if secret is not None and leaked(secret, [text, *response.headers.values()]):
        defects.append("token echoed in the response")
    return defects


async def expect_refused(
    h: Harness,
    tally: Tally,
    label: str,
    token: str | None,
    *,
    routes: Sequence[Route] = ROUTES,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    secret: str | None = None,
    missing: bool = False,
) -> None:
    """Send one hostile input to every route; 401 each time and nothing changed."""
    secret = secret if secret is not None else token
    before, calls = await snapshot(h.redis), h.upstream_calls()
    for route in routes:
        response, text, elapsed_ms = await send(h, route, token, headers=headers, params=params)
        tally.inputs += 1
        tally.server_errors += response.status >= 500
        defects = refusal_defects(route, response, text, secret, missing=missing)
        tally.leaks += any("echoed" in d for d in defects)
        if response.status == 401:
            tally.refused += 1
            tally.refusal_ms.append(elapsed_ms)
        tally.failures.extend(f"{label} -> {route.name}: {d}" for d in defects)
    changes = store_changes(before, await snapshot(h.redis))
    if h.upstream_calls() != calls:
        changes.append(f"{h.upstream_calls() - calls} upstream call(s)")
    if changes:
        tally.state_changes += len(changes)
        tally.failures.append(f"{label}: state changed: {changes}")


def finish(h: Harness, tally: Tally, figures: SecurityFigures, sent: Sequence[str]) -> None:
    """Logs must not hold any token sent; then record figures and fail on any defect."""
    logs = h.logs.getvalue()
    found = [token for token in sent if leaked(token, [logs])]
    tally.leaks += len(found)
    for token in found:
        fragment = next(f for f in secret_fragments(token) if f in logs)
        at = logs.index(fragment)
        context = logs[max(0, at - 160) : at].rsplit("{", 1)[-1]
        tally.failures.append(f"a token's part ({len(fragment)} chars) logged after: {context}")
    if h.jwks is not None and h.jwks.gets != 1:
        tally.failures.append(f"JWKS fetched {h.jwks.gets} times (1 expected, in cooldown)")
    if h.jwks is not None and h.jwks.other_gets:
        tally.failures.append(f"{h.jwks.other_gets} GETs of a non-JWKS path on the key server")
    if h.listener.connections:
        tally.failures.append(f"{h.listener.connections} connection(s) to an attacker key URL")
    tally.record(figures)
    assert not tally.failures, "\n".join(tally.failures[:40])


# --- the hostile tokens -----------------------------------------------------------------------

TokenList = list[tuple[str, str]]


def alg_none_every_capitalisation(c: Ctx) -> TokenList:
    tokens: TokenList = []
    for letters in itertools.product(*((ch.lower(), ch.upper()) for ch in "none")):
        alg = "".join(letters)
        header = c.headers(alg=alg, typ="JWT")
        signing_input = forge(header, claims()).rsplit(".", 1)[0]
        tokens.append((f"alg={alg}, junk signature", forge(header, claims())))
        if alg in ("none", "None", "NONE", "nOnE"):
            tokens.append((f"alg={alg}, empty signature", signing_input + "."))
    # The real token's payload and signature under an alg=none header.
    _, body, signature = c.valid().split(".")
    none_header = b64url(json.dumps(c.headers(alg="none")).encode())
    tokens.append(("alg=none, real payload and signature", f"{none_header}.{body}.{signature}"))
    return tokens


def hs256_with_public_key(c: Ctx) -> TokenList:
    """The classic key confusion: HMAC keyed with the public key the gateway verifies with."""
    pem = c.public_pem()
    published = {k["kid"]: k for k in c.keys.jwks_document()["keys"]}
    jwk = json.dumps(published[c.setup.kid]).encode()
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = c.headers(alg="HS256", typ="JWT")
    tokens = [
        ("HS256 keyed with the PEM", forge(header, claims(), hmac_key=pem)),
        ("HS256 keyed with the PEM, no newline", forge(header, claims(), hmac_key=pem.strip())),
        ("HS256 keyed with the JWK JSON", forge(header, claims(), hmac_key=jwk)),
        ("HS256 keyed with the DER", forge(header, claims(), hmac_key=der)),
        (
            "alg HS384, HMAC keyed with the PEM",
            forge(c.headers(alg="HS384"), claims(), hmac_key=pem),
        ),
        ("HS256 keyed with the PEM, no kid", forge({"alg": "HS256"}, claims(), hmac_key=pem)),
    ]
    return tokens


def hs256_with_published_oct_key(c: Ctx) -> TokenList:
    header = {"alg": "HS256", "kid": OCT_KID}
    return [("HS256 with the oct key from the JWKS", forge(header, claims(), hmac_key=OCT_SECRET))]


def wrong_issuer(c: Ctx) -> TokenList:
    return [
        ("other issuer", c.sign(claims(iss="https://evil.example.com"))),
        ("issuer with a trailing slash", c.sign(claims(iss="https://portal.example.com/"))),
        ("issuer in upper case", c.sign(claims(iss="HTTPS://PORTAL.EXAMPLE.COM"))),
        ("issuer as a list", c.sign(claims(iss=["https://portal.example.com"]))),
    ]


def wrong_audience(c: Ctx) -> TokenList:
    return [
        ("other audience", c.sign(claims(aud="other-service"))),
        ("audience list without ours", c.sign(claims(aud=["a", "b"]))),
        ("empty audience list", c.sign(claims(aud=[]))),
        ("audience in upper case", c.sign(claims(aud="CONSOLE-GATEWAY"))),
        ("audience prefix", c.sign(claims(aud="console-gateway-admin"))),
    ]


def expired_beyond_leeway(c: Ctx) -> TokenList:
    now = int(time.time())
    return [
        ("expired leeway+10 s ago", c.sign(claims(exp=now - LEEWAY_S - 10, iat=now - 600))),
        ("expired a day ago", c.sign(claims(exp=now - 86400, iat=now - 90000))),
        ("exp=0", c.sign(claims(exp=0))),
    ]


def not_yet_valid_beyond_leeway(c: Ctx) -> TokenList:
    now = int(time.time())
    return [
        ("nbf leeway+10 s ahead", c.sign(claims(nbf=now + LEEWAY_S + 10))),
        ("nbf a day ahead", c.sign(claims(nbf=now + 86400, exp=now + 90000))),
    ]


def missing_exp(c: Ctx) -> TokenList:
    return [("no exp", c.sign(claims(exp=DROP)))]


def missing_sub(c: Ctx) -> TokenList:
    return [
        ("no sub", c.sign(claims(sub=DROP))),
        ("empty sub", c.sign(claims(sub=""))),
        ("sub is a number", c.sign(claims(sub=42))),
    ]


def missing_iss_or_aud(c: Ctx) -> TokenList:
    return [("no iss", c.sign(claims(iss=DROP))), ("no aud", c.sign(claims(aud=DROP)))]


def malformed_claims(c: Ctx) -> TokenList:
    now = int(time.time())
    return [
        ("exp is a string", c.sign(claims(exp=str(now + 300)))),
        ("exp is null", c.sign(claims(exp=None) | {"exp": None})),
        ("exp is true", c.sign(claims(exp=True))),
        ("exp is a list", c.sign(claims(exp=[now + 300]))),
        ("iat is a string", c.sign(claims(iat=str(now)))),
        ("nbf is a numeric string", c.sign(claims(nbf=str(now)))),
        ("nbf is a string", c.sign(claims(nbf="yesterday"))),
        ("projects is a string", c.sign(claims(projects=PROJECT))),
        ('projects is ["*"]', c.sign(claims(projects=["*"]))),
        ("roles is a dict", c.sign(claims(roles={"console-admin": True}))),
    ]


def unknown_kid(c: Ctx) -> TokenList:
    tokens = [
        ("unknown kid, attacker key", c.attacker_sign(claims(), kid="attacker-1")),
        ("kid with a path", c.attacker_sign(claims(), kid="../../etc/passwd")),
        ("kid with SQL", c.attacker_sign(claims(), kid="x' OR '1'='1")),
        ("huge kid", c.attacker_sign(claims(), kid="k" * 2000)),
        ("kid of the other key type", c.attacker_sign(claims(), kid=OCT_KID)),
        ("kid is an object", forge(c.headers(alg=c.setup.alg, kid={"$ne": ""}), claims())),
        ("kid is a number", forge(c.headers(alg=c.setup.alg, kid=1), claims())),
    ]
    if c.setup.source == "jwks":  # a configured PEM has no kid: any kid selects it
        tokens.append(("unknown kid, real key", c.sign(claims(), kid="portal-rsa-2")))
    return tokens


def right_kid_wrong_key(c: Ctx) -> TokenList:
    return [("real kid, attacker key", c.attacker_sign(claims()))]


def embedded_key_headers(c: Ctx) -> TokenList:
    """Keys or key URLs in the header, all the attacker's: none may be fetched or trusted."""
    url = c.listener_url
    attacker = c.keys.attacker_rsa if c.setup.alg == "RS256" else c.keys.attacker_ec
    family = "RS256" if c.setup.alg == "RS256" else "ES256"
    jwk = jwt.get_algorithm_by_name(family).to_jwk(attacker.public_key(), as_dict=True)
    x5c = [base64.b64encode(c.keys.attacker_cert_der).decode()]
    tokens = [
        ("jku to a local listener", c.attacker_sign(claims(), jku=url, kid="attacker-1")),
        ("jku, real kid", c.attacker_sign(claims(), jku=url)),
        ("x5u to a local listener", c.attacker_sign(claims(), x5u=url, kid=DROP)),
        ("embedded jwk", c.attacker_sign(claims(), jwk=jwk, kid=DROP)),
        ("embedded jwk, real kid", c.attacker_sign(claims(), jwk=jwk)),
        ("x5c self-signed chain", c.attacker_sign(claims(), x5c=x5c, kid=DROP)),
        ("jku + jwk + x5u + x5c", c.attacker_sign(claims(), jku=url, x5u=url, jwk=jwk, x5c=x5c)),
    ]
    if c.jwks_url is not None:  # a jku on the trusted key server's own host, another path
        other = c.jwks_url.replace("/jwks.json", "/attacker/jwks.json")
        tokens.append(("jku on the JWKS host", c.attacker_sign(claims(), jku=other, kid="a-1")))
    return tokens


def crit_headers(c: Ctx) -> TokenList:
    """Correctly signed, but with critical extensions the gateway does not implement."""
    return [
        ("crit [exp]", c.sign(claims(), crit=["exp"], exp=1)),
        (
            "crit unknown extension",
            c.sign(claims(), crit=["urn:example:x"], **{"urn:example:x": 1}),
        ),
        ("crit empty list", c.sign(claims(), crit=[])),
        ("crit as a string", c.sign(claims(), crit="exp")),
        ("crit [b64]", c.sign(claims(), crit=["b64"], b64=True)),
    ]


def tampered(c: Ctx) -> TokenList:
    head, body, sig = c.valid().split(".")
    admin = b64url(json.dumps(claims(sub="mallory", roles=["console-admin"])).encode())
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    return [
        ("payload swapped, signature kept", f"{head}.{admin}.{sig}"),
        ("signature flipped", f"{head}.{body}.{flipped}"),
        ("signature stripped", f"{head}.{body}."),
        ("signature of another token", f"{head}.{admin}.{c.sign(claims(sub='x')).split('.')[2]}"),
        ("alg switched in header", f"{b64url(json.dumps({'alg': 'HS512'}).encode())}.{body}.{sig}"),
    ]


def malformed_structure(c: Ctx) -> TokenList:
    head, body, sig = c.valid().split(".")
    h = c.headers(alg=c.setup.alg)
    return [
        ("one segment", head),
        ("two segments", f"{head}.{body}"),
        ("four segments", f"{head}.{body}.{sig}.{sig}"),
        ("five segments (JWE-like)", f"{head}.{body}.{sig}.{sig}.{sig}"),
        ("empty segments", ".."),
        ("empty header", f".{body}.{sig}"),
        ("non-base64 header", f"{head[:-2]}!!.{body}.{sig}"),
        ("non-base64 payload", f"{head}.%7B%7D.{sig}"),
        ("base64 padding", f"{head}==.{body}.{sig}"),
        ("standard base64 alphabet", f"{head}.{body}+/.{sig}"),
        ("non-JSON header", forge(b"not json", claims())),
        ("JSON array header", forge(b'["alg","HS256"]', claims())),
        ("header not UTF-8", forge(b'{"alg":"\xff\xfe"}', claims())),
        ("non-JSON payload", forge(h, b"not json")),
        ("JSON array payload", forge(h, b"[1,2,3]")),
        ("JSON number payload", forge(h, b"42")),
        ("deeply nested payload", forge(h, b"[" * 2000 + b"]" * 2000)),
        ("no alg", forge(c.headers(typ="JWT"), claims())),
        ("alg is a list", forge(c.headers(alg=[c.setup.alg]), claims())),
        ("alg with a space", forge(c.headers(alg=c.setup.alg + " "), claims())),
        ("alg lower case", forge(c.headers(alg=c.setup.alg.lower()), claims())),
        ("random letters", "".join(random.Random(6).choices(string.ascii_letters, k=200))),
    ]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Ctx], TokenList]
    setups: tuple[str, ...]


CASES = (
    Case("alg-none-every-capitalisation", alg_none_every_capitalisation, ALL_SETUPS),
    Case("hs256-with-rsa-public-key", hs256_with_public_key, ("rs256-pem", "rs256-jwks")),
    Case("hs256-with-ec-public-key", hs256_with_public_key, ("es256-pem", "es256-jwks")),
    Case("hs256-with-published-oct-jwk", hs256_with_published_oct_key, ("rs256-jwks",)),
    Case("wrong-iss", wrong_issuer, ("hs256", "rs256-jwks")),
    Case("wrong-aud", wrong_audience, ("hs256", "es256-pem")),
    Case("expired-beyond-leeway", expired_beyond_leeway, ("hs256", "rs256-pem")),
    Case("not-yet-valid-beyond-leeway", not_yet_valid_beyond_leeway, ("hs256", "es256-jwks")),
    Case("missing-exp", missing_exp, ("hs256", "rs256-jwks")),
    Case("missing-sub", missing_sub, ("hs256", "es256-pem")),
    Case("missing-iss-or-aud", missing_iss_or_aud, ("hs256",)),
    Case("malformed-claims", malformed_claims, ("hs256",)),
    Case("unknown-kid", unknown_kid, ("rs256-jwks", "es256-jwks", "rs256-pem")),
    Case("right-kid-wrong-key", right_kid_wrong_key, ASYMMETRIC),
    Case(
        "jku-x5u-jwk-x5c-headers", embedded_key_headers, ("rs256-pem", "rs256-jwks", "es256-jwks")
    ),
    Case("crit-headers", crit_headers, ("hs256", "rs256-jwks")),
    Case("tampered", tampered, ("hs256", "es256-jwks")),
    Case("malformed-structure", malformed_structure, ("hs256", "rs256-jwks")),
)
MATRIX = [
    pytest.param(case, setup, id=f"{case.name}[{setup}]") for case in CASES for setup in case.setups
]


@pytest.mark.parametrize(("case", "setup"), MATRIX)
async def test_hostile_token_is_refused_everywhere(
    start_gateway: Callable[..., Awaitable[Harness]],
    security_figures: SecurityFigures,
    case: Case,
    setup: str,
) -> None:
    h = await start_gateway(setup)
    tokens = case.build(h.ctx)
    assert tokens
    tally = Tally()
    for label, token in tokens:
        await expect_refused(h, tally, label, token)
    finish(h, tally, security_figures, [token for _, token in tokens])
    assert tally.refused == len(tokens) * len(ROUTES)


# --- the control: just inside the leeway, and a valid token for every key type, are accepted --


async def expect_accepted(h: Harness, token: str, *, scheme: str = "Bearer") -> None:
    """201/200/204 on every route, and the harness sees the writes and the upstream call."""
    created: list[str] = []
    for route in ROUTES[:3]:
        cached = await h.redis.keys("*:url:*")
        if cached:  # so that this request has to call the upstream again
            await h.redis.delete(*cached)
        before, calls = await snapshot(h.redis), h.upstream_calls()
        headers = {} if route.x_auth_token else {"Authorization": f"{scheme} {token}"}
        response, text, _ = await send(h, route, None if headers else token, headers=headers)
        assert response.status == (201 if route.name == "native-create" else 200), text
        if route.name == "native-create":
            created.append((await response.json())["console"]["id"])
        changes = store_changes(before, await snapshot(h.redis))
        assert any(c.startswith("key ") and "added" in c for c in changes), changes
        assert h.upstream_calls() == calls + 1
    h.console_id = created[0]
    for route in NATIVE_ROUTES[1:]:
        response, text, _ = await send(
            h, route, None, headers={"Authorization": f"{scheme} {token}"}
        )
        assert response.status == (200 if route.method == "GET" else 204), text


@pytest.mark.parametrize("setup", ALL_SETUPS)
async def test_valid_token_of_each_key_type_is_accepted(
    start_gateway: Callable[..., Awaitable[Harness]], setup: str
) -> None:
    h = await start_gateway(setup)
    await expect_accepted(h, h.ctx.valid())
    if setup == "hs256":  # RFC 7235: the scheme is case-insensitive
        await expect_accepted(h, h.ctx.valid(), scheme="bearer")
    else:  # also with `kid` absent: a single configured key is used
        await expect_accepted(h, h.ctx.sign(claims(), kid=DROP))


@pytest.mark.parametrize("setup", ["hs256", "rs256-jwks"])
async def test_just_inside_the_leeway_is_accepted(
    start_gateway: Callable[..., Awaitable[Harness]], setup: str
) -> None:
    h = await start_gateway(setup)
    now = int(time.time())
    await expect_accepted(h, h.ctx.sign(claims(exp=now - LEEWAY_S + 10, iat=now - 600)))
    await expect_accepted(h, h.ctx.sign(claims(nbf=now + LEEWAY_S - 10)))


# --- where the token is, and in which scheme ---------------------------------------------------


@dataclass(frozen=True)
class Carrier:
    """A valid token carried somewhere the gateway must not look, or under the wrong scheme."""

    name: str
    headers: Callable[[str], dict[str, str]]
    routes: tuple[Route, ...] = ROUTES
    query: bool = False


NOVA_ROUTES = tuple(r for r in ROUTES if r.nova)

# No Bearer credentials where the gateway looks: RFC 6750 section 3.1, a challenge without error.
ELSEWHERE = (
    Carrier("no credentials", lambda t: {}),
    Carrier("access_token in the query string", lambda t: {}, query=True),
    Carrier("token in a cookie", lambda t: {"Cookie": f"access_token={t}; token={t}"}),
    Carrier("X-Auth-Token on native routes", lambda t: {"X-Auth-Token": t}, NATIVE_ROUTES),
    Carrier("blank Authorization", lambda t: {"Authorization": "   "}),
)
# Credentials sent, but not a well-formed Bearer header: the gateway answers invalid_token
# (its choice for other schemes too; RFC 6750 section 3.1 would also allow no error code).
MALFORMED_BEARER = (
    Carrier("Bearer:", lambda t: {"Authorization": f"Bearer: {t}"}),
    Carrier("no space", lambda t: {"Authorization": f"Bearer{t}"}),
    Carrier("two spaces", lambda t: {"Authorization": f"Bearer  {t}"}),
    Carrier("tab", lambda t: {"Authorization": f"Bearer\t{t}"}),
    Carrier("trailing junk", lambda t: {"Authorization": f"Bearer {t} x"}),
    Carrier("quoted", lambda t: {"Authorization": f'Bearer "{t}"'}),
    Carrier("no token", lambda t: {"Authorization": "Bearer"}),
    Carrier(
        "junk Bearer beats a valid X-Auth-Token",
        lambda t: {"Authorization": "Bearer junk.junk.junk", "X-Auth-Token": t},
        NOVA_ROUTES,
    ),
)
OTHER_SCHEMES = (
    Carrier("Baerer", lambda t: {"Authorization": f"Baerer {t}"}),
    Carrier(
        "Basic user:token",
        lambda t: {"Authorization": "Basic " + base64.b64encode(f"alice:{t}".encode()).decode()},
    ),
    Carrier("Basic with the JWT", lambda t: {"Authorization": f"Basic {t}"}),
    Carrier("Token", lambda t: {"Authorization": f"Token {t}"}),
    Carrier("JWT", lambda t: {"Authorization": f"JWT {t}"}),
    Carrier("Digest", lambda t: {"Authorization": f'Digest username="{t}"'}),
)


@pytest.mark.parametrize(
    ("carriers", "missing"),
    [
        pytest.param(ELSEWHERE, True, id="token-not-in-a-header-the-gateway-reads"),
        pytest.param(MALFORMED_BEARER, False, id="bearer-header-malformed"),
        pytest.param(OTHER_SCHEMES, False, id="scheme-misspelt-or-other"),
    ],
)
async def test_token_outside_a_bearer_header_is_refused(
    start_gateway: Callable[..., Awaitable[Harness]],
    security_figures: SecurityFigures,
    carriers: tuple[Carrier, ...],
    missing: bool,
) -> None:
    h = await start_gateway("hs256")
    token = h.ctx.valid()  # the very token the control console was created with
    tally = Tally()
    for carrier in carriers:
        await expect_refused(
            h,
            tally,
            carrier.name,
            None,
            routes=carrier.routes,
            headers=carrier.headers(token),
            params={"access_token": token} if carrier.query else None,
            secret=token,
            missing=missing,
        )
    finish(h, tally, security_figures, [token])
    assert tally.refused == sum(len(c.routes) for c in carriers)


# --- oversized tokens ---------------------------------------------------------------------------


async def test_token_over_max_token_bytes_is_a_401(
    start_gateway: Callable[..., Awaitable[Harness]], security_figures: SecurityFigures
) -> None:
    """Within aiohttp's header limit but over auth.max_token_bytes: refused before PyJWT."""
    h = await start_gateway("rs256-jwks", {"auth": {"max_token_bytes": 1024}})
    token = h.ctx.sign(claims(padding="p" * 3000))  # correctly signed, ~4.6 KiB
    assert len(token) > 4096
    tally = Tally()
    await expect_refused(h, tally, "token over max_token_bytes", token)
    finish(h, tally, security_figures, [token])
    assert tally.refused == len(ROUTES)


@pytest.mark.parametrize("size", [16 * 1024, 1024 * 1024], ids=["16KiB", "1MiB"])
async def test_oversized_token_header_is_a_clear_4xx(
    start_gateway: Callable[..., Awaitable[Harness]],
    security_figures: SecurityFigures,
    size: int,
) -> None:
    """Over aiohttp's 8190-byte header field limit the HTTP parser answers 400 before any
    middleware (so not in the JSON error shape): no 5xx, no token part echoed whole, nothing
    changed, and the gateway keeps serving."""
    h = await start_gateway("hs256")
    token = h.ctx.sign(claims(padding="p" * size))  # correctly signed
    tally = Tally()
    before, calls = await snapshot(h.redis), h.upstream_calls()
    echoed = 0
    for route in ROUTES:
        response, text, _ = await send(h, route, token)
        tally.inputs += 1
        tally.server_errors += response.status >= 500
        if response.status != 400:
            tally.failures.append(f"{route.name}: status {response.status}")
            continue
        tally.refused += 1
        if leaked(token, [text, *response.headers.values()]):
            tally.leaks += 1
            tally.failures.append(f"{route.name}: a token part echoed")
        echoed = max(echoed, _longest_token_prefix(token, text))
    changes = store_changes(before, await snapshot(h.redis))
    if h.upstream_calls() != calls:
        changes.append("upstream called")
    tally.state_changes += len(changes)
    if changes:
        tally.failures.append(f"state changed: {changes}")
    await expect_accepted(h, h.ctx.valid())  # still serving, on a new connection
    finish(h, tally, security_figures, [token])
    security_figures.add("jwt attacks", oversize_status=400, oversize_echoed_token_chars=echoed)
    # aiohttp quotes the first 100 bytes of the header: the JWS header and a claims prefix.
    assert echoed < 128


def _longest_token_prefix(token: str, text: str) -> int:
    low, high = 0, len(token)
    while low < high:
        middle = (low + high + 1) // 2
        if token[:middle] in text:
            low = middle
        else:
            high = middle - 1
    return low


# --- a flood of random kids against a JWKS gateway --------------------------------------------

FLOOD_COOLDOWN_S = 2


async def test_kid_flood_fetches_jwks_at_most_once_per_cooldown(
    start_gateway: Callable[..., Awaitable[Harness]], security_figures: SecurityFigures
) -> None:
    started = time.monotonic()  # the control console's fetch happens after this
    h = await start_gateway("rs256-jwks", {"auth": {"jwks_refetch_cooldown_s": FLOOD_COOLDOWN_S}})
    assert h.jwks is not None
    before, calls = await snapshot(h.redis), h.upstream_calls()
    statuses: list[int] = []
    gate = asyncio.Semaphore(25)

    async def attack(kid: str) -> None:
        # The key is looked up before any signature check, so a junk signature does as well.
        token = forge(h.ctx.headers(alg="RS256", kid=kid), claims())
        async with gate:
            response, _, _ = await send(h, ROUTES[0], token)
        statuses.append(response.status)

    def random_kids(n: int) -> list[str]:
        return [
            "".join(random.choices(string.ascii_letters + string.digits, k=16)) for _ in range(n)
        ]

    # Burst 1: 300 kids straight after the first fetch, inside its cooldown.
    await asyncio.gather(*(attack(kid) for kid in random_kids(300)))
    burst1_s = time.monotonic() - started
    fetches_burst1 = h.jwks.gets
    # Burst 2, once the cooldown has passed: the first miss may refetch, once.
    await asyncio.sleep(max(0.0, h.jwks.last_get + FLOOD_COOLDOWN_S + 0.2 - time.monotonic()))
    second = time.monotonic()
    await asyncio.gather(*(attack(kid) for kid in random_kids(100)))
    burst2_s = time.monotonic() - second
    changes = store_changes(before, await snapshot(h.redis))
    upstream = h.upstream_calls() - calls
    refused = statuses.count(401)
    security_figures.add(
        "jwks kid flood",
        inputs=len(statuses),
        refused=refused,
        server_errors=sum(s >= 500 for s in statuses),
        state_changes=len(changes) + upstream,
        jwks_fetches=h.jwks.gets,
        cooldown_s=FLOOD_COOLDOWN_S,
        burst1_s=round(burst1_s, 2),
        burst2_s=round(burst2_s, 2),
    )
    assert refused == len(statuses) == 400, sorted(set(statuses))
    assert changes == [] and upstream == 0
    # At most one fetch per cooldown window: 1 + floor(elapsed / cooldown) in each burst.
    assert 1 <= fetches_burst1 <= 1 + int(burst1_s // FLOOD_COOLDOWN_S)
    assert 1 <= h.jwks.gets - fetches_burst1 <= 1 + int(burst2_s // FLOOD_COOLDOWN_S)
    assert h.jwks.other_gets == 0 and h.listener.connections == 0
    # The real key still works, from the cache: no fetch for it.
    fetched = h.jwks.gets
    await expect_accepted(h, h.ctx.valid())
    assert h.jwks.gets == fetched
