"""Pure (de)serialisation of what the store keeps in Redis."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.errors import GatewayError, error_from_code
from gateway.models import ConsoleRecord, Expiring


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _load(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def encode_expiring(item: Expiring) -> str:
    # json writes floats with repr(), which round-trips exactly.
    return json.dumps({"value": item.value, "valid_until": item.valid_until})


def decode_expiring(raw: bytes | str | None) -> Expiring | None:
    """The cached value, or None for a missing or unreadable entry (a miss, refetched)."""
    data = _load(raw)
    if data is None:
        return None
    value, valid_until = data.get("value"), data.get("valid_until")
    if not isinstance(value, str) or not isinstance(valid_until, int | float):
        return None
    return Expiring(value, float(valid_until))


def is_fresh(item: Expiring, now: float, min_remaining_s: float) -> bool:
    return item.valid_until - now >= min_remaining_s


def store_ms(ttl_s: float, valid_until: float, now: float) -> int:
    """How long to keep a value: the caller's TTL, but never past its own validity."""
    return int(min(ttl_s, valid_until - now) * 1000)


def encode_error(error: GatewayError) -> str:
    return json.dumps({"code": error.code, "message": error.message})


def decode_error(raw: bytes | str | None) -> GatewayError | None:
    data = _load(raw)
    if data is None:
        return None
    code, message = data.get("code"), data.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return error_from_code(code, message)


def encode_record(record: ConsoleRecord) -> dict[str, str]:
    """Hash fields; an absent revoked_at field means not revoked."""
    fields = {
        "id_hash": record.id_hash,
        "owner": record.owner,
        "project_id": record.project_id,
        "server_id": record.server_id,
        "type": record.type,
        "protocol": record.protocol,
        "created_at": repr(float(record.created_at)),
        "expires_at": repr(float(record.expires_at)),
    }
    if record.revoked_at is not None:
        fields["revoked_at"] = repr(float(record.revoked_at))
    return fields


def decode_record(
    raw: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str],
) -> ConsoleRecord | None:
    """The record from HGETALL's answer, or None if it is empty or incomplete."""
    f = {text(k): text(v) for k, v in raw.items()}
    try:
        revoked = f.get("revoked_at")
        return ConsoleRecord(
            id_hash=f["id_hash"],
            owner=f["owner"],
            project_id=f["project_id"],
            server_id=f["server_id"],
            type=f["type"],
            protocol=f["protocol"],
            created_at=float(f["created_at"]),
            expires_at=float(f["expires_at"]),
            revoked_at=None if revoked is None else float(revoked),
        )
    except (KeyError, ValueError):
        return None
