"""The one aiohttp client session for the compute API and Keystone."""

from __future__ import annotations

import json
import ssl
from types import SimpleNamespace

import aiohttp

from gateway import errors
from gateway.config import ConfigError, UpstreamSettings

USER_AGENT = "console-gateway/0.1"
_DNS_CACHE_S = 60


def ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | bool:
    """Verification is always on; ca_file only replaces the trust store."""
    if settings.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ConfigError(f"invalid configuration: upstream.ca_file: {reason}") from None


class RedirectRefused(aiohttp.ClientError):
    """The upstream answered with a redirect; it is never followed."""


async def _refuse_redirect(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    raise RedirectRefused()


def _no_redirects() -> aiohttp.TraceConfig:
    # ws_connect follows 30x with no per-call switch; a redirect could lead the upstream
    # WebSocket (and its token) to a host outside upstream.console_hosts.
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_redirect)
    return trace


def create_http_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    """Call from a running event loop; the caller closes it (async with)."""
    connector = aiohttp.TCPConnector(
        # 0 = unlimited: aiohttp's default of 100 would stall the 101st console silently.
        limit=settings.max_connections,
        ssl=ssl_context(settings),
        ttl_dns_cache=_DNS_CACHE_S,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.timeout_s, sock_connect=settings.connect_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        raise_for_status=False,
        headers={"User-Agent": USER_AGENT},
        # Proxies from the environment would route the service token through a third party.
        trust_env=False,
        trace_configs=[_no_redirects()],
    )


async def read_json(resp: aiohttp.ClientResponse, limit: int, *, what: str) -> object:
    """The body parsed as JSON, read with a bound (never resp.json() on an unbounded body)."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            raise errors.UpstreamError(f"The {what} sent an oversized answer.")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        # Never the body itself: it may carry a token.
        raise errors.UpstreamError(f"The {what} answered with a body that is not JSON.") from None
