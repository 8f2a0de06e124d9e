"""Plain data shared by the layers: what a console is, what the cache holds."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Nova/ECS project ids are 32 hex digits and server ids UUIDs; allowing no dots or slashes at
# all means no id can climb out of its project after URL normalisation.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONSOLE_TYPES = {"novnc": "vnc"}  # type -> the one protocol it is valid with


@dataclass(frozen=True, slots=True)
class ConsoleTarget:
    """The upstream console a request asks for."""

    project_id: str
    server_id: str
    type: str = "novnc"
    protocol: str = "vnc"


@dataclass(frozen=True, slots=True)
class Expiring:
    """A cached value and the epoch second after which it must not be used."""

    value: str
    valid_until: float


@dataclass(frozen=True, slots=True)
class ConsoleRecord:
    """A gateway console as stored: keyed by the SHA-256 of its id, never by the id."""

    id_hash: str
    owner: str
    project_id: str
    server_id: str
    type: str
    protocol: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None

    @property
    def target(self) -> ConsoleTarget:
        return ConsoleTarget(self.project_id, self.server_id, self.type, self.protocol)
