"""bench.relay: its pure logic, its backends' wire formats, and a quick run's rows."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from websockify.token_plugins import TokenFile  # type: ignore[import-untyped]

from bench import relay
from bench.harness import Row, render
from bench.relay_backends import MIB, _guarded, _sink, _token_writer
from gateway.config import LimitSettings
from gateway.connections import ConnectionRegistry
from gateway.models import ConsoleRecord
from gateway.simulator.state import IssuedConsoleToken, SimServer
from gateway.store.keyspace import KeySpace
from tests.support import FakeClock


def test_idle_capacity_counts_two_sockets_per_console_within_the_hard_limit() -> None:
    assert relay.idle_capacity(20_000, 50, margin=0) == 9_975
    assert relay.idle_capacity(20_000, 50) == 9_875
    # 10,000 consoles cannot fit under a 20,000 hard limit, whatever else is open.
    assert relay.idle_capacity(20_000, 1, margin=0) < 10_000
    assert relay.idle_capacity(100, 500) == 0


def test_capped_levels_replace_the_first_unreachable_level_by_the_capacity() -> None:
    assert relay.capped_levels([10, 1000, 10_000], 9_875) == [10, 1000, 9_875]
    assert relay.capped_levels([10, 1000, 10_000], 50_000) == [10, 1000, 10_000]
    assert relay.capped_levels([10, 1000, 10_000], 1000) == [10, 1000]
    assert relay.capped_levels([10, 1000], 5) == [5]


def test_added_latency_and_memory_per_console() -> None:
    assert relay.added_latency(0.30, 0.10) == pytest.approx(0.20)
    # Noise never makes it negative, nor a ratio's divisor vanish.
    assert relay.added_latency(0.10, 0.30) == relay.LATENCY_FLOOR_MS
    assert relay.added_latency(0.101, 0.1) == relay.LATENCY_FLOOR_MS
    assert relay.per_console_kib(3 * 1024 * 1024, 1024 * 1024, 64) == pytest.approx(32.0)


# websockify's TokenFile never closes the files it reads: its leak, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_token_writer_speaks_websockify_token_file(tmp_path: Path) -> None:
    token_dir = tmp_path / "tokens"
    token_dir.mkdir()
    write = _token_writer(token_dir, {"echo": 5901, "stream": 5902})
    write(IssuedConsoleToken("tok-echo", SimServer("p", "echo"), 0.0))
    write(IssuedConsoleToken("tok-stream", SimServer("p", "stream"), 0.0))
    plugin = TokenFile(str(token_dir))  # websockify's own parser, as the bench runs it
    assert plugin.lookup("tok-echo") == ["127.0.0.1", "5901"]
    assert plugin.lookup("tok-stream") == ["127.0.0.1", "5902"]
    assert plugin.lookup("nope") is None
    assert sorted(p.name for p in token_dir.iterdir()) == ["tok-echo", "tok-stream"]


async def test_sink_acknowledges_one_byte_per_mib() -> None:
    ended = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _guarded(_sink)(reader, writer)  # as the backends process serves it
        finally:
            ended.set()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await reader.readexactly(12) == b"RFB 003.008\n"
        writer.write(bytes(3 * MIB + 100))
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(3), 10) == b"\x01\x01\x01"
        writer.write(bytes(MIB - 100))  # completes the 4th MiB
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"\x01"
    finally:
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(ended.wait(), 10)  # the sink sees EOF and closes its side
        server.close()
        await server.wait_closed()


def _descendants(pid: int) -> set[int]:
    """Every live process below pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":  # a reaped-soon zombie holds nothing
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _well_formed(row: Row) -> None:
    assert row.figure and row.unit
    for spread in (row.value, row.baseline, row.ratio):
        if spread is not None:
            assert math.isfinite(spread.median)
            assert spread.low <= spread.median <= spread.high
    assert (row.met is None) == (row.target == "")
    if row.ratio is not None:
        assert row.baseline is not None


def test_quick_run_yields_every_figure_and_leaves_nothing_running() -> None:
    before = _descendants(os.getpid())
    rows = relay.run(quick=True)
    after = _descendants(os.getpid())
    assert after <= before, "the bench left processes running"
    for row in rows:
        _well_formed(row)
    figures = [row.figure for row in rows]
    assert len(figures) == len(set(figures))
    sessions = relay.QUICK.sessions
    for n in sessions:
        label = f"{n} session{'s' if n > 1 else ''}"
        for expected in (
            f"relay downstream throughput, {label}",
            f"relay upstream throughput, {label}",
            f"added echo latency p50 (64 B), {label}",
            f"added echo latency p99 (64 B), {label}",
        ):
            row = next(r for r in rows if r.figure == expected)
            assert row.ratio is not None and row.target
    throughput = [r for r in rows if "throughput" in r.figure]
    assert all(r.value.median > 0 and r.baseline and r.baseline.median > 0 for r in throughput)
    memory = [r for r in rows if r.figure.startswith("memory per idle console")]
    assert len(memory) == len(relay.QUICK.idle_levels)
    assert memory[-1].value.median > 0  # 40 consoles' sockets and tasks show in RSS
    held = next(r for r in rows if r.figure == "idle consoles held by one gateway process")
    assert held.value.median == relay.QUICK.idle_levels[-1]
    assert "relay" in render(rows, title="relay")


async def test_lease_heartbeat_costs_one_zadd_per_key_not_per_console(
    real_redis: aioredis.Redis,
) -> None:
    """At 10,000 consoles a ZADD per console blocked the loop ~0.66 s every 10 s (now ~0.1 s)."""
    clock = FakeClock()
    limits = LimitSettings(ws_per_console=1000, ws_per_subject=100_000, ws_per_instance=100_000)
    registry = ConnectionRegistry(real_redis, KeySpace("cgw:"), limits, "gw-a", clock=clock)
    consoles = [f"console-{i}" for i in range(3)]
    admitted = [
        await registry.admit(
            web.WebSocketResponse(),
            ConsoleRecord(consoles[i % 3], "alice", "p1", "s1", "novnc", "vnc", 1.0, 2e9),
        )
        for i in range(300)
    ]
    await real_redis.config_resetstat()
    clock.now += 7
    await registry.refresh()
    stats = await real_redis.info("commandstats")
    assert stats["cmdstat_zadd"]["calls"] == len(consoles) + 1  # + the subject's key
    keyspace = KeySpace("cgw:")
    for admission in admitted:
        for key in (keyspace.live_on_console(admission.id_hash), keyspace.live_of_subject("alice")):
            assert await real_redis.zscore(key, admission.member) == clock.now + 30.0


def test_consoles_held_is_blocked_not_met_when_the_fd_limit_is_below_the_target() -> None:
    assert relay.held_target(10_000, 10_000, 20_000)[1] is True
    text, met = relay.held_target(9_892, 10_000, 9_892)
    assert met is None and "BLOCKED" in text
    assert relay.held_target(5_000, 10_000, 9_892)[1] is False
