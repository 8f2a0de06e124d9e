"""The gateway's one exception hierarchy; rendered to HTTP in gateway.web.errors only."""

from __future__ import annotations

from collections.abc import Mapping


class GatewayError(Exception):
    """An error with a status, a stable snake_case code and a message safe to show users.

    The message must never contain a token, a JWT or an upstream body: it goes
    verbatim into responses and logs.
    """

    status: int = 500
    code: str = "internal_error"
    default_message: str = "The gateway could not complete the request."

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None):
        self.message = message or self.default_message
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.message)


class BadRequest(GatewayError):
    status, code = 400, "invalid_request"
    default_message = "The request is not valid."


class Unauthenticated(GatewayError):
    status, code = 401, "invalid_token"
    default_message = "A valid bearer token is required."

    def __init__(self, message: str | None = None, *, missing: bool = False):
        # RFC 6750 section 3.1: a request with no credentials gets no error code.
        challenge = 'Bearer realm="console-gateway"'
        if not missing:
            challenge += ', error="invalid_token"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(GatewayError):
    status, code = 403, "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(GatewayError):
    status, code = 404, "not_found"
    default_message = "Not found."


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"
    default_message = "This method is not allowed on this resource."


class NotAcceptable(GatewayError):
    status, code = 406, "version_not_supported"
    default_message = "The requested API version is not supported."


class Conflict(GatewayError):
    status, code = 409, "conflict"
    default_message = "The server is not in a state to open a console."


class Gone(GatewayError):
    status, code = 410, "console_gone"
    default_message = "This console has expired or was revoked."


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"
    default_message = "The request body must be uncompressed application/json."


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"
    default_message = "Too many requests; try again later."

    def __init__(
        self, message: str | None = None, *, retry_after_s: int = 1, limit: str = "create"
    ):
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})
        self.limit = limit  # which limit: a metric label, never shown to users


class UpstreamError(GatewayError):
    status, code = 502, "upstream_error"
    default_message = "The compute API gave an unusable answer."


class ServiceUnavailable(GatewayError):
    status, code = 503, "service_unavailable"
    default_message = "The gateway is temporarily unavailable."


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"
    default_message = "The gateway's store is unreachable; try again shortly."


class Draining(ServiceUnavailable):
    code = "draining"
    default_message = "This gateway instance is shutting down; retry to reach another one."


class UpstreamTimeout(GatewayError):
    status, code = 504, "upstream_timeout"
    default_message = "The compute API did not answer in time."


def _all_subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def error_from_code(code: str, message: str) -> GatewayError:
    """Rebuild an error shared through Redis so every single-flight waiter raises the same one."""
    candidates: list[type[GatewayError]] = [GatewayError, *_all_subclasses(GatewayError)]
    for cls in candidates:
        if cls.code == code and cls not in (Unauthenticated, RateLimited):
            return cls(message)
    return UpstreamError(message)
