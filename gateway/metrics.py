"""Prometheus metrics for one gateway app, kept on a registry of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

if TYPE_CHECKING:
    from gateway.relay import RelayResult

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
CacheName = Literal["console_url", "keystone_token", "other"]
CacheResult = Literal["hit", "miss", "error"]
WaitScope = Literal["local", "shared"]
RateLimit = Literal["create", "ws_console", "ws_subject", "ws_instance"]

# API calls take milliseconds to a few seconds; the upstream deadline is seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Console sessions last from a refused second to sessions.max_lifetime_s (8 h by default).
_SESSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Bounds the per-label-set cache of request metric children (methods are raw input).
_MAX_CACHED_CHILDREN = 1024
_CLOSED_BY = ("client", "upstream", "idle", "max_duration", "shutdown", "error")


def method_label(method: str) -> str:
    """aiohttp accepts any token as a method; labels must stay a small set (pure)."""
    return method if method in _METHODS else "other"


class GatewayMetrics:
    """Every gateway metric, with one small typed method per thing that happens."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        # Not the global registry: several apps in one process (tests) must not collide.
        self.registry = CollectorRegistry()
        reg = self.registry
        self._requests = Counter(
            "cgw_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=reg,
        )  # fmt: skip
        self._request_seconds = Histogram(
            "cgw_http_request_duration_seconds",
            "Time to answer an HTTP request (WebSocket sessions excluded).",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._upstream_calls = Counter(
            "cgw_upstream_calls",
            "Compute API calls by outcome (ok, timeout, an error code); retry: retried attempts.",
            ["outcome"], registry=reg,
        )  # fmt: skip
        self._upstream_seconds = Histogram(
            "cgw_upstream_call_duration_seconds",
            "Duration of a compute API call, retries included, by outcome.",
            ["outcome"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._cache = Counter(
            "cgw_cache_lookups",
            "Cache lookups by cache and result (hit, miss, error: a shared error was served).",
            ["cache", "result"], registry=reg,
        )  # fmt: skip
        self._waits = Counter(
            "cgw_single_flight_waits",
            "Waits on another caller's fetch: local (this process) or shared (a lock holder).",
            ["scope"], registry=reg,
        )  # fmt: skip
        self._redis_errors = Counter(
            "cgw_redis_errors", "Redis operations that failed, by exception type.",
            ["kind"], registry=reg,
        )  # fmt: skip
        self._live = Gauge("cgw_websockets_live", "Console WebSockets relaying now.", registry=reg)
        self._bytes = Counter(
            "cgw_relayed_bytes", "Bytes relayed by finished console sessions, by direction.",
            ["direction"], registry=reg,
        )  # fmt: skip
        self._sessions = Histogram(
            "cgw_session_duration_seconds", "Console session durations, by who ended them.",
            ["closed_by"], buckets=_SESSION_BUCKETS, registry=reg,
        )  # fmt: skip
        self._created = Counter("cgw_consoles_created", "Gateway consoles created.", registry=reg)
        self._revoked = Counter("cgw_consoles_revoked", "Gateway consoles revoked.", registry=reg)
        self._denials = Counter(
            "cgw_auth_denials", "Requests refused by authentication or authorization, by reason.",
            ["reason"], registry=reg,
        )  # fmt: skip
        self._rate_limited = Counter(
            "cgw_rate_limited", "Requests refused by a limit, by limit.", ["limit"], registry=reg
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[tuple[str, str], Histogram] = {}
        self._cache_children: dict[tuple[str, str], Counter] = {}
        if process_metrics:
            # Open file descriptors and memory matter at 10,000 consoles per instance.
            ProcessCollector(registry=reg)
        self._zero_known_series()

    def _zero_known_series(self) -> None:
        # Series that exist from the start make rate() and absent() alerts work at once.
        for cache in ("console_url", "keystone_token"):
            for result in ("hit", "miss", "error"):
                self._cache.labels(cache, result)
        for scope in ("local", "shared"):
            self._waits.labels(scope)
        for direction in ("to_client", "to_upstream"):
            self._bytes.labels(direction)
        for closed_by in _CLOSED_BY:
            self._sessions.labels(closed_by)
        for limit in ("create", "ws_console", "ws_subject", "ws_instance"):
            self._rate_limited.labels(limit)

    def request(self, route: str, method: str, status: int, seconds: float | None) -> None:
        """One HTTP request; seconds is None for a WebSocket upgrade (a session, not latency)."""
        # labels() takes a lock and checks its arguments on every call; the label sets
        # (route template, method, status) are few, so their children are kept.
        counted = self._request_children.get((route, method, status))
        if counted is None:
            counted = self._requests.labels(route, method_label(method), str(status))
            if len(self._request_children) < _MAX_CACHED_CHILDREN:
                self._request_children[(route, method, status)] = counted
        counted.inc()
        if seconds is not None:
            # Created on first use only: a route with only WebSocket upgrades has no series.
            timed = self._latency_children.get((route, method))
            if timed is None:
                timed = self._request_seconds.labels(route, method_label(method))
                if len(self._latency_children) < _MAX_CACHED_CHILDREN:
                    self._latency_children[(route, method)] = timed
            timed.observe(seconds)

    def upstream_call(self, outcome: str, seconds: float) -> None:
        """One compute API call by its final outcome: "ok", "timeout" or an error code."""
        self._upstream_calls.labels(outcome).inc()
        self._upstream_seconds.labels(outcome).observe(seconds)

    def upstream_retry(self) -> None:
        self._upstream_calls.labels("retry").inc()

    def cache_lookup(self, cache: CacheName, result: CacheResult) -> None:
        child = self._cache_children.get((cache, result))
        if child is None:
            child = self._cache_children[(cache, result)] = self._cache.labels(cache, result)
        child.inc()

    def single_flight_wait(self, scope: WaitScope) -> None:
        self._waits.labels(scope).inc()

    def redis_error(self, kind: str) -> None:
        self._redis_errors.labels(kind).inc()

    @contextlib.contextmanager
    def live_websocket(self) -> Iterator[None]:
        """Count a relayed WebSocket for as long as the block runs."""
        self._live.inc()
        try:
            yield
        finally:
            self._live.dec()

    def session_ended(self, result: RelayResult) -> None:
        self._bytes.labels("to_client").inc(result.bytes_to_client)
        self._bytes.labels("to_upstream").inc(result.bytes_to_upstream)
        self._sessions.labels(result.closed_by).observe(result.duration_s)

    def console_created(self) -> None:
        self._created.inc()

    def console_revoked(self) -> None:
        self._revoked.inc()

    def auth_denied(self, reason: str) -> None:
        self._denials.labels(reason).inc()

    def rate_limited(self, limit: RateLimit) -> None:
        self._rate_limited.labels(limit).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition format (0.0.4)."""
        return generate_latest(self.registry)
