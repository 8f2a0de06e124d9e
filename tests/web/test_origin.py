"""The Origin allow-list for console WebSockets, as a table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.config import Settings
from gateway.web.origin import allowed_origins, normalize_origin, origin_allowed


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://Portal.Example.com", "https://portal.example.com"),
        ("https://portal.example.com:443", "https://portal.example.com"),
        ("http://portal.example.com:80/", "http://portal.example.com"),
        ("https://portal.example.com:8443", "https://portal.example.com:8443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("null", None),
        ("file://", None),
        ("javascript:alert(1)", None),
        ("https://portal.example.com/path", None),
        ("https://user@portal.example.com", None),
        ("https://portal.example.com:99999", None),
        ("", None),
    ],
)
def test_normalize_origin(value: str, expected: str | None) -> None:
    assert normalize_origin(value) == expected


def test_allowed_includes_the_gateway_itself(make_settings: Callable[..., Settings]) -> None:
    allowed = allowed_origins(make_settings().server)
    assert allowed == {"https://portal.example.com", "https://gw.example.com"}


@pytest.mark.parametrize(
    ("header", "allow_missing", "ok"),
    [
        ("https://portal.example.com", False, True),
        ("https://PORTAL.example.com:443", False, True),
        ("https://gw.example.com", False, True),
        ("http://portal.example.com", False, False),  # scheme differs
        ("https://portal.example.com.evil.net", False, False),
        ("https://evil.net", False, False),
        ("null", False, False),
        (None, False, False),
        (None, True, True),
        ("https://evil.net", True, False),
    ],
)
def test_origin_allowed(
    make_settings: Callable[..., Settings], header: str | None, allow_missing: bool, ok: bool
) -> None:
    allowed = allowed_origins(make_settings().server)
    assert origin_allowed(header, allowed, allow_missing=allow_missing) is ok
