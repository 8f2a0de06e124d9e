"""The leak scanner itself (tests/leaks.py): it must see every channel, and it must be able to
fail — shown on a private scanner fed real outputs, and end to end in a pytest subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import METRICS
from gateway.metrics import GatewayMetrics
from gateway.simulator.state import ComputeSimulator
from tests import leaks
from tests.conftest import GatewayFactory, GatewayServer
from tests.figures import SecurityFigures
from tests.support import PROJECT, SERVER, bearer, mint_jwt

ROOT = Path(__file__).resolve().parents[1]
Client = TestClient[web.Request, web.Application]


def issue_token(sim: ComputeSimulator) -> str:
    url = sim.issue_console_url(sim.servers[SERVER])
    return url.rsplit("token=", 1)[1]


@pytest.fixture
def private_scanner() -> Iterator[tuple[leaks.LeakScanner, logging.Logger]]:
    """A scanner of the test's own (not the session's) and a logger that feeds only it."""
    scanner = leaks.LeakScanner()
    logger = logging.getLogger("tests.leaks.private")
    logger.propagate = False  # the session's scanner must not see the planted secrets
    logger.setLevel(logging.DEBUG)
    logger.addHandler(scanner.handler)
    scanner.begin()
    try:
        yield scanner, logger
    finally:
        logger.removeHandler(scanner.handler)
        logger.propagate = True


def test_a_log_line_with_a_simulator_token_is_reported_by_hash_only(
    private_scanner: tuple[leaks.LeakScanner, logging.Logger], simulator: ComputeSimulator
) -> None:
    scanner, logger = private_scanner
    token = issue_token(simulator)
    logger.info("console ready on %s", token)  # bare: the formatter cannot know it is a token
    logger.info("fetched http://proxy/vnc_auto.html?token=%s", token)  # redacted by the formatter
    logger.info("nothing to see")
    findings = scanner.end(scanner.secrets([simulator], []))
    assert [(f.channel, f.kind, f.secret) for f in findings] == [
        (leaks.LOG, "upstream console token", leaks.secret_hash(token))
    ]
    assert "log line 1 (tests.leaks.private INFO test_leaks.py:" in findings[0].location
    message = leaks.report(findings)
    assert leaks.secret_hash(token) in message and token not in message
    assert scanner.counts.log_lines == 3


async def test_responses_headers_ws_close_reasons_and_metrics_are_scanned(
    private_scanner: tuple[leaks.LeakScanner, logging.Logger],
    simulator: ComputeSimulator,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    scanner, _ = private_scanner
    console_token = issue_token(simulator)
    jwt = mint_jwt()
    keystone = "gAAAAA" + "k" * 60  # by shape: a Fernet token nobody registered

    async def body(request: web.Request) -> web.Response:
        return web.json_response({"url": f"wss://proxy/?token={console_token}"})

    async def header(request: web.Request) -> web.Response:
        return web.Response(text="fine", headers={"X-Echo": jwt})

    async def clean(request: web.Request) -> web.Response:
        return web.Response(text="no secret here")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=1011, message=f"upstream said {keystone}".encode())
        return ws

    app = web.Application()
    app.router.add_get("/body", body)
    app.router.add_get("/header", header)
    app.router.add_get("/ws", socket)
    app.router.add_get("/clean", clean)
    app[METRICS] = GatewayMetrics(process_metrics=False)
    app[METRICS].auth_denied(console_token)  # a label that must never hold a token
    scanner.watch(app)
    client = await aiohttp_client(app)
    for path in ("/body", "/header", "/clean"):
        async with client.get(path) as response:
            assert response.status == 200
    async with client.ws_connect("/ws") as ws:
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE

    findings = scanner.end(scanner.secrets([simulator], [jwt]))
    where = {(f.channel, f.kind): f.location for f in findings}
    assert where == {
        (leaks.RESPONSE, "upstream console token"): "GET /body -> 200 body @28",
        # found by shape too, but reported once: the same secret at the same place
        (leaks.RESPONSE, "jwt (minted)"): f"GET /header -> 200 status/headers @{len('OK') + 9}",
        (leaks.WS_CLOSE, "keystone token (by shape)"): "close reason of /ws (code 1011) @14",
        (leaks.METRIC, "upstream console token"): (
            "metrics registry sample cgw_auth_denials_total{reason}"
        ),
    }
    assert scanner.counts.responses == 4 and scanner.counts.ws_close_reasons == 1
    assert scanner.counts.metric_samples > 0
    text = leaks.report(findings)
    for secret in (console_token, jwt, keystone):
        assert secret not in text


def test_short_secrets_count_only_where_a_token_stands() -> None:
    secrets = leaks.SecretSet()
    secrets.add("websockify token", "sim")
    secrets.add("jwt signing secret", "s3cret/with spaces!")
    assert list(secrets.find("simulated console, SIM screen")) == []
    assert [kind for kind, *_ in secrets.find("ws://h/websockify?token=sim&x=1")] == [
        "websockify token"
    ]
    assert [kind for kind, *_ in secrets.find('{"token": "sim"}')] == ["websockify token"]
    encoded = "key=s3cret%2Fwith%20spaces%21"  # percent-encoded forms are found too
    assert [(kind, hashed) for kind, hashed, *_ in secrets.find(encoded)] == [
        ("jwt signing secret", leaks.secret_hash("s3cret/with spaces!"))  # the secret's hash
    ]
    masked = secrets.mask("GET /x?token=sim and s3cret/with spaces! end")
    assert "sim " not in masked and "s3cret" not in masked and masked.endswith(" end")


def test_an_unsigned_or_url_encoded_jwt_is_found_by_shape() -> None:
    secrets = leaks.SecretSet()
    unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."
    encoded = "eyJhbGciOiJIUzI1NiJ9%2EeyJzdWIiOiJhbGljZSJ9%2Esig"
    assert [kind for kind, *_ in secrets.find(f"x {unsigned} y")] == ["jwt (by shape)"]
    assert [kind for kind, *_ in secrets.find(f"x={encoded}")] == ["jwt (by shape)"]
    assert list(secrets.find("eyJust a word. Not a token.")) == []


async def test_the_session_scanner_watches_every_gateway_app(
    make_gateway: GatewayFactory,
    serve_gateway: GatewayServer,
    make_settings: Callable[..., Settings],
    fake_redis: aioredis.Redis,
    http: aiohttp.ClientSession,
    leak_scanner: leaks.LeakScanner,
) -> None:
    """Fixture-built apps and apps a test builds itself; their logs, answers and metrics."""
    assert leak_scanner is leaks.SCANNER
    assert leaks.SCANNER.is_watched(create_app(make_settings(), redis=fake_redis))
    before = (leak_scanner.counts.responses, leak_scanner.counts.audit_events)
    client = await make_gateway(fake_redis)
    created = await client.post(
        "/v1/consoles",
        json={"project_id": PROJECT, "server_id": SERVER},
        headers=bearer(mint_jwt()),
    )
    assert created.status == 201
    assert leaks.SCANNER.is_watched(client.app)
    served = await serve_gateway(fake_redis)
    assert leaks.SCANNER.is_watched(served.app)
    async with http.get(f"{served.url}/v1/consoles/x", headers=bearer("not-a-jwt")) as answer:
        assert answer.status == 401  # an audited denial
    assert leak_scanner.counts.responses >= before[0] + 2
    assert leak_scanner.counts.audit_events >= before[1] + 2  # console_created + auth_denied


INNER_TESTS = """
import logging
from pathlib import Path

