"""Two gateway processes behind the real nginx (deploy/nginx), one real Redis, the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.simulator.state import ComputeSimulator
from tests.rfb_support import ws_rfb_client
from tests.support import (
    BASE_CONFIG,
    PROJECT,
    SERVER,
    bearer,
    deep_merge,
    free_port,
    mint_jwt,
)

REPO = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO / "deploy" / "nginx"
PORTAL = {"Origin": "https://portal.example.com"}
START_TIMEOUT_S = 20


@dataclass
class Instance:
    name: str
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def holds_console(self) -> bool:
        return "console_connected" in self.log.read_text(errors="replace")


async def wait_ready(url: str, process: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"{url} exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_server: str, compute_url: str, console_proxy: ComputeSimulator
) -> AsyncIterator[tuple[str, list[Instance]]]:
    """(nginx URL, [gw-1, gw-2]); every process is stopped afterwards."""
    lb_port = free_port()
    lb_url = f"http://127.0.0.1:{lb_port}"
    instances: list[Instance] = []
    processes: list[asyncio.subprocess.Process] = []
    try:
        for name in ("gw-1", "gw-2"):
            instance = await start_gateway(tmp_path, name, lb_url, redis_server, compute_url)
            processes.append(instance.process)
            instances.append(instance)
        upstreams = [i.url.removeprefix("http://") for i in instances]
        nginx = await start_nginx(tmp_path / "nginx", lb_port, upstreams)
        processes.append(nginx)
        await wait_ready(lb_url, nginx)
        yield lb_url, instances
    finally:
        for process in processes:
            await stop(process)


async def start_gateway(
    tmp_path: Path, name: str, lb_url: str, redis_url: str, compute_url: str
) -> Instance:
    port = free_port()
    config = deep_merge(BASE_CONFIG, {
        "server": {"host": "127.0.0.1", "port": port, "public_base_url": lb_url,
                   "trusted_proxies": ["127.0.0.1/32"], "instance_id": name},
        "upstream": {"compute_url": compute_url},
        "redis": {"url": redis_url},
        "drain": {"grace_s": 0.2, "deadline_s": 5},
    })  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / f"{name}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith("CGW_")},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process)
    except RuntimeError:
        await stop(process)
        raise RuntimeError(log.read_text(errors="replace")[-3000:]) from None
    return Instance(name, url, process, log)


async def start_nginx(prefix: Path, port: int, upstreams: list[str]) -> asyncio.subprocess.Process:
    """The shipped template and nginx.conf, rendered as the nginx image's envsubst would."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    (prefix / "tmp").mkdir(parents=True)
    values = {"CGW_LISTEN": f"127.0.0.1:{port}", "CGW_UPSTREAM_1": upstreams[0],
              "CGW_UPSTREAM_2": upstreams[1]}  # fmt: skip
    template = (NGINX_DIR / "console-gateway.conf.template").read_text()
    (prefix / "console-gateway.conf").write_text(render_template(template, values))
    shutil.copy(NGINX_DIR / "nginx.conf", prefix / "nginx.conf")
    return await asyncio.create_subprocess_exec(
        binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def render_template(template: str, values: dict[str, str]) -> str:
    """Like the nginx image's envsubst: only the named ${VARS}; nginx's own $vars stay."""
    return re.sub(r"\$\{(CGW_[A-Z0-9_]+)\}", lambda m: values[m.group(1)], template)


async def create_console(http: aiohttp.ClientSession, base_url: str) -> str:
    body = {"project_id": PROJECT, "server_id": SERVER}
    async with http.post(f"{base_url}/v1/consoles", json=body, headers=bearer(mint_jwt())) as resp:
        assert resp.status == 201, await resp.text()
        answer: dict[str, dict[str, str]] = await resp.json()
    return answer["console"]["id"]


async def connect(http: aiohttp.ClientSession, lb_url: str, console_id: str) -> tuple[
    aiohttp.ClientWebSocketResponse, int
]:
    """A console through the load balancer, with a full RFB handshake; (ws, screen width)."""
    ws = await http.ws_connect(f"{lb_url.replace('http', 'ws')}/ws/{console_id}", headers=PORTAL)
    init = await ws_rfb_client(ws).handshake()
    return ws, init.width


async def test_revocation_on_one_instance_closes_the_console_everywhere_within_a_second(
    cluster: tuple[str, list[Instance]],
) -> None:
    lb_url, (first, second) = cluster
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{lb_url}/metrics") as response:
            assert response.status == 404  # instances are scraped directly, not through the LB
        console_id = await create_console(http, first.url)
        sockets = [(await connect(http, lb_url, console_id))[0] for _ in range(2)]
        async with http.delete(
            f"{second.url}/v1/consoles/{console_id}", headers=bearer(mint_jwt())
        ) as response:
            assert response.status == 204
        revoked_at = time.monotonic()
        for ws in sockets:
            message = await ws.receive(timeout=5)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == 4410  # the frame's code (see tests/web/test_ws.py)
        assert time.monotonic() - revoked_at < 1.0


async def test_draining_instance_hands_its_console_to_the_other(
    cluster: tuple[str, list[Instance]],
) -> None:
    lb_url, instances = cluster
    async with aiohttp.ClientSession() as http:
        console_id = await create_console(http, lb_url)
        ws, width = await connect(http, lb_url, console_id)
        [holder] = [i for i in instances if i.holds_console()]
        holder.process.send_signal(signal.SIGTERM)
        message = await ws.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1001
        # The client reconnects through the load balancer: it lands on the other instance.
        again, _ = await connect(http, lb_url, console_id)
        rfb = ws_rfb_client(again)
        await rfb.request_update(False, 0, 0, width, 8)
        [(rect, pixels)] = await rfb.read_update()
        assert rect == (0, 0, width, 8) and len(pixels) == width * 8 * 4
        await again.close()
        assert await asyncio.wait_for(holder.process.wait(), 10) == 0
        [other] = [i for i in instances if i is not holder]
        assert other.holds_console()
