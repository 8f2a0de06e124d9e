"""Untrusted JSON bodies: depth, encoding and shape are checked before parsing."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.web.bodies import parse_json_object


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 9 + b"1" + b"}" * 9, "nested too deeply"),
        (b"\xff\xfe", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"string"', "JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_bad_bodies_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(errors.BadRequest, match=message):
        parse_json_object(raw, max_depth=8)


def test_brackets_inside_strings_do_not_count() -> None:
    value = parse_json_object(b'{"a": "[[[[[[[[[[[[[[[[\\"{{{{{{{{{{"}', max_depth=2)
    assert value["a"].startswith("[[[")


def test_depth_at_the_limit_is_accepted() -> None:
    assert parse_json_object(b'{"a": {"b": {"c": 1}}}', max_depth=3) == {"a": {"b": {"c": 1}}}
