"""Pure (de)serialisation: exact round trips, garbage read as absent, TTL arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway import errors
from gateway.models import ConsoleRecord, Expiring
from gateway.store import codec

RECORD = ConsoleRecord(
    id_hash="c" * 64, owner="alice@example", project_id="p1", server_id="s1", type="novnc",
    protocol="vnc", created_at=1_700_000_000.1234567, expires_at=1_700_000_900.0000001,
)


@pytest.mark.parametrize("valid_until", [1_700_000_600.123456789, 0.1 + 0.2, 1e-9, 1_700_000_600])
def test_expiring_round_trips_exactly(valid_until: float) -> None:
    item = Expiring("https://console.example/vnc_auto.html?token=x", valid_until)
    assert codec.decode_expiring(codec.encode_expiring(item)) == item
    assert codec.decode_expiring(codec.encode_expiring(item).encode()) == item


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"\xff\xfe", b"not json", b"[1, 2]", b'{"value": 1, "valid_until": 2}',
     b'{"value": "u"}', b'{"value": "u", "valid_until": "soon"}'],
)
def test_unreadable_cache_entries_are_misses(raw: bytes | None) -> None:
    assert codec.decode_expiring(raw) is None


@pytest.mark.parametrize(
    ("valid_until", "now", "min_remaining_s", "fresh"),
    [(1000, 800, 120, True), (1000, 880, 120, True), (1000, 880.001, 120, False),
     (1000, 1000, 0, True), (1000, 1000.5, 0, False)],
)
def test_is_fresh(valid_until: float, now: float, min_remaining_s: float, fresh: bool) -> None:
    assert codec.is_fresh(Expiring("u", valid_until), now, min_remaining_s) is fresh


@pytest.mark.parametrize(
    ("ttl_s", "valid_until", "now", "expected_ms"),
    [(540, 1600, 1000, 540_000), (540, 1100, 1000, 100_000), (540, 1000.25, 1000, 250),
     (540, 1000, 1000, 0), (540, 900, 1000, -100_000), (0, 1600, 1000, 0)],
)
def test_store_ms_never_outlives_the_value(
    ttl_s: float, valid_until: float, now: float, expected_ms: int
) -> None:
    assert codec.store_ms(ttl_s, valid_until, now) == expected_ms


def test_error_round_trips_to_the_same_class_and_message() -> None:
    rebuilt = codec.decode_error(codec.encode_error(errors.NotFound("No server s1.")))
    assert type(rebuilt) is errors.NotFound
    assert rebuilt.message == "No server s1."


@pytest.mark.parametrize(
    "raw", [None, b"junk", b'{"code": "not_found"}', b'{"code": 1, "message": "m"}']
)
def test_unreadable_error_markers_are_absent(raw: bytes | None) -> None:
    assert codec.decode_error(raw) is None


@pytest.mark.parametrize("record", [RECORD, replace(RECORD, revoked_at=1_700_000_123.000001)])
def test_record_round_trips_exactly(record: ConsoleRecord) -> None:
    fields = codec.encode_record(record)
    assert codec.decode_record(fields) == record
    as_redis_returns = {k.encode(): v.encode() for k, v in fields.items()}
    assert codec.decode_record(as_redis_returns) == record


def test_unrevoked_record_has_no_revoked_field() -> None:
    assert "revoked_at" not in codec.encode_record(RECORD)


@pytest.mark.parametrize("drop", ["owner", "created_at", "expires_at"])
def test_incomplete_record_is_none(drop: str) -> None:
    fields = dict(codec.encode_record(RECORD))
    del fields[drop]
    assert codec.decode_record(fields) is None


def test_record_with_a_bad_number_is_none() -> None:
    fields = {**codec.encode_record(RECORD), "expires_at": "tomorrow"}
    assert codec.decode_record(fields) is None
