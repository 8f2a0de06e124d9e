"""bench/api.py: the quick mode end to end, its pure parts, its baseline and stub, and the
gateway optimisations it drove (their behaviour must not have changed)."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import api
from bench.api_bare import create_app as create_bare_app
from bench.api_load import (
    BurstResult,
    LoadResult,
    Workload,
    _closed_loop,
    http_request,
    parse_head,
    parse_wrk,
)
from bench.api_upstream import create_app as create_stub_app
from bench.harness import Row
from gateway import errors
from gateway.auth.verifier import StaticKey, TokenVerifier
from gateway.config import Settings
from gateway.metrics import GatewayMetrics
from gateway.models import ConsoleRecord, ConsoleTarget
from gateway.observability import (
    _AUTH_SCHEME,
    _CONSOLE_ID,
    _HEADER_SECRET,
    _JSON_SECRET,
    _JWT,
    _QUERY_SECRET,
    redact,
    short_hash,
)
from gateway.store.keyspace import KeySpace
from gateway.store.redis_store import Store
from tests.support import HS_SECRET, PROJECT, bearer, mint_jwt

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

# --- the whole script, quick mode (tiny sizes: proves it works, its numbers mean nothing)


def test_quick_mode_measures_every_figure_against_its_baseline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which("wrk") is None:  # no apt-get from a test: the Python generator instead
        monkeypatch.setenv("BENCH_NO_WRK", "1")
    rows = api.run(quick=True)
    figures = [row.figure for row in rows]
    assert len(figures) == len(set(figures)) == 13
    for row in rows:
        assert isinstance(row, Row)
        assert row.unit and row.baseline is not None and row.ratio is not None
        for spread in (row.value, row.baseline, row.ratio):
            assert spread.low <= spread.median <= spread.high
            assert math.isfinite(spread.median) and spread.median >= 0
    by_name = {row.figure.split(" (")[0]: row for row in rows}
    hit = by_name["API cache hit: requests/s"]
    assert hit.value.median > 0 and hit.baseline is not None and hit.baseline.median > 0
    assert hit.ratio is not None and hit.target == f">= {api.HIT_TARGET}"
    assert hit.met == (hit.ratio.median >= api.HIT_TARGET)
    burst_calls = next(row for row in rows if "upstream calls" in row.figure)
    # The single flight: one upstream call for the whole burst; the bare endpoint makes one
    # per request (that is what the lock saves).
    assert burst_calls.value.high == burst_calls.value.low == 1 and burst_calls.met is True
    assert burst_calls.baseline is not None
    assert burst_calls.baseline.median == api.Sizes.for_mode(True).burst_size
    generator_cpu = next(row for row in rows if "load generator CPU" in row.figure)
    assert generator_cpu.value.high < 0.95  # the generator never saturated its core


# --- pure parts


WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/v1/consoles
  1 threads and 8 connections
WRKJSON {"requests":1200,"duration_us":1000500,"status_errors":2,"connect_errors":0,\
"read_errors":1,"write_errors":0,"timeouts":0,"p50_us":5100,"p99_us":12000}
"""


def test_parse_wrk_reads_the_summary_our_lua_prints() -> None:
    result = parse_wrk(WRK_OUTPUT, client_cpu_s=0.25)
    assert result == LoadResult("wrk", 1200, 1.0005, 5.1, 12.0, 3, 0.25)
    assert result.rps == pytest.approx(1200 / 1.0005)
    assert result.client_core_share == pytest.approx(0.25 / 1.0005)
    with pytest.raises(ValueError, match="no WRKJSON"):
        parse_wrk("Running 1s test\n", client_cpu_s=0)


def test_parse_head_needs_a_status_and_a_length() -> None:
    assert parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 17\r\n\r\n") == (201, 17)
    with pytest.raises(ValueError):
        parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ValueError):
        parse_head(b"HTTP/1.1 200 OK\r\n\r\n")


def test_workload_bodies_repeat_or_name_a_new_server_each_time() -> None:
    same = Workload("http://127.0.0.1:1", "t", "p", "s", unique_servers=False)
    unique = replace(same, unique_servers=True)
    assert same.body(1) == same.body(2) == b'{"project_id": "p", "server_id": "s"}'
    assert unique.body(1) != unique.body(2)
    request = http_request("127.0.0.1:1", "tok", b"{}")
    assert request.endswith(b"Content-Length: 2\r\n\r\n{}")


