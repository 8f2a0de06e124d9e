"""Liveness and readiness state of one instance."""

from __future__ import annotations

from dataclasses import dataclass

from gateway import errors
from gateway.store.redis_store import Store


@dataclass
class Health:
    store: Store
    draining: bool = False

    def start_draining(self) -> None:
        """Turn unready for good: the load balancer stops sending new work here."""
        self.draining = True

    def ensure_accepting(self) -> None:
        """Refuse new long-lived work (WebSockets) once draining, before any upgrade."""
        if self.draining:
            raise errors.Draining()

    async def readiness_problem(self) -> str | None:
        """Why this instance should not get traffic now, or None when it should."""
        if self.draining:
            return "draining"
        try:
            await self.store.ping()
        except errors.StoreUnavailable:
            return "store_unavailable"
        return None
