"""The baseline for POST /v1/consoles: a bare aiohttp endpoint doing only the unavoidable work.

`python -m bench.api_bare --config GATEWAY.yaml --port P` reads the gateway's own settings (same
JWT key, algorithms, issuer, audience, leeway; same Redis and key prefix) and answers
`POST /v1/consoles` with what the gateway's cache-hit path cannot skip:

1. PyJWT decode of the bearer token with the same key, algorithms and required claims;
2. the JSON body parsed, the project checked against the token's `projects` claim;
3. the same Redis round trips as the gateway: the rate-limit script (EVALSHA), one MGET of
   the cached URL with its error marker and lock, the console record written in one
   MULTI/EXEC pipeline (DEL, HSET, PEXPIRE);
4. a 201 JSON body shaped like the gateway's.

On a miss it calls the compute API directly and caches the URL, without a lock (so a burst
makes one call per request: the figure the gateway's single flight is compared with).
No request ids, access log, metrics, audit, error rendering or body limits: those are the
features the ratio prices. It runs on the gateway's event loop (gateway.cli.run_async).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from gateway.cli import run_async
from gateway.config import UPSTREAM_URL_VALIDITY_S, Settings
from gateway.config_loader import load_settings
from gateway.models import ConsoleTarget, Expiring
from gateway.ratelimit import TAKE
from gateway.store import codec
from gateway.store.connect import RedisClient, create_redis
from gateway.store.keyspace import KeySpace

_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


@dataclass
class Bare:
    settings: Settings
    secret: bytes
    redis: RedisClient
    keyspace: KeySpace
    take: Any  # redis-py's AsyncScript
    http: aiohttp.ClientSession


BARE = web.AppKey("bare", Bare)


def _error(status: int, code: str) -> web.Response:
    return web.json_response({"error": {"code": code}}, status=status)


async def _upstream_url(bare: Bare, target: ConsoleTarget) -> Expiring:
    upstream = bare.settings.upstream
    url = (
        f"{upstream.compute_url}/v2.1/{target.project_id}/servers/{target.server_id}"
        "/remote-consoles"
    )
    headers = {
        "X-Auth-Token": upstream.token.get_secret_value(),
        "OpenStack-API-Version": f"compute {upstream.microversion}",
        "Content-Type": "application/json",
    }
    body = {"remote_console": {"type": target.type, "protocol": target.protocol}}
    started = time.time()
    async with bare.http.post(url, json=body, headers=headers) as resp:
        answer = await resp.json()
    return Expiring(answer["remote_console"]["url"], started + UPSTREAM_URL_VALIDITY_S)


async def create_console(request: web.Request) -> web.Response:
    bare = request.app[BARE]
    settings = bare.settings
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "unauthenticated")
    try:
        claims = jwt.decode(
            token,
            bare.secret,
            algorithms=list(settings.auth.algorithms),
            audience=settings.auth.audience,
            issuer=settings.auth.issuer,
            leeway=settings.auth.leeway_s,
            options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
        )
    except jwt.InvalidTokenError:
        return _error(401, "unauthenticated")
    try:
        body = json.loads(await request.read())
        target = ConsoleTarget(body["project_id"], body["server_id"])
    except (ValueError, KeyError, TypeError):
        return _error(400, "bad_request")
    if target.project_id not in claims.get(settings.auth.projects_claim, ()):
        return _error(403, "forbidden")
    subject = claims["sub"]
    # Round trip 1: the rate-limit script, with the gateway's key and arguments.
    now, limits = time.time(), settings.limits
    window = limits.create_window_s
    args = [repr(now), window, limits.create_per_window, uuid.uuid4().hex, window * 1000]
    oldest = await bare.take(keys=[bare.keyspace.creations_of_subject(subject)], args=args)
    if oldest is not None:
        return _error(429, "rate_limited")
    # Round trip 2: the cached URL, its error marker and its lock in one MGET.
    key = bare.keyspace.console_url(target)
    raw, _err, _lock = await bare.redis.mget(
        [key, bare.keyspace.error_for(key), bare.keyspace.lock_for(key)]
    )
    cached = codec.decode_expiring(raw)
    if cached is None or not codec.is_fresh(cached, time.time(), settings.cache.min_remaining_s):
        fresh = await _upstream_url(bare, target)
        ttl_ms = codec.store_ms(settings.cache.console_url_ttl_s, fresh.valid_until, time.time())
        await bare.redis.set(key, codec.encode_expiring(fresh), px=ttl_ms)
    # Round trip 3: the console record, as the gateway's Store.put_console writes it.
    console_id = secrets.token_urlsafe(32)
    created = time.time()
    expires = created + settings.sessions.ttl_s
    record: dict[str, str] = {
        "id_hash": hashlib.sha256(console_id.encode("ascii")).hexdigest(),
        "owner": str(subject),
        "project_id": target.project_id,
        "server_id": target.server_id,
        "type": target.type,
        "protocol": target.protocol,
        "created_at": repr(created),
        "expires_at": repr(expires),
    }
    record_key = bare.keyspace.console(record["id_hash"])
    async with bare.redis.pipeline(transaction=True) as pipe:
        pipe.delete(record_key)
        pipe.hset(record_key, mapping={k: v for k, v in record.items()})
        keep_s = settings.sessions.ttl_s + settings.sessions.tombstone_s
        pipe.pexpire(record_key, int(keep_s * 1000))
        await pipe.execute()
    base = settings.server.public_base_url
    answer = {
        "console": {
            "id": console_id,
            "url": f"{base}/console/{console_id}",
            "websocket_url": f"ws{base.removeprefix('http')}/ws/{console_id}",
            "type": target.type,
            "protocol": target.protocol,
            "project_id": target.project_id,
            "server_id": target.server_id,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
        }
    }
    return web.json_response(answer, status=201)


def create_app(settings: Settings) -> web.Application:
    assert settings.auth.hs256_secret is not None, "the API bench signs tokens with HS256"
    secret = settings.auth.hs256_secret.get_secret_value().encode()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        redis, _ = create_redis(settings.redis)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        keyspace = KeySpace(settings.redis.key_prefix)
        app[BARE] = Bare(settings, secret, redis, keyspace, redis.register_script(TAKE), http)
        yield
        await http.close()
        await redis.aclose()

    app = web.Application()
    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/consoles", create_console)
    return app


async def serve(settings: Settings, port: int) -> None:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()  # until the harness kills the process group
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the gateway's YAML settings")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(args.config, os.environ)
    run_async(serve(settings, args.port), settings.server.event_loop)


if __name__ == "__main__":
    main()
