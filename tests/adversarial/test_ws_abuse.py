"""WebSocket abuse against a served gateway (production runner options, real redis-server, a
real upstream WebSocket over loopback) while a victim console measures its round trips."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli import raise_fd_limit
from gateway.simulator.state import ComputeSimulator
from gateway.tasks import spawn
from tests.adversarial.ws_abuse_support import (
    ABUSE_PATH,
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PORTAL_ORIGIN,
    ROUND_TRIP_BYTES,
    STREAM_COMMAND,
    AbuseBackend,
    RawWebSocket,
    Victim,
    encode_frame,
    frame_header,
    percentile,
    rss_bytes,
    victim_report,
)
from tests.conftest import GatewayServer, RunningGateway
from tests.figures import SecurityFigures
from tests.support import deep_merge, redis_keys
from tests.ws_backends import RFB_GREETING

MAX_FRAME = 64 * 1024  # relay.max_frame_bytes for these tests (the minimum is 1 KiB)
WAIT_S = 10.0
# Limits high enough that the attacks, not the per-user WebSocket caps, are what is tested.
LIMITS = {"ws_per_console": 1000, "ws_per_subject": 100000}


@dataclass
class Served:
    gateway: RunningGateway
    port: int
    console_id: str

    def ws_path(self, console_id: str | None = None) -> str:
        return f"/ws/{console_id or self.console_id}"


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def backend(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    simulator: ComputeSimulator,
) -> AsyncIterator[AbuseBackend]:
    """The upstream console proxy every console of these tests is relayed to."""
    upstream = AbuseBackend()
    server = await aiohttp_server(upstream.app())
    simulator.console_base_url = str(server.make_url("")).rstrip("/")
    yield upstream
    upstream.release.set()


@pytest.fixture
async def serve(
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    backend: AbuseBackend,
    http: aiohttp.ClientSession,
) -> Serve:
    """A gateway served as `console-gateway serve` serves it, and a console on it."""

    async def start(overrides: dict[str, Any] | None = None) -> Served:
        base = {
            "relay": {"upstream_path": ABUSE_PATH, "max_frame_bytes": MAX_FRAME},
            "limits": LIMITS,
        }
        gateway = await serve_gateway(real_redis, deep_merge(base, overrides or {}))
        port = int(gateway.url.rsplit(":", 1)[1])
        return Served(gateway, port, await gateway.new_console(http))

    return start


Scene = tuple[Served, Victim, list[float]]
SceneFactory = Callable[..., Awaitable[Scene]]


@pytest.fixture
async def scene(serve: Serve, http: aiohttp.ClientSession) -> AsyncIterator[SceneFactory]:
    """A served gateway, a console on it, and a victim on that console whose baseline latency
    is measured before the attack starts."""
    victims: list[Victim] = []

    async def open_scene(overrides: dict[str, Any] | None = None) -> Scene:
        served = await serve(overrides)
        victim = await Victim.open(http, served.gateway.ws_url(served.console_id))
        victims.append(victim)
        return served, victim, await victim.baseline()

    yield open_scene
    for victim in victims:
        await victim.stop()


# ---- Origin --------------------------------------------------------------------------------

HOSTILE_ORIGINS: list[str | None] = [
    "https://evil.example.net",
    "null",
    None,  # missing: refused unless relay.allow_missing_origin
    "http://portal.example.com",  # right host, wrong scheme
    "https://portal.example.com.evil.net",
    "https://portal.example.com:8443",
    "https://user@portal.example.com",
    "https://portal.example.com/path",
    "https://PORTAL.example.com.evil",
    "https://portal.example.com, https://evil.example.net",
    "file://",
]


async def test_hostile_origins_get_403_before_the_upgrade(
    scene: SceneFactory,
    serve: Serve,
    backend: AbuseBackend,
    simulator: ComputeSimulator,
    real_redis: aioredis.Redis,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    upgrades, calls = backend.handled, simulator.console_calls
    keys = await redis_keys(real_redis)
    mark = victim.mark()
    inputs = refused = server_errors = 0
    for _ in range(20):
        for origin in HOSTILE_ORIGINS:
            raw = await RawWebSocket.connect(served.port, served.ws_path(), origin=origin)
            raw.abort()
            inputs += 1
            refused += raw.status == 403
            server_errors += raw.status >= 500
            assert raw.status == 403, (origin, raw.status)
            assert "upgrade" not in raw.headers.get("connection", "").lower()
    await victim.wait_samples(mark, 5)
    during = victim.since(mark)
    # Refused before any upstream work: no console URL fetched, no upstream WebSocket.
    state_changes = (backend.handled - upgrades) + (simulator.console_calls - calls)
    state_changes += len(set(await redis_keys(real_redis)) ^ set(keys))
    assert state_changes == 0
    # With allow_missing_origin a client without Origin connects; `null` still does not.
    lenient = await serve({"relay": {"allow_missing_origin": True}})
    missing = await RawWebSocket.connect(lenient.port, lenient.ws_path(), origin=None)
    null = await RawWebSocket.connect(lenient.port, lenient.ws_path(), origin="null")
    assert (missing.status, null.status) == (101, 403)
    assert await missing.read_data(len(RFB_GREETING)) == RFB_GREETING
    missing.abort()
    null.abort()
    victim_report(
        security_figures, "ws: origin", victim, baseline, during,
        inputs=inputs + 2, refused=refused + 1, server_errors=server_errors,
        state_changes=state_changes,
    )  # fmt: skip


# ---- subprotocols --------------------------------------------------------------------------

SUBPROTOCOL_OFFERS: list[tuple[str | None, str | None]] = [
    # (Sec-WebSocket-Protocol sent, protocol the gateway must echo): only "binary" is spoken.
    (None, None),  # noVNC >= 1.2
    ("binary", "binary"),
    ("chat", None),
    ("binary, base64", "binary"),
    ("base64,binary", "binary"),
    ("base64", None),
    (", , ,", None),
    ("", None),
    (", ".join(f"p{i}" for i in range(100)), None),
    (", ".join([*(f"p{i}" for i in range(99)), "binary"]), "binary"),
    ("bin ary", None),
    ("BINARY", None),
    ("x" * 4000, None),
]


async def test_odd_subprotocols_are_answered_as_documented(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    mark = victim.mark()
    inputs = accepted = refused = server_errors = 0
    for _ in range(3):
        for offer, expected in SUBPROTOCOL_OFFERS:
            extra = [] if offer is None else [f"Sec-WebSocket-Protocol: {offer}"]
            raw = await RawWebSocket.connect(served.port, served.ws_path(), extra=extra)
            inputs += 1
            server_errors += raw.status >= 500
            assert raw.status == 101, (offer, raw.status)
            accepted += 1
            assert raw.headers.get("sec-websocket-protocol") == expected, offer
            # Whatever was offered, the console works: greeting, then an echoed round trip.
            assert await raw.read_data(len(RFB_GREETING)) == RFB_GREETING
            payload = bytes(range(ROUND_TRIP_BYTES))
            await raw.send(encode_frame(OP_BINARY, payload))
            assert await raw.read_data(ROUND_TRIP_BYTES) == payload
            raw.abort()
    # An oversized header line is refused by the HTTP parser with a 4xx, not a 5xx.
    huge = await RawWebSocket.connect(
        served.port, served.ws_path(), extra=[f"Sec-WebSocket-Protocol: {'p,' * 8000}"]
    )
    inputs += 1
    refused += 400 <= huge.status < 500
    server_errors += huge.status >= 500
    assert 400 <= huge.status < 500, huge.status
    huge.abort()
    await victim.wait_samples(mark, 3)
    await backend.wait_open_handlers(1)
    victim_report(
        security_figures, "ws: subprotocols", victim, baseline, victim.since(mark),
        inputs=inputs, refused=refused, server_errors=server_errors, accepted=accepted,
    )  # fmt: skip


# ---- text frames ---------------------------------------------------------------------------


async def test_text_frames_close_with_1003(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    mark = victim.mark()
    texts = ["hello", "", "RFB 003.008\n", "\u00e9" * 1000, '{"a": 1}']
    inputs = refused = 0

    async def attack(text: str) -> int | None:
        raw = await RawWebSocket.connect(served.port, served.ws_path())
        try:
            assert await raw.read_data(len(RFB_GREETING)) == RFB_GREETING
            await raw.send(encode_frame(OP_TEXT, text.encode()))
            return await raw.close_code()
        finally:
            raw.abort()

    for _ in range(8):
        codes = await asyncio.gather(*(attack(text) for text in texts))
        inputs += len(codes)
        refused += sum(code == 1003 for code in codes)
        assert codes == [1003] * len(texts)
    # A fragmented text message is still text.
    raw = await RawWebSocket.connect(served.port, served.ws_path())
    await raw.read_data(len(RFB_GREETING))
    await raw.send(encode_frame(OP_TEXT, b"par", fin=False), encode_frame(OP_CONTINUATION, b"tial"))
    code = await raw.close_code()
    raw.abort()
    inputs, refused = inputs + 1, refused + (code == 1003)
    assert code == 1003
    await victim.wait_samples(mark, 3)
    await backend.wait_open_handlers(1)  # the gateway closed every attacker's upstream leg
    victim_report(
        security_figures, "ws: text frames", victim, baseline, victim.since(mark),
        inputs=inputs, refused=refused, server_errors=0,
    )  # fmt: skip


# ---- oversize frames -----------------------------------------------------------------------


async def test_frames_over_max_frame_bytes_close_with_1009(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    mark = victim.mark()
    rss_before = rss_bytes()
    inputs = refused = 0
    # Frames of exactly the limit are legitimate and relayed whole.
    exact = await RawWebSocket.connect(served.port, served.ws_path())
    await exact.read_data(len(RFB_GREETING))
    for _ in range(3):
        payload = bytes(MAX_FRAME)
        await exact.send(encode_frame(OP_BINARY, payload))
        assert await exact.read_data(MAX_FRAME) == payload
    exact.abort()
    attacks: list[bytes] = [
        encode_frame(OP_BINARY, bytes(MAX_FRAME + 1)),
        encode_frame(OP_BINARY, bytes(4 * MAX_FRAME)),
        # Only a header declaring 1 TiB / 2^63-1 bytes: refused before buffering anything.
        frame_header(OP_BINARY, 1 << 40),
        frame_header(OP_BINARY, (1 << 63) - 1),
    ]
    for _ in range(5):
        for frame in attacks:
            raw = await RawWebSocket.connect(served.port, served.ws_path())
            await raw.read_data(len(RFB_GREETING))
            with contextlib.suppress(ConnectionError):  # closed while the frame was in flight
                await raw.send(frame)
            code = await raw.close_code()
            raw.abort()
            inputs += 1
            refused += code == 1009
            assert code == 1009, code
    rss_growth = rss_bytes() - rss_before
    assert rss_growth < 64 * 1024 * 1024, rss_growth
    await victim.wait_samples(mark, 3)
    await backend.wait_open_handlers(1)
    victim_report(
        security_figures, "ws: oversize frames", victim, baseline, victim.since(mark),
        inputs=inputs, refused=refused, server_errors=0,
        rss_growth_mib=round(rss_growth / 2**20, 1),
    )  # fmt: skip


# ---- fragment floods -----------------------------------------------------------------------


async def test_fragment_floods_stay_bounded(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    mark = victim.mark()
    rss_before = rss_bytes()
    inputs = refused = 0

    async def connected() -> RawWebSocket:
        raw = await RawWebSocket.connect(served.port, served.ws_path())
        assert await raw.read_data(len(RFB_GREETING)) == RFB_GREETING
        return raw

    # 1. Continuation frames of 4 KiB building a message past the limit: 1009.
    for fragment in (4096, 1000):
        raw = await connected()
        frames = [encode_frame(OP_BINARY, bytes(fragment), fin=False)]
        frames += [
            encode_frame(OP_CONTINUATION, bytes(fragment), fin=False)
            for _ in range(2 * MAX_FRAME // fragment)
        ]
        with contextlib.suppress(ConnectionError):
            await raw.send(*frames)
        code = await raw.close_code()
        raw.abort()
        inputs, refused = inputs + len(frames), refused + (code == 1009)
        assert code == 1009
    # 2. 30,000 one-byte fragments (under the limit) with pings between them: one message.
    raw = await connected()
    tiny = 30_000
    flood = [encode_frame(OP_BINARY, b"\x01", fin=False)]
    for index in range(1, tiny - 1):
        flood.append(encode_frame(OP_CONTINUATION, bytes((index % 256,)), fin=False))
        if index % 1000 == 0:
            flood.append(encode_frame(OP_PING, b"fragment"))
    flood.append(encode_frame(OP_CONTINUATION, b"\xff"))
    started = time.perf_counter()
    await raw.send(*flood)
    echoed = await raw.read_data(tiny)
    tiny_s = time.perf_counter() - started
    assert echoed == b"\x01" + bytes(i % 256 for i in range(1, tiny - 1)) + b"\xff"
    inputs += len(flood)
    # 3. 50,000 empty continuation frames: no memory to accumulate, the session still works.
    started = time.perf_counter()
    empties = [encode_frame(OP_BINARY, b"a", fin=False)]
    empties += [encode_frame(OP_CONTINUATION, b"", fin=False) for _ in range(50_000)]
    empties.append(encode_frame(OP_CONTINUATION, b"z"))
    await raw.send(*empties)
    assert await raw.read_data(2) == b"az"
    empty_s = time.perf_counter() - started
    inputs += len(empties)
    # 4. A continuation with no message started, and a new message inside a fragmented one:
    # protocol errors, 1002.
    for frames in (
        [encode_frame(OP_CONTINUATION, b"orphan")],
        [encode_frame(OP_BINARY, b"a", fin=False), encode_frame(OP_BINARY, b"b")],
    ):
        bad = await connected()
        await bad.send(*frames)
        code = await bad.close_code()
        bad.abort()
        inputs, refused = inputs + 1, refused + (code == 1002)
        assert code == 1002
    raw.abort()
    rss_growth = rss_bytes() - rss_before
    assert rss_growth < 64 * 1024 * 1024, rss_growth
    await victim.wait_samples(mark, 3)
    await backend.wait_open_handlers(1)
    victim_report(
        security_figures, "ws: fragment flood", victim, baseline, victim.since(mark),
        inputs=inputs, refused=refused, server_errors=0,
        rss_growth_mib=round(rss_growth / 2**20, 1),
        tiny_fragments_s=round(tiny_s, 2), empty_fragments_s=round(empty_s, 2),
    )  # fmt: skip


# ---- ping flood ----------------------------------------------------------------------------


async def test_ping_flood_does_not_starve_the_victim(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    raw = await RawWebSocket.connect(served.port, served.ws_path())
    assert await raw.read_data(len(RFB_GREETING)) == RFB_GREETING
    pings, batch = 20_000, 500
    payloads = [b"%8d" % i for i in range(pings)]
    frames = [encode_frame(OP_PING, payload) for payload in payloads]
    reader = spawn(raw.count_small_frames(OP_PONG, payloads), name="pong-counter")
    mark = victim.mark()
    started = time.perf_counter()
    for first in range(0, pings, batch):
        await raw.send(*frames[first : first + batch])
    sent_s = time.perf_counter() - started
    pongs = await asyncio.wait_for(reader, 30)  # every ping answered, in order
    flood_s = time.perf_counter() - started
    await victim.wait_samples(mark, 3)
    during = victim.since(mark)
    # The flooder's own console still works afterwards: it was answered, not dropped.
    await raw.send(encode_frame(OP_BINARY, b"still here"))
    assert await raw.read_data(10) == b"still here"
    raw.abort()
    assert pongs == pings
    await backend.wait_open_handlers(1)
    victim_report(
        security_figures, "ws: ping flood", victim, baseline, during,
        inputs=pings, refused=0, server_errors=0, pongs=pongs,
        pings_per_s=round(pings / flood_s), send_s=round(sent_s, 2),
    )  # fmt: skip


# ---- a client that never reads -------------------------------------------------------------

STREAM_TOTAL = 256 * 1024 * 1024


async def test_slow_reader_is_held_by_backpressure(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene()
    rss_before = rss_bytes()
    mark = victim.mark()
    readers = 3
    raws = [await RawWebSocket.connect(served.port, served.ws_path()) for _ in range(readers)]
    for raw in raws:  # ask the upstream for 256 MiB each, then never read a byte
        await raw.send(encode_frame(OP_BINARY, STREAM_COMMAND + b"%d" % STREAM_TOTAL))
    last, still, peak_rss = -1, 0, 0
    for _ in range(1500):  # 15 s at most: until the upstream is stuck for 0.3 s
        peak_rss = max(peak_rss, rss_bytes())
        still = still + 1 if backend.streamed == last and last > 0 else 0
        if still >= 30:
            break
        last = backend.streamed
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the upstream stream never stalled")
    during = victim.since(mark)
    stalled_at, rss_growth = backend.streamed, peak_rss - rss_before
    assert stalled_at < readers * STREAM_TOTAL // 8, stalled_at
    assert rss_growth < 64 * 1024 * 1024, rss_growth
    for raw in raws:
        raw.abort()
    await backend.wait_open_handlers(1)  # the stalled upstream legs were closed too
    victim_report(
        security_figures, "ws: slow reader", victim, baseline, during,
        inputs=readers, refused=0, server_errors=0,
        stalled_after_mib=round(stalled_at / readers / 2**20, 1),
        offered_mib=readers * STREAM_TOTAL // 2**20,
        rss_growth_mib=round(rss_growth / 2**20, 1),
    )  # fmt: skip


# ---- half-open TCP -------------------------------------------------------------------------

HEARTBEAT_S = 0.5


async def test_half_open_clients_are_closed_by_the_heartbeat(
    scene: SceneFactory,
    backend: AbuseBackend,
    security_figures: SecurityFigures,
) -> None:
    served, victim, baseline = await scene({"relay": {"heartbeat_s": HEARTBEAT_S}})
    mark = victim.mark()
    count = 20
    started = time.perf_counter()
    # Complete the handshake, then go silent: no pong, no data, no FIN, nothing read.
    raws = await asyncio.gather(
        *(RawWebSocket.connect(served.port, served.ws_path()) for _ in range(count))
    )
    assert all(raw.status == 101 for raw in raws)
    bound_s = 3 * HEARTBEAT_S + 3.0
    await backend.wait_open_handlers(1)  # each upstream leg closed once its client was dropped
    detected_s = time.perf_counter() - started
    assert detected_s < bound_s, detected_s
    # The sockets were really closed by the gateway, not just the upstream legs.
    closed = await asyncio.gather(*(raw.closed_by_peer(WAIT_S) for raw in raws))
    for raw in raws:
        raw.abort()
    assert all(closed)
    # The victim answers the same heartbeat and is still served, well past several beats.
    await victim.wait_samples(mark, 5)
    victim_report(
        security_figures, "ws: half-open", victim, baseline, victim.since(mark),
        inputs=count, refused=sum(closed), server_errors=0,
        heartbeat_s=HEARTBEAT_S, all_dropped_after_s=round(detected_s, 2),
    )  # fmt: skip


# ---- slowloris -----------------------------------------------------------------------------

KEEPALIVE_S = 2.0


async def test_slowloris_handshakes_are_dropped(
    scene: SceneFactory,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    raise_fd_limit()  # as `console-gateway serve` does: 2,000 sockets in this process
    served, victim, baseline = await scene({"server": {"keepalive_timeout_s": KEEPALIVE_S}})
    mark = victim.mark()
    path = served.ws_path()
    partials = [
        b"",
        b"GET ",
        f"GET {path} HTTP/1.1\r\n".encode(),
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode(),
        f"GET {path} HTTP/1.1\r\nOrigin: {PORTAL_ORIGIN}\r\nX-Pad: aaaa".encode(),
    ]
    count, trickling = 1000, 50
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    opened_at = time.perf_counter()
    try:
        for first in range(0, count, 100):  # batches: the listen backlog is 128
            pairs = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", served.port) for _ in range(100))
            )
            for index, (reader, writer) in enumerate(pairs, start=first):
                writer.write(partials[index % len(partials)])
                readers.append(reader)
                writers.append(writer)
        opened_s = time.perf_counter() - opened_at

        async def trickle(writer: asyncio.StreamWriter) -> None:
            """The classic slowloris: one more header byte every 0.2 s, for ever."""
            with contextlib.suppress(ConnectionError):
                for _ in range(200):
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.2)

        tricklers = [spawn(trickle(w), name="slowloris") for w in writers[-trickling:]]

        async def dropped_after(reader: asyncio.StreamReader) -> float | None:
            try:
                async with asyncio.timeout(KEEPALIVE_S + 8.0):
                    while await reader.read(4096):
                        pass
            except TimeoutError:
                return None
            except ConnectionError:
                pass
            return time.perf_counter() - opened_at

        drops = await asyncio.gather(*(dropped_after(reader) for reader in readers))
        for task in tricklers:
            task.cancel()
        during = victim.since(mark)
        dropped = [after for after in drops if after is not None]
        # Every half-sent handshake was cut, trickling or not; the victim lived through it.
        assert len(dropped) == count, f"{count - len(dropped)} slowloris connections still open"
        assert max(dropped) < KEEPALIVE_S + opened_s + 5.0, max(dropped)
        # A WebSocket older than keepalive_timeout_s is not cut by it: the victim still works.
        assert time.perf_counter() - opened_at > KEEPALIVE_S
        await victim.wait_samples(victim.mark(), 3)
        # The gateway still takes new consoles.
        fresh = await Victim.open(http, served.gateway.ws_url(served.console_id))
        await fresh.stop()
    finally:
        for writer in writers:
            writer.transport.abort()
    victim_report(
        security_figures, "ws: slowloris", victim, baseline, during,
        inputs=count, refused=len(dropped), server_errors=0,
        keepalive_timeout_s=KEEPALIVE_S, open_1000_s=round(opened_s, 2),
        drop_p50_s=round(percentile(dropped, 50), 2), drop_max_s=round(max(dropped), 2),
    )  # fmt: skip
