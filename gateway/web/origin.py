"""Which browser origins may open console WebSockets (pure)."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.config import ServerSettings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """scheme://host[:port] in lower case with default ports dropped; None if not an origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def allowed_origins(settings: ServerSettings) -> frozenset[str]:
    """The configured portal origins plus the gateway's own, which serves the console page."""
    candidates = [*settings.allowed_origins, settings.public_base_url]
    return frozenset(o for o in map(normalize_origin, candidates) if o is not None)


def origin_allowed(header: str | None, allowed: frozenset[str], *, allow_missing: bool) -> bool:
    if header is None:
        return allow_missing
    normalized = normalize_origin(header)
    return normalized is not None and normalized in allowed
