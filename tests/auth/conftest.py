"""Auth fixtures: generated keys, hand-forged tokens, a fake clock, a counting JWKS server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pytest_aiohttp import AiohttpServer

from gateway.config import AuthSettings
from tests.support import HS_SECRET, FakeClock

ISSUER = "https://portal.example.com"
AUDIENCE = "console-gateway"
DROP = object()  # a claim value meaning "leave this claim out"


def auth_settings(**overrides: Any) -> AuthSettings:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["HS256"],
        "hs256_secret": HS_SECRET,
    }
    return AuthSettings.model_validate({**base, **overrides})


@dataclass(frozen=True)
class FromNow:
    """A time claim relative to when the token is minted: parametrize tables are built at
    import, and a test may run long after that in a big suite."""

    seconds: int


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    overrides = {
        k: now + v.seconds if isinstance(v, FromNow) else v for k, v in overrides.items()
    }
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "projects": ["p1"],
        "roles": [],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    *,
    hmac_key: bytes | None = None,
    signature: bytes = b"not-a-signature",
) -> str:
    """A compact JWS built by hand, for headers and algorithms PyJWT refuses to produce."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(head)}.{b64url(body)}"
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def public_jwk(private_key: Any, kid: str, alg: str | None = None, **extra: Any) -> dict[str, Any]:
    """The public half of a key as a JWK, with `alg` only when given."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        family = "RS256"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        family = "ES256"
    else:
        family = "EdDSA"
    jwk: dict[str, Any] = jwt.get_algorithm_by_name(family).to_jwk(
        private_key.public_key(), as_dict=True
    )
    jwk.update({"kid": kid, **extra})
    if alg is not None:
        jwk["alg"] = alg
    return jwk


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@dataclass
class JwksServer:
    """A real HTTP JWKS endpoint whose answer the test controls and whose GETs it counts."""

    url: str = ""
    document: Any = field(default_factory=lambda: {"keys": []})
    status: int = 200
    gets: int = 0
    other_gets: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event | None = None  # when set to an Event, GETs wait for it

    def base(self) -> str:
        return self.url.rsplit("/", 1)[0]

    async def handle_jwks(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response(self.document)

    async def handle_other(self, request: web.Request) -> web.StreamResponse:
        self.other_gets += 1
        return web.json_response(self.document)


@pytest.fixture
async def jwks_server(aiohttp_server: AiohttpServer) -> AsyncIterator[JwksServer]:
    state = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks.json", state.handle_jwks)
    app.router.add_get("/{tail:.*}", state.handle_other)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("/jwks.json"))
    yield state
    if state.release is not None:
        state.release.set()
