"""Console URLs from the upstream: what is accepted, and that refusals never echo the URL."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.upstream.console_url import ConsoleUrl, host_allowed, parse_console_url

HOSTS = ["*.novnc.example.com", "console.example.org", "10.0.0.5", "::1"]
TOKEN = "6f1c2a9e-6f3e-4f8a-9a4b-2b1b2a0c9d11"


@pytest.mark.parametrize(
    ("url", "host", "token"),
    [
        (f"https://a.novnc.example.com:6080/vnc_auto.html?token={TOKEN}", "a.novnc.example.com",
         TOKEN),
        (f"http://console.example.org/vnc_lite.html?path=%3Ftoken%3D{TOKEN}",
         "console.example.org", TOKEN),
        (f"http://console.example.org/vnc_lite.html?path=websockify%3Ftoken%3D{TOKEN}",
         "console.example.org", TOKEN),
        (f"https://x.y.novnc.example.com/vnc_auto.html?token={TOKEN}&lang=EN&tLength=70",
         "x.y.novnc.example.com", TOKEN),
        (f"HTTPS://CONSOLE.Example.ORG/vnc_auto.html?token={TOKEN}", "console.example.org", TOKEN),
        (f"http://10.0.0.5:6080/vnc_auto.html?token={TOKEN}", "10.0.0.5", TOKEN),
        (f"http://[::1]:6080/vnc_auto.html?token={TOKEN}", "::1", TOKEN),
        # SPICE's HTML5 page uses the same token query; the URL check is type-agnostic.
        (f"http://console.example.org:6082/spice_auto.html?token={TOKEN}",
         "console.example.org", TOKEN),
    ],
)
def test_accepted(url: str, host: str, token: str) -> None:
    assert parse_console_url(url, HOSTS) == ConsoleUrl(url=url, host=host, token=token)


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://console.example.org/vnc_auto.html?token={TOKEN}",
        f"javascript:alert(1)//console.example.org?token={TOKEN}",
        f"ws://console.example.org:6083/?token={TOKEN}",  # serial console: not a page
        f"http://user:pw@console.example.org/vnc_auto.html?token={TOKEN}",
        f"http://console.example.org@evil.example.net/vnc_auto.html?token={TOKEN}",
        f"http://evil.example.net/vnc_auto.html?token={TOKEN}",
        f"http://novnc.example.com/vnc_auto.html?token={TOKEN}",  # "*.x" is not "x"
        f"http://evilnovnc.example.com/vnc_auto.html?token={TOKEN}",
        f"http://a.novnc.example.com.evil.net/vnc_auto.html?token={TOKEN}",
        f"http://[::2]:6080/vnc_auto.html?token={TOKEN}",
        f"http://10.0.0.55/vnc_auto.html?token={TOKEN}",
        "http://console.example.org/vnc_auto.html?token=",
        "http://console.example.org/vnc_auto.html",
        "http://console.example.org/vnc_lite.html?path=websockify",
        "http://console.example.org/vnc_auto.html?token=a&token=b",
        "http://console.example.org/vnc_auto.html?token=a%20b",
        f"http://console.example.org\\@evil.example.net/vnc_auto.html?token={TOKEN}",
        f"http://console.example.org/vnc auto.html?token={TOKEN}",
        f"http://console.example.org:99999/vnc_auto.html?token={TOKEN}",
        f"http://console_example.org/vnc_auto.html?token={TOKEN}",
        f"http:///vnc_auto.html?token={TOKEN}",
        f"http://console.example.org/vnc_auto.html?token={TOKEN}&pad=" + "x" * 4096,
        "",
    ],
)
def test_refused_without_echoing_the_url(url: str) -> None:
    with pytest.raises(errors.UpstreamError) as caught:
        parse_console_url(url, HOSTS)
    message = caught.value.message
    assert TOKEN not in message and "example" not in message and "://" not in message


@pytest.mark.parametrize("raw", [None, 42, b"http://console.example.org/?token=t", ["x"]])
def test_non_strings_are_refused(raw: object) -> None:
    with pytest.raises(errors.UpstreamError):
        parse_console_url(raw, HOSTS)


def test_repr_hides_the_token() -> None:
    parsed = parse_console_url(f"http://console.example.org/vnc_auto.html?token={TOKEN}", HOSTS)
    assert TOKEN not in repr(parsed)


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("a.x", ["*.x"], True),
        ("a.b.x", ["*.x"], True),
        ("x", ["*.x"], False),
        ("evilx", ["*.x"], False),
        (".x", ["*.x"], False),
        ("A.X", ["*.x"], True),
        ("a.x", ["*.X"], True),
        ("a.x.", ["*.x"], True),
        ("x", ["x"], True),
        ("xx", ["x"], False),
        ("::1", ["[::1]"], True),
        ("[::1]", ["::1"], True),
        ("a.x", [], False),
        ("", ["*.x", ""], False),
        ("a.x", ["a.x:6080"], False),  # patterns name hosts, never ports
        ("other", ["x", "other"], True),
    ],
)
def test_host_allowed(host: str, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed
