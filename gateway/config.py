"""Typed, validated settings: YAML file plus CGW_<SECTION>_<KEY> environment overrides."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

ENV_PREFIX = "CGW_"  # environment overrides: CGW_<SECTION>_<KEY>
# The upstream console URL is valid for 10 minutes (seed document); nothing may be cached longer.
UPSTREAM_URL_VALIDITY_S = 600

JwtAlgorithm = Literal[
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]


class ConfigError(Exception):
    """A configuration problem, phrased as one line that names the key."""


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    return value.rstrip("/")


HttpUrlStr = Annotated[str, AfterValidator(_http_url)]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - a service behind a load balancer listens on all interfaces
    port: int = Field(8080, ge=1, le=65535)
    public_base_url: HttpUrlStr = "http://127.0.0.1:8080"
    trusted_proxies: tuple[IpNetwork, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = Field(16 * 1024, ge=256, le=1024 * 1024)
    max_json_depth: int = Field(8, ge=2, le=64)
    # A connection without a complete request (headers never finished, or idle between
    # keep-alive requests) is closed after this; above the load balancer's idle timeout (60 s).
    keepalive_timeout_s: float = Field(75, gt=0, le=3600)
    # bench/api.py: console creation serves ~15-20 % more requests per second on uvloop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Names this process in logs, metrics and the live-connection registry; empty = host:pid.
    instance_id: str = Field("", pattern=r"^[A-Za-z0-9._:-]{0,64}$")
    # The noVNC client (npm @novnc/novnc) served with the console page; empty = the copy
    # that scripts/bootstrap installs under the project's node_modules.
    novnc_dir: Path | None = None

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
                raise ValueError(f"{origin!r} is not an origin like https://portal.example.com")
        return value


class AuthSettings(_Section):
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    algorithms: tuple[JwtAlgorithm, ...] = ("RS256",)
    jwks_url: HttpUrlStr | None = None
    public_key_file: Path | None = None
    hs256_secret: SecretStr | None = None
    leeway_s: int = Field(30, ge=0, le=300)
    projects_claim: str = "projects"
    roles_claim: str = "roles"
    admin_role: str = "console-admin"
    jwks_cache_ttl_s: int = Field(300, ge=10, le=86400)
    jwks_refetch_cooldown_s: int = Field(30, ge=1, le=3600)
    max_token_bytes: int = Field(8192, ge=512, le=65536)

    @model_validator(mode="after")
    def _one_consistent_key_source(self) -> AuthSettings:
        sources = [self.jwks_url, self.public_key_file, self.hs256_secret]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "exactly one key source is required: jwks_url, public_key_file or hs256_secret"
            )
        if not self.algorithms:
            raise ValueError("algorithms must list at least one algorithm")
        symmetric = {a.startswith("HS") for a in self.algorithms}
        # Mixing HMAC and public-key algorithms is what makes key-confusion attacks possible.
        if len(symmetric) > 1:
            raise ValueError("algorithms must not mix HS* with public-key algorithms")
        if (self.hs256_secret is not None) != (True in symmetric):
            raise ValueError("hs256_secret needs HS* algorithms; public keys need RS/PS/ES/EdDSA")
        if self.hs256_secret is not None and len(self.hs256_secret.get_secret_value()) < 32:
            raise ValueError("hs256_secret must be at least 32 characters")
        return self


class KeystoneSettings(_Section):
    auth_url: HttpUrlStr
    username: str = Field(min_length=1)
    password: SecretStr
    user_domain_name: str = "Default"
    project_id: str = Field(min_length=1)
    renew_before_s: int = Field(300, ge=10, le=3600)


class UpstreamSettings(_Section):
    compute_url: HttpUrlStr
    microversion: str = "2.6"
    token: SecretStr = SecretStr("")
    keystone: KeystoneSettings | None = None
    timeout_s: float = Field(10, gt=0, le=120)
    connect_timeout_s: float = Field(3, gt=0, le=60)
    retries: int = Field(2, ge=0, le=5)
    retry_backoff_s: float = Field(0.2, ge=0, le=10)
    console_hosts: tuple[str, ...] = Field(min_length=1)
    ca_file: Path | None = None
    max_connections: int = Field(0, ge=0)  # 0 = unlimited: aiohttp's default of 100 stalls at scale
    max_response_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)

    @field_validator("microversion")
    @classmethod
    def _at_least_2_6(cls, value: str) -> str:
        match = re.fullmatch(r"2\.(\d+)", value)
        if not match or int(match.group(1)) < 6:
            raise ValueError("must be a compute microversion 2.6 or later, like '2.6'")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> UpstreamSettings:
        has_token = bool(self.token.get_secret_value())
        if has_token == (self.keystone is not None):
            raise ValueError("set exactly one of token (CGW_UPSTREAM_TOKEN) or keystone")
        return self


class RedisSettings(_Section):
    url: str = ""  # empty = embedded in-process store, single instance only
    key_prefix: str = Field("cgw:", pattern=r"^[A-Za-z0-9:_.-]{0,32}$")
    socket_timeout_s: float = Field(2, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        allowed = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
        if value and urlsplit(value).scheme not in allowed:
            raise ValueError(f"must be empty (embedded) or a URL with scheme in {allowed}")
        return value


class CacheSettings(_Section):
    console_url_ttl_s: int = Field(540, gt=0, lt=UPSTREAM_URL_VALIDITY_S)
    # A cached URL with less validity left than this is refreshed, not served.
    min_remaining_s: int = Field(120, ge=0, lt=UPSTREAM_URL_VALIDITY_S)
    lock_ttl_s: float = Field(15, gt=0, le=120)
    lock_wait_s: float = Field(12, gt=0, le=120)
    error_ttl_s: float = Field(2, ge=0, le=30)


class SessionSettings(_Section):
    ttl_s: int = Field(900, ge=10, le=86400)
    max_lifetime_s: int = Field(28800, ge=60, le=7 * 86400)
    tombstone_s: int = Field(3600, ge=0, le=86400)

    @model_validator(mode="after")
    def _ttl_within_lifetime(self) -> SessionSettings:
        if self.ttl_s > self.max_lifetime_s:
            raise ValueError("ttl_s must not exceed max_lifetime_s")
        return self


class RelaySettings(_Section):
    # Load balancers cut idle connections at 60 s by default and neither noVNC, websockify
    # nor nova sends pings, so the gateway pings both legs well inside that.
    heartbeat_s: float = Field(20, gt=0, le=300)
    idle_timeout_s: float = Field(900, gt=0, le=86400)  # no data either way for this long
    max_duration_s: float = Field(28800, gt=0, le=7 * 86400)  # one WebSocket's longest life
    connect_timeout_s: float = Field(10, gt=0, le=120)  # upstream handshake + first RFB byte
    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Fetch a fresh upstream URL for every WebSocket, for clouds whose tokens are one-time
    # (Huawei) or cut at expiry (nova's enforce_session_timeout).
    fresh_url_per_connect: bool = False
    # The upstream WebSocket path when the console URL does not name one (noVNC's default).
    upstream_path: str = Field("websockify", pattern=r"^[A-Za-z0-9._~/-]{0,128}$")
    # Non-browser clients send no Origin; allow them only when the operator says so.
    allow_missing_origin: bool = False


class LimitSettings(_Section):
    # Console creations per subject per window, counted in Redis so all instances share it.
    create_per_window: int = Field(30, ge=1, le=100000)
    create_window_s: int = Field(60, ge=1, le=3600)
    ws_per_console: int = Field(4, ge=1, le=1000)  # live WebSockets on one console link
    ws_per_subject: int = Field(20, ge=1, le=100000)  # live WebSockets of one user, all instances
    ws_per_instance: int = Field(10000, ge=1, le=1000000)


class DrainSettings(_Section):
    # On SIGTERM: unready at once, refuse new WebSockets, close live ones with 1001 after
    # grace_s (so the load balancer has noticed), exit when empty or at deadline_s.
    grace_s: float = Field(5, ge=0, le=3600)
    deadline_s: float = Field(30, gt=0, le=3600)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    auth: AuthSettings
    upstream: UpstreamSettings
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    sessions: SessionSettings = SessionSettings()
    relay: RelaySettings = RelaySettings()
    limits: LimitSettings = LimitSettings()
    drain: DrainSettings = DrainSettings()
    logging: LoggingSettings = LoggingSettings()
