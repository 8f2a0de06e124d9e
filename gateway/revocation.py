"""Revocations broadcast over Redis pub/sub, so every instance closes a revoked console at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.observability import console_ref
from gateway.store.connect import RedisClient
from gateway.store.redis_store import translated_store_errors
from gateway.tasks import spawn

log = logging.getLogger("gateway.revocation")

# Application close code (RFC 6455 section 7.4.2) the console page stops reconnecting on.
REVOKED_CLOSE_CODE = 4410
REVOKED_REASON = "console revoked"
_ID_HASH = re.compile(r"[0-9a-f]{64}")
_POLL_S = 1.0  # how often the reader wakes to check the connection's health


async def publish_revocation(redis: RedisClient, channel: str, id_hash: str) -> int:
    """Tell every instance (this one included) to close the console; how many listeners heard."""
    with translated_store_errors():
        return int(await redis.publish(channel, id_hash))


def parse_revocation(data: Any) -> str | None:
    """The console hash a message carries, or None for anything else on the channel."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
    return text if _ID_HASH.fullmatch(text) else None


class RevocationListener:
    """Subscribes to the revocation channel and calls on_revoked(id_hash) for each message.

    Reconnects by itself, with backoff, whenever Redis drops; a message published while
    disconnected is lost, which on_resubscribed (and the registry's heartbeat) make up for.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        on_revoked: Callable[[str], Awaitable[None]],
        *,
        on_resubscribed: Callable[[], Awaitable[None]] | None = None,
        ping_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_revoked = on_revoked
        self._on_resubscribed = on_resubscribed
        self._ping_s = ping_s
        self._backoff_first_s, self._backoff_max_s = backoff_s
        self._delay_s = self._backoff_first_s
        self._in_outage = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set while subscribed

    async def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run(), name="revocation listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        # A cancellation that redis-py's read timeout swallows (Python 3.11's asyncio.timeout
        # can) still ends the loop: it checks _stopping at least every _POLL_S.
        await asyncio.wait({task}, timeout=3 * _POLL_S)
        if not task.done():
            log.warning("revocation listener did not stop in time")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                if not self._in_outage:
                    # Once per outage: a retry loop must not flood the log.
                    log.warning("revocation channel lost, reconnecting: %s", type(exc).__name__)
                    self._in_outage = True
                await asyncio.sleep(self._delay_s)
                self._delay_s = min(self._delay_s * 2, self._backoff_max_s)

    async def _listen(self) -> None:
        pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.ready.set()
            self._delay_s = self._backoff_first_s
            if self._in_outage:
                self._in_outage = False
                log.info("revocation channel restored")
                await self._catch_up()
            await self._read(pubsub)
        finally:
            self.ready.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _read(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        heard = next_ping = loop.time()
        while not self._stopping:
            message = await pubsub.get_message(timeout=_POLL_S)
            now = loop.time()
            if message is not None:
                heard = now
                if message.get("type") == "message":
                    await self._deliver(message.get("data"))
            # A half-open TCP connection (a vanished host sends no RST) would leave us deaf
            # forever; pings that go unanswered turn it into a reconnect.
            if now - heard > 3 * self._ping_s:
                raise RedisConnectionError("revocation channel stopped answering")
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + self._ping_s

    async def _deliver(self, data: Any) -> None:
        id_hash = parse_revocation(data)
        if id_hash is None:
            log.warning("ignored a malformed message on the revocation channel")
            return
        try:
            await self._on_revoked(id_hash)
        except Exception:
            # One failing close must not stop revocations of every other console.
            log.exception("applying a revocation failed", extra={"fields": _console(id_hash)})

    async def _catch_up(self) -> None:
        if self._on_resubscribed is None:
            return
        try:
            await self._on_resubscribed()
        except Exception:
            log.warning("re-checking consoles after reconnecting failed", exc_info=True)


def _console(id_hash: str) -> dict[str, str]:
    return {"console": console_ref(id_hash)}
