"""Pure parts of the console workflow: ids, hashes, target validation."""

from __future__ import annotations

import hashlib
import re

import pytest

from gateway import errors
from gateway.consoles import hash_console_id, is_console_id, new_console_id, validate_target
from gateway.models import ConsoleTarget


def test_console_ids_are_256_random_bits_in_43_chars() -> None:
    ids = {new_console_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", i) for i in ids)
    assert all(is_console_id(i) for i in ids)


def test_hash_is_sha256_hex() -> None:
    console_id = new_console_id()
    assert hash_console_id(console_id) == hashlib.sha256(console_id.encode()).hexdigest()


@pytest.mark.parametrize("value", ["", "a" * 42, "a" * 44, "a" * 42 + "/", "a" * 42 + "="])
def test_not_console_ids(value: str) -> None:
    assert not is_console_id(value)


def test_valid_target() -> None:
    assert validate_target("p1", "s-1_X", "novnc", "vnc") == ConsoleTarget("p1", "s-1_X")


@pytest.mark.parametrize(
    ("project", "server", "type_", "protocol", "field"),
    [
        ("", "s", "novnc", "vnc", "project_id"),
        ("p/../q", "s", "novnc", "vnc", "project_id"),
        ("p", "..", "novnc", "vnc", "server_id"),
        ("p", "s.1", "novnc", "vnc", "server_id"),
        ("p", "a" * 65, "novnc", "vnc", "server_id"),
        ("p", "s\x00", "novnc", "vnc", "server_id"),
        ("p", "\u017f", "novnc", "vnc", "server_id"),  # LATIN SMALL LETTER LONG S
        (None, "s", "novnc", "vnc", "project_id"),
        ("p", ["s"], "novnc", "vnc", "server_id"),
        ("p", "s", "spice-html5", "vnc", "type"),
        ("p", "s", None, "vnc", "type"),
        ("p", "s", "novnc", "spice", "protocol"),
        ("p", "s", "novnc", 1, "protocol"),
    ],
)
def test_invalid_targets_name_the_field(
    project: object, server: object, type_: object, protocol: object, field: str
) -> None:
    with pytest.raises(errors.BadRequest, match=f"^{field} "):
        validate_target(project, server, type_, protocol)
