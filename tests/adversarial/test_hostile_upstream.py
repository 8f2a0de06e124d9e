"""A hostile or broken upstream, met through a served gateway on a real redis-server.

Every case asserts the documented answer (502 upstream error, 504 upstream timeout; for /ws
a 1011 close after the upgrade), a bounded time, no connection to a disallowed address (a
counting listener on 127.0.0.2), nothing cached for a failed fetch, and no leak of the
service token or of the hostile URLs' tokens in bodies, headers, close reasons, Redis values
or log lines.
"""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.adversarial.hostile_upstream_support import (
    HUGE_BYTES,
    SECRET,
    Behaviour,
    ConnectionCounter,
    HostileCompute,
    Servers,
    console,
    count_requests,
    drip,
    drop_with_fin,
    greet_then_drop,
    greet_then_text,
    gzip_bomb,
    hostile_token,
    huge,
    raw,
    raw_wire,
    redirect,
    reset,
    status,
    unknown_encoding,
    ws_redirect,
)
from tests.conftest import GatewayServer, RunningGateway
from tests.figures import SecurityFigures
from tests.support import PROJECT, UPSTREAM_TOKEN, bearer, mint_jwt, redis_keys
from tests.upstream.test_console_ws import self_signed
from tests.ws_backends import RFB_GREETING, Backend

TIMEOUT_S = 1.5  # upstream.timeout_s: the whole fetch, retries included
CONNECT_TIMEOUT_S = 1.0  # relay.connect_timeout_s: upstream handshake, then first RFB byte
SLACK_S = 5.0  # generous: the machine is shared; the measured times are reported
PORTAL = {"Origin": "https://portal.example.com"}
AREA_ANSWERS = "upstream: hostile answers"
AREA_PROXY = "upstream: console proxy"
SECRETS = (SECRET, UPSTREAM_TOKEN)
INTERNAL_ERROR = aiohttp.WSCloseCode.INTERNAL_ERROR  # 1011: gateway/web/ws.py, gateway/relay.py


@dataclass(frozen=True)
class Case:
    name: str  # also the server id, so every case has its own cache key
    behaviour: Behaviour
    status: int = 502
    calls: int = 1  # compute API calls per request: 3 when the gateway retries (2 retries)


def url_case(name: str, url: str) -> Case:
    return Case(name, console(url))


