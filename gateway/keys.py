"""Every typed key for application and request state, in one place."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from gateway.config import Settings
from gateway.metrics import GatewayMetrics
from gateway.store.connect import RedisClient

if TYPE_CHECKING:
    from gateway.auth.policy import Principal
    from gateway.auth.verifier import TokenVerifier
    from gateway.connections import ConnectionRegistry
    from gateway.consoles import ConsoleService
    from gateway.health import Health
    from gateway.sessions import ConsoleConnector
    from gateway.store.redis_store import Store
    from gateway.upstream.client import ComputeClient

SETTINGS = web.AppKey("settings", Settings)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
STORE: web.AppKey[Store] = web.AppKey("store")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("verifier")
COMPUTE: web.AppKey[ComputeClient] = web.AppKey("compute")
CONSOLES: web.AppKey[ConsoleService] = web.AppKey("consoles")
HEALTH: web.AppKey[Health] = web.AppKey("health")
METRICS = web.AppKey("metrics", GatewayMetrics)
CONNECTOR: web.AppKey[ConsoleConnector] = web.AppKey("connector")
CONNECTIONS: web.AppKey[ConnectionRegistry] = web.AppKey("connections")
ORIGINS = web.AppKey("origins", frozenset[str])
LIVE_SOCKETS = web.AppKey("live_sockets", weakref.WeakSet[web.WebSocketResponse])

REQUEST_ID = web.RequestKey("request_id", str)
# The real client address: the peer, or what a trusted proxy says in X-Forwarded-For.
CLIENT_ADDRESS = web.RequestKey("client_address", str)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
