"""Auth fixtures: generated keys, a fake clock, a counting JWKS server.

Claims, forged tokens and JWKs: tests/jwt_support.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pytest_aiohttp import AiohttpServer

from tests.support import FakeClock


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
