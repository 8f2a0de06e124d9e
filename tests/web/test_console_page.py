"""The console page: live, refused and broken-install answers, headers, static files."""

from __future__ import annotations

import asyncio
import logging
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.web.console_page import content_security_policy, error_page, frame_ancestors
from tests.conftest import GatewayFactory
from tests.support import PROJECT, SERVER, UPSTREAM_TOKEN, FakeClock, bearer, mint_jwt

Client = TestClient[web.Request, web.Application]
JWT = mint_jwt()


@pytest.fixture
async def client(make_gateway: GatewayFactory, fake_redis: aioredis.Redis) -> Client:
    return await make_gateway(fake_redis)


async def create_console(client: Client) -> tuple[str, str]:
    """A new console's id and its page's path."""
    body = {"project_id": PROJECT, "server_id": SERVER}
    response = await client.post("/v1/consoles", json=body, headers=bearer(JWT))
    assert response.status == 201, await response.text()
    console = (await response.json())["console"]
    return console["id"], f"/console/{console['id']}"


async def raw_get(client: Client, path: str) -> tuple[int, str]:
    """GET with the path sent byte for byte (aiohttp's client would normalise the dots)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        answer = (await asyncio.wait_for(reader.read(), timeout=5)).decode(errors="replace")
    finally:
        writer.close()
        await writer.wait_closed()
    return int(answer.split(" ", 2)[1]), answer


def parse_csp(header: str) -> dict[str, list[str]]:
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


class PageScan(HTMLParser):
    """What a CSP-strict page must not have: inline scripts, styles or event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.inline.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")


def assert_page_headers(response: Any, origins: str = "https://portal.example.com") -> None:
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = parse_csp(response.headers["Content-Security-Policy"])
    assert csp == {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": origins.split(),
    }


@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        ((), "'none'"),
        (("https://portal.example.com",), "https://portal.example.com"),
        (
            ("https://B.example.com:443", "http://a.example.com:8080"),
            "http://a.example.com:8080 https://b.example.com",
        ),
        (("https://a.example.com", "https://a.example.com/"), "https://a.example.com"),
        (("not an origin",), "'none'"),
    ],
)
def test_frame_ancestors(origins: tuple[str, ...], expected: str) -> None:
    assert frame_ancestors(origins) == expected


def test_csp_has_no_unsafe_sources() -> None:
    policy = content_security_policy(["https://portal.example.com"])
    assert "unsafe" not in policy and "*" not in policy


def test_error_page_escapes_its_message() -> None:
    page = error_page(410, "<script>alert(1)</script>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "expired" in page


async def test_live_console_page(client: Client) -> None:
    console_id, path = await create_console(client)
    response = await client.get(path)  # no token: the id is the capability
    assert response.status == 200
    assert_page_headers(response)
    page = await response.text()
    scan = PageScan()
    scan.feed(page)
    assert scan.inline == []
    assert scan.scripts == [{"type": "module", "src": "../static/console.js"}]
    for secret in (console_id, UPSTREAM_TOKEN, JWT):
        assert secret not in page


async def test_frame_ancestors_follow_configured_origins(
    make_gateway: GatewayFactory, fake_redis: aioredis.Redis
) -> None:
    origins = ["https://portal.example.com", "https://admin.example.com:8443"]
    client = await make_gateway(fake_redis, {"server": {"allowed_origins": origins}})
    _, path = await create_console(client)
    response = await client.get(path)
    assert response.status == 200
    csp = parse_csp(response.headers["Content-Security-Policy"])
    assert sorted(csp["frame-ancestors"]) == sorted(origins)


@pytest.mark.parametrize("console_id", ["A" * 43, "short", "A" * 44, "%3Cscript%3E"])
async def test_unknown_console_is_a_404_page(client: Client, console_id: str) -> None:
    response = await client.get(f"/console/{console_id}")
    assert response.status == 404
    assert_page_headers(response)
    page = await response.text()
    assert "This console link is not valid" in page
    assert "<script" not in page and "<script" not in page.lower()


async def test_revoked_console_is_a_410_page(client: Client) -> None:
    console_id, path = await create_console(client)
    deleted = await client.delete(f"/v1/consoles/{console_id}", headers=bearer(JWT))
    assert deleted.status == 204
    response = await client.get(path)
    assert response.status == 410
    assert_page_headers(response)
    assert "revoked" in await response.text()


async def test_expired_console_is_a_410_page(
    make_gateway: GatewayFactory, fake_redis: aioredis.Redis
) -> None:
    clock = FakeClock(time.time())
    client = await make_gateway(fake_redis, {"sessions": {"ttl_s": 60}}, clock=clock)
    _, path = await create_console(client)
    assert (await client.get(path)).status == 200
    clock.now += 60
    response = await client.get(path)
    assert response.status == 410
    assert_page_headers(response)
    assert "This console link has expired" in await response.text()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/novnc/core/rfb.js", "javascript"),
        ("/static/novnc/vendor/pako/lib/zlib/inflate.js", "javascript"),
        ("/static/console.js", "javascript"),
        ("/static/console.css", "text/css"),
    ],
)
async def test_static_files_are_public(client: Client, path: str, content_type: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert content_type in response.headers["Content-Type"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/static/novnc/package.json",  # only core/ and vendor/ are served
        "/static/novnc/README.md",
        "/static/novnc/core/",  # no directory listings
        "/static/novnc/core/../package.json",
        "/static/novnc/core/%2e%2e/package.json",
        "/static/novnc/core/..%2fpackage.json",
        "/static/..%2f..%2fconsole_page.py",
        "/static/%2e%2e/%2e%2e/config.py",
        "/static/..%5c..%5cconfig.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
    ],
)
async def test_static_path_traversal_is_refused(client: Client, path: str) -> None:
    status, body = await raw_get(client, path)
    assert status in (403, 404), path
    assert '"version"' not in body and "root:" not in body and "import" not in body


async def test_missing_novnc_is_a_503_page(
    make_gateway: GatewayFactory,
    fake_redis: aioredis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.web.console")
    missing = tmp_path / "no-novnc"
    client = await make_gateway(fake_redis, {"server": {"novnc_dir": str(missing)}})
    assert "noVNC is not installed" in caplog.text
    _, path = await create_console(client)
    response = await client.get(path)
    assert response.status == 503
    assert_page_headers(response)
    assert "noVNC" in await response.text()
    assert (await client.get("/static/novnc/core/rfb.js")).status == 404
    assert (await client.get("/static/console.js")).status == 200


async def test_raw_get_reaches_served_files(client: Client) -> None:
    # The control for the traversal table: the same raw request does fetch a served file.
    status, body = await raw_get(client, "/static/novnc/core/%72fb.js")
    assert status == 200 and "import" in body
