"""Checks a console URL the upstream returned before anything connects to it (pure)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from gateway import errors

MAX_URL_CHARS = 4096
# Printable ASCII without space or backslash: URL parsers disagree on '\' and on whitespace,
# and whatever parses here must be what the relay later connects to.
_URL_CHARS = re.compile(r"[!-\[\]-~]+")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=:-]{1,1024}")


@dataclass(frozen=True, slots=True)
class ConsoleUrl:
    url: str
    host: str  # lower-case hostname, without port or IPv6 brackets
    token: str

    def __repr__(self) -> str:
        # The URL carries the upstream token; a repr may end up in a log line.
        return f"ConsoleUrl(host={self.host!r})"


def _refuse(reason: str) -> errors.UpstreamError:
    # Never the URL or the token: the message goes to users and logs.
    return errors.UpstreamError(f"The compute API returned an unusable console URL ({reason}).")


def normalize_host(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Exact host, or '*.suffix' for any name below suffix (never suffix itself)."""
    name = normalize_host(host)
    if not name:
        return False
    for raw in patterns:
        pattern = normalize_host(raw)
        if pattern.startswith("*."):
            suffix = pattern[1:]
            if len(name) > len(suffix) and name.endswith(suffix):
                return True
        elif pattern and name == pattern:
            return True
    return False


def _valid_hostname(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _single(query: str, name: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _refuse(f"more than one {name} parameter")
    return values[0]


def extract_token(query: str) -> str:
    """`token=` in the query, or inside websockify's `path=` parameter (vnc_lite.html)."""
    token = _single(query, "token")
    if token is None:
        path = _single(query, "path")
        if path is not None:
            token = _single(urlsplit(path).query, "token")
    if not token:
        raise _refuse("no token")
    if not _TOKEN_CHARS.fullmatch(token):
        raise _refuse("malformed token")
    return token


def parse_console_url(raw: object, allowed_hosts: Sequence[str]) -> ConsoleUrl:
    """The URL, host and token of an http(s) URL on an allowed host; else UpstreamError."""
    if not isinstance(raw, str) or not raw:
        raise _refuse("not a string")
    if len(raw) > MAX_URL_CHARS:
        raise _refuse("too long")
    if not _URL_CHARS.fullmatch(raw):
        raise _refuse("forbidden characters")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _refuse("unparsable") from None
    if parts.scheme not in ("http", "https"):
        raise _refuse("scheme must be http or https")
    if "@" in parts.netloc:
        raise _refuse("credentials in the URL")
    host = normalize_host(parts.hostname or "")
    if not host or not _valid_hostname(host):
        raise _refuse("bad host")
    if not host_allowed(host, allowed_hosts):
        raise _refuse("host not in upstream.console_hosts")
    return ConsoleUrl(url=raw, host=host, token=extract_token(parts.query))
