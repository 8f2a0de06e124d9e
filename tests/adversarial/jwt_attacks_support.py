"""Helpers for the JWT attack matrix: keys, hand-forged tokens, counting listeners, store snapshots.

Token forging and claims come from tests/jwt_support.py (shared with tests/auth); this adds
the matrix's keys, a key-URL listener and a Redis state snapshot.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey as EcKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey as RsaKey
from cryptography.x509.oid import NameOID

from tests.jwt_support import b64url, public_jwk
from tests.jwt_support import claims as base_claims
from tests.support import HS_SECRET, PROJECT

LEEWAY_S = 30  # AuthSettings' default, which the matrix's gateways keep
RSA_KID = "portal-rsa-1"
EC_KID = "portal-ec-1"
OCT_KID = "portal-oct-1"
OCT_SECRET = b"a-published-symmetric-secret-that-must-never-verify"


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims the matrix's gateways accept, unless overrides spoil them (DROP removes one)."""
    return base_claims(**{"projects": [PROJECT], **overrides})


@dataclass(frozen=True)
class Keys:
    """The portal's real signing keys, an attacker's keys, and the public forms of each."""

    rsa: RsaKey
    ec: EcKey
    attacker_rsa: RsaKey
    attacker_ec: EcKey
    attacker_cert_der: bytes

    def rsa_pem(self) -> bytes:
        return _public_pem(self.rsa)

    def ec_pem(self) -> bytes:
        return _public_pem(self.ec)

    def jwks_document(self) -> dict[str, Any]:
        """Both real public keys and a published `oct` secret (which must never verify)."""
        rsa_jwk = public_jwk(self.rsa, RSA_KID, "RS256", use="sig")
        ec_jwk = public_jwk(self.ec, EC_KID, "ES256", use="sig")
        oct_jwk = {"kty": "oct", "kid": OCT_KID, "alg": "HS256", "k": b64url(OCT_SECRET)}
        return {"keys": [rsa_jwk, ec_jwk, oct_jwk]}


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_keys() -> Keys:
    attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        attacker_rsa=attacker_rsa,
        attacker_ec=ec.generate_private_key(ec.SECP256R1()),
        attacker_cert_der=_self_signed_der(attacker_rsa),
    )


def _self_signed_der(key: rsa.RSAPrivateKey) -> bytes:
    """The attacker's certificate for an `x5c` header: self-signed, claiming the portal's name."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portal.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class JwksEndpoint:
    """A local JWKS endpoint that counts its hits (the JWKS path and any other path)."""

    document: dict[str, Any]
    url: str = ""
    gets: int = 0
    other_gets: int = 0
    last_get: float = 0.0  # time.monotonic() of the latest JWKS GET

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
        self.last_get = time.monotonic()
        return web.json_response(self.document)

    async def _other(self, request: web.Request) -> web.StreamResponse:
        self.other_gets += 1
        return web.json_response(self.document)


@dataclass
class KeyUrlListener:
    """A TCP listener standing in for an attacker's key server; counts every connection."""

    connections: int = 0
    url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{port}/keys.json"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# Commands the snapshot itself sends, the pub/sub listener's keep-alive and connection set-up:
# none of them changes data. Every other command counts, reads included (nothing may touch the
# store before authentication).
_NOT_REQUEST_DRIVEN = frozenset(
    {"info", "keys", "type", "dump", "pttl", "ping", "hello", "select", "client|setinfo"}
)


@dataclass(frozen=True)
class StoreState:
    """Every key with its type, serialized value and TTL, and Redis's per-command call counts."""

    entries: dict[str, tuple[str, bytes | None, int]] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)


async def snapshot(redis: aioredis.Redis) -> StoreState:
    keys = sorted(await redis.keys("*"))
    entries: dict[str, tuple[str, bytes | None, int]] = {}
    if keys:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
                pipe.dump(key)
                pipe.pttl(key)
            answers = await pipe.execute()
        for index, key in enumerate(keys):
            kind, dumped, pttl = answers[3 * index : 3 * index + 3]
            name = key.decode() if isinstance(key, bytes) else str(key)
            entries[name] = (_text(kind), dumped, int(pttl))
    stats = await redis.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }
    return StoreState(entries, commands)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def store_changes(before: StoreState, after: StoreState) -> list[str]:
    """What changed between two snapshots: keys, values, raised TTLs, commands sent."""
    changes: list[str] = []
    for key in sorted(set(before.entries) | set(after.entries)):
        old, new = before.entries.get(key), after.entries.get(key)
        if old is None or new is None:
            changes.append(f"key {key} {'added' if old is None else 'removed'}")
        elif old[:2] != new[:2]:
            changes.append(f"key {key} rewritten")
        elif (old[2] < 0) != (new[2] < 0) or new[2] > old[2]:
            changes.append(f"key {key} TTL changed {old[2]} -> {new[2]} ms")
    for command in sorted(set(after.commands) - _NOT_REQUEST_DRIVEN):
        delta = after.commands[command] - before.commands.get(command, 0)
        if delta:
            changes.append(f"command {command} x{delta}")
    return changes


def secret_fragments(token: str) -> list[str]:
    """Parts of a token that must not come back in a response or a log line."""
    # The signature, and the claims (which identify the caller), are the telling parts; short
    # pieces ("..", "e30") would match by chance.
    return [part for part in (token, *token.split(".")[1:]) if len(part) >= 16]


def leaked(token: str, texts: Iterable[str]) -> bool:
    fragments = secret_fragments(token)
    return any(fragment in text for text in texts for fragment in fragments)


def hs_secret() -> bytes:
    return HS_SECRET.encode()
