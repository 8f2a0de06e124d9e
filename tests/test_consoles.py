"""Pure parts of the console workflow: ids, hashes, target validation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway import errors
from gateway.auth.policy import Principal
from gateway.config import Settings
from gateway.consoles import (
    ConsoleService,
    hash_console_id,
    is_console_id,
    new_console_id,
    validate_target,
)
from gateway.models import ConsoleTarget
from gateway.simulator.state import ComputeSimulator
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from gateway.upstream.client import ComputeClient
from gateway.upstream.credentials import StaticToken
from tests.support import PROJECT, SERVER, UPSTREAM_TOKEN, FakeClock


def test_console_ids_are_256_random_bits_in_43_chars() -> None:
    ids = {new_console_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", i) for i in ids)
    assert all(is_console_id(i) for i in ids)


def test_hash_is_sha256_hex() -> None:
    console_id = new_console_id()
    assert hash_console_id(console_id) == hashlib.sha256(console_id.encode()).hexdigest()


@pytest.mark.parametrize("value", ["", "a" * 42, "a" * 44, "a" * 42 + "/", "a" * 42 + "="])
def test_not_console_ids(value: str) -> None:
    assert not is_console_id(value)


def test_valid_target() -> None:
    assert validate_target("p1", "s-1_X", "novnc", "vnc") == ConsoleTarget("p1", "s-1_X")


@pytest.mark.parametrize(
    ("project", "server", "type_", "protocol", "field"),
    [
        ("", "s", "novnc", "vnc", "project_id"),
        ("p/../q", "s", "novnc", "vnc", "project_id"),
        ("p", "..", "novnc", "vnc", "server_id"),
        ("p", "s.1", "novnc", "vnc", "server_id"),
        ("p", "a" * 65, "novnc", "vnc", "server_id"),
        ("p", "s\x00", "novnc", "vnc", "server_id"),
        ("p", "\u017f", "novnc", "vnc", "server_id"),  # LATIN SMALL LETTER LONG S
        (None, "s", "novnc", "vnc", "project_id"),
        ("p", ["s"], "novnc", "vnc", "server_id"),
        ("p", "s", "spice-html5", "vnc", "type"),
        ("p", "s", None, "vnc", "type"),
        ("p", "s", "novnc", "spice", "protocol"),
        ("p", "s", "novnc", 1, "protocol"),
    ],
)
def test_invalid_targets_name_the_field(
    project: object, server: object, type_: object, protocol: object, field: str
) -> None:
    with pytest.raises(errors.BadRequest, match=f"^{field} "):
        validate_target(project, server, type_, protocol)


@pytest.fixture
async def service_parts(
    make_settings: Callable[..., Settings], compute_url: str, fake_redis: aioredis.Redis
) -> AsyncIterator[tuple[ConsoleService, FakeClock]]:
    settings = make_settings({"upstream": {"compute_url": compute_url}})
    clock = FakeClock()
    store = Store(fake_redis, KeySpace("t:"), settings.cache, clock=clock)
    async with aiohttp.ClientSession() as session:
        compute = ComputeClient(settings.upstream, session, StaticToken(UPSTREAM_TOKEN))
        yield ConsoleService(settings, store, compute, clock=clock), clock


ALICE = Principal("alice", frozenset({PROJECT}), False, frozenset(), False)


async def test_extend_slides_expiry_up_to_max_lifetime(
    service_parts: tuple[ConsoleService, FakeClock],
) -> None:
    service, clock = service_parts
    issued = await service.create(ALICE, ConsoleTarget(PROJECT, SERVER))
    record = issued.record
    assert record.expires_at == clock.now + 900
    clock.now += 600
    extended = await service.extend(record)
    assert extended.expires_at == clock.now + 900
    clock.now = record.created_at + 28800 - 100  # near the hard cap
    capped = await service.extend(extended)
    assert capped.expires_at == record.created_at + 28800
    assert (await service.lookup(issued.console_id)).expires_at == capped.expires_at


async def test_extend_of_a_revoked_console_is_gone(
    service_parts: tuple[ConsoleService, FakeClock],
) -> None:
    service, clock = service_parts
    issued = await service.create(ALICE, ConsoleTarget(PROJECT, SERVER))
    await service.revoke(ALICE, issued.console_id)
    clock.now += 300
    with pytest.raises(errors.Gone):
        await service.extend(issued.record)


async def test_refreshed_and_uncached_urls_call_the_upstream(
    service_parts: tuple[ConsoleService, FakeClock], simulator: ComputeSimulator
) -> None:
    service, _ = service_parts
    target = ConsoleTarget(PROJECT, SERVER)
    cached = await service.console_url(target)
    assert (await service.console_url(target)) == cached
    assert simulator.console_calls == 1
    refreshed = await service.refreshed_console_url(target)
    assert refreshed.value != cached.value and simulator.console_calls == 2
    assert (await service.console_url(target)) == refreshed  # the new one is cached
    uncached = await service.uncached_console_url(target)
    assert uncached.value not in (cached.value, refreshed.value)
    assert (await service.console_url(target)) == refreshed  # ...the one-time one is not
    assert simulator.console_calls == 3
