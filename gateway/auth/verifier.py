"""Verify internal JWTs with PyJWT against a pinned algorithm list and one configured key source."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import aiohttp
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.auth.jwks import JwksCache
from gateway.auth.policy import Principal, principal_from_claims
from gateway.config import AuthSettings, ConfigError
from gateway.errors import Unauthenticated

if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys

    VerificationKey: TypeAlias = jwt.PyJWK | AllowedPublicKeys | bytes

# Compact JWS only (RFC 7515 section 7.1); an empty signature is never acceptable here.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
# Tokens up to this long have their header checks cached (typical JWTs are well under 1 KiB).
_CACHED_TOKEN_CHARS = 2048
_NUMERIC_DATES = ("exp", "nbf", "iat")
_CLAIM_ERRORS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not yet valid."),
    (jwt.InvalidAudienceError, "The token is not meant for this service."),
    (jwt.InvalidIssuerError, "The token's issuer is not trusted."),
    (jwt.MissingRequiredClaimError, "The token lacks a required claim."),
)


class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> VerificationKey: ...


class StaticKey:
    """One key from the configuration, loaded and checked against every algorithm at start-up."""

    def __init__(self, key: VerificationKey, algorithms: Sequence[str], source: str) -> None:
        for alg in algorithms:
            algorithm = jwt.get_algorithm_by_name(alg)
            try:
                prepared = algorithm.prepare_key(key)
            except (jwt.InvalidKeyError, TypeError, ValueError):
                raise ConfigError(f"invalid configuration: {source}: not a key for {alg}") from None
            if algorithm.check_key_length(prepared) is not None:
                raise ConfigError(f"invalid configuration: {source}: key too short for {alg}")
        self._key = key

    async def key_for(self, kid: str | None) -> VerificationKey:
        return self._key


class TokenVerifier:
    def __init__(self, settings: AuthSettings, keys: KeySource) -> None:
        self._settings = settings
        self._keys = keys
        # A client presents the same token for minutes: its header checks (a pure function
        # of the token) run once. Refusals raise and are not cached; the signature and
        # claims are still verified on every request. At most 1024 x _CACHED_TOKEN_CHARS.
        self._cached_kid = functools.lru_cache(maxsize=1024)(
            functools.partial(unverified_kid, algorithms=settings.algorithms)
        )

    async def verify(self, token: str) -> Principal:
        """The caller behind a token: Unauthenticated on any defect, 503 if JWKS never loaded."""
        kid = self._kid(token)
        key = await self._keys.key_for(kid)
        claims = self._decode(token, key)
        return principal_from_claims(claims, self._settings)

    def _kid(self, token: str) -> str | None:
        if len(token) > self._settings.max_token_bytes:
            raise Unauthenticated("The token is too large.")
        if len(token) <= _CACHED_TOKEN_CHARS:
            kid: str | None = self._cached_kid(token)
            return kid
        return unverified_kid(token, self._settings.algorithms)

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(settings.algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(_claim_message(exc)) from None
        # PyJWT runs int() over exp/nbf/iat, so "exp": "1800000000" would pass; RFC 7519
        # section 2 makes a NumericDate a JSON number.
        if any(_not_a_number(claims[name]) for name in _NUMERIC_DATES if name in claims):
            raise Unauthenticated("The token's time claims must be numbers.")
        return claims


def _not_a_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)


def _claim_message(exc: jwt.InvalidTokenError) -> str:
    # PyJWT's own messages may quote header values; ours are fixed strings.
    for kind, message in _CLAIM_ERRORS:
        if isinstance(exc, kind):
            return message
    return "The token is invalid."


def unverified_kid(token: str, algorithms: Sequence[str]) -> str | None:
    """Reject what must never reach key lookup or PyJWT; return the header's `kid`.

    The caller bounds the token's size first (auth.max_token_bytes)."""
    if not _COMPACT_JWS.fullmatch(token):
        raise Unauthenticated("The token is malformed.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthenticated("The token is malformed.") from None
    alg = header.get("alg")
    # "none" is never configurable, but a case-insensitive check costs nothing.
    if not isinstance(alg, str) or alg.lower() == "none" or alg not in algorithms:
        raise Unauthenticated("The token's algorithm is not accepted.")
    # RFC 7515 section 4.1.11: we implement no extensions, so any `crit` entry is fatal.
    if "crit" in header:
        raise Unauthenticated("The token uses an unsupported critical extension.")
    # jku, x5u, jwk and x5c are deliberately ignored: keys come only from our configuration.
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def create_verifier(
    settings: AuthSettings,
    session: aiohttp.ClientSession,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> TokenVerifier:
    """The verifier for the one key source the settings name; bad keys raise ConfigError."""
    keys: KeySource
    if settings.hs256_secret is not None:
        secret = settings.hs256_secret.get_secret_value().encode()
        keys = StaticKey(secret, settings.algorithms, "auth.hs256_secret")
    elif settings.public_key_file is not None:
        public_key = _load_public_key(settings.public_key_file)
        keys = StaticKey(public_key, settings.algorithms, "auth.public_key_file")
    else:
        assert settings.jwks_url is not None  # AuthSettings guarantees exactly one source
        keys = JwksCache(
            settings.jwks_url,
            session,
            cache_ttl_s=settings.jwks_cache_ttl_s,
            refetch_cooldown_s=settings.jwks_refetch_cooldown_s,
            allowed_algorithms=settings.algorithms,
            clock=clock,
        )
    return TokenVerifier(settings, keys)


def _load_public_key(path: Path) -> AllowedPublicKeys:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"invalid configuration: auth.public_key_file: {exc.strerror}") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            "invalid configuration: auth.public_key_file: not a PEM public key"
        ) from None
    return key  # type: ignore[return-value]  # StaticKey checks it fits every algorithm
