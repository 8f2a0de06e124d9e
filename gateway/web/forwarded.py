"""X-Forwarded-For/-Proto, believed only from server.trusted_proxies: the real client everywhere."""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

# Re-exported: aiohttp hands its access logger the request it created, never a middleware's
# clone (aio-libs/aiohttp#4580), so the real client is also recorded on that original.
from gateway.keys import CLIENT_ADDRESS as CLIENT_ADDRESS

Networks = Sequence[IPv4Network | IPv6Network]
Address = IPv4Address | IPv6Address

_PORT = re.compile(r":[0-9]{1,5}")
# WebSocket schemes a proxy may report map to the HTTP scheme of their handshake.
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def parse_address(text: str) -> Address | None:
    """One X-Forwarded-For element (1.2.3.4, 1.2.3.4:80, ::1, [::1], [::1]:80) or None."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not _PORT.fullmatch(port)):
            return None
        text = host
    elif text.count(":") == 1:  # only an IPv4 address with a port has exactly one colon
        host, _, port = text.partition(":")
        if not _PORT.fullmatch(":" + port):
            return None
        text = host
    try:
        address = ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; operators list them as IPv4.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address | None, trusted: Networks) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str:
    """The first address, walking from the peer leftwards, that no trusted proxy vouches for.

    Each proxy appends the address it received the request from, so only the entries to
    the right of the first untrusted hop were written by our proxies; anything further
    left is whatever the client chose to send.
    """
    current = parse_address(peer or "")
    if current is None:
        return peer or ""  # a Unix socket or no transport: nothing to check it against
    if not forwarded_for or not is_trusted(current, trusted):
        return str(current)
    for element in reversed(forwarded_for.split(",")):
        hop = parse_address(element)
        if hop is None:
            # A trusted proxy passed on something that is no address; the hop that
            # passed it on is the furthest we can vouch for.
            return str(current)
        current = hop
        if not is_trusted(hop, trusted):
            return str(hop)
    # Every hop is one of ours: the caller is itself internal; name the furthest one.
    return str(current)


def client_scheme(
    peer: str | None, forwarded_proto: str | None, trusted: Networks, default: str
) -> str:
    """The scheme the client used, as the nearest trusted proxy reports it."""
    if forwarded_proto is None or not is_trusted(parse_address(peer or ""), trusted):
        return default
    # Proxies that append rather than overwrite list several; only the last one was
    # written by the proxy we trust, the others by whoever came before it.
    value = forwarded_proto.rsplit(",", 1)[-1].strip().lower()
    return _SCHEMES.get(value, default)


def _joined(request: web.Request, name: str) -> str | None:
    # RFC 9110 section 5.3: repeated header lines are one comma-separated list, in order.
    values = request.headers.getall(name, [])
    return ", ".join(values) if values else None


def forwarded_middleware(trusted: Networks) -> Middleware:
    """Make request.remote and request.scheme the client's when a trusted proxy says so."""
    networks = tuple(trusted)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not networks:
            return await handler(request)
        peer = request.remote
        remote = client_address(peer, _joined(request, "X-Forwarded-For"), networks)
        scheme = client_scheme(
            peer, _joined(request, "X-Forwarded-Proto"), networks, default=request.scheme
        )
        request[CLIENT_ADDRESS] = remote
        if remote == peer and scheme == request.scheme:
            return await handler(request)
        return await handler(request.clone(remote=remote, scheme=scheme))

    return middleware
