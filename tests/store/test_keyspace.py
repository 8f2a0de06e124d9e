"""Key names: readable, collision-free, and one Cluster slot per server or console."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.models import ConsoleTarget
from gateway.store.keyspace import KeySpace

KS = KeySpace("cgw:")


def hash_tag(key: str) -> str:
    """The part Redis Cluster hashes: between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_console_url_key() -> None:
    key = KS.console_url(ConsoleTarget("p1", "s-1", "novnc", "vnc"))
    assert key == "cgw:{t:p1/s-1}:url:novnc:vnc"


def test_console_key() -> None:
    assert KS.console("ab" * 32) == "cgw:{c:" + "ab" * 32 + "}:console"


def test_empty_prefix() -> None:
    assert KeySpace("").console_url(ConsoleTarget("p", "s")) == "{t:p/s}:url:novnc:vnc"


@pytest.mark.parametrize(
    "key",
    [KS.console_url(ConsoleTarget("p1", "s1")), KS.console("f" * 64),
     KS.keystone_token("https://keystone.example/v3", "svc", "p1")],
)
def test_lock_and_error_keys_share_the_hash_tag(key: str) -> None:
    lock, error = KS.lock_for(key), KS.error_for(key)
    assert len({key, lock, error}) == 3
    assert hash_tag(lock) == hash_tag(error) == hash_tag(key)


def test_all_consoles_of_one_server_share_a_slot() -> None:
    novnc = KS.console_url(ConsoleTarget("p1", "s1", "novnc", "vnc"))
    other = KS.console_url(ConsoleTarget("p1", "s1", "spice-html5", "spice"))
    assert hash_tag(novnc) == hash_tag(other)
    assert hash_tag(novnc) != hash_tag(KS.console_url(ConsoleTarget("p1", "s2")))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (ConsoleTarget("p1", "s1"), ConsoleTarget("p2", "s1")),
        (ConsoleTarget("p1", "s1"), ConsoleTarget("p1", "s2")),
        (ConsoleTarget("p1", "s1", "novnc", "vnc"), ConsoleTarget("p1", "s1", "novnc", "rdp")),
    ],
)
def test_different_targets_get_different_keys(a: ConsoleTarget, b: ConsoleTarget) -> None:
    assert KS.console_url(a) != KS.console_url(b)


@pytest.mark.parametrize(
    "target",
    [ConsoleTarget("p}1", "s1"), ConsoleTarget("p1", "s{1"), ConsoleTarget("p1", "a/b"),
     ConsoleTarget("p1", "a:b"), ConsoleTarget("", "s1"), ConsoleTarget("p1", "s1", "no vnc")],
)
def test_unsafe_target_parts_are_refused(target: ConsoleTarget) -> None:
    with pytest.raises(errors.BadRequest):
        KS.console_url(target)


def test_keystone_key_hashes_its_inputs() -> None:
    key = KS.keystone_token("https://keystone.example/v3", "svc-user", "proj-1")
    assert key.startswith("cgw:{k:") and key.endswith("}:keystone")
    for part in ("keystone.example", "svc-user", "proj-1"):
        assert part not in key
    assert key == KS.keystone_token("https://keystone.example/v3", "svc-user", "proj-1")


@pytest.mark.parametrize(
    "other",
    [("https://keystone.example/v3", "svc-user", "proj-2"),
     ("https://keystone.example/v3", "svc-use", "rproj-1"),
     ("https://other.example/v3", "svc-user", "proj-1")],
)
def test_keystone_keys_differ_per_identity(other: tuple[str, str, str]) -> None:
    base = KS.keystone_token("https://keystone.example/v3", "svc-user", "proj-1")
    assert KS.keystone_token(*other) != base


def test_live_connection_keys_share_their_owners_slot() -> None:
    id_hash = "ab" * 32
    assert KS.live_on_console(id_hash) == "cgw:{c:" + id_hash + "}:live"
    assert hash_tag(KS.live_on_console(id_hash)) == hash_tag(KS.console(id_hash))
    live, creates = KS.live_of_subject("alice"), KS.creations_of_subject("alice")
    assert live.endswith(":live") and creates.endswith(":creates")
    assert hash_tag(live) == hash_tag(creates) != hash_tag(KS.live_of_subject("bob"))


@pytest.mark.parametrize("subject", ["alice@example.com", "a}b{c", "x:y/z", "ü" * 300])
def test_subject_keys_hash_any_subject(subject: str) -> None:
    key = KS.live_of_subject(subject)
    assert subject not in key and key.count("{") == key.count("}") == 1
    assert len(key) < 64


def test_revocation_channel() -> None:
    assert KS.revocations() == "cgw:revocations"
    assert KeySpace("other:").revocations() != KS.revocations()
