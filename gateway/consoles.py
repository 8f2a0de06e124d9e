"""The console workflow: authorize, get a fresh upstream URL once per burst, mint a gateway id."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import errors
from gateway.auth.policy import Principal, can_manage_console, require_project
from gateway.config import UPSTREAM_URL_VALIDITY_S, Settings
from gateway.models import CONSOLE_TYPES, ID_PATTERN, ConsoleRecord, ConsoleTarget, Expiring
from gateway.ratelimit import CreationRateLimiter
from gateway.store.redis_store import Store
from gateway.upstream.client import ComputeClient

CONSOLE_ID_BYTES = 32  # 256 random bits -> 43 base64url characters
_CONSOLE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")


def new_console_id() -> str:
    return secrets.token_urlsafe(CONSOLE_ID_BYTES)


def hash_console_id(console_id: str) -> str:
    """Only this hash is stored: a Redis dump must not hand out working console links."""
    return hashlib.sha256(console_id.encode("ascii")).hexdigest()


def is_console_id(value: str) -> bool:
    return _CONSOLE_ID_PATTERN.fullmatch(value) is not None


def validate_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise errors.BadRequest(f"{name} must be 1-64 characters of letters, digits, '-' or '_'.")
    return value


def validate_target(
    project_id: object, server_id: object, type_: object, protocol: object
) -> ConsoleTarget:
    """Turn untrusted request fields into a ConsoleTarget, or raise BadRequest naming the field."""
    project = validate_id("project_id", project_id)
    server = validate_id("server_id", server_id)
    if not isinstance(type_, str) or type_ not in CONSOLE_TYPES:
        raise errors.BadRequest(f"type must be one of: {', '.join(sorted(CONSOLE_TYPES))}.")
    if not isinstance(protocol, str) or CONSOLE_TYPES[type_] != protocol:
        raise errors.BadRequest(f"protocol must be {CONSOLE_TYPES[type_]!r} for type {type_!r}.")
    return ConsoleTarget(project, server, type_, protocol)


@dataclass(frozen=True, slots=True)
class IssuedConsole:
    console_id: str  # shown once, to the creator; never stored or logged
    record: ConsoleRecord


class ConsoleService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        compute: ComputeClient,
        *,
        limiter: CreationRateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._compute = compute
        self._limiter = limiter
        self._clock = clock

    async def create(self, principal: Principal, target: ConsoleTarget) -> IssuedConsole:
        require_project(principal, target.project_id)
        if self._limiter is not None:
            await self._limiter.check(principal.subject)
        # Fetching (or finding) the upstream URL first means a server that cannot open a
        # console (404/409) never gets a gateway link.
        await self.console_url(target)
        now = self._clock()
        console_id = new_console_id()
        record = ConsoleRecord(
            id_hash=hash_console_id(console_id),
            owner=principal.subject,
            project_id=target.project_id,
            server_id=target.server_id,
            type=target.type,
            protocol=target.protocol,
            created_at=now,
            expires_at=now + self._settings.sessions.ttl_s,
        )
        # Kept past expiry as a tombstone: a late visitor learns "expired" (410), not 404.
        await self._store.put_console(record, keep_s=self._keep_s(record, now))
        return IssuedConsole(console_id, record)

    async def console_url(self, target: ConsoleTarget) -> Expiring:
        """A cached upstream URL with validity left, fetched once per burst across instances."""

        async def fetch() -> Expiring:
            # Validity is counted from before the call, so network time only makes us more careful.
            started = self._clock()
            console_url = await self._compute.create_remote_console(target)
            return Expiring(console_url.url, started + UPSTREAM_URL_VALIDITY_S)

        cache = self._settings.cache
        return await self._store.single_flight(
            self._store.keyspace.console_url(target),
            fetch,
            ttl_s=cache.console_url_ttl_s,
            min_remaining_s=cache.min_remaining_s,
        )

    async def refreshed_console_url(self, target: ConsoleTarget) -> Expiring:
        """Drop a cached URL the upstream refused and fetch (once per burst) a new one."""
        await self._store.invalidate(self._store.keyspace.console_url(target))
        return await self.console_url(target)

    async def uncached_console_url(self, target: ConsoleTarget) -> Expiring:
        """A URL for this connection only, for clouds whose tokens serve one connection."""
        started = self._clock()
        console_url = await self._compute.create_remote_console(target)
        return Expiring(console_url.url, started + UPSTREAM_URL_VALIDITY_S)

    async def get(self, principal: Principal, console_id: str) -> ConsoleRecord:
        record = await self._load_owned(principal, console_id)
        self.ensure_live(record)
        return record

    async def extend(self, record: ConsoleRecord) -> ConsoleRecord:
        """Slide a used console's expiry (sessions.ttl_s from now, capped by max_lifetime_s).

        A link must keep working across reconnects while it is in use; None from the store
        means it was revoked meanwhile, which the caller treats as gone.
        """
        sessions, now = self._settings.sessions, self._clock()
        expires_at = min(now + sessions.ttl_s, record.created_at + sessions.max_lifetime_s)
        if expires_at <= record.expires_at:
            return record
        keep_s = expires_at - now + sessions.tombstone_s
        extended = await self._store.extend_console(
            record.id_hash, expires_at=expires_at, keep_s=keep_s
        )
        if extended is None:
            raise errors.Gone("This console was revoked.")
        return extended

    async def revoke(self, principal: Principal, console_id: str) -> ConsoleRecord | None:
        """The record as revoked now, or None when it was revoked or expired already."""
        record = await self._load_owned(principal, console_id)
        if record.revoked_at is not None or record.expires_at <= self._clock():
            return None
        return await self._store.revoke_console(record.id_hash, at=self._clock())

    async def _load_owned(self, principal: Principal, console_id: str) -> ConsoleRecord:
        record = await self.lookup(console_id)
        if not can_manage_console(principal, record.owner):
            raise errors.Forbidden("Only the console's owner or an administrator may do this.")
        return record

    async def lookup(self, console_id: str) -> ConsoleRecord:
        """The record behind a console id; NotFound for ids that are malformed or unknown."""
        if not is_console_id(console_id):
            raise errors.NotFound("No such console.")
        record = await self._store.get_console(hash_console_id(console_id))
        if record is None:
            raise errors.NotFound("No such console.")
        return record

    def ensure_live(self, record: ConsoleRecord) -> None:
        """Gone (410) for a revoked or expired console."""
        if record.revoked_at is not None:
            raise errors.Gone("This console was revoked.")
        if record.expires_at <= self._clock():
            raise errors.Gone("This console has expired.")

    def _keep_s(self, record: ConsoleRecord, now: float) -> float:
        return record.expires_at - now + self._settings.sessions.tombstone_s
