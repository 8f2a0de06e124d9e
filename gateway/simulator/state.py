"""The simulated cloud's state: servers, issued tokens, and fault knobs for tests."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass
class SimServer:
    project_id: str
    server_id: str
    status: str = "ACTIVE"  # "SHUTOFF" answers 409


@dataclass
class IssuedConsoleToken:
    token: str
    server: SimServer
    expires_at: float


@dataclass
class IssuedKeystoneToken:
    token: str
    project_id: str
    issued_at: float
    expires_at: float


@dataclass
class Faults:
    """Knobs for tests; list entries and counters are consumed one per remote-consoles call."""

    statuses: list[int] = field(default_factory=list)  # answer these statuses with a Nova fault
    delay_s: float = 0.0  # added latency per call
    garbage_body: bool = False  # 200 with a body that is not JSON
    raw_body: bytes | None = None  # 200 with exactly this JSON body (wrong shapes, huge bodies)
    console_host: str | None = None  # issue URLs on this host instead of console_base_url's
    drop_connections: int = 0  # close the TCP connection without answering, this many calls

    def take_status(self) -> int | None:
        return self.statuses.pop(0) if self.statuses else None

    def take_drop(self) -> bool:
        if self.drop_connections <= 0:
            return False
        self.drop_connections -= 1
        return True


@dataclass
class ConsoleProxyState:
    """The simulated console proxy's counters and fault knobs (see simulator/console_proxy.py)."""

    upgrades: int = 0  # WebSocket upgrades answered 101, refused ones included
    refused: int = 0  # closed after the upgrade for a bad token or Origin
    total: int = 0  # RFB sessions started
    live: int = 0  # RFB sessions running now
    refuse_all_tokens: bool = False  # as if every token had expired
    close_after_bytes: int | None = None  # cut each connection after sending this many bytes
    origins: list[str | None] = field(default_factory=list)  # Origin header of each upgrade
    subprotocols: list[str | None] = field(default_factory=list)  # the one chosen, per upgrade


class ComputeSimulator:
    """What a Nova deployment knows: servers, service tokens, Keystone users, console tokens."""

    def __init__(
        self,
        *,
        console_base_url: str,
        service_tokens: Iterable[str] = (),
        keystone_users: Mapping[str, str] | None = None,
        keystone_token_ttl_s: float = 3600,
        console_token_ttl_s: float = 600,
        max_microversion: str = "2.96",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.console_base_url = console_base_url.rstrip("/")
        self.service_tokens = set(service_tokens)
        self.keystone_users = dict(keystone_users or {})  # username -> password
        self.keystone_token_ttl_s = keystone_token_ttl_s
        self.console_token_ttl_s = console_token_ttl_s
        self.max_microversion = max_microversion
        self.clock = clock
        self.servers: dict[str, SimServer] = {}
        self.faults = Faults()
        self.console_proxy = ConsoleProxyState()
        # Told of every console token issued, so an external console proxy (websockify's
        # TokenFile in tests) can be taught it.
        self.token_listeners: list[Callable[[IssuedConsoleToken], None]] = []
        self.console_calls = 0
        self.keystone_calls = 0
        self.console_tokens: dict[str, IssuedConsoleToken] = {}
        self.keystone_tokens: dict[str, IssuedKeystoneToken] = {}

    def add_server(
        self, project_id: str, server_id: str | None = None, status: str = "ACTIVE"
    ) -> SimServer:
        server = SimServer(project_id, server_id or str(uuid.uuid4()), status)
        self.servers[server.server_id] = server
        return server

    def find_server(self, project_id: str, server_id: str) -> SimServer | None:
        """Like nova, a server of another project is simply not found."""
        server = self.servers.get(server_id)
        if server is None or server.project_id != project_id:
            return None
        return server

    def is_authorized(self, token: str | None) -> bool:
        if not token:
            return False
        if token in self.service_tokens:
            return True
        issued = self.keystone_tokens.get(token)
        return issued is not None and issued.expires_at > self.clock()

    def issue_console_url(self, server: SimServer) -> str:
        token = str(uuid.uuid4())
        expires_at = self.clock() + self.console_token_ttl_s
        issued = IssuedConsoleToken(token, server, expires_at)
        self.console_tokens[token] = issued
        for listener in self.token_listeners:
            listener(issued)
        return f"{self._console_base()}/vnc_auto.html?token={token}"

    def check_console_token(self, token: str) -> SimServer | None:
        """The server a console token opens, if the token is known and unexpired."""
        issued = self.console_tokens.get(token)
        if issued is None or issued.expires_at <= self.clock():
            return None
        return issued.server

    def issue_keystone_token(
        self, username: str, password: str, project_id: str
    ) -> IssuedKeystoneToken | None:
        expected = self.keystone_users.get(username)
        if expected is None or not secrets.compare_digest(expected, password):
            return None
        now = self.clock()
        token = "gAAAAA" + secrets.token_urlsafe(48)  # Fernet-like, as keystone issues them
        issued = IssuedKeystoneToken(token, project_id, now, now + self.keystone_token_ttl_s)
        self.keystone_tokens[token] = issued
        return issued

    def revoke_keystone_tokens(self) -> None:
        self.keystone_tokens.clear()

    def _console_base(self) -> str:
        host = self.faults.console_host
        if host is None:
            return self.console_base_url
        parts = urlsplit(self.console_base_url)
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
