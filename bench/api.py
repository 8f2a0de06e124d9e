"""API benchmarks: POST /v1/consoles on a cache hit, on a miss, and in a single-flight burst.

`python -m bench.api [--quick]` starts on 127.0.0.1 a throw-away redis-server, a compute API
stub answering after 50 ms (bench/api_upstream.py), the gateway (`console-gateway serve`, as in
production) and its baseline, a bare aiohttp endpoint doing the same JWT check and Redis round
trips (bench/api_bare.py); it runs bounded closed-loop loads against each, alternately, and
prints one table of paired ratios (median [min-max] over the runs).

- cache hit: same user, same server, URL cached; target gateway rps >= 0.7 x bare;
- miss: every request a new server (50 ms upstream); the bare endpoint calls the upstream
  directly (no lock) and caches the answer;
- burst: N concurrent requests for one uncached server over pre-opened connections; the
  upstream must see exactly one call from the gateway (the bare endpoint makes N).

Servers run on SERVER_CPU; the load generator (wrk, installed when absent; else a raw-socket
Python client), Redis and the stub on LOAD_CPU. The table shows the generator's CPU share of
its core next to the servers': the server saturates its core, the generator does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import redis
import yaml

from bench.api_load import BurstResult, LoadResult, Workload, burst, ensure_wrk, run_load
from bench.harness import (
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    Row,
    Spread,
    cpu_seconds,
    free_port,
    pinned_self,
    process,
    ratios,
    redis_server,
    render,
)

ISSUER, AUDIENCE = "https://portal.bench.invalid", "console-gateway"
PROJECT, SUBJECT = "bench-project", "bench-user"
UPSTREAM_DELAY_MS = 50.0
HIT_TARGET = 0.7


@dataclass(frozen=True)
class Sizes:
    runs: int
    hit_seconds: float
    hit_connections: int
    miss_runs: int
    miss_seconds: float
    miss_connections: int
    burst_runs: int
    burst_size: int
    warmup_seconds: float

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(1, 1, 8, 1, 1, 8, 1, 50, 0)
        return cls(7, 4, 32, 5, 3, 64, 5, 1000, 2)


@dataclass
class Side:
    """One server under test (the gateway or the bare endpoint) and what it measured."""

    name: str
    url: str
    pid: int
    hit: list[LoadResult] = field(default_factory=list)
    hit_server_cpu: list[float] = field(default_factory=list)  # share of its core
    hit_cpu_us: list[float] = field(default_factory=list)  # server CPU per request
    hit_redis_cpu: list[float] = field(default_factory=list)
    miss: list[LoadResult] = field(default_factory=list)
    bursts: list[BurstResult] = field(default_factory=list)
    burst_calls: list[int] = field(default_factory=list)


def mint_token(secret: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + 3600,
        "projects": [PROJECT], "roles": [],
    }  # fmt: skip
    return jwt.encode(claims, secret, algorithm="HS256")


def gateway_config(port: int, compute_port: int, redis_url: str) -> dict[str, object]:
    """The gateway's settings: production defaults (JSON INFO logs, metrics, audit) except
    limits raised so the load is never refused. Secrets come from the environment."""
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_base_url": f"http://127.0.0.1:{port}",
        },
        "auth": {"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["HS256"]},
        "upstream": {
            "compute_url": f"http://127.0.0.1:{compute_port}",
            "console_hosts": ["127.0.0.1"],
            "timeout_s": 10,
        },
        "redis": {"url": redis_url},
        "limits": {
            "create_per_window": 100000,
            "create_window_s": 1,
            "ws_per_instance": 100000,
            "ws_per_subject": 100000,
            "ws_per_console": 1000,
        },
        "logging": {"level": "INFO", "format": "json"},
    }


def gateway_command(config: Path) -> list[str]:
    script = ROOT / ".venv" / "bin" / "console-gateway"
    if script.exists():
        return [str(script), "serve", "--config", str(config)]
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config)]


def upstream_calls(compute_url: str) -> int:
    with urllib.request.urlopen(f"{compute_url}/calls", timeout=10) as resp:  # noqa: S310
        return int(json.loads(resp.read())["calls"])


def quiet_upstream_calls(compute_url: str, timeout_s: float = 15.0) -> int:
    """The stub's call count once it stops moving: requests a load run left in flight (wrk
    stops without waiting for its last answers) must not be counted as the next burst's."""
    last, deadline = upstream_calls(compute_url), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = upstream_calls(compute_url)
        if now == last:
            return now
        last = now
    raise RuntimeError("bench.api: the compute stub never went quiet")


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def check_load(side: str, result: LoadResult) -> LoadResult:
    if result.errors or result.requests == 0:
        raise RuntimeError(
            f"bench.api: {side}: {result.errors} errors in {result.requests} requests"
        )
    return result