def compute_cases(internal: ConnectionCounter) -> list[Case]:
    token = hostile_token("url")
    good_path = f"/vnc_auto.html?token={token}"
    return [
        # garbage
        Case("garbage-html", raw(f"<html>{SECRET}</html>".encode(), content_type="text/html")),
        Case("garbage-truncated", raw(b'{"remote_console": {"url": "http://127.0.0.1/?token=')),
        Case("garbage-binary", raw(bytes(range(256)) + SECRET.encode())),
        Case("garbage-empty", raw(b"")),
        Case("garbage-deep-nesting", raw(b"[" * 60000)),
        Case("garbage-huge-number", raw(b'{"remote_console": {"url": ' + b"9" * 60000 + b"}}")),
        # valid JSON, wrong shape
        Case("shape-list", raw(b"[]")),
        Case("shape-null", raw(b"null")),
        Case("shape-console-string", raw(f'{{"remote_console": "{good_path}"}}'.encode())),
        Case("shape-url-number", raw(b'{"remote_console": {"url": 42}}')),
        Case("shape-url-list", raw(f'{{"remote_console": {{"url": ["{good_path}"]}}}}'.encode())),
        Case("shape-other-key", raw(f'{{"console": {{"url": "{good_path}"}}}}'.encode())),
        # too much
        Case("huge-chunked", huge(declared=False)),
        Case("huge-content-length", huge(declared=True)),
        Case("gzip-bomb", gzip_bomb()),
        Case("unknown-encoding", unknown_encoding()),
        # console URLs the relay must never connect to
        url_case("host-outside", f"https://evil.example.net{good_path}"),
        url_case("host-internal", internal.url(good_path)),
        url_case("host-suffix-trick", f"http://127.0.0.1.evil.example.net{good_path}"),
        url_case("host-userinfo", f"http://127.0.0.1@127.0.0.2:{internal.port}{good_path}"),
        url_case("host-backslash", f"http://127.0.0.2:{internal.port}\\@127.0.0.1{good_path}"),
        url_case("host-crlf", f"http://127.0.0.1{good_path}\r\nX-Injected: {SECRET}"),
        url_case("token-missing", "http://127.0.0.1:6080/vnc_auto.html"),
        url_case("token-empty", "http://127.0.0.1:6080/vnc_auto.html?token="),
        url_case("token-twice", f"http://127.0.0.1/vnc.html?token={token}&token={token}2"),
        url_case("token-bad-chars", f"http://127.0.0.1/vnc.html?token={token}%3Cscript%3E"),
        # noVNC's path parameter naming another host: the relay would connect there
        url_case(
            "path-other-host",
            f"http://127.0.0.1/vnc_lite.html?path=//127.0.0.2:"
            f"{internal.port}/websockify%3Ftoken%3D{token}",
        ),
        url_case(
            "path-absolute-url",
            f"http://127.0.0.1/vnc_lite.html?path=http://127.0.0.2:"
            f"{internal.port}/websockify%3Ftoken%3D{token}",
        ),
        url_case("path-dot-dot", f"http://127.0.0.1/vnc_lite.html?token={token}&path=../x"),
        url_case("scheme-file", f"file:///etc/passwd?token={token}"),
        url_case("scheme-gopher", f"gopher://127.0.0.1:6379/_FLUSHALL?token={token}"),
        url_case("scheme-javascript", f"javascript:alert(1)//127.0.0.1/?token={token}"),
        url_case("scheme-ws", f"ws://127.0.0.1/websockify?token={token}"),
        # redirects to an internal address
        *[
            Case(f"redirect-{code}", redirect(code, lambda: internal.url("/v2.1/r")))
            for code in (301, 302, 307, 308)
        ],
        # slow, cut off, not HTTP
        Case("drip", drip(), status=504),
        Case("reset-before-answer", reset(after_headers=False), calls=3),
        Case("reset-mid-body", reset(after_headers=True), calls=3),
        Case("not-http", raw_wire(b"SSH-2.0-OpenSSH_9.6\r\n" + SECRET.encode() + b"\r\n")),
        Case(
            "bad-chunked",
            raw_wire(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n" + SECRET.encode()
            ),
        ),
        Case(
            "header-bomb", raw_wire(b"HTTP/1.1 200 OK\r\nX-Bomb: " + b"b" * 100_000 + b"\r\n\r\n")
        ),
        # error statuses, with a body the gateway must not pass on
        *[Case(f"status-{code}", status(code)) for code in (500, 501, 429, 418, 204)],
        *[Case(f"status-{code}", status(code), calls=3) for code in (502, 503, 504)],
        Case("status-401", status(401), calls=2),  # the service token is renewed once
    ]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    running = Servers()
    yield running
    await running.close()


@pytest.fixture
async def internal() -> AsyncIterator[ConnectionCounter]:
    counter = ConnectionCounter()
    await counter.start("127.0.0.2")
    yield counter
    await counter.close()


