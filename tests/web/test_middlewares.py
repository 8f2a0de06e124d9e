"""Request ids: a caller's harmless id is kept for correlation, anything else replaced."""

from __future__ import annotations

import re

import pytest

from gateway.web.middlewares import choose_request_id


@pytest.mark.parametrize("given", ["abc", "req-1.2:3_x", "a" * 64])
def test_sane_ids_are_kept(given: str) -> None:
    assert choose_request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 65, "has space", "new\nline", 'quote"', "é"])
def test_other_ids_are_replaced(given: str | None) -> None:
    made = choose_request_id(given)
    assert re.fullmatch(r"[0-9a-f]{32}", made)
