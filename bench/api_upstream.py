"""A tiny compute API stub for the API benchmarks: every server exists, answers after a delay.

`python -m bench.api_upstream --port P --delay-ms 50` answers
`POST /v2.1/{project}/servers/{server}/remote-consoles` like nova (200, `remote_console`)
after sleeping --delay-ms, for any server id, and counts the calls: `GET /calls` gives
`{"calls": n}`, the figure that proves one upstream call per burst.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from collections.abc import Sequence

from aiohttp import web

CALLS = web.AppKey("calls", list[int])  # one mutable cell: the number of console calls
DELAY = web.AppKey("delay_s", float)
CONSOLE_HOST = "127.0.0.1"  # must be in the gateway's upstream.console_hosts


def console_url(token: str) -> str:
    return f"http://{CONSOLE_HOST}:6080/vnc_auto.html?token={token}"


async def remote_consoles(request: web.Request) -> web.Response:
    request.app[CALLS][0] += 1
    body = await request.json()
    console = body.get("remote_console", {}) if isinstance(body, dict) else {}
    delay = request.app[DELAY]
    if delay > 0:
        await asyncio.sleep(delay)
    answer = {
        "remote_console": {
            "type": console.get("type", "novnc"),
            "protocol": console.get("protocol", "vnc"),
            "url": console_url(secrets.token_hex(16)),
        }
    }
    return web.json_response(answer, headers={"OpenStack-API-Version": "compute 2.6"})


async def calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": request.app[CALLS][0]})


def create_app(delay_s: float) -> web.Application:
    app = web.Application()
    app[CALLS] = [0]
    app[DELAY] = delay_s
    app.router.add_post("/v2.1/{project_id}/servers/{server_id}/remote-consoles", remote_consoles)
    app.router.add_get("/calls", calls)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.delay_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
    )


if __name__ == "__main__":
    main()
