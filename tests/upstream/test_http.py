"""The upstream HTTP session: unlimited by default, verified TLS, bounded body reads."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import errors
from gateway.config import ConfigError, UpstreamSettings
from gateway.upstream.http import RedirectRefused, create_http_session, read_json, ssl_context


def settings(**overrides: Any) -> UpstreamSettings:
    values = {
        "compute_url": "http://127.0.0.1:1",
        "token": "t",
        "console_hosts": ["127.0.0.1"],
        **overrides,
    }
    return UpstreamSettings.model_validate(values)


def write_ca(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(("max_connections", "limit"), [(0, 0), (5, 5)])
async def test_connection_limit(max_connections: int, limit: int) -> None:
    async with create_http_session(settings(max_connections=max_connections)) as session:
        assert session.connector is not None and session.connector.limit == limit
        assert session.timeout.total == 10 and session.timeout.sock_connect == 3


def test_tls_is_verified_with_or_without_a_ca_file(tmp_path: Path) -> None:
    assert ssl_context(settings()) is True
    context = ssl_context(settings(ca_file=str(write_ca(tmp_path / "ca.pem"))))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_unreadable_ca_file_is_a_config_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"upstream\.ca_file"):
        ssl_context(settings(ca_file=str(path)))


@pytest.mark.parametrize(
    ("body", "limit", "outcome"),
    [
        (b'{"a": 1}', 1024, {"a": 1}),
        (b"[" + b"1," * 2000 + b"1]", 1024, "oversized"),
        (b"<html>", 1024, "not JSON"),
    ],
)
async def test_read_json(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    body: bytes,
    limit: int,
    outcome: object,
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()  # no Content-Length to trust: the bound must hold anyway
        await resp.prepare(request)
        for start in range(0, len(body), 500):
            await resp.write(body[start : start + 500])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", chunked)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as resp:
        if isinstance(outcome, str):
            with pytest.raises(errors.UpstreamError, match=outcome):
                await read_json(resp, limit, what="compute API")
        else:
            assert await read_json(resp, limit, what="compute API") == outcome


async def test_redirects_are_never_followed_not_even_by_ws_connect(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    reached: list[str] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        return ws

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(str(target.make_url("/internal")))

    inner = web.Application()
    inner.router.add_get("/internal", elsewhere)
    target = await aiohttp_server(inner)
    outer = web.Application()
    outer.router.add_get("/websockify", redirect)
    front = await aiohttp_server(outer)
    async with create_http_session(settings()) as session:
        with pytest.raises(RedirectRefused):
            await session.ws_connect(front.make_url("/websockify?token=t"))
        with pytest.raises(RedirectRefused):
            await session.get(front.make_url("/websockify"))
    assert reached == []
