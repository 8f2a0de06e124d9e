"""Keystone v3 password auth; one token shared by every instance through the store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from gateway import errors
from gateway.config import KeystoneSettings
from gateway.models import Expiring
from gateway.upstream.http import read_json

log = logging.getLogger("gateway.upstream.keystone")

# Keystone tokens live at most a day by default; the token's own expires_at is what binds.
_CACHE_CEILING_S = 24 * 3600
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_BODY_BYTES = 1024 * 1024  # the catalog makes token bodies large
_REFUSED = "The identity service refused the gateway's credentials."


class SharedCache(Protocol):
    async def single_flight(
        self,
        key: str,
        fetch: Callable[[], Awaitable[Expiring]],
        *,
        ttl_s: float,
        min_remaining_s: float,
    ) -> Expiring: ...

    async def invalidate(self, key: str) -> None: ...


def tokens_url(auth_url: str) -> str:
    """auth_url may name the identity root or its /v3 endpoint, as keystoneauth allows."""
    base = auth_url.rstrip("/")
    return f"{base}/auth/tokens" if base.endswith("/v3") else f"{base}/v3/auth/tokens"


def password_auth_body(settings: KeystoneSettings) -> dict[str, Any]:
    user = {
        "name": settings.username,
        "domain": {"name": settings.user_domain_name},
        "password": settings.password.get_secret_value(),
    }
    return {"auth": {
        "identity": {"methods": ["password"], "password": {"user": user}},
        "scope": {"project": {"id": settings.project_id}},
    }}


def parse_expires_at(body: object) -> float:
    """The token's expiry as epoch seconds, from keystone's ISO 8601 `expires_at`."""
    try:
        text: Any = body["token"]["expires_at"]  # type: ignore[index]
        moment = datetime.fromisoformat(text)
    except (KeyError, TypeError, ValueError):
        raise errors.UpstreamError("The identity service gave an unusable answer.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class KeystoneTokenProvider:
    def __init__(
        self,
        settings: KeystoneSettings,
        session: aiohttp.ClientSession,
        cache: SharedCache,
        cache_key: str,
        *,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._session = session
        self._cache = cache
        self._key = cache_key
        self._timeout_s = timeout_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"KeystoneTokenProvider(user={self._settings.username!r})"

    async def token(self) -> str:
        cached = await self._cache.single_flight(
            self._key, self._fetch, ttl_s=_CACHE_CEILING_S,
            min_remaining_s=self._settings.renew_before_s,
        )
        return cached.value

    async def invalidate(self, token: str) -> None:
        await self._cache.invalidate(self._key)

    async def _fetch(self) -> Expiring:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._request()
        except TimeoutError:
            raise errors.UpstreamTimeout("The identity service did not answer in time.") from None
        except aiohttp.ClientError:
            raise errors.UpstreamError("The identity service is unreachable.") from None

    async def _request(self) -> Expiring:
        async with self._session.post(
            tokens_url(self._settings.auth_url),
            json=password_auth_body(self._settings),
            headers={"Accept": "application/json"},
            allow_redirects=False,
        ) as resp:
            if resp.status in (401, 403):
                log.error("keystone refused the gateway's credentials (status %s)", resp.status)
                raise errors.UpstreamError(_REFUSED)
            if resp.status != 201:
                log.error("keystone answered status %s to a token request", resp.status)
                raise errors.UpstreamError("The identity service gave an unusable answer.")
            token = resp.headers.get("X-Subject-Token", "")
            body = await read_json(resp, _MAX_BODY_BYTES, what="identity service")
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise errors.UpstreamError("The identity service gave an unusable answer.")
        return Expiring(token, parse_expires_at(body))
