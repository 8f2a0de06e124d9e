"""Graceful drain on SIGTERM (DESIGN rule 8): unready, refuse, close with 1001, then exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from aiohttp import WSCloseCode, web

from gateway.config import DrainSettings
from gateway.keys import HEALTH, LIVE_SOCKETS
from gateway.relay import CLOSE_TIMEOUT_S, close_within
from gateway.tasks import spawn

log = logging.getLogger("gateway.drain")

DRAIN_REASON = "server draining"
_POLL_S = 0.05

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Drainer:
    """Empties one instance: the load balancer first, then its live console WebSockets."""

    def __init__(
        self,
        app: web.Application,
        settings: DrainSettings,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._app = app
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._closing: dict[web.WebSocketResponse, asyncio.Task[None]] = {}

    async def drain(self) -> int:
        """Return once no WebSocket is live or at deadline_s; the number still live then."""
        started = self._clock()
        deadline = started + self._settings.deadline_s
        self._app[HEALTH].start_draining()
        self._log("drain started", "drain_started", live=len(self._live()))
        try:
            # The load balancer needs time to see /readyz fail; until then it may still
            # send new WebSockets here, which are refused and retried elsewhere.
            await self._sleep(min(self._settings.grace_s, self._settings.deadline_s))
            live = await self._close_until_empty(deadline)
        finally:
            await self._stop_closing()
        duration = round(self._clock() - started, 3)
        self._log("drain finished", "drain_finished", live=live, duration_s=duration)
        return live

    async def _close_until_empty(self, deadline: float) -> int:
        while True:
            remaining = deadline - self._clock()
            if remaining > 0:
                # Sockets whose upgrade was already under way when draining began join late.
                self._close_new(min(CLOSE_TIMEOUT_S, remaining))
            live = len(self._live())
            if live == 0 or remaining <= 0:
                return live
            await self._sleep(min(_POLL_S, remaining))

    def _close_new(self, timeout_s: float) -> None:
        for ws in self._sockets():
            if ws not in self._closing and not ws.closed:
                closing = close_within(ws, WSCloseCode.GOING_AWAY, DRAIN_REASON, timeout_s)
                self._closing[ws] = spawn(closing, name="drain-close")

    def _live(self) -> list[web.WebSocketResponse]:
        # aiohttp marks a socket closed as soon as its close starts; it is live until the
        # peer has answered (or been cut off), which is what close_within waits for.
        return [ws for ws in self._sockets() if self._is_live(ws)]

    def _sockets(self) -> list[web.WebSocketResponse]:
        sockets = self._app[LIVE_SOCKETS]  # a WeakSet: copy before anything can change it
        return list(sockets)

    def _is_live(self, ws: web.WebSocketResponse) -> bool:
        task = self._closing.get(ws)
        return not ws.closed if task is None else not task.done()

    async def _stop_closing(self) -> None:
        pending = [task for task in self._closing.values() if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._closing.clear()

    def _log(self, message: str, event: str, **fields: object) -> None:
        log.info(message, extra={"fields": {"event": event, **fields}})


async def drain_on_signal(
    app: web.Application,
    settings: DrainSettings,
    *,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Wait for a stop signal, then drain; a second signal ends the drain at once."""
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[signal.Signals] = asyncio.Queue()
    watched = tuple(signals)
    for sig in watched:
        loop.add_signal_handler(sig, received.put_nowait, sig)
    try:
        first = await received.get()
        log.info("stop signal", extra={"fields": {"event": "stop_signal", "signal": first.name}})
        await _drain_unless_signalled(Drainer(app, settings).drain(), received)
    finally:
        for sig in watched:
            loop.remove_signal_handler(sig)


async def _drain_unless_signalled(
    drain: Coroutine[Any, Any, int], received: asyncio.Queue[signal.Signals]
) -> None:
    draining = spawn(drain, name="drain")
    second = spawn(received.get(), name="second-stop-signal")
    await asyncio.wait({draining, second}, return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        log.warning(
            "second stop signal: stopping without waiting",
            extra={"fields": {"event": "drain_cut_short"}},
        )
        draining.cancel()
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    with contextlib.suppress(asyncio.CancelledError):
        await draining
