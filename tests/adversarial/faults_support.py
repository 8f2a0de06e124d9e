"""Helpers for the dependency-fault tests: timed requests, a live console, a slow TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from tests.conftest import RunningGateway
from tests.rfb_support import RfbClient, ws_rfb_client
from tests.support import PROJECT, SERVER, bearer, mint_jwt

PORTAL = {"Origin": "https://portal.example.com"}
# Far above any answer the contract allows: a request still open after this "hangs".
HANG_S = 15.0


@dataclass(frozen=True)
class Answer:
    """One request's outcome: status, error code ("" on success) and time to answer."""

    status: int
    code: str
    elapsed_s: float


async def post_console(
    http: aiohttp.ClientSession, gateway: RunningGateway, server: str = SERVER
) -> Answer:
    """POST /v1/consoles; a request that takes HANG_S fails the test (TimeoutError)."""
    body = {"project_id": PROJECT, "server_id": server}
    started = time.monotonic()
    async with http.post(
        f"{gateway.url}/v1/consoles",
        json=body,
        headers=bearer(mint_jwt()),
        timeout=aiohttp.ClientTimeout(total=HANG_S),
    ) as response:
        payload = await response.json(content_type=None)
    elapsed = time.monotonic() - started
    code = payload["error"]["code"] if response.status >= 400 else ""
    return Answer(response.status, code, elapsed)


async def readiness(http: aiohttp.ClientSession, gateway: RunningGateway) -> Answer:
    started = time.monotonic()
    async with http.get(
        f"{gateway.url}/readyz", timeout=aiohttp.ClientTimeout(total=HANG_S)
    ) as response:
        payload = await response.json()
    return Answer(response.status, str(payload.get("reason", "")), time.monotonic() - started)


async def other_routes(
    http: aiohttp.ClientSession, gateway: RunningGateway, console_id: str
) -> list[Answer]:
    """The other routes that need the store: console state, console page, a new WebSocket."""
    answers = []
    timeout = aiohttp.ClientTimeout(total=HANG_S)
    for path, headers in (
        (f"/v1/consoles/{console_id}", bearer(mint_jwt())),
        (f"/console/{console_id}", PORTAL),
    ):
        started = time.monotonic()
        async with http.get(f"{gateway.url}{path}", headers=headers, timeout=timeout) as response:
            text = await response.text()
        code = "store_unavailable" if "store_unavailable" in text else ""
        answers.append(Answer(response.status, code, time.monotonic() - started))
    started = time.monotonic()
    try:
        async with http.ws_connect(
            gateway.ws_url(console_id),
            headers=PORTAL,
            timeout=aiohttp.ClientWSTimeout(ws_close=HANG_S),
        ) as ws:  # accepted: it must at least be closed at once, not left hanging
            await ws.receive(timeout=HANG_S)
            answers.append(Answer(101, f"close {ws.close_code}", time.monotonic() - started))
    except aiohttp.WSServerHandshakeError as exc:
        answers.append(Answer(exc.status, "", time.monotonic() - started))
    return answers


def statuses(answers: Iterable[Answer]) -> Counter[int]:
    return Counter(answer.status for answer in answers)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def p50_ms(values: list[float]) -> float:
    return ms(statistics.median(values)) if values else 0.0


async def until_ok(
    attempt: Callable[[], Awaitable[Answer]], *, want: int, timeout_s: float = 15.0
) -> tuple[float, list[Answer]]:
    """Seconds until attempt() first answers `want`, and every answer seen before it."""
    started = time.monotonic()
    seen: list[Answer] = []
    while time.monotonic() - started < timeout_s:
        answer = await attempt()
        if answer.status == want:
            return time.monotonic() - started, seen
        seen.append(answer)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {want} within {timeout_s}s; last answers: {seen[-3:]}")


@dataclass
class LiveConsole:
    """A console WebSocket through the gateway doing small RFB round trips in a loop."""

    console_id: str
    rfb: RfbClient
    width: int
    completed: list[float] = field(default_factory=list)  # monotonic end time of each trip
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    async def round_trip(self) -> None:
        started = time.monotonic()
        await self.rfb.request_update(False, 0, 0, self.width, 1)
        [(rect, pixels)] = await self.rfb.read_update()
        if rect != (0, 0, self.width, 1) or len(pixels) != self.width * 4:
            raise AssertionError(f"wrong update {rect} with {len(pixels)} bytes")
        done = time.monotonic()
        self.completed.append(done)
        self.latencies_s.append(done - started)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.round_trip()
            except Exception as exc:  # recorded, and asserted on by the test
                self.failures.append(f"{type(exc).__name__}: {exc}")
                return
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """End the loop after its current trip; one more trip proves the console still works."""
        self._stopping = True
        if self._task is not None:
            await asyncio.wait_for(self._task, HANG_S)
        if not self.failures:
            await self.round_trip()

    def trips_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.completed if start <= at <= end)

    def max_latency_ms(self) -> float:
        return ms(max(self.latencies_s, default=0.0))


async def open_live_console(
    http: aiohttp.ClientSession, gateway: RunningGateway, stack: contextlib.AsyncExitStack
) -> LiveConsole:
    """A new console, its WebSocket open (closed by `stack`) and its round-trip loop running."""
    console_id = await gateway.new_console(http)
    ws = await stack.enter_async_context(
        http.ws_connect(gateway.ws_url(console_id), headers=PORTAL)
    )
    rfb = ws_rfb_client(ws)
    init = await rfb.handshake()
    console = LiveConsole(console_id, rfb, init.width)
    await console.round_trip()
    console.start()
    stack.push_async_callback(_cancel, console)
    return console


async def _cancel(console: LiveConsole) -> None:
    console._stopping = True
    if console._task is not None and not console._task.done():
        console._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await console._task


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that adds `delay_s` (set it at any time) to every round trip.

    Replies are held for the delay in force when they arrived, order kept, without limiting
    throughput; requests pass at once, so a command a client gave up on still runs, as on a
    slow network or a stalled server.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.partitioned = False  # while True, every byte either way is dropped
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._handlers.discard(task)
            return
        self._writers.add(up_writer)
        pipes = {
            asyncio.ensure_future(self._pipe(reader, up_writer, delayed=False)),
            asyncio.ensure_future(self._pipe(up_reader, writer, delayed=True)),
        }
        try:
            # Either side closing ends the connection, as a real network path would.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for end in (writer, up_writer):
                end.transport.abort()
                self._writers.discard(end)
            self._handlers.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(65536):
                if self.partitioned:
                    continue
                queue.put_nowait((loop.time() + (self.delay_s if delayed else 0.0), data))
            queue.put_nowait(None)
            await sender
        except (OSError, ConnectionError):
            return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await sender

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for end in list(self._writers):
            end.transport.abort()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
