"""The simulator's state: servers, console tokens that expire, fault knobs consumed in order."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from gateway.simulator.state import ComputeSimulator, Faults
from tests.support import OTHER_PROJECT, PROJECT, SERVER, FakeClock


def test_console_tokens_expire() -> None:
    clock = FakeClock(1_000.0)
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080/", console_token_ttl_s=600,
                           clock=clock)
    server = sim.add_server(PROJECT, SERVER)
    url = sim.issue_console_url(server)
    assert url.startswith("http://127.0.0.1:6080/vnc_auto.html?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert sim.check_console_token(token) is server
    assert sim.check_console_token("unknown") is None
    clock.now += 600
    assert sim.check_console_token(token) is None


def test_servers_are_scoped_to_their_project() -> None:
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080")
    server = sim.add_server(PROJECT)
    assert sim.find_server(PROJECT, server.server_id) is server
    assert sim.find_server(OTHER_PROJECT, server.server_id) is None
    assert len(server.server_id) == 36


def test_keystone_tokens_expire_and_can_be_revoked() -> None:
    clock = FakeClock(1_000.0)
    sim = ComputeSimulator(console_base_url="http://127.0.0.1:6080", keystone_users={"u": "p"},
                           keystone_token_ttl_s=60, clock=clock, service_tokens=["static"])
    assert sim.issue_keystone_token("u", "wrong", PROJECT) is None
    first = sim.issue_keystone_token("u", "p", PROJECT)
    assert first is not None and sim.is_authorized(first.token)
    clock.now += 60
    assert not sim.is_authorized(first.token)
    second = sim.issue_keystone_token("u", "p", PROJECT)
    assert second is not None
    sim.revoke_keystone_tokens()
    assert not sim.is_authorized(second.token)
    assert sim.is_authorized("static") and not sim.is_authorized(None)


def test_console_host_override_keeps_scheme_and_port() -> None:
    sim = ComputeSimulator(console_base_url="https://127.0.0.1:6080")
    sim.faults.console_host = "other.example.com"
    url = sim.issue_console_url(sim.add_server(PROJECT))
    assert url.startswith("https://other.example.com:6080/vnc_auto.html?token=")


def test_faults_are_consumed_one_per_call() -> None:
    faults = Faults(statuses=[503, 500], drop_connections=1)
    assert [faults.take_status() for _ in range(3)] == [503, 500, None]
    assert [faults.take_drop() for _ in range(2)] == [True, False]
