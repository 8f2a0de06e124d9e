"""The creation rate limit: exact per subject, shared by instances, with an honest Retry-After."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway import errors
from gateway.config import LimitSettings
from gateway.ratelimit import CreationRateLimiter, retry_after_s
from gateway.store.keyspace import KeySpace
from tests.support import FakeClock, free_port

KS = KeySpace("test:")


def limiter(
    redis: aioredis.Redis, clock: FakeClock, per_window: int = 3, window_s: int = 60
) -> CreationRateLimiter:
    limits = LimitSettings(create_per_window=per_window, create_window_s=window_s)
    return CreationRateLimiter(redis, KS, limits, clock=clock)


@pytest.mark.parametrize(
    ("oldest", "window", "now", "expected"),
    [
        (100.0, 60, 100.0, 60),  # all at once: the whole window
        (100.0, 60, 130.0, 30),
        (100.0, 60, 130.2, 30),  # rounded up, never down: retrying early would fail
        (100.0, 60, 159.9, 1),
        (100.0, 60, 160.0, 1),  # never 0: a Retry-After of 0 invites a busy loop
        (100.5, 10, 101.0, 10),
    ],
)
def test_retry_after(oldest: float, window: int, now: float, expected: int) -> None:
    assert retry_after_s(oldest, window, now) == expected


async def test_n_allowed_then_refused_with_retry_after(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    clock = FakeClock(1000.0)
    limit = limiter(redis_pair[0], clock)
    for _ in range(3):
        await limit.check("alice")
        clock.now += 10
    with pytest.raises(errors.RateLimited) as refused:
        await limit.check("alice")
    # The first creation (t=1000) leaves the 60 s window at t=1060; now is 1030.
    assert refused.value.headers["Retry-After"] == "30"
    assert refused.value.status == 429


async def test_shared_by_two_instances(redis_pair: tuple[aioredis.Redis, aioredis.Redis]) -> None:
    clock = FakeClock(1000.0)
    first, second = limiter(redis_pair[0], clock), limiter(redis_pair[1], clock)
    await first.check("alice")
    await second.check("alice")
    await first.check("alice")
    for instance in (first, second):
        with pytest.raises(errors.RateLimited):
            await instance.check("alice")


async def test_window_rolls_over_exactly_at_retry_after(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    clock = FakeClock(1000.25)
    limit = limiter(redis_pair[0], clock, per_window=2, window_s=10)
    await limit.check("alice")
    clock.now += 4
    await limit.check("alice")
    clock.now += 0.5
    with pytest.raises(errors.RateLimited) as refused:
        await limit.check("alice")
    wait = int(refused.value.headers["Retry-After"])
    assert wait == 6  # 1000.25 + 10 - 1004.75 = 5.5, rounded up
    clock.now += wait - 1
    with pytest.raises(errors.RateLimited):
        await limit.check("alice")  # one second early is still too early
    clock.now += 1
    await limit.check("alice")  # the first creation has left the window
    with pytest.raises(errors.RateLimited):
        await limit.check("alice")  # the second (t=1004.25) is still in it


async def test_refusals_do_not_extend_the_wait(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    clock = FakeClock(1000.0)
    limit = limiter(redis_pair[0], clock, per_window=1, window_s=10)
    await limit.check("alice")
    for _ in range(5):
        clock.now += 1
        with pytest.raises(errors.RateLimited):
            await limit.check("alice")
    clock.now += 5  # 10 s after the one creation that counted
    await limit.check("alice")


async def test_subjects_are_counted_apart(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    clock = FakeClock(1000.0)
    limit = limiter(redis_pair[0], clock, per_window=1)
    await limit.check("alice")
    await limit.check("bob")
    await limit.check("alice@example.com:{weird}")
    with pytest.raises(errors.RateLimited):
        await limit.check("alice")


async def test_window_key_expires_with_the_window(
    redis_pair: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    limit = limiter(redis_pair[0], FakeClock(1000.0), window_s=60)
    await limit.check("alice")
    ttl_ms = await redis_pair[0].pttl(KS.creations_of_subject("alice"))
    assert 59_000 < ttl_ms <= 60_000


async def test_redis_down_is_store_unavailable() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_timeout=1)
    try:
        with pytest.raises(errors.StoreUnavailable):
            await limiter(client, FakeClock()).check("alice")
    finally:
        await client.aclose()
