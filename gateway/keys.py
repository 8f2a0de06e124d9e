"""Every typed key for application and request state, in one place."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.auth.policy import Principal
    from gateway.auth.verifier import TokenVerifier
    from gateway.consoles import ConsoleService
    from gateway.health import Health
    from gateway.sessions import ConsoleConnector
    from gateway.store.redis_store import Store
    from gateway.upstream.client import ComputeClient

SETTINGS = web.AppKey("settings", Settings)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
REDIS = web.AppKey("redis", Redis)
STORE: web.AppKey[Store] = web.AppKey("store")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("verifier")
COMPUTE: web.AppKey[ComputeClient] = web.AppKey("compute")
CONSOLES: web.AppKey[ConsoleService] = web.AppKey("consoles")
HEALTH: web.AppKey[Health] = web.AppKey("health")
CONNECTOR: web.AppKey[ConsoleConnector] = web.AppKey("connector")
ORIGINS = web.AppKey("origins", frozenset[str])
LIVE_SOCKETS = web.AppKey("live_sockets", weakref.WeakSet[web.WebSocketResponse])

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
