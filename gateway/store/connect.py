"""Build the Redis client redis.url asks for: one server, Sentinel, Cluster, or an embedded fake.

URL forms (credentials percent-encoded, they apply to the data nodes, not to the sentinels):

- ``redis://[[user]:password@]host:port/db``, ``rediss://...``, ``unix:///path.sock?db=0``
- ``redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service_name>[/<db>]``
- ``redis+cluster://[[user]:password@]host1:7000,host2:7001`` (``rediss+cluster://`` for TLS)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import fakeredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import ConfigError, RedisSettings

RedisClient = aioredis.Redis | RedisCluster

_DIRECT_SCHEMES = ("redis", "rediss", "unix")
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}
# redis-py's default (10 retries, backoff up to 1 s) turns an outage into a long hang;
# a couple of quick retries ride out a dropped connection and still fail fast.
_RETRIES = 2
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.05, 0.25
_HEALTH_CHECK_INTERVAL_S = 30
# The default pool refuses (MaxConnectionsError) past 100 busy connections, failing a burst
# of cache hits; a blocking pool queues them instead, for at most socket_timeout_s.
_MAX_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a redis.url names; direct URLs are left to redis-py's own parser."""

    kind: Literal["direct", "sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """Pure: the deployment a non-empty redis.url names; ConfigError (without secrets) if bad."""
    parts = urlsplit(url)
    if parts.scheme in _DIRECT_SCHEMES:
        return RedisTarget("direct")
    kinds = {"redis+sentinel": "sentinel", "redis+cluster": "cluster", "rediss+cluster": "cluster"}
    kind = kinds.get(parts.scheme)
    if kind is None:
        raise ConfigError(f"redis.url: the {parts.scheme}:// scheme is not supported")
    if parts.query or parts.fragment:
        raise ConfigError(f"redis.url: {parts.scheme}:// takes no query or fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = tuple(_node(host, _DEFAULT_PORTS[kind]) for host in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    username, secret = unquote(user) or None, unquote(password) or None
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise ConfigError("redis.url: a cluster has only database 0 and takes no path")
        tls = parts.scheme == "rediss+cluster"
        return RedisTarget("cluster", nodes, username=username, password=secret, tls=tls)
    if not 1 <= len(path) <= 2:
        raise ConfigError("redis.url: a sentinel URL names /<service_name>[/<db>]")
    db = _int(path[1:] or ["0"], "db")
    return RedisTarget("sentinel", nodes, path[0], db, username=username, password=secret)


def _node(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError("redis.url: every host of the list needs a name")
    return host, _int([port_text], "port") if port_text else default_port


def _int(texts: list[str], what: str) -> int:
    if not texts[0].isdigit():
        raise ConfigError(f"redis.url: the {what} must be a number")
    return int(texts[0])


def create_redis(settings: RedisSettings) -> tuple[RedisClient, bool]:
    """The client and whether it is embedded (in-process, so single instance only)."""
    if not settings.url:
        client: aioredis.Redis = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(),
            connection_pool_class=aioredis.BlockingConnectionPool,
            max_connections=_MAX_CONNECTIONS,
        )
        return client, True
    target = parse_redis_url(settings.url)
    if target.kind == "sentinel":
        return _sentinel_master(target, settings.socket_timeout_s), False
    if target.kind == "cluster":
        return _cluster(target, settings.socket_timeout_s), False
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url, max_connections=_MAX_CONNECTIONS, **_pool_options(settings.socket_timeout_s)
    )
    return aioredis.Redis.from_pool(pool), False


def create_pubsub_redis(redis: RedisClient) -> aioredis.Redis:
    """A client whose .pubsub() reaches the deployment's classic pub/sub; aclose it when done.

    One server, a Sentinel master or the embedded fake: a client sharing `redis`'s pool
    (closing it leaves the pool open). A Cluster broadcasts classic PUBLISH to every node,
    so any one node will do: the first of its known nodes that answers.
    """
    if isinstance(redis, RedisCluster):
        return _any_node_client(redis)
    return aioredis.Redis(connection_pool=redis.connection_pool)


def _retry() -> Retry:
    # Only connection errors are retried: a timeout means a stuck server, and retrying it
    # would multiply socket_timeout_s instead of bounding the wait by it.
    return Retry(
        ExponentialWithJitterBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S),
        _RETRIES,
        supported_errors=(RedisConnectionError,),
    )


def _socket_options(timeout_s: float) -> dict[str, Any]:
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": _retry()}


def _sentinel_options(timeout_s: float) -> dict[str, Any]:
    # No retries per sentinel: each lookup already asks every sentinel in turn, and the
    # master connection's own retries repeat the lookup.
    return {**_socket_options(timeout_s), "retry": Retry(NoBackoff(), 0)}


def _pool_options(timeout_s: float) -> dict[str, Any]:
    return {
        **_socket_options(timeout_s),
        "timeout": timeout_s,  # the wait for a free pooled connection
        "health_check_interval": _HEALTH_CHECK_INTERVAL_S,
    }


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Asks the sentinels for the master on every new connection, and queues when busy."""

    async def aclose(self) -> None:
        await super().aclose()
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel_master(target: RedisTarget, timeout_s: float) -> aioredis.Redis:
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(target.nodes), sentinel_kwargs=_sentinel_options(timeout_s)
    )
    # Each new connection asks the sentinels where the master is, so after a failover the
    # next command (once redis-py drops the dead connections) reaches the promoted replica.
    client: aioredis.Redis = sentinels.master_for(
        target.service,
        connection_pool_class=_BlockingSentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=_MAX_CONNECTIONS,
        **_pool_options(timeout_s),
    )
    return client


