"""Build the Redis client the settings ask for: a real server, or an embedded fake."""

from __future__ import annotations

from urllib.parse import urlsplit

import fakeredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import ConfigError, RedisSettings

_DIRECT_SCHEMES = ("redis", "rediss", "unix")
# redis-py's default (10 retries, backoff up to 1 s) turns an outage into a long hang;
# a couple of quick retries ride out a dropped connection and still fail fast.
_RETRIES = 2
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.05, 0.25
_HEALTH_CHECK_INTERVAL_S = 30
# The default pool refuses (MaxConnectionsError) past 100 busy connections, failing a burst
# of cache hits; a blocking pool queues them instead, for at most socket_timeout_s.
_MAX_CONNECTIONS = 100


def create_redis(settings: RedisSettings) -> tuple[aioredis.Redis, bool]:
    """The client and whether it is embedded (in-process, so single instance only)."""
    if not settings.url:
        client: aioredis.Redis = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(),
            connection_pool_class=aioredis.BlockingConnectionPool,
            max_connections=_MAX_CONNECTIONS,
        )
        return client, True
    scheme = urlsplit(settings.url).scheme
    if scheme not in _DIRECT_SCHEMES:
        raise ConfigError(f"redis.url: the {scheme}:// scheme is not yet supported")
    # Only connection errors are retried: a timeout means a stuck server, and retrying it
    # would multiply socket_timeout_s instead of bounding the wait by it.
    retry = Retry(
        ExponentialWithJitterBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S),
        _RETRIES,
        supported_errors=(RedisConnectionError,),
    )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=_MAX_CONNECTIONS,
        timeout=settings.socket_timeout_s,  # the wait for a free pooled connection
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
        retry=retry,
    )
    return aioredis.Redis.from_pool(pool), False
