"""The WebSocket pump between a console client and its upstream console proxy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.config import RelaySettings
from gateway.tasks import spawn

log = logging.getLogger("gateway.relay")

# "revoked" is set by the WebSocket handler, which knows why it closed the client itself.
ClosedBy = Literal["client", "upstream", "idle", "max_duration", "shutdown", "revoked", "error"]
AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse

# How long a close handshake, and then the flushing of a closed socket, may take before the
# connection is aborted: a peer that stopped reading would otherwise hold it open for ever.
CLOSE_TIMEOUT_S = 5.0
# RFC 6455 section 7.4: codes an endpoint may put in a close frame (1004-1006, 1015 and
# 1016-2999 are reserved or must not be sent).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_NO_STATUS = 1005


@dataclass(frozen=True, slots=True)
class RelayResult:
    bytes_to_client: int
    bytes_to_upstream: int
    close_code: int  # the client leg's: what the client sent, or what it was sent
    closed_by: ClosedBy
    duration_s: float


@dataclass(frozen=True, slots=True)
class _Ending:
    closed_by: ClosedBy
    client_code: int
    reason: str = ""  # sent to both legs
    upstream_code: int = WSCloseCode.OK


def sendable(code: int | None) -> bool:
    return code is not None and (code in _SENDABLE or 3000 <= code <= 4999)


def code_for_upstream(client_code: int | None) -> int:
    """The code the upstream gets when the client ended with client_code (None: vanished)."""
    return client_code if client_code is not None and sendable(client_code) else WSCloseCode.OK


def close_for_client(upstream_code: int | None) -> tuple[int, str]:
    """Code and reason for the client when the upstream ended (None: no close frame came).

    The upstream's own reason is not carried: it is upstream text that users would see.
    noVNC treats every close of a connected session alike, so the code is for people and logs.
    """
    if upstream_code is None:
        return WSCloseCode.INTERNAL_ERROR, "upstream connection lost"
    if sendable(upstream_code):
        return upstream_code, ""
    return WSCloseCode.OK, ""  # 0/1005 (no status) and other codes that may not be sent


def client_ending(msg: aiohttp.WSMessage, *, ended: bool) -> _Ending:
    """Why the client leg stopped, from the message that stopped it."""
    if msg.type is WSMsgType.CLOSE:
        # aiohttp reports a close frame without a status as 0; RFC 6455 calls that 1005.
        code = msg.data or _NO_STATUS
        return _Ending("client", code, upstream_code=code_for_upstream(code))
    if msg.type is WSMsgType.TEXT:
        # noVNC sends binary only; text means some other client.
        return _Ending("error", WSCloseCode.UNSUPPORTED_DATA, "binary frames only")
    if msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
        # aiohttp already closed the client with this code (1009 for an oversize frame).
        return _Ending("error", msg.data.code)
    if msg.type is WSMsgType.CLOSING and not ended:
        # Someone else closed the client: the application's shutdown hook.
        return _Ending("shutdown", WSCloseCode.GOING_AWAY, "", WSCloseCode.GOING_AWAY)
    return _Ending("client", WSCloseCode.ABNORMAL_CLOSURE)  # vanished without a close frame


def upstream_ending(msg: aiohttp.WSMessage) -> _Ending:
    """Why the upstream leg stopped, from the message that stopped it."""
    if msg.type is WSMsgType.CLOSE:
        code, reason = close_for_client(msg.data)
        return _Ending("upstream", code, reason)
    if msg.type is WSMsgType.TEXT:
        error = "upstream protocol error"
        return _Ending("error", WSCloseCode.INTERNAL_ERROR, error, WSCloseCode.UNSUPPORTED_DATA)
    if msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
        return _Ending("error", WSCloseCode.INTERNAL_ERROR, "upstream protocol error")
    return _Ending("upstream", *close_for_client(None))


async def relay(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    settings: RelaySettings,
    *,
    first_chunk: bytes = b"",
    clock: Callable[[], float] = time.monotonic,
    close_timeout_s: float = CLOSE_TIMEOUT_S,
) -> RelayResult:
    """Pump binary frames both ways until either side ends or a limit strikes; close both.

    Call from the handler task, the only reader of `client`. Raises nothing but
    CancelledError, and closes both legs (1001) before re-raising that.
    """
    return await _Relay(client, upstream, settings, clock, close_timeout_s).run(first_chunk)


class _Relay:
    def __init__(
        self,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        settings: RelaySettings,
        clock: Callable[[], float],
        close_timeout_s: float,
    ) -> None:
        self._client, self._upstream, self._settings = client, upstream, settings
        self._clock, self._close_timeout_s = clock, close_timeout_s
        self._started = self._last_data = self._ended_at = clock()
        self._to_client = self._to_upstream = 0
        self._ending: _Ending | None = None
        self._closer: asyncio.Task[None] | None = None
        # A timer, not a task: an idle console then costs two tasks, not three.
        self._watchdog: asyncio.TimerHandle | None = None

    async def run(self, first_chunk: bytes) -> RelayResult:
        pump = spawn(self._pump_upstream(first_chunk), name="relay-upstream")
        self._watch()
        try:
            await self._pump_client()
        except asyncio.CancelledError:
            self._end(_Ending("shutdown", WSCloseCode.GOING_AWAY, "", WSCloseCode.GOING_AWAY))
            raise
        except Exception as exc:
            log.warning("relay failed: %s", type(exc).__name__)  # never str(exc): URLs
            self._end(_Ending("error", WSCloseCode.INTERNAL_ERROR))
        finally:
            await self._finish(pump)
        return self._result()

    def _result(self) -> RelayResult:
        assert self._ending is not None
        return RelayResult(
            bytes_to_client=self._to_client,
            bytes_to_upstream=self._to_upstream,
            close_code=self._ending.client_code,
            closed_by=self._ending.closed_by,
            duration_s=self._ended_at - self._started,
        )

    async def _pump_client(self) -> None:
        while True:
            msg = await self._client.receive()
            if msg.type is not WSMsgType.BINARY:
                self._end(client_ending(msg, ended=self._ending is not None))
                return
            self._last_data = self._clock()
            # Awaiting the send before the next receive is the backpressure: aiohttp stops
            # reading a socket whose queue is full and drains a writer over its limit.
            if not await _send(self._upstream, msg.data):
                self._end(_Ending("upstream", *close_for_client(None)))
                return
            self._to_upstream += len(msg.data)

    async def _pump_upstream(self, first_chunk: bytes) -> None:
        try:
            if first_chunk and not await self._to_client_ok(first_chunk):
                return
            while True:
                msg = await self._upstream.receive()
                if msg.type is not WSMsgType.BINARY:
                    self._end(upstream_ending(msg))
                    return
                self._last_data = self._clock()
                if not await self._to_client_ok(msg.data):
                    return
        except Exception as exc:
            log.warning("relay upstream pump failed: %s", type(exc).__name__)
            self._end(_Ending("error", WSCloseCode.INTERNAL_ERROR, "relay error"))

    async def _to_client_ok(self, data: bytes) -> bool:
        if await _send(self._client, data):
            self._to_client += len(data)
            return True
        self._end(_Ending("client", WSCloseCode.ABNORMAL_CLOSURE))
        return False

    def _watch(self) -> None:
        """Ends the relay at the idle or the duration limit; else re-arms for the nearer one."""
        self._watchdog = None
        if self._ending is not None:
            return
        deadline = self._started + self._settings.max_duration_s
        now = self._clock()
        idle_at = self._last_data + self._settings.idle_timeout_s
        if now >= deadline:
            self._end(_Ending("max_duration", WSCloseCode.OK, "maximum session duration"))
        elif now >= idle_at:
            self._end(_Ending("idle", WSCloseCode.OK, "idle timeout"))
        else:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(min(deadline, idle_at) - now, self._watch)

    def _end(self, ending: _Ending) -> None:
        """The first ending wins; closing runs in its own task so no caller can cut it short."""
        if self._ending is not None:
            return
        self._ending, self._ended_at = ending, self._clock()
        closing = close_both(
            self._client,
            self._upstream,
            client_code=ending.client_code,
            upstream_code=ending.upstream_code,
            reason=ending.reason,
            timeout_s=self._close_timeout_s,
        )
        self._closer = spawn(closing, name="relay-close")

    async def _finish(self, pump: asyncio.Task[None]) -> None:
        if self._ending is None:  # not reachable by design; never leave a leg open
            self._end(_Ending("error", WSCloseCode.INTERNAL_ERROR))
        if self._watchdog is not None:
            self._watchdog.cancel()
        assert self._closer is not None
        try:
            # asyncio.wait neither raises on timeout nor cancels what it waits for; the
            # closer is its own task and finishes even if this handler is cancelled.
            await asyncio.wait({self._closer}, timeout=2 * self._close_timeout_s)
            await asyncio.wait({pump}, timeout=self._close_timeout_s)
        finally:
            pump.cancel()


async def _send(ws: AnyWebSocket, data: bytes) -> bool:
    """False once the other side is closing or gone."""
    try:
        await ws.send_bytes(data)
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        return False
    return True


async def close_both(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    *,
    client_code: int,
    upstream_code: int = WSCloseCode.OK,
    reason: str = "",
    timeout_s: float = CLOSE_TIMEOUT_S,
) -> None:
    """Close both legs at once, each within timeout_s, aborting what does not close in time."""
    await asyncio.gather(
        close_within(client, _wire_code(client_code), reason, timeout_s),
        close_within(upstream, _wire_code(upstream_code), reason, timeout_s),
    )


def _wire_code(code: int) -> int:
    # The result may record 1006 (vanished); the wire may not carry it.
    return code if sendable(code) else WSCloseCode.OK


async def close_within(ws: AnyWebSocket, code: int, reason: str, timeout_s: float) -> None:
    """Close one WebSocket; abort its connection if the peer does not let that finish."""
    transport = _transport(ws)
    try:
        async with asyncio.timeout(timeout_s):
            await ws.close(code=code, message=reason.encode())
    except Exception as exc:  # TimeoutError from a stalled peer, or a connection error
        log.debug("close did not complete: %s", type(exc).__name__)
        if transport is not None:
            transport.abort()
        return
    if transport is not None:
        # close() leaves a socket open until its unsent data is flushed, which a peer that
        # stopped reading never allows; give it timeout_s, then cut it.
        asyncio.get_running_loop().call_later(timeout_s, transport.abort)


def _transport(ws: AnyWebSocket) -> Any:
    # aiohttp exposes no public way to abort a WebSocket's connection.
    return getattr(getattr(ws, "_writer", None), "transport", None)
