"""Async JWKS key cache: bounded fetches, a TTL, and at most one refetch per cooldown."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.errors import ServiceUnavailable, Unauthenticated
from gateway.tasks import spawn

log = logging.getLogger(__name__)

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)


class _FetchFailed(Exception):
    """The JWKS endpoint gave no usable answer; the reason is safe to log."""


class JwksCache:
    """Signing keys from a JWKS URL, fetched with the app's aiohttp session (never urllib).

    Misses and expiry share one fetch attempt per `refetch_cooldown_s`, so a flood of
    random `kid`s costs the issuer at most one request per cooldown. With cooldown > TTL
    the keys are refreshed at the cooldown's pace.
    """

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        cache_ttl_s: float,
        refetch_cooldown_s: float,
        allowed_algorithms: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = 5.0,
        max_bytes: int = 256 * 1024,
    ) -> None:
        self._url = url
        self._session = session
        self._ttl_s = cache_ttl_s
        self._cooldown_s = refetch_cooldown_s
        self._allowed = frozenset(allowed_algorithms)
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._keys: tuple[jwt.PyJWK, ...] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        if self._keys is None or self._clock() - self._fetched_at >= self._ttl_s:
            await self._refresh()
        if self._keys is None:
            # Not 401: the token may be fine, we just cannot check it yet; 503 says "retry".
            retry_after = str(max(1, round(self._cooldown_s)))
            raise ServiceUnavailable(
                "The token signing keys are unavailable.", headers={"Retry-After": retry_after}
            )
        key = select_key(self._keys, kid)
        if key is None and kid is not None:
            await self._refresh()
            key = select_key(self._keys, kid)
        if key is None:
            raise Unauthenticated("The token's signing key is unknown.")
        return key

    async def _refresh(self) -> None:
        """Fetch unless a fetch is running (then join it) or the cooldown forbids one."""
        if self._inflight is None:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._cooldown_s:
                return
            self._attempted_at = now
            self._inflight = spawn(self._fetch_and_store(), name="jwks-fetch")
        # Shielded: one cancelled request must not abort the fetch every other request waits on.
        await asyncio.shield(self._inflight)

    async def _fetch_and_store(self) -> None:
        try:
            keys = await self._fetch()
        except _FetchFailed as exc:
            # Stale-while-error: keys we already have stay in use until a fetch succeeds.
            log.warning("JWKS fetch from %s failed: %s", urlsplit(self._url).netloc, exc)
        else:
            self._keys = keys
            self._fetched_at = self._clock()
        finally:
            self._inflight = None

    async def _fetch(self) -> tuple[jwt.PyJWK, ...]:
        try:
            async with self._session.get(
                self._url,
                timeout=self._timeout,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise _FetchFailed(f"HTTP status {resp.status}")
                body = await _read_bounded(resp, self._max_bytes)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchFailed(type(exc).__name__) from None
        try:
            return parse_jwks(body, self._allowed)
        except (ValueError, RecursionError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
            raise _FetchFailed(f"unusable key set ({type(exc).__name__})") from None


async def _read_bounded(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise _FetchFailed(f"response larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    # Counted after decompression, so a small gzip bomb is bounded too.
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise _FetchFailed(f"response larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_jwks(body: bytes, allowed: frozenset[str]) -> tuple[jwt.PyJWK, ...]:
    """The signature keys in a JWK Set document usable with the allowed algorithms."""
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    raw_keys = [_with_default_alg(raw, allowed) for raw in document["keys"]]
    usable = tuple(k for k in jwt.PyJWKSet.from_dict({"keys": raw_keys}) if _usable(k, allowed))
    if not usable:
        raise ValueError("no key usable with the configured algorithms")
    return usable


def _with_default_alg(raw: Any, allowed: frozenset[str]) -> Any:
    """Bind an RSA key without `alg` to the configured RSA algorithm (PyJWK would assume RS256)."""
    if not isinstance(raw, dict) or raw.get("kty") != "RSA" or "alg" in raw or "RS256" in allowed:
        return raw
    chosen = next((alg for alg in _RSA_ALGORITHMS if alg in allowed), None)
    return raw if chosen is None else {**raw, "alg": chosen}


def _usable(key: jwt.PyJWK, allowed: frozenset[str]) -> bool:
    return (
        key.public_key_use in (None, "sig")
        and key.algorithm_name in allowed
        # A published private key (or an `oct` secret) is an issuer mistake, never a verifier.
        and isinstance(key.key, _PUBLIC_KEY_TYPES)
        # PyJWT only warns about short RSA keys; we refuse to trust them at all.
        and key.Algorithm.check_key_length(key.key) is None
    )


def select_key(keys: Sequence[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((k for k in keys if k.key_id == kid), None)
