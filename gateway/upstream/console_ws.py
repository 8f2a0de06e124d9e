"""The upstream console proxy's WebSocket: its URL, connecting to it, its first frame."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from gateway import errors
from gateway.upstream.console_url import parse_console_url

_WS_SCHEMES = {"http": "ws", "https": "wss"}
# The config's upstream_path alphabet: no query, no fragment, no percent-escapes.
_PATH = re.compile(r"[A-Za-z0-9._~/-]{0,128}")
# Token characters (console_url._TOKEN_CHARS) left as they are, except '+', which
# form decoding would read as a space.
_UNESCAPED = "-._~:/="


class UpstreamRefused(errors.UpstreamError):
    """The console proxy refused the handshake or could not be reached; a fresh URL may help."""

    code = "upstream_refused"  # codes are unique per class (errors.error_from_code)
    default_message = "The console proxy refused the connection."


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    url: str  # ws(s)://host[:port]/path?token=...
    origin: str  # the console page's own origin, which nova-novncproxy insists on
    host: str  # lower-case hostname, safe to log

    def __repr__(self) -> str:
        # The URL carries the upstream token; a repr may end up in a log line.
        return f"UpstreamTarget(host={self.host!r}, origin={self.origin!r})"


def _refuse(reason: str) -> errors.UpstreamError:
    return errors.UpstreamError(f"The compute API returned an unusable console URL ({reason}).")


def _ws_path(query: str, default_path: str) -> str:
    """noVNC connects to '/' + its `path` parameter (default 'websockify') on the page's host."""
    values = parse_qs(query, keep_blank_values=True).get("path")
    if not values:
        return default_path.lstrip("/")
    if len(values) > 1:
        raise _refuse("more than one path parameter")
    parts = urlsplit(values[0])
    # A path that names a scheme or host would leave the allow-listed console host.
    if parts.scheme or parts.netloc:
        raise _refuse("path parameter names another host")
    path = parts.path.lstrip("/")
    if not _PATH.fullmatch(path) or ".." in path.split("/"):
        raise _refuse("bad path parameter")
    return path or default_path.lstrip("/")


def upstream_websocket(
    console_url: str, default_path: str, allowed_hosts: Sequence[str]
) -> UpstreamTarget:
    """The WebSocket a noVNC client would open for this console page; UpstreamError if none.

    Only the token is carried over: UI parameters (Huawei's lang, tLength) mean nothing to
    the proxy, and noVNC's host/port parameters could point anywhere.
    """
    checked = parse_console_url(console_url, allowed_hosts)
    parts = urlsplit(checked.url)
    netloc = parts.netloc.lower()
    path = _ws_path(parts.query, default_path)
    query = "token=" + quote(checked.token, safe=_UNESCAPED)
    url = urlunsplit((_WS_SCHEMES[parts.scheme], netloc, "/" + path, query, ""))
    return UpstreamTarget(url=url, origin=f"{parts.scheme}://{netloc}", host=checked.host)


async def connect_upstream(
    session: aiohttp.ClientSession,
    target: UpstreamTarget,
    *,
    protocols: Sequence[str],
    timeout_s: float,
    heartbeat_s: float,
    max_msg_size: int,
) -> aiohttp.ClientWebSocketResponse:
    """Open the upstream WebSocket; UpstreamRefused, UpstreamTimeout or UpstreamError if not."""
    try:
        async with asyncio.timeout(timeout_s):
            return await session.ws_connect(
                # encoded=True: connect to exactly the URL built above, escapes untouched.
                URL(target.url, encoded=True),
                protocols=tuple(protocols),
                origin=target.origin,
                heartbeat=heartbeat_s,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout_s),
                max_msg_size=max_msg_size,
                autoping=True,
                autoclose=True,
            )
    except TimeoutError:  # also aiohttp's ServerTimeoutError
        raise errors.UpstreamTimeout("The console proxy did not answer in time.") from None
    except aiohttp.ClientSSLError:
        # A fresh URL names the same host; retrying would not help.
        raise errors.UpstreamError("The console proxy's TLS certificate was refused.") from None
    except aiohttp.ClientError:
        # Never the exception text: aiohttp puts the token-bearing URL in it.
        raise UpstreamRefused() from None


async def first_message(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> bytes | None:
    """The upstream's first binary frame (RFB servers speak first), or None if it closed first.

    nova-novncproxy accepts the upgrade and then drops an unknown token, so None is how a
    refused token looks there. The WebSocket is closed before anything but bytes is returned.
    """
    try:
        msg = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        await _close_within(ws, timeout_s)
        message = "The console proxy did not start the console in time."
        raise errors.UpstreamTimeout(message) from None
    if msg.type is aiohttp.WSMsgType.BINARY:
        return bytes(msg.data)
    if msg.type is aiohttp.WSMsgType.TEXT:
        await _close_within(ws, timeout_s, code=aiohttp.WSCloseCode.UNSUPPORTED_DATA)
        raise errors.UpstreamError("The console proxy sent text where binary RFB was expected.")
    await _close_within(ws, timeout_s)
    return None


async def _close_within(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float, *, code: int = 1000
) -> None:
    # A cancelled close() drops the connection itself; an unresponsive proxy gets no longer.
    try:
        async with asyncio.timeout(timeout_s):
            await ws.close(code=code)
    except TimeoutError:
        pass
