"""The command line: check-config and serve fail with one line naming the key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from asyncio.subprocess import Process
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType, web

from gateway.simulator.state import ComputeSimulator
from tests.conftest import RunningGateway
from tests.support import BASE_CONFIG, deep_merge, free_port

PORTAL = {"Origin": "https://portal.example.com"}

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**_env_without_cgw(), **(env or {})},
    )


def _env_without_cgw() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CGW_")}


def write_config(tmp_path: Path, override: dict[str, object]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(deep_merge(BASE_CONFIG, override)))
    return path


def test_check_config_prints_masked_settings(tmp_path: Path) -> None:
    result = run_cli(
        "check-config",
        str(write_config(tmp_path, {})),
        env={"CGW_REDIS_URL": "redis://127.0.0.1:7777/0"},
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["upstream"]["token"] == "***"
    assert printed["auth"]["hs256_secret"] == "***"
    assert printed["redis"]["url"] == "redis://127.0.0.1:7777/0"
    assert "SECRET" not in result.stdout and "long-enough" not in result.stdout


def test_check_config_refuses_ttl_of_600_in_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "check-config", str(write_config(tmp_path, {"cache": {"console_url_ttl_s": 600}}))
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cache.console_url_ttl_s" in lines[0]
    assert result.stdout == ""


def test_serve_with_bad_config_stops_with_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstream": {"compute_url": "not-a-url"}})
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "console-gateway: invalid configuration: upstream.compute_url: "
        "must be an http(s) URL with a host"
    ]


def test_serve_reads_cgw_config_and_env_secrets(tmp_path: Path) -> None:
    config = deep_merge(BASE_CONFIG, {})
    del config["auth"]["hs256_secret"]
    path = write_config(tmp_path, {})
    path.write_text(yaml.safe_dump(config))
    result = run_cli("check-config", str(path), env={"CGW_AUTH_HS256_SECRET": "s" * 40})
    assert result.returncode == 0, result.stderr
    missing = run_cli("check-config", str(path))
    assert missing.returncode == 2 and "auth" in missing.stderr


async def _wait_ready(http: aiohttp.ClientSession, url: str, proc: Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.returncode is None, "the gateway exited while starting"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never became ready")


async def _readyz_status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/readyz") as response:
        return response.status


async def test_serve_drains_on_sigterm_and_exits_0(
    tmp_path: Path,
    compute_url: str,
    console_proxy: ComputeSimulator,
    redis_server: str,
    http: aiohttp.ClientSession,
) -> None:
    port, grace_s, deadline_s = free_port(), 1.0, 5.0
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "upstream": {"compute_url": compute_url},
        "redis": {"url": redis_server},
        "drain": {"grace_s": grace_s, "deadline_s": deadline_s},
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config",
            str(write_config(tmp_path, config)),
            cwd=REPO, env=_env_without_cgw(), stdout=sink, stderr=sink,
        )  # fmt: skip
    gateway = RunningGateway(f"http://127.0.0.1:{port}", web.Application())
    try:
        await _wait_ready(http, gateway.url, proc)
        live = await http.ws_connect(
            gateway.ws_url(await gateway.new_console(http)), headers=PORTAL
        )
        greeting = await live.receive(timeout=5)
        assert greeting.data.startswith(b"RFB ")
        spare = await gateway.new_console(http)

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while await _readyz_status(http, gateway.url) == 200:
            assert time.monotonic() - signalled < grace_s, "still ready during the grace"
            await asyncio.sleep(0.02)
        assert await _readyz_status(http, gateway.url) == 503
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(gateway.ws_url(spare), headers=PORTAL)
        assert refused.value.status == 503

        closing = await live.receive(timeout=deadline_s)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
        assert time.monotonic() - signalled >= grace_s
        assert await asyncio.wait_for(proc.wait(), timeout=deadline_s + 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        print(log.read_text())  # shown by pytest only when the test fails
