"""The static service token."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.upstream.credentials import CredentialProvider, StaticToken


async def test_static_token_survives_invalidation() -> None:
    provider: CredentialProvider = StaticToken("service-token-SECRET")
    assert await provider.token() == "service-token-SECRET"
    await provider.invalidate("service-token-SECRET")
    assert await provider.token() == "service-token-SECRET"
    assert "SECRET" not in repr(provider)


async def test_empty_static_token_is_an_upstream_error() -> None:
    with pytest.raises(errors.UpstreamError):
        await StaticToken("").token()
