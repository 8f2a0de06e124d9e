"""Live console WebSockets: counted across instances in Redis, limited, and closable by console."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.config import LimitSettings
from gateway.models import ConsoleRecord
from gateway.observability import console_ref
from gateway.relay import CLOSE_TIMEOUT_S, close_within
from gateway.revocation import REVOKED_CLOSE_CODE, REVOKED_REASON
from gateway.store.connect import RedisClient
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import translated_store_errors
from gateway.tasks import spawn

log = logging.getLogger("gateway.connections")

# KEYS: a live-connection ZSET (member -> lease expiry). ARGV: now, limit, member, expiry,
# key ms. Pruning, counting and adding in one script is what stops two instances from both
# taking the last slot; expired members are connections of instances that died.
TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# A slot frees when someone disconnects, which nobody can predict; this is a polite hint.
BUSY_RETRY_AFTER_S = 5


@dataclass(eq=False)
class Admission:
    """One admitted WebSocket; `member` names it in Redis as <instance id>:<uuid>."""

    id_hash: str
    subject: str
    member: str
    ws: web.WebSocketResponse
    admitted: bool = False  # holds both slots; only then does the heartbeat renew them
    released: bool = False
    # Set when a close was asked for before the socket was prepared: the handler closes
    # it with this code and reason right after prepare().
    close_requested: tuple[int, str] | None = None


class ConnectionRegistry:
    """This instance's live WebSockets and their leases in Redis.

    Each connection holds a lease (a ZSET member scored by its expiry) on its console's
    key and on its subject's key; run_heartbeat() renews them, so a crashed instance's
    connections stop counting within lease_s.
    """

    def __init__(
        self,
        redis: RedisClient,  # one server, a Sentinel master or a Cluster
        keyspace: KeySpace,
        limits: LimitSettings,
        instance_id: str,
        *,
        clock: Callable[[], float] = time.time,
        lease_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._limits = limits
        self._instance_id = instance_id
        self._clock = clock
        self._lease_s = lease_s
        self._held: dict[str, Admission] = {}
        self._take_slot = redis.register_script(TAKE_SLOT)

    async def admit(self, ws: web.WebSocketResponse, record: ConsoleRecord) -> Admission:
        """Take a slot on this instance, the console and the subject, or raise RateLimited."""
        if len(self._held) >= self._limits.ws_per_instance:
            raise _busy("This gateway instance has too many live consoles.", "ws_instance")
        admission = Admission(
            record.id_hash, record.owner, f"{self._instance_id}:{uuid.uuid4().hex}", ws
        )
        # Held before the first await, so concurrent admits here see each other.
        self._held[admission.member] = admission
        try:
            await self._take_both(admission)
        except BaseException:
            del self._held[admission.member]
            raise
        admission.admitted = True
        return admission

    async def _take_both(self, admission: Admission) -> None:
        console_key = self._keyspace.live_on_console(admission.id_hash)
        subject_key = self._keyspace.live_of_subject(admission.subject)
        # Two scripts, not one: the keys live in different Cluster slots. A console slot
        # taken by an admission the subject limit then refuses is given back at once.
        if not await self._take(console_key, self._limits.ws_per_console, admission.member):
            raise _busy("This console has too many live connections.", "ws_console")
        try:
            taken = await self._take(subject_key, self._limits.ws_per_subject, admission.member)
        except BaseException:
            await self._give_back([console_key], admission.member)
            raise
        if not taken:
            await self._give_back([console_key], admission.member)
            raise _busy("You have too many live consoles.", "ws_subject")

    async def _take(self, key: str, limit: int, member: str) -> bool:
        now = self._clock()
        args: list[str | int] = [
            repr(now),
            limit,
            member,
            repr(now + self._lease_s),
            self._key_ms(),
        ]
        with translated_store_errors():
            return bool(await self._take_slot(keys=[key], args=args))

    async def release(self, admission: Admission) -> None:
        """Give the slots back; idempotent, and never raises (a lease expires by itself)."""
        if admission.released:
            return
        admission.released = True
        self._held.pop(admission.member, None)
        keys = [
            self._keyspace.live_on_console(admission.id_hash),
            self._keyspace.live_of_subject(admission.subject),
        ]
        await self._give_back(keys, admission.member)

    async def _give_back(self, keys: Iterable[str], member: str) -> None:
        try:
            with translated_store_errors():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.zrem(key, member)
                    await pipe.execute()
        except errors.StoreUnavailable:
            log.debug("could not release a connection slot; its lease will expire")

    async def live_connections(self, id_hash: str) -> int:
        """Live WebSockets on this console across every instance."""
        key = self._keyspace.live_on_console(id_hash)
        with translated_store_errors():
            return int(await self._redis.zcount(key, f"({self._clock()!r}", "+inf"))

    def local_count(self) -> int:
        return len(self._held)

    def sockets(self) -> list[web.WebSocketResponse]:
        return [a.ws for a in self._held.values() if a.ws.prepared]

    def close_console(self, id_hash: str, code: int, reason: str) -> int:
        """Start closing this instance's sockets of one console; how many were live."""
        matched = [a for a in self._held.values() if a.id_hash == id_hash]
        for admission in matched:
            if admission.close_requested is not None:
                continue  # already closing: a revocation may arrive more than once
            admission.close_requested = (code, reason)
            if admission.ws.prepared:
                spawn(
                    close_within(admission.ws, code, reason, CLOSE_TIMEOUT_S),
                    name=f"close console {console_ref(id_hash)}",
                )
        if matched:
            _log_closing(id_hash, len(matched), code)
        return len(matched)

    async def refresh(self) -> None:
        """Renew every lease and close consoles revoked meanwhile, in one round trip."""
        held = [a for a in self._held.values() if a.admitted]
        if not held:
            return
        consoles = sorted({a.id_hash for a in held})
        with translated_store_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                self._queue_renewals(pipe, held)
                for id_hash in consoles:
                    pipe.hget(self._keyspace.console(id_hash), "revoked_at")
                answers = await pipe.execute()
        # A renewal racing a release can re-add the released member; remove it again.
        raced = [a for a in held if a.released]
        for admission in raced:
            await self._give_back(self._keys_of(admission), admission.member)
        for id_hash, revoked_at in zip(consoles, answers[-len(consoles) :], strict=True):
            if revoked_at is not None:
                self.close_console(id_hash, REVOKED_CLOSE_CODE, REVOKED_REASON)

    def _queue_renewals(self, pipe: Any, held: list[Admission]) -> None:
        expiry, key_ms = self._clock() + self._lease_s, self._key_ms()
        # One ZADD per key with all of its members: thousands of consoles on a few keys
        # would otherwise cost thousands of commands every heartbeat.
        members: dict[str, dict[str, float]] = {}
        for admission in held:
            for key in self._keys_of(admission):
                members.setdefault(key, {})[admission.member] = expiry
        for key in sorted(members):
            # Plain ZADD, not XX: it also restores leases lost while Redis was away.
            pipe.zadd(key, members[key])
            pipe.pexpire(key, key_ms)

    def _keys_of(self, admission: Admission) -> list[str]:
        return [
            self._keyspace.live_on_console(admission.id_hash),
            self._keyspace.live_of_subject(admission.subject),
        ]

    def _key_ms(self) -> int:
        # Twice the lease: a key outlives its freshest member even with some clock skew.
        return math.ceil(self._lease_s * 2000)

    async def run_heartbeat(self, interval_s: float) -> None:
        """Renew leases every interval_s (well under lease_s) until cancelled."""
        in_outage = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except errors.StoreUnavailable:
                if not in_outage:
                    log.warning("cannot renew live-connection leases: store unavailable")
                in_outage = True
                continue
            if in_outage:
                log.info("live-connection leases renewed again")
            in_outage = False


def _busy(message: str, limit: str) -> errors.RateLimited:
    return errors.RateLimited(message, retry_after_s=BUSY_RETRY_AFTER_S, limit=limit)


def _log_closing(id_hash: str, connections: int, code: int) -> None:
    fields = {"console": console_ref(id_hash), "connections": connections, "close_code": code}
    log.info("closing a console's live connections", extra={"fields": fields})
