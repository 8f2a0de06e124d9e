"""Keystone tokens: fetched once, shared through the cache, renewed near expiry and on 401."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import errors
from gateway.config import KeystoneSettings, UpstreamSettings
from gateway.models import ConsoleTarget, Expiring
from gateway.simulator.compute import create_compute_app
from gateway.simulator.state import ComputeSimulator
from gateway.upstream.client import ComputeClient
from gateway.upstream.keystone import (
    KeystoneTokenProvider,
    parse_expires_at,
    password_auth_body,
    tokens_url,
)
from tests.support import PROJECT, SERVER, FakeClock, free_port

PASSWORD = "keystone-password-SECRET"


class DictCache:
    """A one-process SharedCache: a dict and a lock, honouring min_remaining_s like the store."""

    def __init__(self, clock: FakeClock) -> None:
        self.values: dict[str, Expiring] = {}
        self.ttls: list[float] = []
        self._clock = clock
        self._lock = asyncio.Lock()

    async def single_flight(
        self, key: str, fetch: Callable[[], Awaitable[Expiring]], *, ttl_s: float,
        min_remaining_s: float,
    ) -> Expiring:
        async with self._lock:
            cached = self.values.get(key)
            if cached is not None and cached.valid_until - self._clock() > min_remaining_s:
                return cached
            value = await fetch()
            self.values[key] = value
            self.ttls.append(ttl_s)
            return value

    async def invalidate(self, key: str) -> None:
        self.values.pop(key, None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> ComputeSimulator:
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080",
                           keystone_users={"svc": PASSWORD}, keystone_token_ttl_s=3600,
                           clock=clock)
    sim.add_server(PROJECT, SERVER)
    return sim


@pytest.fixture
async def base_url(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], sim: ComputeSimulator
) -> str:
    return str((await aiohttp_server(create_compute_app(sim))).make_url("")).rstrip("/")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_provider(
    base_url: str, session: aiohttp.ClientSession, clock: FakeClock
) -> Callable[..., KeystoneTokenProvider]:
    def make(cache: DictCache, **overrides: Any) -> KeystoneTokenProvider:
        values = {"auth_url": f"{base_url}/identity", "username": "svc", "password": PASSWORD,
                  "project_id": PROJECT, **overrides}
        settings = KeystoneSettings.model_validate(values)
        return KeystoneTokenProvider(settings, session, cache, "k", timeout_s=5, clock=clock)

    return make


async def test_token_is_fetched_once_and_shared(
    make_provider: Callable[..., KeystoneTokenProvider], sim: ComputeSimulator, clock: FakeClock
) -> None:
    cache = DictCache(clock)
    first, second = make_provider(cache), make_provider(cache)  # two "instances"
    tokens = await asyncio.gather(*(p.token() for p in (first, second, first, second)))
    assert len(set(tokens)) == 1 and sim.is_authorized(tokens[0])
    assert sim.keystone_calls == 1
    assert cache.values["k"].valid_until == clock.now + 3600


async def test_token_is_renewed_before_it_expires(
    make_provider: Callable[..., KeystoneTokenProvider], sim: ComputeSimulator, clock: FakeClock
) -> None:
    provider = make_provider(DictCache(clock), renew_before_s=300)
    first = await provider.token()
    clock.now += 3600 - 301
    assert await provider.token() == first
    clock.now += 2
    assert await provider.token() != first
    assert sim.keystone_calls == 2


async def test_client_renews_once_on_401(
    make_provider: Callable[..., KeystoneTokenProvider], sim: ComputeSimulator, clock: FakeClock,
    base_url: str, session: aiohttp.ClientSession,
) -> None:
    settings = UpstreamSettings.model_validate(
        {"compute_url": base_url, "console_hosts": ["127.0.0.1"],
         "keystone": {"auth_url": f"{base_url}/identity", "username": "svc",
                      "password": PASSWORD, "project_id": PROJECT}})
    client = ComputeClient(settings, session, make_provider(DictCache(clock)))
    target = ConsoleTarget(PROJECT, SERVER)
    await client.create_remote_console(target)
    sim.revoke_keystone_tokens()
    console = await client.create_remote_console(target)
    assert sim.check_console_token(console.token) is not None
    assert (sim.keystone_calls, sim.console_calls) == (2, 3)


async def test_wrong_password_is_an_upstream_error(
    make_provider: Callable[..., KeystoneTokenProvider], clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = make_provider(DictCache(clock), password="not-the-password")
    with pytest.raises(errors.UpstreamError, match="refused") as caught:
        await provider.token()
    assert "not-the-password" not in caught.value.message
    assert "not-the-password" not in caplog.text


async def test_unreachable_keystone(
    make_provider: Callable[..., KeystoneTokenProvider], clock: FakeClock
) -> None:
    provider = make_provider(DictCache(clock), auth_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.UpstreamError, match="unreachable"):
        await provider.token()


async def test_invalidate_forces_a_new_token(
    make_provider: Callable[..., KeystoneTokenProvider], sim: ComputeSimulator, clock: FakeClock
) -> None:
    cache = DictCache(clock)
    provider = make_provider(cache)
    first = await provider.token()
    await provider.invalidate(first)
    assert await provider.token() != first
    assert sim.keystone_calls == 2
    assert PASSWORD not in repr(provider)


@pytest.mark.parametrize(
    ("auth_url", "expected"),
    [
        ("https://id.example.com", "https://id.example.com/v3/auth/tokens"),
        ("https://id.example.com/identity/", "https://id.example.com/identity/v3/auth/tokens"),
        ("https://id.example.com/v3", "https://id.example.com/v3/auth/tokens"),
        ("https://id.example.com/identity/v3/", "https://id.example.com/identity/v3/auth/tokens"),
    ],
)
def test_tokens_url(auth_url: str, expected: str) -> None:
    assert tokens_url(auth_url) == expected


@pytest.mark.parametrize(
    ("expires_at", "epoch"),
    [
        ("2027-01-15T08:00:00.000000Z", 1_800_000_000.0),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0),
        ("2027-01-15T09:00:00+01:00", 1_800_000_000.0),
        ("2027-01-15T08:00:00", 1_800_000_000.0),  # no zone: keystone means UTC
    ],
)
def test_parse_expires_at(expires_at: str, epoch: float) -> None:
    assert parse_expires_at({"token": {"expires_at": expires_at}}) == epoch


@pytest.mark.parametrize("body", [{}, [], {"token": {}}, {"token": {"expires_at": "soon"}},
                                  {"token": {"expires_at": 5}}])
def test_parse_expires_at_refuses_garbage(body: object) -> None:
    with pytest.raises(errors.UpstreamError):
        parse_expires_at(body)


def test_password_auth_body() -> None:
    settings = KeystoneSettings.model_validate(
        {"auth_url": "https://id.example.com", "username": "svc", "password": "pw",
         "user_domain_name": "corp", "project_id": PROJECT})
    body = password_auth_body(settings)
    assert body["auth"]["identity"]["password"]["user"] == {
        "name": "svc", "domain": {"name": "corp"}, "password": "pw"}
    assert body["auth"]["scope"] == {"project": {"id": PROJECT}}
