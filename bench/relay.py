"""Relay benchmarks: throughput, echo latency, CPU per GB and idle memory, each next to a baseline.

`.venv/bin/python -m bench.relay [--quick]` starts everything on 127.0.0.1 and prints one table.

Paths (all end at the same upstream console proxy, the real `websockify`, in front of TCP
"VNC servers" that greet, then stream / echo / sink; see bench/relay_backends.py):

- direct:  client -> websockify                               (no relay at all)
- bare:    client -> bench/relay_bare.py -> websockify          (the baseline relay)
- gateway: client -> `console-gateway serve` -> websockify      (the product, with Redis)

The relay under test (gateway or bare) is pinned to core SERVER_CPU; the load generator (this
process), websockify, the backends and Redis share LOAD_CPU. The direct path's figures show
what that side can do without any relay: when they are well above the relayed ones, the load
side is not the bottleneck. Ratios pair each run with its baseline run from the same round.

Idle consoles: websockify forks a process per connection, so the idle figures use a light
aiohttp console proxy (greets, then echoes) and a separate holder process (bench/relay_idle.py).
A gateway holds two sockets per console; RLIMIT_NOFILE's hard limit on this machine caps the
count (10,000 consoles need more than 20,000 fds), so the largest level is what fits, and the
table says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import relay_load
from bench.harness import (
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    Row,
    Spread,
    cpu_seconds,
    free_port,
    percentile,
    pinned,
    pinned_self,
    process,
    ratios,
    redis_server,
    render,
    rss_bytes,
)
from bench.relay_backends import IDLE_SERVER, PORT_NAMES, PROJECT

PYTHON = sys.executable
SERVICE_TOKEN = "bench-service-token-not-secret"  # noqa: S105 - throw-away, 127.0.0.1 only
JWT_SECRET = "bench-hs256-secret-that-is-long-enough-0123456789"  # noqa: S105 - throw-away
SUBJECT = "bench-user"
KIB = 1024
GB = 1e9
# The gateway's own limit on live WebSockets per console link (config: ws_per_console <= 1000).
CONNECTIONS_PER_CONSOLE = 900
# Sockets a console needs in the gateway: the client leg and the upstream leg.
FDS_PER_CONSOLE = 2


@dataclass(frozen=True)
class Sizes:
    runs: int  # paired rounds per throughput/echo figure
    seconds: float  # timed window of one throughput measurement
    echo_rounds: int  # round trips per session per echo measurement
    sessions: tuple[int, ...]  # concurrent sessions for throughput and echo
    idle_levels: tuple[int, ...]  # idle consoles held, cumulative; the last is capped by fds
    idle_echo_rounds: int
    warmup_s: float = 0.3  # streaming before the timed window starts
    settle_s: float = 0.5  # pause before reading a process's RSS


FULL = Sizes(
    runs=5,
    seconds=0.8,
    echo_rounds=400,
    sessions=(1, 16),
    idle_levels=(10, 1000, 10_000),
    idle_echo_rounds=300,
)
QUICK = Sizes(
    runs=1,
    seconds=0.2,
    echo_rounds=20,
    sessions=(1, 2),
    idle_levels=(10, 40),
    idle_echo_rounds=20,
    warmup_s=0.1,
    settle_s=0.1,
)


def hard_nofile() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_capacity(hard_limit: int, base_fds: int, margin: int = 200) -> int:
    """Most idle consoles one gateway process can hold: two sockets each, within the fd limit.

    `margin` leaves fds for what grows with load: Redis pool connections, the compute API's
    connections, sockets being accepted or closed.
    """
    return max(0, (hard_limit - base_fds - margin) // FDS_PER_CONSOLE)


def capped_levels(levels: Sequence[int], capacity: int) -> list[int]:
    """The levels that fit, with the first one that does not replaced by the capacity."""
    fitting = [level for level in levels if level <= capacity]
    if len(fitting) < len(levels) and (not fitting or fitting[-1] < capacity):
        fitting.append(capacity)
    return fitting


# Below this (ms) an added latency is timer and scheduling noise; it floors the ratio's divisor.
LATENCY_FLOOR_MS = 0.01


def added_latency(relayed: float, direct: float) -> float:
    """What a relay adds to a round trip (ms) over the direct path, floored at the noise."""
    return max(relayed - direct, LATENCY_FLOOR_MS)


def per_console_kib(rss_at: int, rss_base: int, consoles: int) -> float:
    return (rss_at - rss_base) / consoles / KIB


# -- the running stack ---------------------------------------------------------------------


def mint_jwt() -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": "https://portal.bench",
        "aud": "console-gateway",
        "sub": SUBJECT,
        "iat": now,
        "exp": now + 3600,
        "projects": [PROJECT],
        "roles": [],
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def gateway_config(port: int, compute_port: int, redis_url: str) -> dict[str, Any]:
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_base_url": f"http://127.0.0.1:{port}",
            "allowed_origins": ["http://127.0.0.1"],
        },
        "auth": {
            "issuer": "https://portal.bench",
            "audience": "console-gateway",
            "algorithms": ["HS256"],
            "hs256_secret": JWT_SECRET,
        },
        "upstream": {
            "compute_url": f"http://127.0.0.1:{compute_port}",
            "token": SERVICE_TOKEN,
            "console_hosts": ["127.0.0.1"],
        },
        "redis": {"url": redis_url},
        # A shared 2-core machine can starve the gateway for seconds while thousands of
        # consoles open; the bench measures memory and latency, not the connect deadline.
        "relay": {"allow_missing_origin": True, "connect_timeout_s": 60},
        "limits": {
            "create_per_window": 100000,
            "ws_per_console": 1000,
            "ws_per_subject": 100000,
            "ws_per_instance": 100000,
        },
        "logging": {"level": "WARNING"},
        "drain": {"grace_s": 0},  # no load balancer to wait for: stop at once
    }


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - our own 127.0.0.1 servers
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass
class Cloud:
    """The backends process and websockify in front of its TCP servers."""

    ports: dict[str, int]

    def upstream_token(self, server: str, *, idle: bool = False) -> str:
        """A console token straight from the compute API, as the gateway would get it."""
        port = self.ports["idle_compute" if idle else "compute"]
        answer = _post_json(
            f"http://127.0.0.1:{port}/v2.1/{PROJECT}/servers/{server}/remote-consoles",
            {"remote_console": {"protocol": "vnc", "type": "novnc"}},
            {"X-Auth-Token": SERVICE_TOKEN, "OpenStack-API-Version": "compute 2.6"},
        )
        url: str = answer["remote_console"]["url"]
        return url.split("token=", 1)[1]

    def direct_url(self, server: str) -> str:
        return f"ws://127.0.0.1:{self.ports['websockify']}/websockify?token={self.upstream_token(server)}"


@contextlib.contextmanager
def cloud(workdir: Path) -> Iterator[Cloud]:
    ports = {name: free_port() for name in PORT_NAMES}
    token_dir = workdir / "tokens"
    token_dir.mkdir()
    backends = [
        PYTHON,
        "-m",
        "bench.relay_backends",
        "--ports",
        json.dumps(ports),
        "--token-dir",
        str(token_dir),
        "--service-token",
        SERVICE_TOKEN,
    ]
    websockify = [
        PYTHON,
        "-m",
        "websockify",
        "--token-plugin",
        "TokenFile",
        "--token-source",
        str(token_dir),
        f"127.0.0.1:{ports['websockify']}",
    ]
    with (
        process(backends, port=ports["light"], cpu=LOAD_CPU, log_name="backends"),
        process(websockify, port=ports["websockify"], cpu=LOAD_CPU, log_name="websockify"),
    ):
        yield Cloud(ports)


@dataclass
class Relay:
    """A relay under test running as its own process."""

    name: str
    pid: int
    ws_url: Callable[[str], str]  # server name -> the client's WebSocket URL


@contextlib.contextmanager
def gateway(workdir: Path, compute_port: int, redis_url: str) -> Iterator[tuple[int, str]]:
    """`console-gateway serve` pinned to SERVER_CPU; its pid and base URL."""
    port = free_port()
    config = workdir / f"gateway-{port}.yaml"
    config.write_text(yaml.safe_dump(gateway_config(port, compute_port, redis_url)))
    binary = str(Path(PYTHON).parent / "console-gateway")
    with process(
        [binary, "serve", "--config", str(config)], port=port, cpu=SERVER_CPU, log_name="gateway"
    ) as proc:
        yield proc.pid, f"http://127.0.0.1:{port}"


def gateway_console(base_url: str, server: str) -> str:
    """POST /v1/consoles as the bench user; the console's websocket_url."""
    answer = _post_json(
        f"{base_url}/v1/consoles",
        {"project_id": PROJECT, "server_id": server},
        {"Authorization": f"Bearer {mint_jwt()}"},
    )
    url: str = answer["console"]["websocket_url"]
    return url


