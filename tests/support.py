"""Helpers shared by tests: constants, config builders, ports, token minting."""

from __future__ import annotations

import copy
import socket
import time
from typing import Any

HS_SECRET = "test-secret-that-is-long-enough-for-hs256!"

BASE_CONFIG: dict[str, Any] = {
    "server": {
        "public_base_url": "https://gw.example.com",
        "allowed_origins": ["https://portal.example.com"],
    },
    "auth": {
        "issuer": "https://portal.example.com",
        "audience": "console-gateway",
        "algorithms": ["HS256"],
        "hs256_secret": HS_SECRET,
    },
    # Bursts in tests are not abuse; the rate-limit tests lower this themselves.
    "limits": {"create_per_window": 100000},
    "upstream": {
        "compute_url": "http://127.0.0.1:1",
        "token": "upstream-service-token-SECRET",
        "console_hosts": ["127.0.0.1"],
        "timeout_s": 5,
        "retry_backoff_s": 0.01,
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


UPSTREAM_TOKEN = "upstream-service-token-SECRET"
PROJECT = "13c67a214ced4afb88d911ae4bd5721a"
OTHER_PROJECT = "ffffa214ced4afb88d911ae4bd57ffff"
SERVER = "47bc79ae-df61-4ade-9197-283a74e5d70e"
STOPPED_SERVER = "0000c79a-df61-4ade-9197-283a74e5d70e"
MISSING_SERVER = "deadbeef-df61-4ade-9197-283a74e5d70e"


# Every token mint_jwt produced in the running test; the leak scanner empties it per test.
MINTED_JWTS: list[str] = []


def mint_jwt(secret: str = HS_SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    """A token the BASE_CONFIG gateway accepts, unless overrides spoil it (None removes a claim)."""
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://portal.example.com",
        "aud": "console-gateway",
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "projects": [PROJECT],
        "roles": [],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    token = jwt.encode(claims, secret, algorithm=algorithm)
    MINTED_JWTS.append(token)  # the leak scanner (tests/leaks.py) looks for each in outputs
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def redis_keys(redis: Any, pattern: str = "*") -> list[str]:
    """Key names as text (redis-py types them bytes | str)."""
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in await redis.keys(pattern))


class FakeClock:
    """A clock (epoch or monotonic seconds) that tests move by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