PARTS = ("hit", "miss", "burst")


def measure(quick: bool = False, parts: Sequence[str] = PARTS) -> tuple[list[Side], str]:
    sizes = Sizes.for_mode(quick)
    wrk = ensure_wrk()
    generator = "wrk" if wrk else "python"
    secret = secrets.token_urlsafe(48)
    token = mint_token(secret)
    env = {"CGW_AUTH_HS256_SECRET": secret, "CGW_UPSTREAM_TOKEN": secrets.token_hex(16)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    gw_port, bare_port, compute_port = free_port(), free_port(), free_port()
    compute_url = f"http://127.0.0.1:{compute_port}"
    stub_cmd = [sys.executable, "-m", "bench.api_upstream", "--port", str(compute_port),
                "--delay-ms", str(UPSTREAM_DELAY_MS)]  # fmt: skip
    try:
        with (
            pinned_self(LOAD_CPU),
            redis_server(cpu=LOAD_CPU) as redis_url,
            process(stub_cmd, port=compute_port, cpu=LOAD_CPU, log_name="stub"),
        ):
            config = tmp / "gateway.yaml"
            config.write_text(yaml.safe_dump(gateway_config(gw_port, compute_port, redis_url)))
            bare_cmd = [sys.executable, "-m", "bench.api_bare", "--config", str(config),
                        "--port", str(bare_port)]  # fmt: skip
            with (
                process(gateway_command(config), port=gw_port, cpu=SERVER_CPU, env=env,
                        log_name="gateway") as gw_proc,
                process(bare_cmd, port=bare_port, cpu=SERVER_CPU, env=env,
                        log_name="bare") as bare_proc,
                contextlib.closing(redis.Redis.from_url(redis_url)) as redis_client,
            ):  # fmt: skip
                sides = [
                    Side("gateway", f"http://127.0.0.1:{gw_port}", gw_proc.pid),
                    Side("bare", f"http://127.0.0.1:{bare_port}", bare_proc.pid),
                ]
                _run_all(sides, sizes, wrk, token, compute_url, redis_client, parts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sides, generator


def _paired(sides: list[Side], run: int) -> list[Side]:
    """Alternate which side goes first, so drift over time does not favour one of them."""
    return sides if run % 2 == 0 else sides[::-1]


def _run_all(
    sides: list[Side],
    sizes: Sizes,
    wrk: str | None,
    token: str,
    compute_url: str,
    redis_client: redis.Redis,
    parts: Sequence[str] = PARTS,
) -> None:
    nonce = secrets.token_hex(3)
    hit_server = f"hit-{nonce}"
    # Prime the cache (one upstream call), then warm both servers up on the hit path.
    for side in sides:
        primed = burst(side.url, token, Workload(side.url, token, PROJECT, hit_server,
                       False).body(0), size=1)  # fmt: skip
        if list(primed.statuses) != [201]:
            raise RuntimeError(f"bench.api: {side.name} answered {primed.statuses} when priming")
        if sizes.warmup_seconds:
            run_load(wrk, Workload(side.url, token, PROJECT, hit_server, False),
                     connections=sizes.hit_connections, duration_s=sizes.warmup_seconds,
                     cpu=LOAD_CPU)  # fmt: skip
    for run in range(sizes.runs if "hit" in parts else 0):
        for side in _paired(sides, run):
            load = Workload(side.url, token, PROJECT, hit_server, False)
            cpu_before, redis_before = cpu_seconds(side.pid), redis_cpu_s(redis_client)
            result = check_load(side.name, run_load(
                wrk, load, connections=sizes.hit_connections, duration_s=sizes.hit_seconds,
                cpu=LOAD_CPU,
            ))  # fmt: skip
            side.hit.append(result)
            server_cpu = cpu_seconds(side.pid) - cpu_before
            side.hit_server_cpu.append(server_cpu / result.seconds)
            side.hit_cpu_us.append(server_cpu / result.requests * 1e6)
            side.hit_redis_cpu.append((redis_cpu_s(redis_client) - redis_before) / result.seconds)
    for run in range(sizes.burst_runs if "burst" in parts else 0):
        for side in _paired(sides, run):
            body = Workload(side.url, token, PROJECT, f"burst-{nonce}-{side.name}-{run}",
                            False).body(0)  # fmt: skip
            before = quiet_upstream_calls(compute_url)
            answered = burst(side.url, token, body, size=sizes.burst_size)
            if list(answered.statuses) != [201] * sizes.burst_size:
                counts = dict(Counter(answered.statuses))
                raise RuntimeError(f"bench.api: {side.name} burst: answers {counts}, not all 201")
            side.bursts.append(answered)
            side.burst_calls.append(upstream_calls(compute_url) - before)

    for run in range(sizes.miss_runs if "miss" in parts else 0):
        for side in _paired(sides, run):
            load = Workload(side.url, token, PROJECT, f"miss-{nonce}-{side.name}-{run}", True)
            side.miss.append(check_load(side.name, run_load(
                wrk, load, connections=sizes.miss_connections, duration_s=sizes.miss_seconds,
                cpu=LOAD_CPU,
            )))  # fmt: skip


def rows_from(sides: Sequence[Side], generator: str, burst_size: int) -> list[Row]:
    gw, bare = sides[0], sides[1]

    def row(figure: str, unit: str, values: list[float], baselines: list[float],
            target: str = "", met: bool | None = None) -> Row:  # fmt: skip
        return Row(figure, Spread.of(values), Spread.of(baselines), ratios(values, baselines),
                   unit, target, met)  # fmt: skip

    hit_ratio = ratios([r.rps for r in gw.hit], [r.rps for r in bare.hit])
    gen = f" ({generator})"
    rows = [
        Row(
            "API cache hit: requests/s" + gen, Spread.of([r.rps for r in gw.hit]),
            Spread.of([r.rps for r in bare.hit]), hit_ratio, "req/s", f">= {HIT_TARGET}",
            hit_ratio.median >= HIT_TARGET,
        ),
        row("API cache hit: p50 latency", "ms", [r.p50_ms for r in gw.hit],
            [r.p50_ms for r in bare.hit]),
        row("API cache hit: p99 latency", "ms", [r.p99_ms for r in gw.hit],
            [r.p99_ms for r in bare.hit]),
        row("API cache hit: server CPU per request", "us", gw.hit_cpu_us, bare.hit_cpu_us),
        row("API cache hit: server CPU, share of its core", "core", gw.hit_server_cpu,
            bare.hit_server_cpu),
        row("API cache hit: load generator CPU, share of its core", "core",
            [r.client_core_share for r in gw.hit], [r.client_core_share for r in bare.hit]),
        row("API cache hit: redis-server CPU, share of a core", "core", gw.hit_redis_cpu,
            bare.hit_redis_cpu),
        row(f"API miss ({UPSTREAM_DELAY_MS:.0f} ms upstream): requests/s", "req/s",
            [r.rps for r in gw.miss], [r.rps for r in bare.miss]),
        row("API miss: p50 latency", "ms", [r.p50_ms for r in gw.miss],
            [r.p50_ms for r in bare.miss]),
        row("API miss: p99 latency", "ms", [r.p99_ms for r in gw.miss],
            [r.p99_ms for r in bare.miss]),
        row(f"API burst of {burst_size} for one uncached server: upstream calls", "calls",
            [float(c) for c in gw.burst_calls], [float(c) for c in bare.burst_calls],
            "gateway = 1", all(c == 1 for c in gw.burst_calls)),
        row("API burst: total time", "ms", [b.total_s * 1000 for b in gw.bursts],
            [b.total_s * 1000 for b in bare.bursts]),
        row("API burst: p99 latency", "ms", [b.p99_ms for b in gw.bursts],
            [b.p99_ms for b in bare.bursts]),
    ]  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    """The API benchmark's rows (gateway vs bare endpoint); quick: tiny sizes, smoke only."""
    sides, generator = measure(quick)
    return rows_from(sides, generator, Sizes.for_mode(quick).burst_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.api", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = run(args.quick)
    print(render(rows, title="api"), end="")
    print(f"bench.api: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