class _GatedCluster(RedisCluster):
    """RedisCluster refuses past max_connections per node; this queues like a blocking pool."""

    def __init__(self, *, gate_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._gate_timeout_s = gate_timeout_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._gate_timeout_s):
                await self._gate.acquire()
        except TimeoutError as exc:
            raise RedisConnectionError("No connection available.") from exc
        try:
            # Concurrent first commands race redis-py's lazy topology discovery and break
            # each other's connections; discovering it first (under its lock) avoids that.
            await self.initialize()
            return await super().execute_command(*args, **kwargs)
        finally:
            self._gate.release()


def _cluster(target: RedisTarget, timeout_s: float) -> RedisCluster:
    options = _socket_options(timeout_s)
    return _GatedCluster(
        gate_timeout_s=timeout_s,
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        # Head-room over the gate for pipelines, which do not pass through it.
        max_connections=2 * _MAX_CONNECTIONS,
        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
        **options,
    )


# What a pub/sub connection needs from the cluster's own node settings (not its callbacks
# or maintenance hooks, which belong to its cluster-aware connections).
_PUBSUB_KEYS = ("username", "password", "credential_provider", "socket_timeout",
                "socket_connect_timeout", "socket_keepalive", "health_check_interval")  # fmt: skip


class _AnyNodeConnection(Connection):
    """Connects to the first of the cluster's nodes that accepts, tried in turn."""

    def __init__(self, *, cluster: RedisCluster, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cluster = cluster

    async def _connect(self) -> None:
        nodes = self._cluster.get_nodes() or list(
            self._cluster.nodes_manager.startup_nodes.values()
        )
        failure: Exception = OSError("no cluster node is known")
        for node in nodes:
            self.host, self.port = node.host, int(node.port)
            try:
                await super()._connect()  # type: ignore[no-untyped-call]
                return
            except (OSError, TimeoutError) as exc:
                failure = exc
        raise failure


class _AnyNodeSSLConnection(_AnyNodeConnection, SSLConnection):
    pass


def _any_node_client(cluster: RedisCluster) -> aioredis.Redis:
    kwargs = cluster.nodes_manager.connection_kwargs
    options = {k: v for k, v in kwargs.items() if k in _PUBSUB_KEYS or k.startswith("ssl_")}
    tls = issubclass(kwargs["connection_class"], SSLConnection)
    pool = aioredis.ConnectionPool(
        connection_class=_AnyNodeSSLConnection if tls else _AnyNodeConnection,
        cluster=cluster,
        retry=_retry(),
        **options,
    )
    return aioredis.Redis.from_pool(pool)
