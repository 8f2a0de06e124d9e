"""Rendering errors: the native shape on /v1, Nova's fault shape on the Nova routes."""

from __future__ import annotations

import json

import pytest

from gateway import errors
from gateway.web.errors import is_nova_path, render


@pytest.mark.parametrize(
    ("path", "nova"),
    [
        ("/", True),
        ("/v2.1", True),
        ("/v2.1/p/servers/s/remote-consoles", True),
        ("/v1/consoles", False),
        ("/v2.10/x", False),
        ("/healthz", False),
    ],
)
def test_is_nova_path(path: str, nova: bool) -> None:
    assert is_nova_path(path) is nova


def body_of(response: object) -> dict[str, object]:
    data = json.loads(response.body)  # type: ignore[attr-defined]
    assert isinstance(data, dict)
    return data


def test_native_shape() -> None:
    response = render(errors.Conflict("busy"), nova=False, request_id="r1")
    assert response.status == 409
    assert body_of(response) == {
        "error": {"code": "conflict", "message": "busy", "request_id": "r1"}
    }
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (errors.BadRequest(), "badRequest"),
        (errors.Unauthenticated(), "unauthorized"),
        (errors.Forbidden(), "forbidden"),
        (errors.NotFound(), "itemNotFound"),
        (errors.Conflict(), "conflictingRequest"),
        (errors.PayloadTooLarge(), "overLimit"),
        (errors.UnsupportedMediaType(), "badMediaType"),
        (errors.StoreUnavailable(), "serviceUnavailable"),
        (errors.NotAcceptable(), "computeFault"),
        (errors.UpstreamError(), "computeFault"),
    ],
)
def test_nova_shape(error: errors.GatewayError, name: str) -> None:
    response = render(error, nova=True, request_id="r1")
    assert body_of(response) == {name: {"code": error.status, "message": error.message}}


def test_headers_are_kept() -> None:
    response = render(errors.Unauthenticated(), nova=False, request_id="r")
    assert "invalid_token" in response.headers["WWW-Authenticate"]