def _side(name: str, rps: float, calls: int) -> api.Side:
    side = api.Side(name, "http://127.0.0.1:1", pid=1)
    for _ in range(3):
        side.hit.append(LoadResult("wrk", int(rps), 1.0, 2.0, 5.0, 0, 0.1))
        side.miss.append(LoadResult("wrk", 100, 1.0, 55.0, 60.0, 0, 0.1))
        side.hit_cpu_us.append(1e6 / rps)
        side.hit_server_cpu.append(1.0)
        side.hit_redis_cpu.append(0.2)
        side.bursts.append(BurstResult(0.5, [0.1, 0.2], [201, 201]))
        side.burst_calls.append(calls)
    return side


@pytest.mark.parametrize(("gateway_rps", "met"), [(700.0, True), (699.0, False)])
def test_rows_compare_the_gateway_with_the_baseline(gateway_rps: float, met: bool) -> None:
    rows = api.rows_from([_side("gateway", gateway_rps, 1), _side("bare", 1000, 2)], "wrk", 2)
    hit = rows[0]
    assert hit.ratio is not None and hit.ratio.median == pytest.approx(gateway_rps / 1000)
    assert hit.met is met
    calls = next(row for row in rows if "upstream calls" in row.figure)
    assert calls.met is True
    two_calls = api.rows_from([_side("gateway", 700, 2), _side("bare", 1000, 2)], "wrk", 2)
    assert next(row for row in two_calls if "upstream calls" in row.figure).met is False


async def test_python_generator_counts_answers_and_errors(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    answered = 0

    async def create(request: web.Request) -> web.Response:
        nonlocal answered
        answered += 1
        await request.read()
        return web.json_response({"n": answered}, status=201 if answered % 5 else 503)

    app = web.Application()
    app.router.add_post("/v1/consoles", create)
    server = await aiohttp_server(app)
    load = Workload(f"http://127.0.0.1:{server.port}", "tok", "p", "s", unique_servers=True)
    result = await _closed_loop(load, connections=2, duration_s=0.3)
    assert result.generator == "python" and result.requests == answered > 5
    assert result.errors == answered // 5  # every fifth answer was a 503
    assert 0 < result.p50_ms <= result.p99_ms


# --- the baseline and the stub do the work they claim


@pytest.fixture
def bench_settings(make_settings: Callable[..., Settings], redis_server: str) -> Settings:
    return make_settings({"redis": {"url": redis_server}})


async def test_bare_endpoint_checks_the_token_and_writes_what_the_gateway_writes(
    aiohttp_client: MakeClient,
    bench_settings: Settings,
    real_redis: aioredis.Redis,
) -> None:
    client = await aiohttp_client(create_bare_app(bench_settings))
    keys = KeySpace(bench_settings.redis.key_prefix)
    target = ConsoleTarget(PROJECT, "srv-1")
    url = "http://127.0.0.1:6080/vnc_auto.html?token=abc"
    await real_redis.set(keys.console_url(target), f'{{"value": "{url}", "valid_until": 9e9}}')
    body = {"project_id": PROJECT, "server_id": "srv-1"}
    refused = await client.post("/v1/consoles", json=body, headers=bearer("not.a.jwt"))
    assert refused.status == 401
    other = await client.post("/v1/consoles", json={**body, "project_id": "other"},
                              headers=bearer(mint_jwt()))  # fmt: skip
    assert other.status == 403
    answer = await client.post("/v1/consoles", json=body, headers=bearer(mint_jwt()))
    assert answer.status == 201
    console = (await answer.json())["console"]
    assert len(console["id"]) == 43 and console["server_id"] == "srv-1"
    records = await real_redis.keys(f"{bench_settings.redis.key_prefix}{{c:*}}:console")
    assert len(records) == 1 and await real_redis.pttl(records[0]) > 0
    assert await real_redis.zcard(keys.creations_of_subject("alice")) == 1


async def test_stub_answers_like_nova_and_counts_its_calls(
    aiohttp_client: MakeClient,
) -> None:
    client = await aiohttp_client(create_stub_app(0.0))
    body = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
    for server in ("a", "b"):
        answer = await client.post(f"/v2.1/p/servers/{server}/remote-consoles", json=body)
        assert answer.status == 200
        assert "token=" in (await answer.json())["remote_console"]["url"]
    assert (await (await client.get("/calls")).json()) == {"calls": 2}


# --- optimisations: same behaviour as before


def _reference_redact(text: str) -> str:
    """redact() as it was before its fast paths: every pattern, every time."""
    text = _JWT.sub("<jwt>", text)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + "<redacted>", text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + " <redacted>", text)
    text = _HEADER_SECRET.sub(lambda m: m.group(1) + m.group(2) + "<redacted>", text)
    text = _JSON_SECRET.sub(lambda m: m.group(1) + "<redacted>", text)
    return _CONSOLE_ID.sub(lambda m: short_hash(m.group(0)), text)


