"""Who the caller is and what they may do: pure claim checks, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import AuthSettings
from gateway.errors import Forbidden, Unauthenticated

ALL_PROJECTS = "*"
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    projects: frozenset[str]
    all_projects: bool
    roles: frozenset[str]
    is_admin: bool


def principal_from_claims(claims: Mapping[str, Any], settings: AuthSettings) -> Principal:
    """Build the caller from verified claims; a claim of the wrong shape makes the token invalid."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("The token has no subject.")
    projects, all_projects = _projects(claims.get(settings.projects_claim), settings.projects_claim)
    roles = _string_set(claims.get(settings.roles_claim), settings.roles_claim)
    return Principal(
        subject=subject,
        projects=projects,
        all_projects=all_projects,
        roles=roles,
        is_admin=settings.admin_role in roles,
    )


def _projects(value: Any, claim: str) -> tuple[frozenset[str], bool]:
    if value == ALL_PROJECTS:
        return frozenset(), True
    projects = _string_set(value, claim)
    # ["*"] is ambiguous (wildcard or a project literally named "*"); refuse rather than guess.
    if ALL_PROJECTS in projects:
        raise Unauthenticated(f'The token\'s {claim!r} claim must be "*" or a list of ids.')
    return projects, False


def _string_set(value: Any, claim: str) -> frozenset[str]:
    # JSON null is treated like an absent claim: issuers emit it for "no values".
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Unauthenticated(f"The token's {claim!r} claim must be a list of strings.")
    return frozenset(value)


def require_project(principal: Principal, project_id: str) -> None:
    """Refuse unless the caller's projects claim covers project_id (the admin role does not)."""
    if principal.all_projects or project_id in principal.projects:
        return
    raise Forbidden("You may not open consoles in this project.")


def can_manage_console(principal: Principal, owner: str) -> bool:
    return principal.is_admin or principal.subject == owner


def extract_bearer(
    authorization: str | None, x_auth_token: str | None, *, allow_x_auth_token: bool
) -> str:
    """The raw token from `Authorization: Bearer` or, on the Nova-compatible route, X-Auth-Token."""
    if authorization is not None and authorization.strip():
        return _parse_authorization(authorization.strip())
    if allow_x_auth_token and x_auth_token is not None and x_auth_token.strip():
        return _checked_token(x_auth_token.strip(), "The X-Auth-Token header is malformed.")
    raise Unauthenticated(missing=True)


def _parse_authorization(value: str) -> str:
    parts = value.split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthenticated("The Authorization header must be 'Bearer <token>'.")
    return _checked_token(parts[1], "The Authorization header must be 'Bearer <token>'.")


def _checked_token(token: str, message: str) -> str:
    if not _B64TOKEN.fullmatch(token):
        raise Unauthenticated(message)
    return token
