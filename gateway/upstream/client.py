"""The compute API client: one remote-consoles call, with retries, a deadline and checks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp

from gateway import errors
from gateway.config import UpstreamSettings
from gateway.metrics import GatewayMetrics
from gateway.models import ConsoleTarget
from gateway.upstream.console_url import ConsoleUrl, parse_console_url
from gateway.upstream.console_ws import upstream_websocket
from gateway.upstream.credentials import CredentialProvider
from gateway.upstream.http import read_json

log = logging.getLogger("gateway.upstream.client")

RETRYABLE_STATUSES = frozenset({502, 503, 504})
_REFUSED = "The gateway's compute credentials were refused."
_UNREACHABLE = "The compute API is unreachable."
_UNUSABLE = "The compute API gave an unusable answer."


class _Retryable(Exception):
    """An attempt that may be repeated: a connection failure or a 502/503/504."""

    def __init__(self, final: errors.GatewayError) -> None:
        super().__init__(final.message)
        self.final = final  # raised when no attempt is left


def error_for_status(status: int) -> errors.GatewayError:
    """A fixed message per status: upstream bodies are never echoed (pure)."""
    if status == 400:
        return errors.BadRequest("The compute API rejected the console request.")
    if status == 404:
        return errors.NotFound("Server not found.")
    if status == 409:
        return errors.Conflict("The server is not in a state to open a console.")
    if status in (401, 403):
        return errors.UpstreamError(_REFUSED)
    if 300 <= status < 400:
        return errors.UpstreamError("The compute API answered with a redirect.")
    return errors.UpstreamError(f"The compute API answered with status {status}.")


def console_url_from_body(body: object, console_hosts: tuple[str, ...]) -> ConsoleUrl:
    """remote_console.url out of a 200 answer, checked against the allow-list (pure)."""
    console = body.get("remote_console") if isinstance(body, dict) else None
    url = console.get("url") if isinstance(console, dict) else None
    if not isinstance(url, str):
        raise errors.UpstreamError(_UNUSABLE)
    checked = parse_console_url(url, console_hosts)
    # The WebSocket the relay would open (noVNC's path= may name another host): refused now,
    # not cached as a link that can never open. The default path stands in for relay's.
    upstream_websocket(url, "websockify", console_hosts)
    return checked


class ComputeClient:
    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        credentials: CredentialProvider,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._credentials = credentials
        self._sleep = sleep
        self._metrics = metrics

    async def create_remote_console(self, target: ConsoleTarget) -> ConsoleUrl:
        """A fresh console URL from the upstream; errors.* on any failure."""
        started, outcome = time.monotonic(), errors.GatewayError.code
        try:
            console_url = await self._within_deadline(target)
            outcome = "ok"
            return console_url
        except errors.GatewayError as exc:
            outcome = "timeout" if isinstance(exc, errors.UpstreamTimeout) else exc.code
            raise
        finally:
            # A cancelled call (its caller went away) has no outcome worth counting.
            if self._metrics is not None and not _cancelling():
                self._metrics.upstream_call(outcome, time.monotonic() - started)

    async def _within_deadline(self, target: ConsoleTarget) -> ConsoleUrl:
        try:
            # One deadline for the whole operation, retries and token renewal included.
            async with asyncio.timeout(self._settings.timeout_s):
                return await self._with_retries(target)
        except TimeoutError:
            log.warning("compute API timed out for server %s", target.server_id)
            raise errors.UpstreamTimeout() from None

    async def _with_retries(self, target: ConsoleTarget) -> ConsoleUrl:
        attempt = 0
        while True:
            try:
                return await self._with_fresh_token_once(target)
            except _Retryable as exc:
                if attempt >= self._settings.retries:
                    raise exc.final from None
                delay = self._settings.retry_backoff_s * 2**attempt
                attempt += 1
                if self._metrics is not None:
                    self._metrics.upstream_retry()
                log.info("compute API attempt failed (%s); retry %d in %.2fs",
                         exc.final.message, attempt, delay)
                await self._sleep(delay)

    async def _with_fresh_token_once(self, target: ConsoleTarget) -> ConsoleUrl:
        token = await self._credentials.token()
        status, body = await self._post(target, token)
        if status == 401:
            # A service token may have expired or been revoked: renew once, never loop.
            await self._credentials.invalidate(token)
            status, body = await self._post(target, await self._credentials.token())
        if status in (200, 201):
            return console_url_from_body(body, self._settings.console_hosts)
        if status in RETRYABLE_STATUSES:
            raise _Retryable(error_for_status(status))
        log.warning("compute API answered status %s for server %s", status, target.server_id)
        raise error_for_status(status)

    def _url(self, target: ConsoleTarget) -> str:
        project, server = quote(target.project_id, safe=""), quote(target.server_id, safe="")
        return f"{self._settings.compute_url}/v2.1/{project}/servers/{server}/remote-consoles"

    def _headers(self, token: str) -> dict[str, str]:
        version = self._settings.microversion
        return {
            "X-Auth-Token": token,
            "OpenStack-API-Version": f"compute {version}",
            "X-OpenStack-Nova-API-Version": version,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    async def _post(self, target: ConsoleTarget, token: str) -> tuple[int, object]:
        """The status, and the parsed body of a success; connection failures are retryable."""
        body = {"remote_console": {"type": target.type, "protocol": target.protocol}}
        try:
            async with self._session.post(
                self._url(target), json=body, headers=self._headers(token), allow_redirects=False
            ) as resp:
                if resp.status not in (200, 201):
                    return resp.status, None
                limit = self._settings.max_response_bytes
                return resp.status, await read_json(resp, limit, what="compute API")
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Retryable(errors.UpstreamError(_UNREACHABLE)) from exc
        except TimeoutError:
            raise
        except aiohttp.ClientSSLError:
            # The same certificate would be refused again: no retry.
            raise errors.UpstreamError("The compute API's TLS certificate was refused.") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Retryable(errors.UpstreamError(_UNREACHABLE)) from exc
        except aiohttp.ClientResponseError:
            # aiohttp's parser refused the answer (not HTTP, bad chunking, oversized headers);
            # from None: its message quotes the upstream's bytes.
            raise errors.UpstreamError(_UNUSABLE) from None


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
