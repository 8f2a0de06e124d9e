"""JWT helpers shared by the auth unit tests and the adversarial matrix: claims, hand-forged
tokens (for headers and algorithms PyJWT refuses to produce), public JWKs, auth settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import AuthSettings
from tests.support import HS_SECRET

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