@contextlib.contextmanager
def bare_relay(upstream_port: int) -> Iterator[tuple[int, int]]:
    port = free_port()
    cmd = [
        PYTHON,
        "-m",
        "bench.relay_bare",
        "--port",
        str(port),
        "--upstream",
        f"ws://127.0.0.1:{upstream_port}/websockify",
    ]
    with process(cmd, port=port, cpu=SERVER_CPU, log_name="bare") as proc:
        yield proc.pid, port


@contextlib.contextmanager
def relays(workdir: Path, box: Cloud, redis_url: str) -> Iterator[list[Relay]]:
    """direct, bare and gateway paths to websockify's backends."""
    with (
        gateway(workdir, box.ports["compute"], redis_url) as (gw_pid, gw_url),
        bare_relay(box.ports["websockify"]) as (bare_pid, bare_port),
    ):
        consoles: dict[str, str] = {}
        directs: dict[str, str] = {}

        def gw(server: str) -> str:
            if server not in consoles:
                consoles[server] = gateway_console(gw_url, server)
            return consoles[server]

        def direct(server: str) -> str:
            if server not in directs:
                directs[server] = box.direct_url(server)
            return directs[server]

        def bare(server: str) -> str:
            token = direct(server).split("token=", 1)[1]
            return f"ws://127.0.0.1:{bare_port}/ws/{token}"

        yield [
            Relay("direct", 0, direct),
            Relay("bare", bare_pid, bare),
            Relay("gateway", gw_pid, gw),
        ]


