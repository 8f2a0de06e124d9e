"""What ties instances together at run time: revocation broadcasts and connection leases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import Settings
from gateway.keys import CONNECTIONS, REDIS, SETTINGS
from gateway.revocation import (
    REVOKED_CLOSE_CODE,
    REVOKED_REASON,
    RevocationListener,
    publish_revocation,
)
from gateway.store.connect import create_pubsub_redis
from gateway.store.keyspace import KeySpace
from gateway.tasks import spawn

# Leases last 30 s (connections.py); renewing at a third of that survives one missed beat.
HEARTBEAT_S = 10.0


def instance_id(settings: Settings) -> str:
    return settings.server.instance_id or f"{socket.gethostname()}:{os.getpid()}"


async def fleet_ctx(app: web.Application) -> AsyncIterator[None]:
    """Listen for revocations from every instance and keep this one's leases alive."""
    registry = app[CONNECTIONS]
    pubsub = create_pubsub_redis(app[REDIS])

    async def on_revoked(id_hash: str) -> None:
        registry.close_console(id_hash, REVOKED_CLOSE_CODE, REVOKED_REASON)

    channel = KeySpace(app[SETTINGS].redis.key_prefix).revocations()
    listener = RevocationListener(pubsub, channel, on_revoked, on_resubscribed=registry.refresh)
    await listener.start()
    heartbeat = spawn(registry.run_heartbeat(HEARTBEAT_S), name="connection-heartbeat")
    try:
        yield
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await listener.stop()
        await pubsub.aclose()


async def broadcast_revocation(app: web.Application, id_hash: str) -> None:
    """Every instance (this one included) closes the console's live WebSockets."""
    channel = KeySpace(app[SETTINGS].redis.key_prefix).revocations()
    await publish_revocation(app[REDIS], channel, id_hash)
