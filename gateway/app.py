"""The application factory: wires settings, resources and routes; no module state."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from gateway.auth.verifier import create_verifier
from gateway.config import Settings
from gateway.connections import ConnectionRegistry
from gateway.consoles import ConsoleService
from gateway.fleet import fleet_ctx, instance_id
from gateway.health import Health
from gateway.keys import (
    COMPUTE,
    CONNECTIONS,
    CONNECTOR,
    CONSOLES,
    HEALTH,
    HTTP_SESSION,
    LIVE_SOCKETS,
    METRICS,
    ORIGINS,
    REDIS,
    SETTINGS,
    STORE,
    VERIFIER,
)
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import CreationRateLimiter
from gateway.sessions import ConsoleConnector
from gateway.store.connect import RedisClient, create_redis
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from gateway.upstream.client import ComputeClient
from gateway.upstream.credentials import CredentialProvider, StaticToken
from gateway.upstream.http import create_http_session
from gateway.upstream.keystone import KeystoneTokenProvider
from gateway.web import api, console_page, health, nova, openapi, ws
from gateway.web.errors import error_middleware
from gateway.web.forwarded import forwarded_middleware
from gateway.web.metrics import add_routes as add_metrics_routes
from gateway.web.metrics import denials_middleware, request_metrics_middleware
from gateway.web.middlewares import auth_middleware, request_id_header, request_id_middleware
from gateway.web.origin import allowed_origins

log = logging.getLogger("gateway.app")

Clock = Callable[[], float]


def create_app(
    settings: Settings, *, redis: RedisClient | None = None, clock: Clock = time.time
) -> web.Application:
    """Build the gateway; tests pass their own Redis client (fake or real) and clock."""
    metrics = GatewayMetrics()
    app = web.Application(
        middlewares=[
            request_id_middleware,  # first: every later log line carries the request id
            forwarded_middleware(settings.server.trusted_proxies),
            request_metrics_middleware(metrics),
            error_middleware,
            denials_middleware(metrics),
            auth_middleware,
        ],
        # Bodies are read by bodies.read_json_object with their own, smaller bound.
        client_max_size=settings.server.max_body_bytes + 1,
        # Compressed bodies are refused (415) by bodies.check_content_headers; left on, aiohttp's
        # parser would decode them first and answer an encoding it cannot decode (br without
        # Brotli, zstd) with its own text/plain 400 before any middleware runs.
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app.on_response_prepare.append(request_id_header)
    app[METRICS] = metrics
    app[ORIGINS] = allowed_origins(settings.server)
    app[LIVE_SOCKETS] = weakref.WeakSet()
    app.cleanup_ctx.append(_http_session_ctx)
    app.cleanup_ctx.append(_redis_ctx(redis))
    app.cleanup_ctx.append(_services_ctx(clock))
    app.cleanup_ctx.append(fleet_ctx)
    for module in (api, nova, health, ws, console_page, openapi):
        module.add_routes(app)
    add_metrics_routes(app, metrics)
    return app


async def _http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with create_http_session(app[SETTINGS].upstream) as session:
        app[HTTP_SESSION] = session
        yield


def _redis_ctx(injected: RedisClient | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if injected is not None:
            app[REDIS] = injected
            yield
            return
        client, embedded = create_redis(app[SETTINGS].redis)
        if embedded:
            log.warning(
                "redis.url is empty: using the embedded in-process store (single instance only)"
            )
        app[REDIS] = client
        try:
            yield
        finally:
            await client.aclose()

    return ctx


def _services_ctx(clock: Clock) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        keyspace = KeySpace(settings.redis.key_prefix)
        store = Store(app[REDIS], keyspace, settings.cache, clock=clock, metrics=app[METRICS])
        # JWKS lives on the portal, not the cloud: its session must not use upstream.ca_file.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as auth_session:
            credentials = _credentials(settings, app[HTTP_SESSION], store)
            compute = ComputeClient(
                settings.upstream, app[HTTP_SESSION], credentials, metrics=app[METRICS]
            )
            app[STORE] = store
            app[COMPUTE] = compute
            app[VERIFIER] = create_verifier(settings.auth, auth_session)
            limiter = CreationRateLimiter(app[REDIS], keyspace, settings.limits, clock=clock)
            app[CONSOLES] = ConsoleService(settings, store, compute, limiter=limiter, clock=clock)
            app[CONNECTIONS] = ConnectionRegistry(
                app[REDIS], keyspace, settings.limits, instance_id(settings), clock=clock
            )
            app[CONNECTOR] = ConsoleConnector(settings, app[CONSOLES], app[HTTP_SESSION])
            app[HEALTH] = Health(store)
            yield

    return ctx


def _credentials(
    settings: Settings, session: aiohttp.ClientSession, store: Store
) -> CredentialProvider:
    keystone = settings.upstream.keystone
    if keystone is None:
        return StaticToken(settings.upstream.token.get_secret_value())
    cache_key = store.keyspace.keystone_token(
        keystone.auth_url, keystone.username, keystone.project_id
    )
    return KeystoneTokenProvider(
        keystone, session, store, cache_key, timeout_s=settings.upstream.timeout_s
    )
