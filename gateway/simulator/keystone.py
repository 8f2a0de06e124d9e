"""A Keystone v3 password-auth endpoint for the simulated cloud, mounted under /identity."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.simulator.state import ComputeSimulator

TOKENS_PATH = "/identity/v3/auth/tokens"
Handler = Callable[[web.Request], Awaitable[web.Response]]
_UNAUTHORIZED = "The request you have made requires authentication."


def unauthorized(request: web.Request) -> web.Response:
    """keystonemiddleware's answer to a missing or dead token (not a nova fault body)."""
    body = {"error": {"code": 401, "title": "Unauthorized", "message": _UNAUTHORIZED}}
    challenge = f'Keystone uri="{request.url.origin()}/identity"'
    return web.json_response(body, status=401, headers={"WWW-Authenticate": challenge})


def iso_z(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _bad_request(message: str) -> web.Response:
    body = {"error": {"code": 400, "title": "Bad Request", "message": message}}
    return web.json_response(body, status=400)


def password_credentials(body: object) -> tuple[str, str, str] | None:
    """(username, password, project id) from a v3 password-auth body scoped to a project id."""
    try:
        auth: Any = body["auth"]  # type: ignore[index]
        methods = auth["identity"]["methods"]
        if not isinstance(methods, list) or "password" not in methods:
            return None
        user = auth["identity"]["password"]["user"]
        fields = (user["name"], user["password"], auth["scope"]["project"]["id"])
        domain = user["domain"]["name"]
    except (KeyError, TypeError):
        return None
    if not all(isinstance(f, str) and f for f in (*fields, domain)):
        return None
    return fields


def create_tokens_handler(key: web.AppKey[ComputeSimulator]) -> Handler:
    async def issue_token(request: web.Request) -> web.Response:
        sim = request.app[key]
        sim.keystone_calls += 1
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _bad_request("Malformed request body")
        credentials = password_credentials(body)
        if credentials is None:
            return _bad_request("Expecting password auth scoped to a project id.")
        issued = sim.issue_keystone_token(*credentials)
        if issued is None:
            return unauthorized(request)
        token = {
            "methods": ["password"],
            "user": {"name": credentials[0]},
            "project": {"id": issued.project_id, "name": issued.project_id},
            "issued_at": iso_z(issued.issued_at),
            "expires_at": iso_z(issued.expires_at),
            "catalog": [],
        }
        return web.json_response(
            {"token": token}, status=201, headers={"X-Subject-Token": issued.token}
        )

    return issue_token


def add_routes(app: web.Application, key: web.AppKey[ComputeSimulator]) -> None:
    app.router.add_post(TOKENS_PATH, create_tokens_handler(key))