# -- measurements --------------------------------------------------------------------------


@dataclass
class Samples:
    """Per path, per figure: one value per run."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, path: str, figure: str, value: float) -> None:
        self.values.setdefault((path, figure), []).append(value)

    def get(self, path: str, figure: str) -> list[float]:
        return self.values[(path, figure)]


def progress(message: str) -> None:
    print(f"[relay {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_paths(paths: list[Relay], sizes: Sizes) -> Samples:
    samples = Samples()
    for run in range(sizes.runs):
        progress(f"throughput/echo round {run + 1}/{sizes.runs}")
        for n in sizes.sessions:
            for path in paths:  # each round measures all three back to back: paired ratios
                cpu_before = cpu_seconds(path.pid) if path.pid else 0.0
                down = asyncio.run(
                    relay_load.downstream(
                        [path.ws_url("stream")] * n, sizes.seconds, sizes.warmup_s
                    )
                )
                cpu_used = (cpu_seconds(path.pid) - cpu_before) if path.pid else 0.0
                samples.add(path.name, f"down{n}", down.mb_per_s)
                if path.pid and down.bytes:
                    # Includes connection set-up and warm-up: an upper bound per GB.
                    samples.add(path.name, f"cpu_per_gb{n}", cpu_used / (down.bytes / GB))
                up = asyncio.run(relay_load.upstream([path.ws_url("sink")] * n, sizes.seconds))
                samples.add(path.name, f"up{n}", up.mb_per_s)
            # Echo: the three paths alternate in small batches within one measurement.
            urls = {path.name: [path.ws_url("echo")] * n for path in paths}
            rtts = asyncio.run(relay_load.echo_interleaved(urls, sizes.echo_rounds))
            for name, times in rtts.items():
                samples.add(name, f"p50_{n}", percentile(times, 50) * 1e3)
                samples.add(name, f"p99_{n}", percentile(times, 99) * 1e3)
    return samples


def path_rows(samples: Samples, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for n in sizes.sessions:
        label = f"{n} session{'s' if n > 1 else ''}"
        for key, what in ((f"down{n}", "downstream"), (f"up{n}", "upstream")):
            gw, bare = samples.get("gateway", key), samples.get("bare", key)
            ratio = ratios(gw, bare)
            rows.append(
                Row(
                    f"relay {what} throughput, {label}",
                    Spread.of(gw),
                    Spread.of(bare),
                    ratio,
                    "MB/s",
                    ">= 0.85",
                    ratio.median >= 0.85,
                )
            )
            direct = samples.get("direct", key)
            rows.append(
                Row(
                    f"no relay (client -> websockify) {what}, {label}",
                    Spread.of(direct),
                    None,
                    None,
                    "MB/s",
                )
            )
        for pct in ("p50", "p99"):
            key = f"{pct}_{n}"
            direct = samples.get("direct", key)
            gw = [
                added_latency(g, d)
                for g, d in zip(samples.get("gateway", key), direct, strict=True)
            ]
            bare = [
                added_latency(b, d) for b, d in zip(samples.get("bare", key), direct, strict=True)
            ]
            ratio = ratios(gw, bare)
            rows.append(
                Row(
                    f"added echo latency {pct} (64 B), {label}",
                    Spread.of(gw),
                    Spread.of(bare),
                    ratio,
                    "ms",
                    "<= 1.2",
                    ratio.median <= 1.2,
                )
            )
            rows.append(
                Row(f"no relay echo round trip {pct}, {label}", Spread.of(direct), None, None, "ms")
            )
    n = max(sizes.sessions)
    key = f"cpu_per_gb{n}"
    gw, bare = samples.get("gateway", key), samples.get("bare", key)
    rows.append(
        Row(
            f"relay CPU per GB downstream, {n} sessions",
            Spread.of(gw),
            Spread.of(bare),
            ratios(gw, bare),
            "CPU s/GB",
        )
    )
    return rows


# -- idle consoles -------------------------------------------------------------------------


class Holder:
    """bench/relay_idle.py on LOAD_CPU: opens idle consoles on command."""

    def __init__(self, urls: list[str], workdir: Path) -> None:
        urls_file = workdir / f"urls-{len(os.listdir(workdir))}.json"
        urls_file.write_text(json.dumps(urls))
        cmd = [PYTHON, "-m", "bench.relay_idle", "--urls-file", str(urls_file)]
        self._proc = subprocess.Popen(  # noqa: S603 - our own command
            pinned(cmd, LOAD_CPU),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )

    def open(self, total: int) -> float:
        """Hold `total` idle consoles; the seconds opening the new ones took."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"open {total}\n".encode())
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().decode().split()
        if not answer or answer[0] != "opened" or int(answer[1]) != total:
            raise RuntimeError(f"idle holder could not open {total}: {answer}")
        return float(answer[2])

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, 9)
            self._proc.wait(5)
        finally:
            if self._proc.stdout is not None:
                self._proc.stdout.close()


