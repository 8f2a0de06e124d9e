"""Opening a console's upstream WebSocket: a fresh-enough URL, one invisible retry on refusal."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

from gateway.config import Settings
from gateway.consoles import ConsoleService
from gateway.models import ConsoleTarget, Expiring
from gateway.upstream.console_ws import (
    UpstreamRefused,
    connect_upstream,
    first_message,
    upstream_websocket,
)

log = logging.getLogger("gateway.sessions")

# nova-novncproxy and websockify speak RFB over binary frames only (DESIGN section 5).
UPSTREAM_PROTOCOLS = ("binary",)


@dataclass(frozen=True, slots=True)
class UpstreamConnection:
    websocket: aiohttp.ClientWebSocketResponse
    first_chunk: bytes  # the RFB greeting, proof the upstream accepted the token
    retried: bool


class ConsoleConnector:
    def __init__(
        self, settings: Settings, consoles: ConsoleService, session: aiohttp.ClientSession
    ) -> None:
        self._settings = settings
        self._consoles = consoles
        self._session = session

    async def open(self, target: ConsoleTarget) -> UpstreamConnection:
        """Connect to the upstream console proxy; UpstreamRefused after two refusals."""
        fresh = self._settings.relay.fresh_url_per_connect
        first_url = await (
            self._consoles.uncached_console_url(target)
            if fresh
            else self._consoles.console_url(target)
        )
        opened = await self._attempt(first_url, retried=False)
        if opened is not None:
            return opened
        # A cached token may be spent or purged (server migrated, one-time token, expiry
        # enforced): drop it and try exactly once more with a new one.
        log.info("upstream console proxy refused the connection; retrying with a fresh URL")
        second_url = await (
            self._consoles.uncached_console_url(target)
            if fresh
            else self._consoles.refreshed_console_url(target)
        )
        opened = await self._attempt(second_url, retried=True)
        if opened is None:
            raise UpstreamRefused("The console proxy refused the connection.")
        return opened

    async def _attempt(self, url: Expiring, *, retried: bool) -> UpstreamConnection | None:
        relay, upstream = self._settings.relay, self._settings.upstream
        target = upstream_websocket(url.value, relay.upstream_path, upstream.console_hosts)
        try:
            websocket = await connect_upstream(
                self._session,
                target,
                protocols=UPSTREAM_PROTOCOLS,
                timeout_s=relay.connect_timeout_s,
                heartbeat_s=relay.heartbeat_s,
                max_msg_size=relay.max_frame_bytes + 1,  # aiohttp refuses sizes >= this
            )
        except UpstreamRefused:
            return None
        first = await first_message(websocket, relay.connect_timeout_s)
        if first is None:
            # nova-novncproxy accepts the upgrade and only then drops a bad token.
            await websocket.close()
            return None
        return UpstreamConnection(websocket, first, retried)
