"""The error hierarchy: stable codes, RFC 6750 challenges, rebuilding shared errors."""

from __future__ import annotations

import pytest

from gateway import errors


def all_error_classes() -> list[type[errors.GatewayError]]:
    found: list[type[errors.GatewayError]] = []
    pending = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_codes_are_unique_snake_case() -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))
    assert all(code.replace("_", "").isalpha() and code.islower() for code in codes)


@pytest.mark.parametrize(
    "cls",
    [c for c in all_error_classes() if c not in (errors.Unauthenticated, errors.RateLimited)],
)
def test_error_from_code_rebuilds_the_same_class(cls: type[errors.GatewayError]) -> None:
    rebuilt = errors.error_from_code(cls.code, "same message")
    assert type(rebuilt) is cls
    assert rebuilt.message == "same message"


def test_unknown_code_becomes_upstream_error() -> None:
    assert isinstance(errors.error_from_code("no_such_code", "m"), errors.UpstreamError)


def test_bearer_challenges_follow_rfc6750() -> None:
    assert errors.Unauthenticated(missing=True).headers["WWW-Authenticate"] == (
        'Bearer realm="console-gateway"'
    )
    assert errors.Unauthenticated().headers["WWW-Authenticate"] == (
        'Bearer realm="console-gateway", error="invalid_token"'
    )


def test_rate_limited_carries_retry_after() -> None:
    assert errors.RateLimited(retry_after_s=0).headers["Retry-After"] == "1"
    assert errors.RateLimited(retry_after_s=7).status == 429