@dataclass
class IdleLevel:
    consoles: int
    kib_per_console: float
    echo_p50_ms: float
    echo_p99_ms: float
    open_s: float


def settle_rss(pid: int, wait_s: float = 0.5) -> int:
    time.sleep(wait_s)
    return rss_bytes(pid)


def idle_sweep(
    pid: int, urls: list[str], echo_url: str, levels: Sequence[int], sizes: Sizes, workdir: Path
) -> list[IdleLevel]:
    rounds = sizes.idle_echo_rounds
    asyncio.run(relay_load.echo([echo_url], rounds))  # warm every code path first
    base = settle_rss(pid, sizes.settle_s)
    holder = Holder(urls, workdir)
    results: list[IdleLevel] = []
    try:
        for level in levels:
            open_s = holder.open(level)
            progress(f"pid {pid}: {level} idle consoles open in {open_s:.1f} s")
            rss = settle_rss(pid, sizes.settle_s)
            rtts = asyncio.run(relay_load.echo([echo_url], rounds))
            results.append(
                IdleLevel(
                    level,
                    per_console_kib(rss, base, level),
                    percentile(rtts, 50) * 1e3,
                    percentile(rtts, 99) * 1e3,
                    open_s,
                )
            )
    finally:
        holder.close()
    return results


def measure_idle(
    workdir: Path, box: Cloud, redis_url: str, sizes: Sizes
) -> tuple[list[IdleLevel], list[IdleLevel], int, int]:
    """Gateway and bare relay idle sweeps against the light proxy; also capacity and base fds."""
    with gateway(workdir, box.ports["idle_compute"], redis_url) as (gw_pid, gw_url):
        base_fds = fd_count(gw_pid)
        capacity = idle_capacity(hard_nofile(), base_fds)
        levels = capped_levels(sizes.idle_levels, capacity)
        consoles = [
            gateway_console(gw_url, IDLE_SERVER)
            for _ in range(math.ceil(levels[-1] / CONNECTIONS_PER_CONSOLE) + 1)
        ]
        gw = idle_sweep(gw_pid, consoles[1:], consoles[0], levels, sizes, workdir)
    with bare_relay(box.ports["light"]) as (bare_pid, bare_port):
        token = box.upstream_token(IDLE_SERVER, idle=True)
        url = f"ws://127.0.0.1:{bare_port}/ws/{token}"
        bare = idle_sweep(bare_pid, [url], url, levels, sizes, workdir)
    return gw, bare, capacity, base_fds