def found_secrets(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def redis_text(redis: aioredis.Redis, pattern: str) -> str:
    """Every string value under pattern, for leak checks."""
    values = []
    for key in await redis_keys(redis, pattern):
        value = await redis.get(key)
        values.append(f"{key}={value!r}")
    return "\n".join(values)


@dataclass
class Outcome:
    status: int
    text: str  # headers and body, for leak checks
    body: Any
    seconds: float


async def create(http: aiohttp.ClientSession, gateway: RunningGateway, server: str) -> Outcome:
    """POST /v1/consoles, or the Nova-compatible route for a server named '*-nova'."""
    started = time.monotonic()
    jwt = mint_jwt()
    if server.endswith("-nova"):
        url = f"{gateway.url}/v2.1/{PROJECT}/servers/{server}/remote-consoles"
        headers = {"X-Auth-Token": jwt, "OpenStack-API-Version": "compute 2.6"}
        body: dict[str, Any] = {"remote_console": {"type": "novnc", "protocol": "vnc"}}
    else:
        url, headers = f"{gateway.url}/v1/consoles", bearer(jwt)
        body = {"project_id": PROJECT, "server_id": server}
    async with http.post(url, json=body, headers=headers) as response:
        text = await response.text()
        parsed = await response.json(content_type=None) if text else None
        return Outcome(
            response.status, f"{dict(response.headers)}\n{text}", parsed,
            time.monotonic() - started,
        )  # fmt: skip


def documented_error(outcome: Outcome, nova: bool) -> bool:
    """The error body's shape: native {"error": {...}} or Nova's computeFault."""
    code = {502: "upstream_error", 504: "upstream_timeout"}.get(outcome.status)
    body = outcome.body
    if not isinstance(body, dict):
        return False
    if nova:
        fault = body.get("computeFault")
        return isinstance(fault, dict) and fault.get("code") == outcome.status
    error = body.get("error")
    return isinstance(error, dict) and error.get("code") == code and "Traceback" not in str(error)


async def test_hostile_compute_answers(
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    http: aiohttp.ClientSession,
    captured_logs: io.StringIO,
    servers: Servers,
    internal: ConnectionCounter,
    security_figures: SecurityFigures,
) -> None:
    cases = compute_cases(internal)
    compute = HostileCompute({case.name: case.behaviour for case in cases})
    compute_url = await servers.start(compute.app())
    upstream = {"compute_url": compute_url, "timeout_s": TIMEOUT_S, "retries": 2}
    gateway = await serve_gateway(real_redis, {"upstream": upstream})

    failures: list[str] = []
    refused = server_errors = leaks = cached = bomb_peak = 0
    seconds: dict[str, float] = {}
    for case in cases:
        for server in (case.name, f"{case.name}-nova"):
            if server == "gzip-bomb":
                tracemalloc.start()
            outcome = await create(http, gateway, server)
            if server == "gzip-bomb":
                bomb_peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            seconds[server] = outcome.seconds
            bound = TIMEOUT_S + SLACK_S if case.status == 504 else SLACK_S
            if outcome.status in (502, 504):
                refused += 1
            elif outcome.status >= 500:
                server_errors += 1
            if outcome.status != case.status:
                failures.append(f"{server}: status {outcome.status}, expected {case.status}")
            elif not documented_error(outcome, nova=server.endswith("-nova")):
                failures.append(f"{server}: undocumented error body")
            if outcome.seconds > bound:
                failures.append(f"{server}: {outcome.seconds:.2f}s > {bound}s")
            if compute.calls[server] != case.calls:
                failures.append(f"{server}: {compute.calls[server]} upstream calls")
            if leaked := found_secrets(outcome.text):
                leaks += 1
                failures.append(f"{server}: response leaks {len(leaked)} secret(s)")
            keys = await redis_keys(real_redis, f"*/{server}}}:url:*")
            if any(not key.endswith((":err", ":lock")) for key in keys):
                cached += 1
                failures.append(f"{server}: console URL cached for a failed fetch: {keys}")
            if found_secrets(await redis_text(real_redis, f"*/{server}}}*")):
                leaks += 1
                failures.append(f"{server}: secret stored in Redis")

    # Positive control after every fault: a sane answer on the same gateway still works.
    healthy = f"http://127.0.0.1:6080/vnc_auto.html?token={hostile_token('healthy')}"
    compute.behaviours["healthy"] = console(healthy)
    control = await create(http, gateway, "healthy")
    survived = 2 * len(cases) if control.status == 201 else 0
    # The hostile handlers must have stopped: nobody reads what they still send.
    for server in ("huge-chunked", "huge-content-length", "drip"):
        await asyncio.wait_for(compute.finished[server].wait(), timeout=SLACK_S + 2)
    huge_sent = max(compute.bytes_sent[s] for s in ("huge-chunked", "huge-content-length"))
    logs = captured_logs.getvalue()
    log_leaks = found_secrets(logs)
    leaks += len(log_leaks)
    security_figures.add(
        AREA_ANSWERS,
        inputs=2 * len(cases),
        refused=refused,
        server_errors=server_errors,
        state_changes=cached + internal.connections,
        leaks=leaks,
        faults_survived=survived,
        max_seconds=round(max(seconds.values()), 3),
        drip_seconds=round(seconds["drip"], 3),
        huge_body_mib_sent=round(huge_sent / 2**20, 2),
        gzip_bomb_peak_mib=round(bomb_peak / 2**20, 2),
        internal_connections=internal.connections,
        upstream_calls=sum(compute.calls.values()),
    )
    assert not failures, "\n".join(failures)
    assert control.status == 201 and not found_secrets(control.text)
    assert internal.connections == 0  # redirects and internal URLs never followed
    assert log_leaks == []
    assert "upstream_error" in logs or "502" in logs  # the log was captured at all
    # The gateway stopped reading at its bound (64 KiB): far less than the 50 MiB offered.
    assert huge_sent < HUGE_BYTES // 2
    # The 50 MiB gzip bomb was inflated only as far as the bound, never whole in memory.
    assert 0 < bomb_peak < HUGE_BYTES // 5
    # The drip is cut at the deadline: at least the timeout, at most timeout + slack.
    assert TIMEOUT_S * 0.9 <= seconds["drip"] < TIMEOUT_S + SLACK_S
    assert compute.bytes_sent["drip"] < 10
    assert set(compute.auth_tokens) == {UPSTREAM_TOKEN}  # the service token went upstream


async def test_tls_with_a_wrong_certificate_is_refused(
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    http: aiohttp.ClientSession,
    captured_logs: io.StringIO,
    servers: Servers,
    tmp_path: Path,
    security_figures: SecurityFigures,
) -> None:
    server_context, cert_file = self_signed(tmp_path)  # a certificate for 127.0.0.1 only
    compute = HostileCompute(
        {"tls": console(f"http://127.0.0.1:6080/vnc_auto.html?token={hostile_token('tls')}")}
    )
    on_right_host = await servers.start(compute.app(), ssl_context=server_context)
    on_wrong_host = await servers.start(compute.app(), "127.0.0.2", ssl_context=server_context)
    attempts = [
        ("self-signed, not trusted", on_right_host, None, 502),
        ("trusted, wrong host name", on_wrong_host, str(cert_file), 502),
        ("trusted, right host name", on_right_host, str(cert_file), 201),  # positive control
    ]
    results: list[tuple[int, float]] = []
    refused = server_errors = leaks = 0
    for _, url, ca_file, _ in attempts:
        await real_redis.flushdb()  # no error marker from the previous attempt
        upstream = {"compute_url": url, "ca_file": ca_file, "timeout_s": TIMEOUT_S}
        gateway = await serve_gateway(real_redis, {"upstream": upstream})
        outcome = await create(http, gateway, "tls")
        results.append((outcome.status, outcome.seconds))
        refused += outcome.status == 502
        server_errors += outcome.status >= 500 and outcome.status not in (502, 504)
        leaks += bool(found_secrets(outcome.text))
        if outcome.status != 201:
            assert documented_error(outcome, nova=False)
            assert "certificate" in outcome.body["error"]["message"]
            keys = await redis_keys(real_redis, "*:url:*")
            assert [key for key in keys if not key.endswith((":err", ":lock"))] == []
    log_leaks = found_secrets(captured_logs.getvalue())
    security_figures.add(
        AREA_ANSWERS,
        inputs=sum(1 for *_, want in attempts if want != 201),
        refused=refused,
        server_errors=server_errors,
        leaks=leaks + len(log_leaks),
        tls_refusal_max_seconds=round(max(s for _, s in results[:2]), 3),
        tls_positive_control_status=results[2][0],
    )
    assert [status for status, _ in results] == [want for *_, want in attempts]
    assert all(seconds < SLACK_S for _, seconds in results)
    # Only the positive control's handshake completed and reached the compute API.
    assert compute.calls["tls"] == 1
    assert leaks == 0 and log_leaks == []


# ---- the console proxy side -----------------------------------------------------------------


@dataclass(frozen=True)
class ProxyCase:
    route: str  # the console proxy's behaviour (tests.ws_backends.Backend, or ours)
    fetches: int  # compute API calls, and requests the proxy sees: 2 after a retry
    control: bool = False  # the positive control: RFB comes through
    greeted: bool = False  # the fault comes after a good start: RFB first, then the close


PROXY_CASES = [
    ProxyCase("drop", 2),  # upgrade, then a TCP reset without a close frame
    ProxyCase("dropfin", 2),  # upgrade, then a plain close without a close frame (nova)
    ProxyCase("text", 1),  # text frames where binary RFB was expected
    ProxyCase("sink", 1),  # upgrade, then never a greeting: the connect timeout
    ProxyCase("redirect", 2),  # 302 to an internal address instead of the upgrade
    ProxyCase("refuse", 2),  # 403 instead of the upgrade
    ProxyCase("greet-then-text", 1, greeted=True),  # a text frame mid-session
    ProxyCase("greet-then-drop", 1, greeted=True),  # a reset mid-session, no close frame
    ProxyCase("greet", 1, control=True),  # last: the gateway still relays after every fault
]


async def open_ws(
    http: aiohttp.ClientSession, gateway: RunningGateway, console_id: str, *, greeted: bool
) -> tuple[aiohttp.WSMessage, bool, aiohttp.ClientWebSocketResponse]:
    """The first message the browser gets (after the RFB greeting if greeted); greeted?"""
    ws = await http.ws_connect(gateway.ws_url(console_id), headers=PORTAL)
    msg = await ws.receive(timeout=CONNECT_TIMEOUT_S * 2 + SLACK_S + 5)
    saw_greeting = msg.type is aiohttp.WSMsgType.BINARY and msg.data == RFB_GREETING
    if greeted and saw_greeting:
        msg = await ws.receive(timeout=SLACK_S + 5)
    return msg, saw_greeting, ws


async def test_hostile_console_proxy(
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    http: aiohttp.ClientSession,
    captured_logs: io.StringIO,
    servers: Servers,
    internal: ConnectionCounter,
    security_figures: SecurityFigures,
) -> None:
    backend = Backend()
    proxy = backend.app()
    proxy.router.add_get("/dropfin", drop_with_fin)
    proxy.router.add_get("/redirect", ws_redirect(internal))
    proxy.router.add_get("/greet-then-text", greet_then_text)
    proxy.router.add_get("/greet-then-drop", greet_then_drop)
    hits: Counter[str] = Counter()
    proxy.middlewares.append(count_requests(hits))
    proxy_url = await servers.start(proxy)

    def console_page(route: str) -> Behaviour:
        page = f"{proxy_url}/vnc_auto.html?token={hostile_token(route)}&path={route}"
        return console(page)

    compute = HostileCompute({f"ws-{case.route}": console_page(case.route) for case in PROXY_CASES})
    upstream = {"compute_url": await servers.start(compute.app()), "timeout_s": TIMEOUT_S}
    relay = {"connect_timeout_s": CONNECT_TIMEOUT_S}
    gateway = await serve_gateway(real_redis, {"upstream": upstream, "relay": relay})

    failures: list[str] = []
    refused = server_errors = leaks = survived = 0
    seconds: dict[str, float] = {}
    try:
        for case in PROXY_CASES:
            server = f"ws-{case.route}"
            created = await create(http, gateway, server)
            if created.status != 201:
                server_errors += created.status >= 500
                failures.append(f"{server}: create answered {created.status}")
                continue
            leaks += bool(found_secrets(created.text))
            started = time.monotonic()
            console_id = created.body["console"]["id"]
            msg, saw_greeting, ws = await open_ws(http, gateway, console_id, greeted=case.greeted)
            took = seconds[case.route] = time.monotonic() - started
            if saw_greeting != (case.control or case.greeted):
                failures.append(f"{server}: RFB greeting {'not ' * (not saw_greeting)}relayed")
            if case.control:
                survived = len(PROXY_CASES) - 1 if saw_greeting else 0
            else:
                reason = str(msg.extra or "")
                if msg.type is aiohttp.WSMsgType.CLOSE and msg.data == INTERNAL_ERROR:
                    refused += 1
                else:
                    server_errors += 1
                    failures.append(f"{server}: {msg.type} {msg.data!r}, expected a 1011 close")
                if found_secrets(reason):
                    leaks += 1
                    failures.append(f"{server}: close reason leaks a secret")
            await ws.close()
            bound = 2 * CONNECT_TIMEOUT_S + SLACK_S
            if took > bound:
                failures.append(f"{server}: {took:.2f}s > {bound}s")
            if compute.calls[server] != case.fetches:
                failures.append(f"{server}: {compute.calls[server]} upstream fetches")
    finally:
        backend.release.set()  # ends the sink handler
    log_leaks = found_secrets(captured_logs.getvalue())
    security_figures.add(
        AREA_PROXY,
        inputs=len(PROXY_CASES) - 1,
        refused=refused,
        server_errors=server_errors,
        state_changes=internal.connections,
        leaks=leaks + len(log_leaks),
        faults_survived=survived,
        max_seconds=round(max(seconds.values(), default=0.0), 3),
        sink_seconds=round(seconds.get("sink", -1.0), 3),
        internal_connections=internal.connections,
    )
    assert not failures, "\n".join(failures)
    assert internal.connections == 0  # the 302 to 127.0.0.2 was not followed
    assert log_leaks == []
    # Each hostile proxy was reached, as often as fetched: the refusals are the gateway's.
    assert hits == {f"/{case.route}": case.fetches for case in PROXY_CASES}
    assert all(SECRET in query["token"] for query in backend.queries)
    assert CONNECT_TIMEOUT_S * 0.9 <= seconds["sink"] < 2 * CONNECT_TIMEOUT_S + SLACK_S
