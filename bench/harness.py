"""Shared benchmark plumbing: repeated runs, ratio statistics, processes pinned to cores, tables.

Every figure is measured next to its baseline in the same invocation and reported as a ratio
(median of several runs, with min and max), because these machines are shared and noisy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPUS = os.cpu_count() or 1
# Server under test on one core, load generator on the other (when there are two or more).
SERVER_CPU = 0
LOAD_CPU = 1 if CPUS > 1 else 0


@dataclass(frozen=True)
class Spread:
    """Median with min and max over repeated runs."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no samples")
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Row:
    """One line of a results table: a figure, its baseline, their ratio and the target."""

    figure: str
    value: Spread  # the gateway's measurement (unit in `unit`)
    baseline: Spread | None  # the baseline's measurement, same unit
    ratio: Spread | None  # per-run value/baseline (or whatever the target compares)
    unit: str
    target: str = ""  # e.g. ">= 0.85"; empty for figures reported without a target
    met: bool | None = None  # None: no target


def ratios(values: Sequence[float], baselines: Sequence[float]) -> Spread:
    """Per-run ratios (value_i / baseline_i): paired runs cancel drift between runs."""
    return Spread.of([v / b for v, b in zip(values, baselines, strict=True) if b])


def render(rows: Sequence[Row], title: str = "") -> str:
    """A Markdown table: the same text goes to the terminal and to bench/RESULTS.md."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| figure | gateway | baseline | ratio (median [min-max]) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = row.baseline.fmt() if row.baseline else "-"
        ratio = row.ratio.fmt() if row.ratio else "-"
        met = "-" if row.met is None else ("yes" if row.met else "**NO**")
        lines.append(
            f"| {row.figure} | {row.value.fmt()} {row.unit} | {baseline} | {ratio} "
            f"| {row.target or '-'} | {met} |"
        )
    return "\n".join(lines) + "\n"


def repeat(runs: int, measure: Callable[[int], float]) -> list[float]:
    """measure(run_index) `runs` times; the list of results."""
    return [measure(i) for i in range(runs)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(
    port: int, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """cmd under `taskset -c cpu` when taskset exists and a core is asked for."""
    if cpu is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


@contextlib.contextmanager
def process(
    cmd: Sequence[str],
    *,
    port: int | None = None,
    cpu: int | None = None,
    env: dict[str, str] | None = None,
    log_name: str = "proc",
) -> Iterator[subprocess.Popen[bytes]]:
    """Start cmd (pinned to cpu), wait for its port, and always stop it and its children."""
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    log = (log_dir / f"{log_name}.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - our own commands
        pinned(cmd, cpu),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        if port is not None:
            try:
                wait_port(port, proc=proc)
            except Exception:
                log.flush()
                sys.stderr.write((log_dir / f"{log_name}.log").read_text()[-4000:])
                raise
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
        shutil.rmtree(log_dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(cpu: int | None = None) -> Iterator[str]:
    """A throw-away redis-server on a free port (never the machine's 6379); its URL."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with process(cmd, port=port, cpu=cpu, log_name="redis"):
        yield f"redis://127.0.0.1:{port}/0"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (no psutil needed for this)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages divided among their users), from smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (not its children) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_facts() -> dict[str, str]:
    """What RESULTS.md states about the machine a table came from."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": str(CPUS),
        "cpu model": cpu_model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


@contextlib.contextmanager
def pinned_self(cpu: int) -> Iterator[None]:
    """Run this process (a load generator) on `cpu` meanwhile, restoring its affinity after."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