import pytest

from tests.support import SERVER


def issue(simulator):
    url = simulator.issue_console_url(simulator.servers[SERVER])
    token = url.rsplit("token=", 1)[1]
    Path("tokens.txt").open("a").write(token + "\\n")
    return token


def test_leaks_a_token(simulator):
    logging.getLogger("gateway.example").warning("console %s is ready", issue(simulator))


def test_redacted_by_the_formatter(simulator):
    logging.getLogger("gateway.example").warning("GET /vnc?token=%s", issue(simulator))


@pytest.mark.allow_secret_output("a redaction test logs a raw token on purpose")
def test_allowed_by_the_marker(simulator):
    logging.getLogger("gateway.example").warning("raw %s", issue(simulator))
"""


def test_a_leaking_test_fails_at_teardown_without_showing_the_secret(tmp_path: Path) -> None:
    """The whole mechanism, conftest hooks included, in a pytest of its own."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.conftest"]\n')
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    env: dict[str, Any] = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
         "--show-capture=no", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    tokens = (tmp_path / "tokens.txt").read_text().split()
    assert len(tokens) == 3
    assert done.returncode == 1, output[-3000:]
    assert "3 passed, 1 error" in output, output[-3000:]
    assert "ERROR test_inner.py::test_leaks_a_token - Failed: leak scanner: 1 secret" in output
    assert f"upstream console token {leaks.secret_hash(tokens[0])} in log: log line" in output
    assert "(gateway.example WARNING test_inner.py:" in output
    for token in tokens:
        assert token not in output


def security_report(*args: str) -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "security-report"
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_security_report_renders_any_area_and_fails_on_a_broken_rule(tmp_path: Path) -> None:
    figures = SecurityFigures()
    figures.add("ws: frames | odd name", inputs=40, refused=38, faults_survived=2, p99_ms=3.25)
    figures.add("jwt attacks", inputs=10, refused=10)
    figures.add_background("leak scanner", inputs=500, tests=3)
    path = tmp_path / "figures.json"
    figures.write(path)
    done = security_report(str(path))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[1] == "| jwt attacks | 10 | 10 | 0 | 0 | 0 | 0 |  |"
    assert rows[3] == "| ws: frames \\| odd name | 40 | 38 | 0 | 0 | 0 | 2 | p99_ms=3.25 |"
    assert rows[4] == "| **total** | **550** | **48** | **0** | **0** | **0** | **2** | 3 areas |"

    figures.add("jwt attacks", server_errors=1)
    figures.add("leak scanner", leaks=2)
    figures.write(path)
    broken = security_report(str(path))
    assert broken.returncode == 1
    assert "jwt attacks: 5xx = 1 (must be 0)" in broken.stdout
    assert "leak scanner: leaks = 2 (must be 0)" in broken.stdout

    assert security_report(str(tmp_path / "missing.json")).returncode == 2
    (tmp_path / "bad.json").write_text('{"x": {"inputs": "many"}}')
    assert security_report(str(tmp_path / "bad.json")).returncode == 2


def test_a_run_with_only_the_leak_scanner_keeps_the_last_figures(tmp_path: Path) -> None:
    path = tmp_path / "figures.json"
    figures = SecurityFigures()
    figures.add_background("leak scanner", inputs=5)
    figures.write(path)
    assert not path.exists()  # -k runs without adversarial tests do not clobber the table
