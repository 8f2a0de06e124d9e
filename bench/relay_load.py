"""The relay benchmark's load generator: WebSocket clients that stream, sink and echo.

Every function takes the WebSocket URLs of its sessions (one per session; a URL may repeat),
opens them all, waits for each one's RFB greeting (proof the whole path is up), and only then
starts the clock, so connection set-up never counts as relay time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType

CHUNK = 64 * 1024
MIB = 1024 * 1024
ECHO_BYTES = 64
# Bytes a sender may have in flight (sent, not yet acknowledged by the sink) per session.
UP_WINDOW = 4 * MIB
_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=3.0)


@dataclass(frozen=True)
class Throughput:
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


async def open_sessions(
    http: aiohttp.ClientSession, urls: Sequence[str]
) -> list[aiohttp.ClientWebSocketResponse]:
    """Connect every URL and read its greeting; RuntimeError if a path is not up."""

    async def one(url: str) -> aiohttp.ClientWebSocketResponse:
        ws = await http.ws_connect(url, protocols=("binary",), max_msg_size=0, timeout=_TIMEOUT)
        msg = await ws.receive(timeout=15)
        if msg.type is not WSMsgType.BINARY:
            await ws.close()
            raise RuntimeError(f"no greeting: {msg.type.name} {msg.data!r}")
        return ws

    return list(await asyncio.gather(*(one(url) for url in urls)))


async def close_sessions(sockets: Sequence[aiohttp.ClientWebSocketResponse]) -> None:
    async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await ws.close()

    await asyncio.gather(*(one(ws) for ws in sockets))


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))


async def downstream(urls: Sequence[str], seconds: float, warmup_s: float = 0.3) -> Throughput:
    """Bytes per second the sessions receive together (from the `stream` backend)."""
    async with _client() as http:
        sockets = await open_sessions(http, urls)
        start = time.monotonic() + warmup_s
        end = start + seconds

        async def read(ws: aiohttp.ClientWebSocketResponse) -> int:
            counted = 0
            while True:
                msg = await ws.receive()
                if msg.type is not WSMsgType.BINARY:
                    raise RuntimeError(f"stream ended: {msg.type.name}")
                now = time.monotonic()
                if now >= end:
                    return counted
                if now >= start:
                    counted += len(msg.data)

        try:
            total = sum(await asyncio.gather(*(read(ws) for ws in sockets)))
        finally:
            await close_sessions(sockets)
    return Throughput(total, seconds)


async def upstream(urls: Sequence[str], seconds: float) -> Throughput:
    """Bytes per second the `sink` backend acknowledges (one ack byte per MiB) from all sessions."""
    chunk = bytes(CHUNK)
    async with _client() as http:
        sockets = await open_sessions(http, urls)
        started = time.monotonic()
        end = started + seconds

        async def push(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, float]:
            sent = acked = 0
            last_ack = started
            more = asyncio.Event()

            async def acks() -> None:
                nonlocal acked, last_ack
                while True:
                    msg = await ws.receive()
                    if msg.type is not WSMsgType.BINARY:
                        raise RuntimeError(f"sink ended: {msg.type.name}")
                    acked += len(msg.data) * MIB
                    last_ack = time.monotonic()
                    more.set()

            reader = asyncio.ensure_future(acks())
            try:
                while time.monotonic() < end:
                    if sent - acked >= UP_WINDOW:
                        more.clear()
                        waiter = asyncio.ensure_future(more.wait())
                        await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                        waiter.cancel()
                        if reader.done():
                            reader.result()
                        continue
                    await ws.send_bytes(chunk)
                    sent += CHUNK
                async with asyncio.timeout(30):
                    while acked < sent // MIB * MIB:
                        more.clear()
                        await more.wait()
            finally:
                reader.cancel()
            return acked, last_ack

        try:
            results = await asyncio.gather(*(push(ws) for ws in sockets))
        finally:
            await close_sessions(sockets)
    total = sum(acked for acked, _ in results)
    return Throughput(total, max(last for _, last in results) - started)


async def round_trips(
    ws: aiohttp.ClientWebSocketResponse, payload: bytes, count: int
) -> list[float]:
    """`count` echoes of payload in a row on one session; each one's round trip in seconds."""
    times: list[float] = []
    for _ in range(count):
        sent = time.perf_counter()
        await ws.send_bytes(payload)
        got = 0
        while got < len(payload):
            msg = await ws.receive()
            if msg.type is not WSMsgType.BINARY:
                raise RuntimeError(f"echo ended: {msg.type.name}")
            got += len(msg.data)
        times.append(time.perf_counter() - sent)
    return times


async def echo(urls: Sequence[str], rounds: int, warmup: int = 20) -> list[float]:
    """Round-trip times (seconds) of 64-byte messages, `rounds` per session, all concurrent."""
    payload = bytes(range(ECHO_BYTES))
    async with _client() as http:
        sockets = await open_sessions(http, urls)

        async def ping(ws: aiohttp.ClientWebSocketResponse) -> list[float]:
            await round_trips(ws, payload, warmup)
            return await round_trips(ws, payload, rounds)

        try:
            per_session = await asyncio.gather(*(ping(ws) for ws in sockets))
        finally:
            await close_sessions(sockets)
    return [t for times in per_session for t in times]


async def echo_interleaved(
    paths: Mapping[str, Sequence[str]], rounds: int, batch: int = 10, warmup: int = 20
) -> dict[str, list[float]]:
    """echo() on several paths at once, alternating batches of round trips between them.

    Paths measured minutes apart see different machine load; alternating every `batch`
    round trips (in a rotating order) gives each path the same share of every moment.
    """
    payload = bytes(range(ECHO_BYTES))
    async with _client() as http:
        sockets = {name: await open_sessions(http, urls) for name, urls in paths.items()}

        results: dict[str, list[float]] = {name: [] for name in paths}
        names = list(paths)
        try:
            for name in names:
                await asyncio.gather(*(round_trips(ws, payload, warmup) for ws in sockets[name]))
            for index in range(math.ceil(rounds / batch)):
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    per_session = await asyncio.gather(
                        *(round_trips(ws, payload, batch) for ws in sockets[name])
                    )
                    results[name].extend(t for times in per_session for t in times)
        finally:
            await close_sessions([ws for group in sockets.values() for ws in group])
    return results
