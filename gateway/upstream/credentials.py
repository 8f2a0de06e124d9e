"""Where the gateway's compute API token comes from: a static token, or Keystone."""

from __future__ import annotations

from typing import Protocol

from gateway import errors


class CredentialProvider(Protocol):
    async def token(self) -> str:
        """A token to send as X-Auth-Token."""
        ...

    async def invalidate(self, token: str) -> None:
        """The upstream answered 401 to this token; the next token() should be a fresh one."""
        ...


class StaticToken:
    """A configured service token (upstream.token); nothing to renew."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(***)"

    async def token(self) -> str:
        if not self._token:
            raise errors.UpstreamError("No compute API credentials are configured.")
        return self._token

    async def invalidate(self, token: str) -> None:
        # A refused static token stays refused; the client reports it after its one retry.
        return None
