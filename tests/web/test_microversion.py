"""Nova's microversion rules, as a table."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.web.microversion import MAX_VERSION, Version, negotiate, version_headers


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Version(2, 1)),
        ({"X-OpenStack-Nova-API-Version": "2.6"}, Version(2, 6)),
        ({"OpenStack-API-Version": "compute 2.6"}, Version(2, 6)),
        ({"OpenStack-API-Version": "volume 3.0, compute 2.10"}, Version(2, 10)),
        (
            {"OpenStack-API-Version": "compute 2.8", "X-OpenStack-Nova-API-Version": "2.6"},
            Version(2, 8),
        ),
        (
            {"OpenStack-API-Version": "volume 3.0", "X-OpenStack-Nova-API-Version": "2.7"},
            Version(2, 7),
        ),
        ({"OpenStack-API-Version": "compute latest"}, MAX_VERSION),
        ({"X-OpenStack-Nova-API-Version": "latest"}, MAX_VERSION),
    ],
)
def test_negotiated_version(headers: dict[str, str], expected: Version) -> None:
    assert negotiate(headers) == expected


@pytest.mark.parametrize("value", ["2.x", "2", "2.06", "v2.6", "2.6.1", ""])
def test_malformed_version_is_400(value: str) -> None:
    with pytest.raises(errors.BadRequest):
        negotiate({"OpenStack-API-Version": f"compute {value}"})


@pytest.mark.parametrize("value", ["3.0", "2.999", "1.9", "2.0"])
def test_unsupported_version_is_406(value: str) -> None:
    with pytest.raises(errors.NotAcceptable):
        negotiate({"X-OpenStack-Nova-API-Version": value})


def test_version_headers_name_both_forms() -> None:
    headers = version_headers(Version(2, 6))
    assert headers["OpenStack-API-Version"] == "compute 2.6"
    assert headers["X-OpenStack-Nova-API-Version"] == "2.6"
