"""A real headless chromium opens a console link from the demo stack and uses the console."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo import DEMO_PROJECT, DEMO_SERVER, started_demo
from gateway.simulator.framebuffer import BARS
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("console.mjs")
SCREENSHOTS = ROOT / "test-output" / "browser"  # kept after the run for a person to look at
HARNESS_TIMEOUT_S = 60  # the harness stops itself at 45 s


async def new_console_url(gateway_url: str, jwt: str) -> str:
    headers = {"Authorization": f"Bearer {jwt}"}
    body = {"project_id": DEMO_PROJECT, "server_id": DEMO_SERVER}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway_url}/v1/consoles", json=body, headers=headers) as response,
    ):
        assert response.status == 201, await response.text()
        url: str = (await response.json())["console"]["url"]
        return url


async def run_harness(url: str, screenshot: Path) -> tuple[int, dict[str, Any], str]:
    """Run the node harness without blocking the loop that serves the gateway."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(HARNESS),
        url,
        str(screenshot),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), HARNESS_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert lines, f"the harness printed nothing; stderr: {err.decode()[-2000:]}"
    return process.returncode or 0, json.loads(lines[-1]), err.decode()


async def test_console_opens_and_takes_input_in_chromium() -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / "console.png"
    screenshot.unlink(missing_ok=True)
    async with started_demo("127.0.0.1", free_port()) as demo:
        url = await new_console_url(demo.gateway_url, demo.dev_jwt)
        code, findings, stderr = await run_harness(url, screenshot)
    assert findings["page_status"] == 200, findings
    assert findings["csp_violations"] == [], findings
    assert findings["states"][:2] == ["loading", "connecting"], findings
    assert not [r for r in findings["failed_requests"] if "/static/" in r], findings
    assert screenshot.stat().st_size > 0
    assert findings["connected"], findings
    # The simulator's colour bars, pixel for pixel, not merely "a canvas exists".
    bars = {f"{r:02x}{g:02x}{b:02x}" for r, g, b in BARS}
    assert bars <= set(findings["palette"]), findings
    assert findings["changed_after_click"], findings
    assert findings["changed_after_key"], findings
    assert code == 0 and findings["ok"], (findings, stderr[-2000:])
