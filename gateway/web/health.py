"""/healthz (the process is alive) and /readyz (send it traffic)."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import HEALTH
from gateway.web.middlewares import public

_NO_STORE = {"Cache-Control": "no-store"}


@public
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers=_NO_STORE)


@public
async def readyz(request: web.Request) -> web.Response:
    problem = await request.app[HEALTH].readiness_problem()
    if problem is not None:
        return web.json_response(
            {"status": "unready", "reason": problem}, status=503, headers=_NO_STORE
        )
    return web.json_response({"status": "ready"}, headers=_NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
