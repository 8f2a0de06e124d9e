"""Per-subject limit on console creation: a sliding window in Redis, shared by every instance."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable

from gateway import errors
from gateway.config import LimitSettings
from gateway.store.connect import RedisClient
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import translated_store_errors

# KEYS: the subject's creations ZSET (member -> time). ARGV: now, window s, limit, member,
# key ms. A sliding-window log: at most `limit` creations in any window_s, exactly, and the
# oldest one tells when the next is allowed. Refused attempts are not recorded, so a caller
# hammering the API does not push its own Retry-After further out.
TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return false
"""


def retry_after_s(oldest: float, window_s: float, now: float) -> int:
    """Whole seconds until the oldest creation leaves the window (Retry-After is an integer)."""
    return max(1, math.ceil(oldest + window_s - now))


class CreationRateLimiter:
    """At most limits.create_per_window creations per subject in any create_window_s."""

    def __init__(
        self,
        redis: RedisClient,  # one server, a Sentinel master or a Cluster
        keyspace: KeySpace,
        limits: LimitSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyspace = keyspace
        self._limits = limits
        self._clock = clock
        self._take = redis.register_script(TAKE)

    async def check(self, subject: str) -> None:
        """Count one creation for subject, or raise RateLimited with an exact Retry-After."""
        now, window = self._clock(), self._limits.create_window_s
        args: list[str | int] = [
            repr(now),
            window,
            self._limits.create_per_window,
            uuid.uuid4().hex,
            window * 1000,
        ]
        key = self._keyspace.creations_of_subject(subject)
        with translated_store_errors():
            oldest = await self._take(keys=[key], args=args)
        if oldest is not None:
            wait = retry_after_s(float(oldest), window, now)
            raise errors.RateLimited(
                f"Too many consoles created; try again in {wait} s.", retry_after_s=wait
            )
