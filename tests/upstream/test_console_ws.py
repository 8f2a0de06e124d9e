"""The upstream WebSocket: URLs derived from console pages, and connecting to real backends."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import errors
from gateway.upstream.console_ws import (
    UpstreamRefused,
    UpstreamTarget,
    connect_upstream,
    first_message,
    upstream_websocket,
)
from tests.support import free_port
from tests.ws_backends import RFB_GREETING, Backend

ServerFactory = Callable[..., Awaitable[TestServer]]
HOSTS = ["h.example.com", "*.novnc.example.com", "127.0.0.1", "::1"]
T = "6f1c2a9e-6f3e-4f8a-9a4b-2b1b2a0c9d11"
H = "h.example.com"


@pytest.mark.parametrize(
    ("console_url", "default_path", "ws_url", "origin"),
    [
        # nova: vnc_auto.html (older), vnc_lite.html, vnc.html, all with ?token=
        (f"https://{H}:6080/vnc_auto.html?token={T}", "websockify",
         f"wss://{H}:6080/websockify?token={T}", f"https://{H}:6080"),
        (f"https://{H}:6080/vnc_lite.html?token={T}", "websockify",
         f"wss://{H}:6080/websockify?token={T}", f"https://{H}:6080"),
        (f"http://{H}:6080/vnc.html?token={T}", "websockify",
         f"ws://{H}:6080/websockify?token={T}", f"http://{H}:6080"),
        # noVNC's path parameter is the WebSocket path and query, from the host root
        (f"http://{H}:6080/vnc_lite.html?path=%3Ftoken%3D{T}", "websockify",
         f"ws://{H}:6080/websockify?token={T}", f"http://{H}:6080"),
        (f"https://{H}/vnc_lite.html?path=websockify%3Ftoken%3D{T}", "other",
         f"wss://{H}/websockify?token={T}", f"https://{H}"),
        (f"https://{H}/vnc_lite.html?path=%2Fnovnc%2Fws%3Ftoken%3D{T}%26x%3D1", "websockify",
         f"wss://{H}/novnc/ws?token={T}", f"https://{H}"),
        # Huawei: UI parameters dropped, only the token kept
        (f"https://a.novnc.example.com/vnc_auto.html?token={T}&lang=EN&tLength=70", "websockify",
         f"wss://a.novnc.example.com/websockify?token={T}", "https://a.novnc.example.com"),
        # noVNC's host/port parameters are not followed
        (f"https://{H}/vnc_auto.html?token={T}&host=evil.example.net&port=1", "websockify",
         f"wss://{H}/websockify?token={T}", f"https://{H}"),
        # the page's own directory does not matter; the configured path does
        (f"https://{H}/console/vnc_auto.html?token={T}", "proxy/ws",
         f"wss://{H}/proxy/ws?token={T}", f"https://{H}"),
        (f"https://{H}/vnc_auto.html?token={T}", "", f"wss://{H}/?token={T}", f"https://{H}"),
        (f"HTTPS://H.Example.COM/vnc_auto.html?token={T}", "websockify",
         f"wss://{H}/websockify?token={T}", f"https://{H}"),
        (f"http://[::1]:6080/vnc_auto.html?token={T}", "websockify",
         f"ws://[::1]:6080/websockify?token={T}", "http://[::1]:6080"),
        # a '+' in a token stays escaped: form decoding would read it as a space
        (f"https://{H}/vnc_auto.html?token=ab%2Bcd", "websockify",
         f"wss://{H}/websockify?token=ab%2Bcd", f"https://{H}"),
    ],
)  # fmt: skip
def test_websocket_url(console_url: str, default_path: str, ws_url: str, origin: str) -> None:
    target = upstream_websocket(console_url, default_path, HOSTS)
    assert (target.url, target.origin) == (ws_url, origin)
    assert target.host == urlsplit(origin).hostname


@pytest.mark.parametrize(
    "console_url",
    [
        f"https://{H}/vnc_lite.html?path=%2F%2Fevil.example.net%2Fws%3Ftoken%3D{T}",
        f"https://{H}/vnc_lite.html?path=https%3A%2F%2Fevil.example.net%2F%3Ftoken%3D{T}",
        f"https://{H}/vnc_lite.html?path=..%2Fws%3Ftoken%3D{T}",
        f"https://{H}/vnc_lite.html?path=a%20b%3Ftoken%3D{T}",
        f"https://{H}/vnc_lite.html?path=a%2525b%3Ftoken%3D{T}",
        f"https://{H}/vnc_auto.html?token={T}&path=a&path=b",
        f"https://evil.example.net/vnc_auto.html?token={T}",
        f"ftp://{H}/vnc_auto.html?token={T}",
        f"https://{H}/vnc_auto.html",
    ],
)
def test_unusable_urls_are_refused_without_echoing_them(console_url: str) -> None:
    with pytest.raises(errors.UpstreamError) as caught:
        upstream_websocket(console_url, "websockify", HOSTS)
    assert T not in str(caught.value) and "evil" not in str(caught.value)


def test_repr_hides_the_url() -> None:
    target = upstream_websocket(f"https://{H}/vnc_auto.html?token={T}", "websockify", HOSTS)
    assert T not in repr(target) and H in repr(target)


# ---- connecting ---------------------------------------------------------------------------


@pytest.fixture
async def backend(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[Backend, int]]:
    backend = Backend()
    server = await aiohttp_server(backend.app())
    assert server.port is not None
    yield backend, server.port
    backend.release.set()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def target(port: int, path: str, scheme: str = "http", token: str = T) -> UpstreamTarget:
    return upstream_websocket(
        f"{scheme}://127.0.0.1:{port}/vnc_auto.html?token={token}", path, ["127.0.0.1"]
    )


async def connect(
    session: aiohttp.ClientSession, target: UpstreamTarget, timeout_s: float = 5
) -> aiohttp.ClientWebSocketResponse:
    return await connect_upstream(
        session,
        target,
        protocols=("binary",),
        timeout_s=timeout_s,
        heartbeat_s=20,
        max_msg_size=1024 * 1024,
    )


async def test_connect_sends_origin_subprotocol_and_token(
    backend: tuple[Backend, int], session: aiohttp.ClientSession
) -> None:
    recorder, port = backend
    ws = await connect(session, target(port, "greet", token="ab%2Bcd"))
    assert ws.protocol == "binary"
    assert await first_message(ws, 5) == RFB_GREETING
    headers = recorder.headers[0]
    # nova-novncproxy: the Origin's host must be the Host header's, and its scheme the page's.
    assert headers["Origin"] == f"http://127.0.0.1:{port}"
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["Sec-WebSocket-Protocol"] == "binary"
    assert recorder.queries == [{"token": "ab+cd"}]
    await ws.close()


async def test_handshake_refused_is_upstream_refused(
    backend: tuple[Backend, int], session: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await connect(session, target(backend[1], "refuse"))
    assert T not in str(caught.value) and "127.0.0.1" not in str(caught.value)
    assert backend[0].queries == [{"token": T}]


async def test_nothing_listening_is_upstream_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamRefused):
        await connect(session, target(free_port(), "echo"))


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_close_right_after_101_is_no_first_message(
    backend: tuple[Backend, int], session: aiohttp.ClientSession, how: str
) -> None:
    # The query is the backend's; the target URL built from it keeps only the token.
    ws = await connect_upstream(
        session,
        UpstreamTarget(
            url=f"ws://127.0.0.1:{backend[1]}/drop?how={how}&token={T}",
            origin=f"http://127.0.0.1:{backend[1]}",
            host="127.0.0.1",
        ),
        protocols=("binary",),
        timeout_s=5,
        heartbeat_s=20,
        max_msg_size=1024,
    )
    assert await first_message(ws, 5) is None
    assert ws.closed


async def test_unanswered_handshake_is_upstream_timeout(
    backend: tuple[Backend, int], session: aiohttp.ClientSession
) -> None:
    with pytest.raises(errors.UpstreamTimeout):
        await connect(session, target(backend[1], "hang"), timeout_s=0.3)


async def test_silent_upstream_is_upstream_timeout(
    backend: tuple[Backend, int], session: aiohttp.ClientSession
) -> None:
    ws = await connect(session, target(backend[1], "sink"))
    with pytest.raises(errors.UpstreamTimeout):
        await first_message(ws, 0.3)
    assert ws.closed


async def test_text_first_is_an_upstream_error(
    backend: tuple[Backend, int], session: aiohttp.ClientSession
) -> None:
    ws = await connect(session, target(backend[1], "text"))
    with pytest.raises(errors.UpstreamError) as caught:
        await first_message(ws, 5)
    assert not isinstance(caught.value, UpstreamRefused)
    assert ws.closed


# ---- TLS ----------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the certificate file that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


async def test_wss_is_verified_by_the_session(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    server_context, cert_file = self_signed(tmp_path)
    recorder = Backend()
    server = await aiohttp_server(recorder.app(), ssl=server_context)
    assert server.port is not None
    wss = target(server.port, "greet", scheme="https")
    assert wss.url.startswith("wss://")
    async with aiohttp.ClientSession() as untrusting:
        with pytest.raises(errors.UpstreamError) as caught:
            await connect(untrusting, wss)
        # A fresh URL names the same certificate: not worth the retry a refusal gets.
        assert not isinstance(caught.value, UpstreamRefused)
    trust = ssl.create_default_context(cafile=str(cert_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as trusting:
        ws = await connect(trusting, wss)
        assert await first_message(ws, 5) == RFB_GREETING
        assert recorder.headers[0]["Origin"] == f"https://127.0.0.1:{server.port}"
        await ws.close()
