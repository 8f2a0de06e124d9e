"""Load generators for the API benchmarks: wrk (C, preferred) and a raw-socket Python fallback.

Both run closed loops of POST /v1/consoles over keep-alive connections, pinned to the load
core, and report requests/s, p50/p99 latency, errors and the CPU they used themselves (the
proof that the generator was not the bottleneck). `burst()` opens N connections first and
then sends one request on each at once: the single-flight figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import percentile, pinned

# Filled in by environment variables (the token never touches the disk).
WRK_SCRIPT = r"""
local token = os.getenv("BENCH_TOKEN")
local project = os.getenv("BENCH_PROJECT")
local server = os.getenv("BENCH_SERVER")
local unique = os.getenv("BENCH_UNIQUE") == "1"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.body = '{"project_id":"' .. project .. '","server_id":"' .. server .. '"}'
local n = 0
if unique then
  request = function()
    n = n + 1
    local body = '{"project_id":"' .. project .. '","server_id":"' .. server .. '-' .. n .. '"}'
    return wrk.format(nil, nil, nil, body)
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"status_errors":%.0f,"connect_errors":%.0f,' ..
    '"read_errors":%.0f,"write_errors":%.0f,"timeouts":%.0f,"p50_us":%.0f,"p99_us":%.0f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    generator: str  # "wrk" or "python"
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers, socket errors and timeouts
    client_cpu_s: float  # CPU the load generator itself used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def client_core_share(self) -> float:
        """Fraction of one core the generator used: near 1.0 would make it the bottleneck."""
        return self.client_cpu_s / self.seconds if self.seconds > 0 else 0.0


def parse_wrk(stdout: str, client_cpu_s: float) -> LoadResult:
    """The LoadResult from the WRKJSON line our Lua done() prints (pure)."""
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line.removeprefix("WRKJSON "))
            errors = sum(
                int(data[k])
                for k in ("status_errors", "connect_errors", "read_errors", "write_errors",
                          "timeouts")
            )  # fmt: skip
            return LoadResult(
                generator="wrk",
                requests=int(data["requests"]),
                seconds=float(data["duration_us"]) / 1e6,
                p50_ms=float(data["p50_us"]) / 1000,
                p99_ms=float(data["p99_us"]) / 1000,
                errors=errors,
                client_cpu_s=client_cpu_s,
            )
    raise ValueError("wrk printed no WRKJSON summary line")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def ensure_wrk(log: Callable[[str], None] = _stderr) -> str | None:
    """wrk's path, installing Debian's package when absent and allowed; None: use Python."""
    if os.environ.get("BENCH_NO_WRK"):
        log("bench.api: BENCH_NO_WRK is set; using the Python generator")
        return None
    found = shutil.which("wrk")
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        log("bench.api: wrk is absent and cannot be installed here; using the Python generator")
        return None
    log("bench.api: installing wrk (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "install", "-y", "wrk"], [apt, "update"], [apt, "install", "-y", "wrk"]):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            done = subprocess.run(  # noqa: S603 - fixed commands
                command, env=env, capture_output=True, timeout=180, check=False
            )
            if done.returncode == 0 and command[-1] == "wrk":
                break
    found = shutil.which("wrk")
    if found is None:
        log("bench.api: installing wrk failed; using the Python generator (slower, noted)")
    return found


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Workload:
    """What the closed loop sends: POST /v1/consoles for one project, one or many servers."""

    url: str  # http://127.0.0.1:port
    token: str
    project: str
    server: str
    unique_servers: bool  # True: server-1, server-2, ... (every request a cache miss)

    def body(self, n: int) -> bytes:
        server = f"{self.server}-{n}" if self.unique_servers else self.server
        return json.dumps({"project_id": self.project, "server_id": server}).encode()


