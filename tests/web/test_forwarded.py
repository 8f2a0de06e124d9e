"""X-Forwarded-For/-Proto: a table for the pure walk, then the middleware on a real server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.test_utils import TestClient, TestServer

from gateway.web.forwarded import (
    CLIENT_ADDRESS,
    client_address,
    client_scheme,
    forwarded_middleware,
    parse_address,
)


def nets(*cidrs: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(cidr) for cidr in cidrs)


LB = nets("10.0.0.0/8", "fd00::/8")
TWO_NETS = nets("192.0.2.10/32", "172.16.0.0/12")

CLIENT_CASES = [
    # (peer, X-Forwarded-For, trusted, expected)
    ("203.0.113.7", None, LB, "203.0.113.7"),
    ("203.0.113.7", "198.51.100.1", LB, "203.0.113.7"),  # untrusted peer: header ignored
    ("203.0.113.7", "10.1.1.1", LB, "203.0.113.7"),
    ("10.0.0.2", None, LB, "10.0.0.2"),  # trusted peer, no header: the peer itself
    ("10.0.0.2", "", LB, "10.0.0.2"),
    ("10.0.0.2", "   ", LB, "10.0.0.2"),
    ("10.0.0.2", "198.51.100.1", LB, "198.51.100.1"),
    ("10.0.0.2", " 198.51.100.1 ", LB, "198.51.100.1"),
    ("10.0.0.2", "198.51.100.1, 10.0.0.9", LB, "198.51.100.1"),  # two trusted hops
    ("10.0.0.2", "198.51.100.1,10.0.0.9,10.3.3.3", LB, "198.51.100.1"),
    # The client wrote the leftmost entries itself; the nearest untrusted hop wins.
    ("10.0.0.2", "1.1.1.1, 198.51.100.1", LB, "198.51.100.1"),
    ("10.0.0.2", "10.9.9.9, 198.51.100.1", LB, "198.51.100.1"),  # spoofed "internal" client
    ("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.9", LB, "198.51.100.1"),
    ("10.0.0.2", "garbage, 198.51.100.1", LB, "198.51.100.1"),
    ("10.0.0.2", "<script>, 198.51.100.1", LB, "198.51.100.1"),
    # Every hop trusted: an internal caller; the furthest one is named.
    ("10.0.0.2", "10.5.5.5, 10.0.0.9", LB, "10.5.5.5"),
    # Garbage where a trusted proxy should have written an address: stop at that proxy.
    ("10.0.0.2", "garbage", LB, "10.0.0.2"),
    ("10.0.0.2", "unknown", LB, "10.0.0.2"),
    ("10.0.0.2", "198.51.100.1, not-an-ip", LB, "10.0.0.2"),
    ("10.0.0.2", "198.51.100.1, garbage, 10.0.0.9", LB, "10.0.0.9"),
    ("10.0.0.2", "198.51.100.1,,10.0.0.9", LB, "10.0.0.9"),  # an empty element
    ("10.0.0.2", "198.51.100.1,", LB, "10.0.0.2"),
    ("10.0.0.2", "300.1.1.1", LB, "10.0.0.2"),
    ("10.0.0.2", "010.1.1.1", LB, "10.0.0.2"),  # leading zeros are ambiguous (octal?)
    ("10.0.0.2", "1.2.3.4:", LB, "10.0.0.2"),
    ("10.0.0.2", "1.2.3.4:http", LB, "10.0.0.2"),
    ("10.0.0.2", "[::1", LB, "10.0.0.2"),
    ("10.0.0.2", "[::1]x", LB, "10.0.0.2"),
    # Ports are dropped; brackets are unwrapped.
    ("10.0.0.2", "198.51.100.1:4711", LB, "198.51.100.1"),
    ("10.0.0.2", "[2001:db8::1]:4711", LB, "2001:db8::1"),
    ("10.0.0.2", "[2001:db8::1]", LB, "2001:db8::1"),
    # IPv6 peers and hops.
    ("fd00::2", "2001:db8::1", LB, "2001:db8::1"),
    ("fd00::2", "2001:db8::1, fd00::9", LB, "2001:db8::1"),
    ("2001:db8::5", "198.51.100.1", LB, "2001:db8::5"),  # untrusted IPv6 peer
    ("fd00::2", "198.51.100.1, fd00::9", LB, "198.51.100.1"),  # mixed families
    ("10.0.0.2", "2001:db8::1, 10.0.0.9", LB, "2001:db8::1"),
    ("10.0.0.2", "2001:DB8:0:0::1", LB, "2001:db8::1"),  # canonical form in logs
    # A dual-stack listener reports IPv4 peers mapped into IPv6.
    ("::ffff:10.0.0.2", "198.51.100.1", LB, "198.51.100.1"),
    ("::ffff:203.0.113.7", "198.51.100.1", LB, "203.0.113.7"),
    ("10.0.0.2", "::ffff:198.51.100.1", LB, "198.51.100.1"),
    # Nothing trusted (the default): headers never count.
    ("10.0.0.2", "198.51.100.1", (), "10.0.0.2"),
    ("127.0.0.1", "198.51.100.1", (), "127.0.0.1"),
    # Single-address networks and several networks.
    ("192.0.2.10", "198.51.100.1", nets("192.0.2.10/32"), "198.51.100.1"),
    ("192.0.2.11", "198.51.100.1", nets("192.0.2.10/32"), "192.0.2.11"),
    ("192.0.2.10", "198.51.100.1, 172.16.0.1", TWO_NETS, "198.51.100.1"),
    # Trusting everything still never believes garbage and names the leftmost address.
    ("10.0.0.2", "198.51.100.1, 10.0.0.9", nets("0.0.0.0/0", "::/0"), "198.51.100.1"),
    # No usable peer (a Unix socket, a closed transport): nothing can be vouched for.
    (None, "198.51.100.1", LB, ""),
    ("", "198.51.100.1", LB, ""),
    ("/run/gateway.sock", "198.51.100.1", LB, "/run/gateway.sock"),
]


@pytest.mark.parametrize(("peer", "forwarded_for", "trusted", "expected"), CLIENT_CASES)
def test_client_address(
    peer: str | None,
    forwarded_for: str | None,
    trusted: tuple[IPv4Network | IPv6Network, ...],
    expected: str,
) -> None:
    assert client_address(peer, forwarded_for, trusted) == expected


SCHEME_CASES = [
    # (peer, X-Forwarded-Proto, expected) with LB trusted and "http" as the connection's scheme
    ("10.0.0.2", None, "http"),
    ("10.0.0.2", "https", "https"),
    ("10.0.0.2", "HTTPS", "https"),
    ("10.0.0.2", " https ", "https"),
    ("10.0.0.2", "wss", "https"),
    ("10.0.0.2", "ws", "http"),
    ("10.0.0.2", "http", "http"),
    ("10.0.0.2", "http, https", "https"),  # the nearest proxy's word is the last one
    ("10.0.0.2", "https, http", "http"),
    ("10.0.0.2", "ftp", "http"),
    ("10.0.0.2", "javascript", "http"),
    ("10.0.0.2", "", "http"),
    ("203.0.113.7", "https", "http"),  # untrusted peer: ignored
    ("::ffff:10.0.0.2", "https", "https"),
    (None, "https", "http"),
]


@pytest.mark.parametrize(("peer", "forwarded_proto", "expected"), SCHEME_CASES)
def test_client_scheme(peer: str | None, forwarded_proto: str | None, expected: str) -> None:
    assert client_scheme(peer, forwarded_proto, LB, default="http") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:65535", "1.2.3.4"),
        ("1.2.3.4:123456", None),
        ("[fe80::1%eth0]:80", "fe80::1%eth0"),
        ("::1", "::1"),
        ("localhost", None),
        ("", None),
        ("1.2.3.4 5.6.7.8", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


# --- the middleware, on a real server whose peer is 127.0.0.1 -------------------------


class RecordingAccessLogger(AbstractAccessLogger):
    """Records what an access logger can see: the original request, never the clone."""

    seen: list[tuple[str | None, str | None]] = []

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.seen.append((request.remote, request.get(CLIENT_ADDRESS)))


async def _whoami(request: web.Request) -> web.Response:
    return web.json_response({"remote": request.remote, "scheme": request.scheme})


async def _ws_whoami(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"remote": request.remote, "scheme": request.scheme})
    await ws.close()
    return ws


Client = TestClient[web.Request, web.Application]


@pytest.fixture
def serve(
    aiohttp_client: Callable[[TestServer], Awaitable[TestClient[Any, Any]]],
) -> Callable[[str], Awaitable[Client]]:
    async def start(cidr: str) -> Client:
        app = web.Application(middlewares=[forwarded_middleware(nets(cidr) if cidr else ())])
        app.router.add_get("/whoami", _whoami)
        app.router.add_get("/ws", _ws_whoami)
        server = TestServer(app)
        await server.start_server(access_log_class=RecordingAccessLogger)
        client: Client = await aiohttp_client(server)
        return client

    return start


FORWARDED = {"X-Forwarded-For": "1.1.1.1, 198.51.100.1", "X-Forwarded-Proto": "https"}


async def test_trusted_peer_makes_remote_and_scheme_the_clients(
    serve: Callable[[str], Awaitable[Client]],
) -> None:
    client = await serve("127.0.0.0/8")
    RecordingAccessLogger.seen.clear()
    response = await client.get("/whoami", headers=FORWARDED)
    assert await response.json() == {"remote": "198.51.100.1", "scheme": "https"}
    # The access logger gets aiohttp's own request; the key carries the client to it.
    assert RecordingAccessLogger.seen == [("127.0.0.1", "198.51.100.1")]


async def test_repeated_header_lines_are_one_list(
    serve: Callable[[str], Awaitable[Client]],
) -> None:
    client = await serve("127.0.0.0/8")
    headers = [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "127.0.0.5")]
    response = await client.get("/whoami", headers=headers)
    assert (await response.json())["remote"] == "198.51.100.1"


async def test_untrusted_peer_keeps_its_own_address(
    serve: Callable[[str], Awaitable[Client]],
) -> None:
    client = await serve("10.0.0.0/8")
    response = await client.get("/whoami", headers=FORWARDED)
    assert await response.json() == {"remote": "127.0.0.1", "scheme": "http"}


async def test_no_trusted_proxies_leaves_the_request_alone(
    serve: Callable[[str], Awaitable[Client]],
) -> None:
    client = await serve("")
    RecordingAccessLogger.seen.clear()
    response = await client.get("/whoami", headers=FORWARDED)
    assert await response.json() == {"remote": "127.0.0.1", "scheme": "http"}
    assert RecordingAccessLogger.seen == [("127.0.0.1", None)]


async def test_websocket_upgrade_works_on_the_cloned_request(
    serve: Callable[[str], Awaitable[Client]],
) -> None:
    client = await serve("127.0.0.0/8")
    async with client.ws_connect("/ws", headers=FORWARDED) as ws:
        assert await ws.receive_json(timeout=5) == {"remote": "198.51.100.1", "scheme": "https"}
