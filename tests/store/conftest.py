"""Store fixtures: every behavioural test runs on fakeredis and on the real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import CacheSettings
from gateway.models import Expiring
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from tests.support import FakeClock

NOW = 1_700_000_000.25


class Upstream:
    """A fetch() that counts its calls and answers what the test set (a value or an error)."""

    def __init__(self, clock: FakeClock, *, delay_s: float = 0.0) -> None:
        self.clock = clock
        self.delay_s = delay_s
        self.calls = 0
        self.error: BaseException | None = None
        self.valid_for_s = 600.0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self) -> Expiring:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # lets concurrent callers pile up behind the lock
        if self.error is not None:
            raise self.error
        return Expiring(f"https://console.example/?n={self.calls}", self.clock() + self.valid_for_s)


@pytest.fixture
def redis_client(redis_pair: tuple[aioredis.Redis, aioredis.Redis]) -> aioredis.Redis:
    return redis_pair[0]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def upstream(clock: FakeClock) -> Upstream:
    return Upstream(clock)


@pytest.fixture
def make_store(clock: FakeClock) -> Callable[..., Store]:
    def build(client: aioredis.Redis, **cache: Any) -> Store:
        return Store(client, KeySpace("test:"), CacheSettings(**cache), clock=clock)

    return build