def run_wrk(
    wrk: str, load: Workload, *, connections: int, duration_s: float, cpu: int | None
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        env = {
            **os.environ,
            "BENCH_TOKEN": load.token,
            "BENCH_PROJECT": load.project,
            "BENCH_SERVER": load.server,
            "BENCH_UNIQUE": "1" if load.unique_servers else "0",
        }
        cmd = [
            wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
            "-s", str(script), f"{load.url}/v1/consoles",
        ]  # fmt: skip
        before = _children_cpu_s()
        done = subprocess.run(  # noqa: S603 - our own command
            pinned(cmd, cpu), env=env, capture_output=True, text=True, timeout=duration_s + 60
        )
        used = _children_cpu_s() - before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    return parse_wrk(done.stdout, used)


# --- the Python generator: raw HTTP/1.1 over asyncio streams (much lighter than a client lib)


def http_request(host_port: str, token: str, body: bytes) -> bytes:
    return (
        f"POST /v1/consoles HTTP/1.1\r\nHost: {host_port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def parse_head(head: bytes) -> tuple[int, int]:
    """Status and Content-Length of a response head (pure); ValueError if unusable."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding":
            raise ValueError("chunked answers are not expected here")
    if length is None:
        raise ValueError("no Content-Length")
    return status, length


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection and read its whole answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status, length = parse_head(head)
    await reader.readexactly(length)
    return status


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = url.removeprefix("http://").partition(":")
    return await asyncio.open_connection(host, int(port), limit=1 << 20)


async def _closed_loop(load: Workload, connections: int, duration_s: float) -> LoadResult:
    host_port = load.url.removeprefix("http://")
    latencies: list[float] = []
    errors = 0
    counter = iter(range(1, 1 << 62))
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal errors
        reader, writer = await _connect(load.url)
        try:
            while time.monotonic() < deadline:
                request = http_request(host_port, load.token, load.body(next(counter)))
                started = time.perf_counter()
                status = await exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    errors += 1
        finally:
            writer.close()

    cpu_before, started = _self_cpu_s(), time.monotonic()
    results = await asyncio.gather(*(worker() for _ in range(connections)), return_exceptions=True)
    seconds = time.monotonic() - started
    errors += sum(1 for r in results if isinstance(r, BaseException))
    return LoadResult(
        generator="python",
        requests=len(latencies),
        seconds=seconds,
        p50_ms=percentile(latencies, 50) * 1000 if latencies else 0.0,
        p99_ms=percentile(latencies, 99) * 1000 if latencies else 0.0,
        errors=errors,
        client_cpu_s=_self_cpu_s() - cpu_before,
    )


def run_python(load: Workload, *, connections: int, duration_s: float) -> LoadResult:
    """The fallback generator, in this (load-core pinned) process."""
    return asyncio.run(_closed_loop(load, connections, duration_s))


def run_load(
    wrk: str | None, load: Workload, *, connections: int, duration_s: float, cpu: int | None
) -> LoadResult:
    if wrk is not None:
        return run_wrk(wrk, load, connections=connections, duration_s=duration_s, cpu=cpu)
    return run_python(load, connections=connections, duration_s=duration_s)


@dataclass(frozen=True)
class BurstResult:
    total_s: float  # first request written to last answer read
    latencies_s: Sequence[float]
    statuses: Sequence[int]

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_s, 99) * 1000


async def _burst(url: str, token: str, body: bytes, size: int, connect_batch: int) -> BurstResult:
    # Connections first, a batch at a time (a listen backlog is finite): the burst itself
    # then measures request handling, as behind a load balancer's kept-alive connections.
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for start in range(0, size, connect_batch):
            batch = min(connect_batch, size - start)
            streams += await asyncio.gather(*(_connect(url) for _ in range(batch)))
        request = http_request(url.removeprefix("http://"), token, body)
        latencies: list[float] = []
        statuses: list[int] = []

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sent = time.perf_counter()
            statuses.append(await exchange(reader, writer, request))
            latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(r, w) for r, w in streams)), timeout=60)
        return BurstResult(time.perf_counter() - started, latencies, statuses)
    finally:
        for _, writer in streams:
            writer.close()


def burst(url: str, token: str, body: bytes, *, size: int, connect_batch: int = 100) -> BurstResult:
    """`size` concurrent POSTs with the same body, one per pre-opened connection."""
    return asyncio.run(_burst(url, token, body, size, connect_batch))
