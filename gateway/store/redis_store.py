"""The shared store: cached values fetched once per burst across instances, console records."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from gateway.config import CacheSettings
from gateway.errors import GatewayError, StoreUnavailable, UpstreamTimeout
from gateway.metrics import CacheName, CacheResult, GatewayMetrics
from gateway.models import ConsoleRecord, Expiring
from gateway.store import codec
from gateway.store.connect import RedisClient
from gateway.store.keyspace import KeySpace
from gateway.store.scripts import EXTEND, PUT, REVOKE, SETTLE
from gateway.tasks import spawn

_POLL_FIRST_S, _POLL_MAX_S = 0.02, 0.1
_MAX_ORPHANS = 10_000
_WAIT_TIMEOUT = "timed out waiting for another request to fetch the console"


@contextlib.contextmanager
def translated_store_errors(metrics: GatewayMetrics | None = None) -> Iterator[None]:
    """Every Redis failure, whatever the client raised, as StoreUnavailable (a 503)."""
    try:
        yield
    # asyncio.TimeoutError is an OSError since 3.11; an unreachable Cluster raises
    # RedisClusterException, which is not a RedisError.
    except (RedisError, RedisClusterException, OSError) as exc:
        if metrics is not None:
            metrics.redis_error(type(exc).__name__)
        raise StoreUnavailable() from exc


def cache_name(key: str) -> CacheName:
    """Which cache a single-flight key belongs to, for metric labels (pure)."""
    if key.endswith(":keystone"):
        return "keystone_token"
    return "console_url" if ":url:" in key else "other"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    value: Expiring | None  # only a value fresh enough to serve
    error: GatewayError | None
    locked: bool


class Store:
    """Redis-backed state; every Redis failure surfaces as StoreUnavailable."""

    def __init__(
        self,
        redis: RedisClient,  # one server, a Sentinel master or a Cluster
        keyspace: KeySpace,
        cache: CacheSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.keyspace = keyspace
        self._metrics = metrics
        self._redis = redis
        self._cache = cache
        self._clock = clock
        self._flights: dict[str, asyncio.Task[Expiring]] = {}
        # Locks this instance may still hold although a flight ended on a store failure
        # (a lost reply, a partition): key -> token, released when the key is wanted again.
        self._orphans: dict[str, str] = {}
        self._settle_script = redis.register_script(SETTLE)
        self._put_script = redis.register_script(PUT)
        self._revoke_script = redis.register_script(REVOKE)
        self._extend_script = redis.register_script(EXTEND)

    async def ping(self) -> None:
        with translated_store_errors(self._metrics):
            await self._redis.ping()

    async def single_flight(
        self,
        key: str,
        fetch: Callable[[], Awaitable[Expiring]],
        *,
        ttl_s: float,
        min_remaining_s: float,
    ) -> Expiring:
        """The cached value, or fetch() run once per burst across every instance."""
        flight = self._flights.get(key)
        if flight is None:
            snap = await self._snapshot(key, min_remaining_s)
            if snap.value is not None:
                self._looked_up(key, "hit")
                return snap.value
            if snap.error is not None:
                self._looked_up(key, "error")
                raise snap.error
            flight = self._flights.get(key)
        self._looked_up(key, "miss")
        if flight is None:
            flight = self._launch(key, fetch, ttl_s, min_remaining_s)
        elif self._metrics is not None:
            self._metrics.single_flight_wait("local")
        # Shielded: a caller that goes away must not cancel the fetch its peers wait on.
        return await asyncio.shield(flight)

    def _looked_up(self, key: str, result: CacheResult) -> None:
        if self._metrics is not None:
            self._metrics.cache_lookup(cache_name(key), result)

    async def invalidate(self, key: str) -> None:
        with translated_store_errors(self._metrics):
            await self._redis.delete(key)

    def _launch(
        self, key: str, fetch: Callable[[], Awaitable[Expiring]], ttl_s: float, min_s: float
    ) -> asyncio.Task[Expiring]:
        task = spawn(self._fly(key, fetch, ttl_s, min_s), name=f"single-flight {key}")
        self._flights[key] = task
        task.add_done_callback(partial(self._landed, key))
        return task

    def _landed(self, key: str, task: asyncio.Task[Expiring]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every caller was cancelled

    async def _fly(
        self, key: str, fetch: Callable[[], Awaitable[Expiring]], ttl_s: float, min_s: float
    ) -> Expiring:
        deadline = time.monotonic() + self._cache.lock_wait_s
        while True:
            token = secrets.token_hex(16)
            try:
                if await self._acquire(key, token):
                    return await self._hold(key, token, fetch, ttl_s, min_s)
            except StoreUnavailable:
                # SET NX may have run, or the release not: otherwise the next burst would
                # wait lock_wait_s for a lock nobody releases, and answer 504.
                self._orphaned(key, token)
                raise
            orphan = self._orphans.pop(key, None)
            if orphan is not None:  # the lock in the way may be our own: free it, retry
                await self._settle(key, orphan)  # once: a failure here is this call's 503
                continue
            found = await self._wait_for_holder(key, min_s, deadline)
            if found is not None:
                return found

    async def _acquire(self, key: str, token: str) -> bool:
        lock_ms = max(1, int(self._cache.lock_ttl_s * 1000))
        with translated_store_errors(self._metrics):
            taken = await self._redis.set(self.keyspace.lock_for(key), token, nx=True, px=lock_ms)
        return bool(taken)

    async def _hold(
        self, key: str, token: str, fetch: Callable[[], Awaitable[Expiring]], ttl_s: float,
        min_s: float,
    ) -> Expiring:
        try:
            # Another flight may have settled between our first read and taking the lock.
            # That first read found no error marker, so a marker now is this burst's answer.
            snap = await self._snapshot(key, min_s)
        except BaseException:
            await self._release(key, token)
            raise
        if snap.error is not None:
            await self._release(key, token)
            raise snap.error
        if snap.value is not None:
            await self._release(key, token)
            return snap.value
        try:
            result = await fetch()
        except GatewayError as exc:
            await self._release(key, token, error=exc)
            raise
        except BaseException:
            await self._release(key, token)
            raise
        await self._settle(key, token, value=result, ttl_s=ttl_s)
        return result

    async def _release(self, key: str, token: str, *, error: GatewayError | None = None) -> None:
        # Best effort on a failure path: the caller's own error matters more, and an
        # unreleased lock still expires after lock_ttl_s (or goes with the key's next flight).
        try:
            await self._settle(key, token, error=error)
        except StoreUnavailable:
            self._orphaned(key, token)

    def _orphaned(self, key: str, token: str) -> None:
        self._orphans.pop(key, None)
        self._orphans[key] = token
        if len(self._orphans) > _MAX_ORPHANS:  # the oldest have expired in Redis by now
            del self._orphans[next(iter(self._orphans))]

    async def _wait_for_holder(self, key: str, min_s: float, deadline: float) -> Expiring | None:
        """The holder's value; None if the lock vanished without one (the holder died)."""
        if self._metrics is not None:
            self._metrics.single_flight_wait("shared")
        delay = _POLL_FIRST_S
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, _POLL_MAX_S)
            snap = await self._snapshot(key, min_s)
            if snap.value is not None:
                return snap.value
            if snap.error is not None:
                raise snap.error
            if not snap.locked:
                return None
        raise UpstreamTimeout(_WAIT_TIMEOUT)

    async def _snapshot(self, key: str, min_s: float) -> _Snapshot:
        keys = (key, self.keyspace.error_for(key), self.keyspace.lock_for(key))
        with translated_store_errors(self._metrics):
            raw_value, raw_error, lock = await self._redis.mget(keys)
        value = codec.decode_expiring(raw_value)
        if value is not None and not codec.is_fresh(value, self._clock(), min_s):
            value = None
        return _Snapshot(value, codec.decode_error(raw_error), lock is not None)

    async def _settle(
        self, key: str, token: str, *, value: Expiring | None = None, ttl_s: float = 0,
        error: GatewayError | None = None,
    ) -> None:
        args: list[str | int] = [token, "", 0, "", 0]
        if value is not None:
            value_ms = codec.store_ms(ttl_s, value.valid_until, self._clock())
            if value_ms > 0:
                args[1:3] = [codec.encode_expiring(value), value_ms]
        error_ms = int(self._cache.error_ttl_s * 1000)
        if error is not None and error_ms > 0:
            args[3:5] = [codec.encode_error(error), error_ms]
        keys = [key, self.keyspace.error_for(key), self.keyspace.lock_for(key)]
        with translated_store_errors(self._metrics):
            await self._settle_script(keys=keys, args=args)

    async def put_console(self, record: ConsoleRecord, *, keep_s: float) -> None:
        """Store (or replace) a record; it disappears after keep_s seconds."""
        key = self.keyspace.console(record.id_hash)
        keep_ms = int(keep_s * 1000)
        with translated_store_errors(self._metrics):
            # One script, not MULTI/DEL/HSET/PEXPIRE/EXEC: one command to send and parse
            # on the console-creation path (bench/api.py measures it).
            flat = [item for pair in codec.encode_record(record).items() for item in pair]
            await self._put_script(keys=[key], args=[keep_ms, *flat])

    async def get_console(self, id_hash: str) -> ConsoleRecord | None:
        with translated_store_errors(self._metrics):
            raw = await self._redis.hgetall(self.keyspace.console(id_hash))
        return codec.decode_record(raw) if raw else None

    async def revoke_console(self, id_hash: str, *, at: float) -> ConsoleRecord | None:
        """Mark a record revoked, keeping its TTL and the first revoked_at; None if unknown."""
        key = self.keyspace.console(id_hash)
        with translated_store_errors(self._metrics):
            flat: list[Any] | None = await self._revoke_script(keys=[key], args=[repr(float(at))])
        return _record_from_flat(flat)

    async def extend_console(
        self, id_hash: str, *, expires_at: float, keep_s: float
    ) -> ConsoleRecord | None:
        """Push a live record's expiry later (never earlier); None if unknown or revoked."""
        key = self.keyspace.console(id_hash)
        args: list[str | int] = [repr(float(expires_at)), max(1, int(keep_s * 1000))]
        with translated_store_errors(self._metrics):
            flat: list[Any] | None = await self._extend_script(keys=[key], args=args)
        return _record_from_flat(flat)


def _record_from_flat(flat: list[Any] | None) -> ConsoleRecord | None:
    if not flat:
        return None
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return codec.decode_record({codec.text(k): codec.text(v) for k, v in pairs})
