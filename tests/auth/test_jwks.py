"""JwksCache against a real counting JWKS endpoint, plus tables for key-set parsing."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pytest_aiohttp import AiohttpServer

from gateway.auth.jwks import JwksCache, parse_jwks, select_key
from gateway.errors import ServiceUnavailable, Unauthenticated
from gateway.tasks import spawn
from tests.auth.conftest import JwksServer
from tests.jwt_support import public_jwk
from tests.support import FakeClock

TTL_S = 300.0
COOLDOWN_S = 30.0
ES256 = frozenset({"ES256"})

CacheFactory = Callable[..., JwksCache]


@pytest.fixture
def make_cache(
    session: aiohttp.ClientSession, jwks_server: JwksServer, clock: FakeClock
) -> CacheFactory:
    def build(url: str | None = None, **overrides: Any) -> JwksCache:
        options: dict[str, Any] = {
            "cache_ttl_s": TTL_S,
            "refetch_cooldown_s": COOLDOWN_S,
            "allowed_algorithms": ["ES256"],
            "clock": clock,
            **overrides,
        }
        return JwksCache(url or jwks_server.url, session, **options)

    return build


@pytest.fixture
def serve_ec(jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey) -> JwksServer:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1", "ES256")]}
    return jwks_server


async def test_keys_are_fetched_once_and_cached(
    serve_ec: JwksServer, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache()
    for _ in range(5):
        assert (await cache.key_for("k1")).key_id == "k1"
        clock.now += 10
    assert serve_ec.gets == 1


async def test_keys_are_refetched_after_the_ttl(
    serve_ec: JwksServer, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache()
    await cache.key_for("k1")
    clock.now += TTL_S + 1
    await cache.key_for("k1")
    assert serve_ec.gets == 2


async def test_rotated_kid_is_picked_up_after_the_cooldown(
    serve_ec: JwksServer,
    make_cache: CacheFactory,
    clock: FakeClock,
    other_ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    cache = make_cache()
    await cache.key_for("k1")
    serve_ec.document = {"keys": [public_jwk(other_ec_key, "k2", "ES256")]}
    with pytest.raises(Unauthenticated):
        await cache.key_for("k2")
    assert serve_ec.gets == 1  # still inside the cooldown of the first fetch
    clock.now += COOLDOWN_S + 1
    assert (await cache.key_for("k2")).key_id == "k2"
    assert serve_ec.gets == 2


async def test_a_flood_of_random_kids_costs_one_fetch_per_cooldown(
    serve_ec: JwksServer, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache()
    await cache.key_for("k1")
    clock.now += COOLDOWN_S + 1
    flood = [cache.key_for(secrets.token_hex(8)) for _ in range(200)]
    results = await asyncio.gather(*flood, return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    for _ in range(200):
        with pytest.raises(Unauthenticated):
            await cache.key_for(secrets.token_hex(8))
    assert serve_ec.gets == 2
    assert (await cache.key_for("k1")).key_id == "k1"


async def test_concurrent_first_requests_share_one_fetch(
    serve_ec: JwksServer, make_cache: CacheFactory
) -> None:
    cache = make_cache()
    serve_ec.release = asyncio.Event()
    waiting = asyncio.gather(*(cache.key_for("k1") for _ in range(50)))
    await serve_ec.entered.wait()
    serve_ec.release.set()
    keys = await waiting
    assert {k.key_id for k in keys} == {"k1"}
    assert serve_ec.gets == 1


async def test_a_cancelled_request_does_not_abort_the_shared_fetch(
    serve_ec: JwksServer, make_cache: CacheFactory
) -> None:
    cache = make_cache()
    serve_ec.release = asyncio.Event()
    first = spawn(cache.key_for("k1"), name="test-key-for")
    await serve_ec.entered.wait()
    second = spawn(cache.key_for("k1"), name="test-key-for")
    first.cancel()
    serve_ec.release.set()
    assert (await second).key_id == "k1"
    assert first.cancelled()
    assert serve_ec.gets == 1


async def test_stale_keys_are_kept_while_the_endpoint_is_down(
    serve_ec: JwksServer, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache()
    await cache.key_for("k1")
    serve_ec.status = 500
    clock.now += TTL_S + 1
    assert (await cache.key_for("k1")).key_id == "k1"
    assert (await cache.key_for("k1")).key_id == "k1"
    assert serve_ec.gets == 2  # the failed refresh is not retried inside the cooldown


async def test_no_keys_ever_is_503_and_retried_only_after_the_cooldown(
    serve_ec: JwksServer, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache()
    serve_ec.status = 503
    for _ in range(3):
        with pytest.raises(ServiceUnavailable) as info:
            await cache.key_for("k1")
        assert info.value.status == 503
        assert info.value.headers["Retry-After"] == "30"
    assert serve_ec.gets == 1
    serve_ec.status = 200
    clock.now += COOLDOWN_S
    assert (await cache.key_for("k1")).key_id == "k1"
    assert serve_ec.gets == 2


@pytest.mark.parametrize(
    "document",
    [
        {"keys": []},
        {"keys": "nope"},
        {"not_keys": 1},
        [1, 2],
        {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k1"}]},
    ],
)
async def test_unusable_documents_count_as_unavailable(
    jwks_server: JwksServer, make_cache: CacheFactory, document: Any
) -> None:
    jwks_server.document = document
    with pytest.raises(ServiceUnavailable):
        await make_cache().key_for("k1")


async def test_responses_larger_than_max_bytes_are_refused(
    serve_ec: JwksServer, make_cache: CacheFactory
) -> None:
    with pytest.raises(ServiceUnavailable):
        await make_cache(max_bytes=100).key_for("k1")
    assert serve_ec.gets == 1


async def test_streamed_responses_are_bounded_too(
    aiohttp_server: AiohttpServer, make_cache: CacheFactory, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    body = json.dumps({"keys": [public_jwk(ec_key, "k1", "ES256")], "pad": "x" * 5000}).encode()

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1000):
            await response.write(body[start : start + 1000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/jwks.json", chunked)
    server = await aiohttp_server(app)
    url = str(server.make_url("/jwks.json"))
    with pytest.raises(ServiceUnavailable):
        await make_cache(url, max_bytes=4096).key_for("k1")
    assert (await make_cache(url, max_bytes=8192).key_for("k1")).key_id == "k1"


async def test_a_hanging_endpoint_times_out(serve_ec: JwksServer, make_cache: CacheFactory) -> None:
    serve_ec.release = asyncio.Event()
    with pytest.raises(ServiceUnavailable):
        await make_cache(timeout_s=0.2).key_for("k1")


async def test_redirects_are_not_followed(
    aiohttp_server: AiohttpServer, serve_ec: JwksServer, make_cache: CacheFactory
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(serve_ec.url)

    app = web.Application()
    app.router.add_get("/jwks.json", redirect)
    server = await aiohttp_server(app)
    with pytest.raises(ServiceUnavailable):
        await make_cache(str(server.make_url("/jwks.json"))).key_for("k1")
    assert serve_ec.gets == 0


async def test_missing_kid_uses_the_only_key(
    serve_ec: JwksServer, make_cache: CacheFactory, other_ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cache = make_cache()
    assert (await cache.key_for(None)).key_id == "k1"
    serve_ec.document["keys"].append(public_jwk(other_ec_key, "k2", "ES256"))
    two_keys = make_cache()
    with pytest.raises(Unauthenticated):
        await two_keys.key_for(None)


def jwks_bytes(*keys: Any) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def test_parse_keeps_only_signature_keys_for_allowed_algorithms(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    body = jwks_bytes(
        public_jwk(ec_key, "good", "ES256"),
        public_jwk(ec_key, "no-alg"),
        public_jwk(ec_key, "sig-use", "ES256", use="sig"),
        public_jwk(ec_key, "enc-use", "ES256", use="enc"),
        public_jwk(rsa_key, "rsa", "RS256"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {"kty": "EC", "kid": "broken"},
        "not an object",
    )
    assert [k.key_id for k in parse_jwks(body, ES256)] == ["good", "no-alg", "sig-use"]


def test_parse_drops_private_and_short_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    private = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(rsa_key))
    small = rsa.generate_private_key(65537, 1024)  # noqa: S505 - weak on purpose
    body = jwks_bytes(
        {**private, "kid": "private", "alg": "RS256"},
        public_jwk(small, "small", "RS256"),
        public_jwk(rsa_key, "ok", "RS256"),
    )
    assert [k.key_id for k in parse_jwks(body, frozenset({"RS256"}))] == ["ok"]


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ({"RS256"}, "RS256"),
        ({"PS256"}, "PS256"),
        ({"RS512", "PS256"}, "RS512"),
    ],
)
def test_rsa_keys_without_alg_take_the_configured_algorithm(
    rsa_key: rsa.RSAPrivateKey, allowed: set[str], expected: str
) -> None:
    (key,) = parse_jwks(jwks_bytes(public_jwk(rsa_key, "r1")), frozenset(allowed))
    assert key.algorithm_name == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"keys": []}', b'{"keys": {}}', b"[" * 100_000, b"\xff"],
)
def test_parse_rejects_unusable_documents(body: bytes) -> None:
    with pytest.raises((ValueError, RecursionError, jwt.PyJWKSetError)):
        parse_jwks(body, ES256)


def test_select_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    one = parse_jwks(jwks_bytes(public_jwk(ec_key, "a", "ES256")), ES256)
    two = parse_jwks(
        jwks_bytes(public_jwk(ec_key, "a", "ES256"), public_jwk(ec_key, "b", "ES256")), ES256
    )
    assert select_key(one, None) is one[0]
    assert select_key(one, "a") is one[0]
    assert select_key(one, "b") is None
    assert select_key(two, None) is None
    assert select_key(two, "b") is two[1]