def idle_rows(
    gw: list[IdleLevel], bare: list[IdleLevel], capacity: int, base_fds: int, wanted: int
) -> list[Row]:
    rows: list[Row] = []
    hard = hard_nofile()
    for g, b in zip(gw, bare, strict=True):
        note = ""
        if g.consoles < wanted and g is gw[-1]:
            note = (
                f" ({wanted:,} blocked: {wanted:,} x {FDS_PER_CONSOLE} sockets + {base_fds} "
                f"fds > RLIMIT_NOFILE hard {hard:,})"
            )
        value, base = Spread.of([g.kib_per_console]), Spread.of([b.kib_per_console])
        rows.append(
            Row(
                f"memory per idle console (RSS delta), {g.consoles:,} consoles{note}",
                value,
                base,
                ratios([g.kib_per_console], [b.kib_per_console]),
                "KiB",
                "<= 40 KiB",
                value.median <= 40,
            )
        )
    for g, b in zip(gw, bare, strict=True):
        rows.append(
            Row(
                f"echo p50 (64 B) with {g.consoles:,} idle consoles held",
                Spread.of([g.echo_p50_ms]),
                Spread.of([b.echo_p50_ms]),
                ratios([g.echo_p50_ms], [b.echo_p50_ms]),
                "ms",
            )
        )
    for g, b in zip(gw, bare, strict=True):
        rows.append(
            Row(
                f"time to open {g.consoles:,} idle consoles (cumulative level)",
                Spread.of([g.open_s]),
                Spread.of([b.open_s]),
                ratios([g.open_s], [b.open_s]),
                "s",
            )
        )
    first, last = gw[0], gw[-1]
    mid = gw[len(gw) // 2] if len(gw) > 2 else first
    growth = last.kib_per_console / mid.kib_per_console if mid.kib_per_console > 0 else math.inf
    rows.append(
        Row(
            f"memory per console {mid.consoles:,} -> {last.consoles:,} (1.0 = linear)",
            Spread.of([growth]),
            None,
            None,
            "x",
            "<= 1.2 (linear)",
            growth <= 1.2,
        )
    )
    scale = last.consoles / first.consoles
    echo_growth = last.echo_p50_ms / first.echo_p50_ms
    rows.append(
        Row(
            f"echo p50 {first.consoles:,} -> {last.consoles:,} idle ({scale:,.0f}x consoles)",
            Spread.of([echo_growth]),
            None,
            None,
            "x",
            f"< {scale:,.0f} (not super-linear)",
            echo_growth < scale,
        )
    )
    rows.append(
        Row(
            "idle consoles held by one gateway process",
            Spread.of([last.consoles]),
            None,
            None,
            "consoles",
            *held_target(last.consoles, wanted, capacity),
        )
    )
    return rows


def held_target(held: int, wanted: int, capacity: int) -> tuple[str, bool | None]:
    """The target text and verdict for the consoles held; None when the machine cannot
    even offer the wanted number (the fd hard limit): a blocked target is not a met one."""
    if held >= wanted:
        return f">= {wanted:,}", True
    if held >= capacity:
        return f">= {wanted:,}: BLOCKED here, only {capacity:,} fit under the fd hard limit", None
    return f">= {wanted:,} ({capacity:,} would fit)", False


# -- entry points --------------------------------------------------------------------------


def run(quick: bool = False) -> list[Row]:
    sizes = QUICK if quick else FULL
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    try:
        with pinned_self(LOAD_CPU), redis_server(cpu=LOAD_CPU) as redis_url, cloud(workdir) as box:
            with relays(workdir, box, redis_url) as paths:
                rows = path_rows(measure_paths(paths, sizes), sizes)
            gw, bare, capacity, base_fds = measure_idle(workdir, box, redis_url, sizes)
            rows += idle_rows(gw, bare, capacity, base_fds, sizes.idle_levels[-1])
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    rows = run(quick="--quick" in args)
    print(render(rows, title="relay"), end="")
    print(f"relay bench: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