_PIECES = [
    "token=", "Token=", "%3Ftoken%3D", "password=", "auth=", "Bearer ", "BASIC ", "ba\u017fic ",
    "Authorization: ", "x-auth-token=", "X-Subject-Token: ", '"password": "', '"TOKEN":"',
    '"hs256_secret": "', "eyJhbGciOi.eyJzdWIi.c2ln", "\u212a", "\u017fecret=", "&", " ", '"', "\n",
    "a" * 43, "b" * 44, "c" * 42, "-_", "é",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=12)), max_size=12))
def test_fast_redact_equals_the_reference(parts: list[str]) -> None:
    text = "".join(parts)
    assert redact(text) == _reference_redact(text)


def test_fast_redact_still_hides_console_ids_and_secrets() -> None:
    console_id = "A" * 43
    line = f'GET /ws/{console_id}?token=s3cret "password": "pw" Bearer abc.def'
    redacted = redact(line)
    assert console_id not in redacted and short_hash(console_id) in redacted
    assert "s3cret" not in redacted and '"pw"' not in redacted and "abc.def" not in redacted
    assert redact("B" * 44) == "B" * 44  # longer runs are not console ids


async def test_cached_header_checks_still_refuse_every_time(
    make_settings: Callable[..., Settings],
) -> None:
    def verifier(**auth: Any) -> TokenVerifier:
        chosen = make_settings({"auth": auth}).auth
        return TokenVerifier(chosen, StaticKey(HS_SECRET.encode(), chosen.algorithms, "test"))

    cached = verifier()
    token = mint_jwt()
    assert (await cached.verify(token)).subject == "alice"
    assert (await cached.verify(token)).subject == "alice"  # header checks cached
    none_alg = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"  # {"alg":"none"}
    for _ in range(2):  # refusals are never cached into acceptance
        with pytest.raises(errors.Unauthenticated):
            await cached.verify(none_alg)
    long_token = mint_jwt(padding="x" * 3000)  # above the cached size: checked uncached
    assert (await cached.verify(long_token)).subject == "alice"
    with pytest.raises(errors.Unauthenticated, match="too large"):
        await verifier(max_token_bytes=1024).verify(long_token)


def test_cached_metric_children_count_like_labels() -> None:
    metrics = GatewayMetrics(process_metrics=False)
    for _ in range(3):
        metrics.request("/v1/consoles", "POST", 201, 0.01)
    metrics.request("/ws/{console_id}", "GET", 101, None)
    for method in ("BREW", "PURGE"):  # raw methods, one "other" label
        metrics.request("unmatched", method, 405, 0.001)
    text = metrics.render().decode()
    assert re.search(r'cgw_http_requests_total\{method="POST",route="/v1/consoles",'
                     r'status="201"\} 3\.0', text)  # fmt: skip
    assert re.search(r'cgw_http_requests_total\{method="other",route="unmatched",'
                     r'status="405"\} 2\.0', text)  # fmt: skip
    assert 'cgw_http_request_duration_seconds_count{method="GET",route="/ws/' not in text


RECORD = ConsoleRecord(
    id_hash="f" * 64, owner="alice", project_id="p1", server_id="s1", type="novnc",
    protocol="vnc", created_at=1_700_000_000.5, expires_at=1_700_000_900.25,
)  # fmt: skip


async def test_put_console_script_replaces_the_whole_record(
    real_redis: aioredis.Redis, bench_settings: Settings
) -> None:
    store = Store(real_redis, KeySpace("cgw:"), bench_settings.cache)
    key = store.keyspace.console(RECORD.id_hash)
    await store.put_console(replace(RECORD, revoked_at=1_700_000_100.0), keep_s=60)
    await store.put_console(RECORD, keep_s=900)
    assert await store.get_console(RECORD.id_hash) == RECORD  # revoked_at did not survive
    assert 800_000 < await real_redis.pttl(key) <= 900_000
    await store.put_console(RECORD, keep_s=0)
    assert await real_redis.exists(key) == 0
