"""Tables for the pure claim and header rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.policy import (
    Principal,
    can_manage_console,
    extract_bearer,
    principal_from_claims,
    require_project,
)
from gateway.config import Settings
from gateway.errors import Forbidden, Unauthenticated
from tests.jwt_support import auth_settings

SETTINGS = auth_settings()


def principal(
    subject: str = "alice",
    projects: tuple[str, ...] = (),
    all_projects: bool = False,
    roles: tuple[str, ...] = (),
) -> Principal:
    return Principal(
        subject=subject,
        projects=frozenset(projects),
        all_projects=all_projects,
        roles=frozenset(roles),
        is_admin="console-admin" in roles,
    )


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"sub": "alice"}, principal()),
        ({"sub": "alice", "projects": ["p1", "p2"]}, principal(projects=("p1", "p2"))),
        ({"sub": "alice", "projects": "*"}, principal(all_projects=True)),
        ({"sub": "alice", "projects": []}, principal()),
        ({"sub": "alice", "projects": None, "roles": None}, principal()),
        ({"sub": "bob", "roles": ["viewer"]}, principal("bob", roles=("viewer",))),
        ({"sub": "root", "roles": ["console-admin"]}, principal("root", roles=("console-admin",))),
        ({"sub": "alice", "projects": ["p1", "p1"]}, principal(projects=("p1",))),
    ],
)
def test_principal_from_good_claims(claims: dict[str, Any], expected: Principal) -> None:
    assert principal_from_claims(claims, SETTINGS) == expected


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": ""},
        {"sub": 42},
        {"sub": None},
        {"sub": ["alice"]},
        {"sub": "alice", "projects": "p1"},
        {"sub": "alice", "projects": "all"},
        {"sub": "alice", "projects": ["*"]},
        {"sub": "alice", "projects": [1, 2]},
        {"sub": "alice", "projects": ["p1", ""]},
        {"sub": "alice", "projects": {"p1": True}},
        {"sub": "alice", "roles": "console-admin"},
        {"sub": "alice", "roles": [["console-admin"]]},
        {"sub": "alice", "roles": True},
    ],
)
def test_principal_from_bad_claims(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated) as info:
        principal_from_claims(claims, SETTINGS)
    assert info.value.status == 401


def test_claim_names_and_admin_role_come_from_settings(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        {"auth": {"projects_claim": "tenants", "roles_claim": "groups", "admin_role": "ops"}}
    ).auth
    claims = {"sub": "ops1", "tenants": ["t1"], "groups": ["ops"], "projects": "*"}
    assert principal_from_claims(claims, settings) == Principal(
        subject="ops1",
        projects=frozenset({"t1"}),
        all_projects=False,
        roles=frozenset({"ops"}),
        is_admin=True,
    )


@pytest.mark.parametrize(
    ("who", "project", "allowed"),
    [
        (principal(all_projects=True), "anything", True),
        (principal(projects=("p1", "p2")), "p2", True),
        (principal(projects=("p1",)), "p2", False),
        (principal(projects=("p1",)), "P1", False),
        (principal(), "p1", False),
        (principal(roles=("console-admin",)), "p1", False),
        (principal(projects=("p1",)), "*", False),
    ],
)
def test_require_project(who: Principal, project: str, allowed: bool) -> None:
    if allowed:
        require_project(who, project)
        return
    with pytest.raises(Forbidden) as info:
        require_project(who, project)
    assert info.value.status == 403


@pytest.mark.parametrize(
    ("who", "owner", "expected"),
    [
        (principal("alice"), "alice", True),
        (principal("alice"), "bob", False),
        (principal("root", roles=("console-admin",)), "bob", True),
        (principal("alice", roles=("viewer",)), "bob", False),
        (principal("alice", all_projects=True), "bob", False),
    ],
)
def test_can_manage_console(who: Principal, owner: str, expected: bool) -> None:
    assert can_manage_console(who, owner) is expected


@pytest.mark.parametrize(
    ("authorization", "x_auth_token", "allow_x", "expected"),
    [
        ("Bearer abc.def.ghi", None, False, "abc.def.ghi"),
        ("bearer abc.def.ghi", None, False, "abc.def.ghi"),
        ("BEARER abc.def.ghi", None, False, "abc.def.ghi"),
        ("  Bearer abc  ", None, False, "abc"),
        ("Bearer a-b_c~d+e/f==", None, False, "a-b_c~d+e/f=="),
        ("Bearer from-header", "from-x", True, "from-header"),
        (None, "x.y.z", True, "x.y.z"),
        ("", "x.y.z", True, "x.y.z"),
    ],
)
def test_extract_bearer_accepts(
    authorization: str | None, x_auth_token: str | None, allow_x: bool, expected: str
) -> None:
    assert extract_bearer(authorization, x_auth_token, allow_x_auth_token=allow_x) == expected


@pytest.mark.parametrize(
    ("authorization", "x_auth_token", "allow_x"),
    [
        (None, None, False),
        ("", None, False),
        ("   ", None, True),
        (None, "x.y.z", False),
        (None, "", True),
        ("", "  ", True),
    ],
)
def test_extract_bearer_missing(
    authorization: str | None, x_auth_token: str | None, allow_x: bool
) -> None:
    with pytest.raises(Unauthenticated) as info:
        extract_bearer(authorization, x_auth_token, allow_x_auth_token=allow_x)
    # RFC 6750 section 3.1: no error code when no credentials were sent.
    assert info.value.headers["WWW-Authenticate"] == 'Bearer realm="console-gateway"'


@pytest.mark.parametrize(
    ("authorization", "x_auth_token", "allow_x"),
    [
        ("Basic dXNlcjpwYXNz", None, False),
        ("Basic dXNlcjpwYXNz", "x.y.z", True),
        ("Bearer", None, False),
        ("Bearer ", None, False),
        ("Bearer  abc", None, False),
        ("Bearer abc def", None, False),
        ("Bearer\tabc", None, False),
        ("Token abc", None, False),
        ("Bearerabc", None, False),
        ('Bearer abc"def', None, False),
        ("Bearer =abc", None, False),
        (None, "x y", True),
        (None, 'bad"token', True),
    ],
)
def test_extract_bearer_malformed(
    authorization: str | None, x_auth_token: str | None, allow_x: bool
) -> None:
    with pytest.raises(Unauthenticated) as info:
        extract_bearer(authorization, x_auth_token, allow_x_auth_token=allow_x)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
