"""Helpers of the WebSocket abuse suite: an echo/stream upstream, a latency-measuring victim,
and a raw RFC 6455 client that can send what aiohttp's client never would (fragments, floods,
half-finished handshakes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from gateway.tasks import spawn
from tests.figures import SecurityFigures
from tests.ws_backends import FLOOD_FRAME, RFB_GREETING, Backend

ABUSE_PATH = "abuse"  # relay.upstream_path: the gateway connects to the backend's /abuse
STREAM_COMMAND = b"\xffSTREAM:"  # + decimal byte count: the backend streams that much
PORTAL_ORIGIN = "https://portal.example.com"
ROUND_TRIP_BYTES = 64
ROUND_TRIP_TIMEOUT_S = 10.0
VICTIM_P99_BOUND_S = 2.0  # generous: 2 shared cores, up to 8 test sessions at once

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# ---- the upstream console proxy ------------------------------------------------------------


@dataclass
class AbuseBackend(Backend):
    """A console proxy that greets like RFB, echoes binary frames, and streams on command."""

    streamed: int = 0
    open_handlers: int = 0
    handled: int = 0
    handler_ended: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get(f"/{ABUSE_PATH}", self.abuse)
        return app

    async def abuse(self, request: web.Request) -> web.WebSocketResponse:
        self.open_handlers += 1
        self.handled += 1
        try:
            ws = await self._accept(request)
            await ws.send_bytes(RFB_GREETING)
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                if msg.data.startswith(STREAM_COMMAND):
                    await self._stream(ws, int(msg.data[len(STREAM_COMMAND) :]))
                else:
                    await ws.send_bytes(msg.data)
            self.close_codes.put_nowait(ws.close_code)
            return ws
        finally:
            self.open_handlers -= 1
            self.handler_ended.set()

    async def wait_open_handlers(self, at_most: int, timeout_s: float = 10.0) -> None:
        """Until no more than `at_most` upstream connections are open (the gateway closed
        the others)."""
        async with asyncio.timeout(timeout_s):
            while self.open_handlers > at_most:
                self.handler_ended.clear()
                await self.handler_ended.wait()

    async def _stream(self, ws: web.WebSocketResponse, total: int) -> None:
        frame = bytes(FLOOD_FRAME)
        sent = 0
        with contextlib.suppress(ConnectionError):  # the gateway may abort an unread flood
            while sent < total and not ws.closed:
                await ws.send_bytes(frame)
                sent += FLOOD_FRAME
                self.streamed += FLOOD_FRAME


# ---- measurements --------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident memory: the served gateway runs in it."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


@dataclass
class Victim:
    """A normal console doing 64-byte round trips through gateway and upstream, all along."""

    ws: aiohttp.ClientWebSocketResponse
    interval_s: float = 0.01
    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, ws_url: str) -> Victim:
        ws = await http.ws_connect(ws_url, headers={"Origin": PORTAL_ORIGIN})
        victim = cls(ws)
        assert await victim._read(len(RFB_GREETING)) == RFB_GREETING
        victim._task = spawn(victim._loop(), name="victim")
        return victim

    async def _read(self, size: int) -> bytes:
        """Bytes however the gateway framed them (it may split or join)."""
        while len(self._buffer) < size:
            msg = await self.ws.receive(timeout=ROUND_TRIP_TIMEOUT_S)
            if msg.type is not WSMsgType.BINARY:
                raise ConnectionError(f"victim console closed: {msg.type.name} {msg.data!r}")
            self._buffer.extend(msg.data)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def round_trip(self) -> float:
        payload = os.urandom(ROUND_TRIP_BYTES)
        started = time.perf_counter()
        await self.ws.send_bytes(payload)
        echoed = await self._read(ROUND_TRIP_BYTES)
        elapsed = time.perf_counter() - started
        if echoed != payload:
            raise AssertionError("the victim's round trip came back altered")
        return elapsed

    async def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.samples.append(await self.round_trip())
                await asyncio.sleep(self.interval_s)
        except (Exception, asyncio.CancelledError) as exc:  # recorded; asserted by the test
            if not self._stop.is_set():
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def mark(self) -> int:
        return len(self.samples)

    def since(self, mark: int) -> list[float]:
        return self.samples[mark:]

    async def baseline(self, count: int = 40) -> list[float]:
        """`count` round trips measured now, before the attack."""
        mark = self.mark()
        await self.wait_samples(mark, count)
        return self.since(mark)[:count]

    async def wait_samples(self, mark: int, count: int, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.samples) - mark < count:
                self.check()
                await asyncio.sleep(0.005)

    def check(self) -> None:
        assert not self.failures, f"the victim console failed: {self.failures}"

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=ROUND_TRIP_TIMEOUT_S + 1)
            self._task.cancel()
        await self.ws.close()


def victim_report(
    figures: SecurityFigures,
    area: str,
    victim: Victim,
    baseline: Sequence[float],
    during: Sequence[float],
    *,
    inputs: int,
    refused: int,
    server_errors: int = 0,
    state_changes: int = 0,
    **extra: float | int | str,
) -> dict[str, float | int | str]:
    """Assert the victim kept working through the attack; record its latency figures."""
    victim.check()
    assert during, "the victim made no round trip during the attack"
    measures: dict[str, float | int | str] = {
        "victim_round_trips": len(during),
        "baseline_p50_ms": round(percentile(baseline, 50) * 1000, 2),
        "baseline_p99_ms": round(percentile(baseline, 99) * 1000, 2),
        "victim_p50_ms": round(percentile(during, 50) * 1000, 2),
        "victim_p99_ms": round(percentile(during, 99) * 1000, 2),
    }
    assert percentile(during, 99) < VICTIM_P99_BOUND_S, measures
    measures.update(extra)
    named: dict[str, Any] = measures  # figures.add takes the counts as typed keywords
    figures.add(
        area, inputs=inputs, refused=refused, server_errors=server_errors,
        state_changes=state_changes, **named,
    )  # fmt: skip
    return measures


# ---- a raw RFC 6455 client -----------------------------------------------------------------


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 section 5.2)."""
    head = bytes(((0x80 if fin else 0) | opcode,))
    size = len(payload)
    if size < 126:
        head += bytes((0x80 | size,))
    elif size < 1 << 16:
        head += bytes((0x80 | 126,)) + struct.pack(">H", size)
    else:
        head += bytes((0x80 | 127,)) + struct.pack(">Q", size)
    mask = os.urandom(4)
    if not payload:
        return head + mask
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")


