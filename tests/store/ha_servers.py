"""Real redis-servers for HA tests (one server, a 3-master Cluster, a Sentinel group), a gateway."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from gateway.observability import AccessLogger
from tests.conftest import RunningGateway
from tests.support import free_port

SERVICE = "cgw-master"
_TIMEOUT_S = 15.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; .ci/run installs redis-server")
    return path


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = _TIMEOUT_S) -> None:
    """Poll condition() (errors count as not yet) until true, or fail naming what we waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class RedisProcess:
    """One redis-server (or sentinel) on a fixed port that tests can kill, stop and start again."""

    workdir: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    config: str | None = None  # a config file's text (sentinels need one they can rewrite)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [_binary("redis-server")]
        if self.config is not None:
            conf = self.workdir / "redis.conf"
            conf.write_text(self.config)
            command.append(str(conf))
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        command += ["--logfile", str(self.workdir / "redis.log"), *self.args]
        proc = self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        wait_until(lambda: self._answers(proc), f"redis-server on port {self.port}")

    def _answers(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            log = (self.workdir / "redis.log").read_text()[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited:\n{log}")
        with self.client() as client:
            return bool(client.ping())

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, **kwargs)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything, as in a crash."""
        self._end(lambda proc: proc.kill())

    def stop(self) -> None:
        self._end(lambda proc: proc.terminate())

    def _end(self, signal_it: Callable[[subprocess.Popen[bytes]], None]) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            signal_it(proc)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# No persistence and an immediate diskless full sync keep start-up and failover fast.
_DATA_ARGS = ("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0")


def _data_node(workdir: Path, *args: str) -> RedisProcess:
    return RedisProcess(workdir, args=(*_DATA_ARGS, *args))


@contextlib.contextmanager
def running(processes: list[RedisProcess]) -> Iterator[None]:
    """Start them all; stop every one that is still running, whatever happened."""
    try:
        for process in processes:
            process.start()
        yield
    finally:
        for process in processes:
            process.kill()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisProcess]:
    node = _data_node(workdir)
    with running([node]):
        yield node


@dataclass
class Cluster:
    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)


_SLOTS = 16384


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[Cluster]:
    """A Redis Cluster of `masters` masters and no replicas, ready (cluster_state:ok on all)."""
    bus_ports = [free_port() for _ in range(masters)]
    # An explicit bus port: the default (port + 10000) may be taken or past 65535.
    nodes = [
        _data_node(workdir / f"node{i}", "--cluster-enabled", "yes", "--cluster-port", str(bus))
        for i, bus in enumerate(bus_ports)
    ]
    with running(nodes):
        # What `redis-cli --cluster create` does, minus its one-second polling (4 s here).
        for i, node in enumerate(nodes):
            with node.client() as client:
                first, last = _SLOTS * i // masters, _SLOTS * (i + 1) // masters - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
        with nodes[0].client() as client:
            for node, bus in zip(nodes[1:], bus_ports[1:], strict=True):
                client.execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus)
        for node in nodes:
            with node.client() as client:
                wait_until(partial(_cluster_ok, client, masters), f"a cluster on {node.port}")
        yield Cluster(nodes)


def _cluster_ok(client: redis.Redis, masters: int) -> bool:
    info = client.cluster("info")
    return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == masters)


def _sentinel_conf(master_port: int) -> str:
    # Half a second to call a master down and a short failover timeout: failover in ~1-3 s.
    return "\n".join([
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {SERVICE} 500",
        f"sentinel failover-timeout {SERVICE} 1500",
        f"sentinel parallel-syncs {SERVICE} 1",
        "",
    ])  # fmt: skip


@dataclass
class SentinelGroup:
    """One master, one replica, three sentinels (quorum 2); the roles change on failover."""

    data: list[RedisProcess]
    sentinels: list[RedisProcess]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master_port(self) -> int:
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def master(self) -> RedisProcess:
        port = self.master_port()
        return next(node for node in self.data if node.port == port)

    def wait_healthy(self) -> None:
        """Every sentinel agrees on a master that has a linked replica, and knows its peers."""
        for sentinel in self.sentinels:
            with sentinel.client(decode_responses=True) as client:
                wait_until(partial(_sentinel_sees_healthy, client), "a healthy sentinel group")

    def fail_over(self) -> RedisProcess:
        """SIGKILL the master and wait until the sentinels have promoted the replica."""
        old = self.master()
        old.kill()
        wait_until(lambda: self.master_port() != old.port, "the promotion of the replica")
        return old


def _sentinel_sees_healthy(client: redis.Redis) -> bool:
    master: Any = client.sentinel_master(SERVICE)  # redis-py types it as any response
    replicas: Any = client.sentinel_slaves(SERVICE)
    return (
        master["num-other-sentinels"] == 2
        and not master["is_sdown"]
        and len(replicas) == 1
        and not replicas[0]["is_sdown"]
        and replicas[0]["master-link-status"] == "ok"
    )


@contextlib.contextmanager
def sentinel_group(workdir: Path) -> Iterator[SentinelGroup]:
    master = _data_node(workdir / "data0")
    replica = _data_node(workdir / "data1", "--replicaof", "127.0.0.1", str(master.port))
    sentinels = [
        RedisProcess(
            workdir / f"sentinel{i}", args=("--sentinel",), config=_sentinel_conf(master.port)
        )
        for i in range(3)
    ]
    with running([master, replica, *sentinels]):
        group = SentinelGroup([master, replica], sentinels)
        group.wait_healthy()
        yield group


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[RunningGateway]:
    """A gateway as in production, building its own Redis client from settings.redis.url."""
    runner = web.AppRunner(create_app(settings), access_log_class=AccessLogger)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield RunningGateway(f"http://127.0.0.1:{port}", runner.app)
    finally:
        await runner.cleanup()
