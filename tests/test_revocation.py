"""Revocation over pub/sub: every instance closes the console within a second, across outages."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway import errors
from gateway.connections import ConnectionRegistry
from gateway.revocation import (
    REVOKED_CLOSE_CODE,
    REVOKED_REASON,
    RevocationListener,
    parse_revocation,
    publish_revocation,
)
from gateway.store.keyspace import KeySpace
from tests.support import free_port, wait_for_port
from tests.test_connections import (
    CONSOLE_X,
    CONSOLE_Y,
    ServerFactory,
    connect,
    make_registry,
    registry_app,
    wait_for,
)

KS = KeySpace("test:")
CHANNEL = KS.revocations()


class Recorder:
    """An on_revoked callback that remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.fail = False

    async def __call__(self, id_hash: str) -> None:
        self.seen.append(id_hash)
        if self.fail:
            raise RuntimeError("boom")


@pytest.fixture
async def listeners() -> AsyncIterator[list[RevocationListener]]:
    """Listeners the test starts; all stopped at the end."""
    started: list[RevocationListener] = []
    yield started
    for listener in started:
        await listener.stop()


async def started(
    listeners: list[RevocationListener], listener: RevocationListener
) -> RevocationListener:
    listeners.append(listener)
    await listener.start()
    await asyncio.wait_for(listener.ready.wait(), 5)
    return listener


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a" * 64, "a" * 64),
        ("0123456789abcdef" * 4, "0123456789abcdef" * 4),
        (b"A" * 64, None),  # the store writes lower-case hex only
        (b"a" * 63, None),
        (b"a" * 64 + b"\n", None),
        (b"\xff" * 64, None),
        (b"", None),
        (42, None),
    ],
)
def test_parse_revocation(data: object, expected: str | None) -> None:
    assert parse_revocation(data) == expected


async def test_delivered_on_fakeredis(
    fake_redis: aioredis.Redis, listeners: list[RevocationListener]
) -> None:
    recorder = Recorder()
    await started(listeners, RevocationListener(fake_redis, CHANNEL, recorder))
    assert await publish_revocation(fake_redis, CHANNEL, CONSOLE_X) == 1
    await wait_for(lambda: recorder.seen == [CONSOLE_X])


async def test_revocation_closes_sockets_on_every_instance_within_a_second(
    redis_server: str,
    aiohttp_server: ServerFactory,
    http: aiohttp.ClientSession,
    listeners: list[RevocationListener],
) -> None:
    instances: list[tuple[aioredis.Redis, ConnectionRegistry, TestServer]] = []
    for name in ("gw-a", "gw-b"):
        client: aioredis.Redis = aioredis.Redis.from_url(redis_server)
        registry = make_registry(client, instance=name)
        await started(listeners, RevocationListener(client, CHANNEL, revoker(registry)))
        instances.append((client, registry, await aiohttp_server(registry_app(registry))))
    revoked = [await connect(http, server, CONSOLE_X) for _, _, server in instances for _ in (1, 2)]
    kept = await connect(http, instances[1][2], CONSOLE_Y)
    await wait_for(lambda: sum(len(r.sockets()) for _, r, _ in instances) == 5)

    started_at = time.monotonic()
    assert await publish_revocation(instances[0][0], CHANNEL, CONSOLE_X) == 2
    closes = await asyncio.gather(*(asyncio.wait_for(ws.receive(), 1) for ws in revoked))
    elapsed = time.monotonic() - started_at

    assert {(m.type, m.data, m.extra) for m in closes} == {
        (aiohttp.WSMsgType.CLOSE, REVOKED_CLOSE_CODE, REVOKED_REASON)
    }
    assert elapsed < 1.0, f"revocation took {elapsed:.3f} s"
    print(f"revocation closed 4 sockets on 2 instances in {elapsed * 1000:.1f} ms")
    assert not kept.closed
    await kept.close()
    for client, _, _ in instances:
        await client.aclose()


def revoker(registry: ConnectionRegistry) -> Callable[[str], Awaitable[None]]:
    async def on_revoked(id_hash: str) -> None:
        registry.close_console(id_hash, REVOKED_CLOSE_CODE, REVOKED_REASON)

    return on_revoked


async def test_bad_messages_and_failing_callbacks_do_not_stop_the_listener(
    real_redis: aioredis.Redis,
    listeners: list[RevocationListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    await started(listeners, RevocationListener(real_redis, CHANNEL, recorder))
    await real_redis.publish(CHANNEL, "not a console hash")
    recorder.fail = True
    await publish_revocation(real_redis, CHANNEL, CONSOLE_X)
    await wait_for(lambda: recorder.seen == [CONSOLE_X])
    recorder.fail = False
    await publish_revocation(real_redis, CHANNEL, CONSOLE_Y)
    await wait_for(lambda: recorder.seen == [CONSOLE_X, CONSOLE_Y])
    assert "malformed" in caplog.text and "applying a revocation failed" in caplog.text
    assert CONSOLE_X not in caplog.text  # only short hashes reach the log


async def test_publish_with_redis_down_is_store_unavailable() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_timeout=1)
    try:
        with pytest.raises(errors.StoreUnavailable):
            await publish_revocation(client, CHANNEL, CONSOLE_X)
    finally:
        await client.aclose()


class RedisProcess:
    """A redis-server of this test's own, stoppable and restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_listener_survives_a_redis_restart(
    own_redis: RedisProcess, listeners: list[RevocationListener], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.revocation")
    client: aioredis.Redis = aioredis.Redis.from_url(own_redis.url, socket_timeout=1)
    recorder, caught_up = Recorder(), asyncio.Event()

    async def catch_up() -> None:
        caught_up.set()

    listener = RevocationListener(
        client, CHANNEL, recorder, on_resubscribed=catch_up, backoff_s=(0.02, 0.1)
    )
    await started(listeners, listener)
    try:
        own_redis.stop()
        await wait_for(lambda: not listener.ready.is_set())
        await wait_for(lambda: "revocation channel lost" in caplog.text)
        for _ in range(20):  # several reconnect attempts fail while Redis is away
            await asyncio.sleep(0.02)
        own_redis.start()
        await asyncio.wait_for(listener.ready.wait(), 5)
        await asyncio.wait_for(caught_up.wait(), 5)
        await publish_revocation(client, CHANNEL, CONSOLE_X)
        await wait_for(lambda: recorder.seen == [CONSOLE_X])
    finally:
        await client.aclose()
    assert caplog.text.count("revocation channel lost") == 1  # once per outage, not per retry
    assert caplog.text.count("revocation channel restored") == 1