def frame_header(opcode: int, declared_size: int, *, fin: bool = True) -> bytes:
    """A masked frame header declaring a 64-bit payload length, with no payload after it."""
    first = bytes(((0x80 if fin else 0) | opcode, 0x80 | 127))
    return first + struct.pack(">Q", declared_size) + os.urandom(4)


def handshake_request(
    path: str, port: int, *, origin: str | None = PORTAL_ORIGIN, extra: Sequence[str] = ()
) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *([f"Origin: {origin}"] if origin is not None else []),
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        return struct.unpack(">H", self.payload[:2])[0] if len(self.payload) >= 2 else None


@dataclass
class RawWebSocket:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    headers: dict[str, str]

    @classmethod
    async def connect(
        cls, port: int, path: str, *, origin: str | None = PORTAL_ORIGIN, extra: Sequence[str] = ()
    ) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(handshake_request(path, port, origin=origin, extra=extra))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ROUND_TRIP_TIMEOUT_S)
        except BaseException:
            writer.transport.abort()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return cls(reader, writer, int(status_line.split()[1]), headers)

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def read_frame(self, timeout_s: float = ROUND_TRIP_TIMEOUT_S) -> Frame:
        async with asyncio.timeout(timeout_s):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack(">H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack(">Q", await self.reader.readexactly(8))
            assert not second & 0x80, "a server must not mask its frames"
            payload = await self.reader.readexactly(size)
        return Frame(bool(first & 0x80), first & 0x0F, payload)

    async def read_data(self, size: int) -> bytes:
        """`size` bytes of binary frames, skipping control frames."""
        data = bytearray()
        while len(data) < size:
            frame = await self.read_frame()
            if frame.opcode == OP_CLOSE:
                raise ConnectionError(f"closed with {frame.close_code}")
            if frame.opcode in (OP_BINARY, OP_CONTINUATION):
                data.extend(frame.payload)
        return bytes(data)

    async def count_small_frames(self, opcode: int, payloads: Sequence[bytes]) -> int:
        """Read len(payloads) frames of `opcode` carrying these payloads in order; parsed in
        bulk so that the test's own parsing steals little of the event loop it shares."""
        buffer, seen = b"", 0
        while seen < len(payloads):
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), ROUND_TRIP_TIMEOUT_S)
            if not chunk:
                raise ConnectionError(f"closed after {seen} frames")
            buffer += chunk
            pos = 0
            while len(buffer) - pos >= 2:
                size = buffer[pos + 1]
                assert size < 126, "a small unmasked frame was expected"
                if len(buffer) - pos < 2 + size:
                    break
                assert buffer[pos] == 0x80 | opcode, buffer[pos]
                assert buffer[pos + 2 : pos + 2 + size] == payloads[seen], seen
                seen, pos = seen + 1, pos + 2 + size
            buffer = buffer[pos:]
        return seen

    async def close_code(self) -> int | None:
        """The code of the next close frame, skipping data and control frames before it."""
        for _ in range(100_000):
            frame = await self.read_frame()
            if frame.opcode == OP_CLOSE:
                return frame.close_code
        raise AssertionError("no close frame")

    async def closed_by_peer(self, timeout_s: float) -> bool:
        """True once the gateway has closed the TCP connection (EOF or reset) within timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def abort(self) -> None:
        self.writer.transport.abort()
