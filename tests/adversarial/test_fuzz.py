"""Schema-driven fuzzing (issue 6, item 2): >= 10,000 generated requests against a served gateway.

Every operation of /openapi.json gets schemathesis cases (positive and negative generation, from
a derandomized hypothesis run), each sent with a mix of authorizations (valid, admin, none,
expired, forged, alg none, wrong audience or issuer, Basic, the random strings schemathesis drew);
some valid ones are steered onto real projects, servers and consoles so the deep paths run too.
Hostile bodies (deep nesting, huge numbers, odd unicode, wrong content types, compression,
oversize and chunked bodies) ride on the POST operations. The gateway is served on a real port
(AppRunner), in front of the compute simulator, on the real redis-server.

Requests go one at a time over one keep-alive session, so each Redis write (keyspace events,
drained up to a PING's pong after each response) and each upstream call (the simulator's
counter) belongs to exactly one request. Asserted: no 5xx; no refused (4xx) request writes to
Redis or calls the upstream, except the documented traces of an authorized create the cloud
itself refused (404/409: rate-limit window, single-flight lock, negative cache); every error has
the contract's shape (native or Nova); every answer conforms to the document (schemathesis'
status-code, content-type, header and body-schema checks); no upstream token in any answer.
"""

from __future__ import annotations

import io
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import schemathesis
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from yarl import URL

from gateway.simulator.state import ComputeSimulator
from tests.adversarial.fuzz_support import (
    AuthMix,
    FuzzCase,
    HostileBody,
    Operation,
    Wire,
    WriteWatch,
    error_shape_problems,
    generate_cases,
    generate_hostile,
    load_operations,
    pick_auth_kinds,
    to_wire,
    writes_allowed_for_refusal,
)
from tests.conftest import GatewayServer
from tests.figures import SecurityFigures
from tests.support import MISSING_SERVER, PROJECT, SERVER, STOPPED_SERVER, UPSTREAM_TOKEN

SEED = 20261127
MIN_REQUESTS = 10_000
# Cases per operation and generation mode: more where the input reaches deeper.
CASES_PER_MODE = {
    ("POST", "/v1/consoles"): 300,
    ("GET", "/v1/consoles/{console_id}"): 120,
    ("DELETE", "/v1/consoles/{console_id}"): 120,
    ("POST", "/v2.1/{project_id}/servers/{server_id}/remote-consoles"): 300,
    ("GET", "/console/{console_id}"): 100,
    ("GET", "/ws/{console_id}"): 100,
    ("GET", "/static/{path}"): 100,
}
CASES_PUBLIC_DEFAULT = 40  # /, /v2.1, /v2.1/, /healthz, /readyz, /metrics, /openapi.json
# Generating a schemathesis case costs 3-15 ms here, sending one ~1 ms: so each case of a
# protected operation goes out with several authorizations (distinct requests, distinct paths).
AUTH_KINDS_PER_CASE = 5
HOSTILE_BODIES = 2000
STEER_SHARE = 0.35  # of accepted-auth positive cases, pointed at real projects/servers/consoles
SWAP_METHOD_SHARE = 0.03  # cases sent with a method their path does not have
# Not CONNECT: aiohttp reads what follows it as tunnel bytes (on the sender's own connection).
ODD_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]
RESPONSE_CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CONSOLE_ID = re.compile(r"[A-Za-z0-9_-]{43}")
NATIVE_CREATE = ("POST", "/v1/consoles")
NOVA_CREATE = ("POST", "/v2.1/{project_id}/servers/{server_id}/remote-consoles")
CONSOLE_BY_ID = {("GET", "/v1/consoles/{console_id}"), ("DELETE", "/v1/consoles/{console_id}")}


@dataclass
class Planned:
    case: FuzzCase
    wire: Wire
    auth: str
    hostile: HostileBody | None = None
    steered: bool = False
    swapped_method: bool = False  # an undocumented method: 405 expected, no schema to check


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    state_changes: list[str] = field(default_factory=list)
    upstream_refusals: int = 0  # authorized creates the cloud refused (404/409)
    unseen_creations: int = 0  # 201s whose writes the watcher missed (proves it watches)
    shape_problems: list[str] = field(default_factory=list)
    schema_problems: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    cut_connections: list[str] = field(default_factory=list)
    unsendable: int = 0
    auth_kinds: Counter[str] = field(default_factory=Counter)
    hostile_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def refused(self) -> int:
        return sum(n for status, n in self.statuses.items() if 400 <= status < 500)

    def histogram(self) -> str:
        return " ".join(f"{status}:{n}" for status, n in sorted(self.statuses.items()))


def op_key(operation: Operation) -> tuple[str, str]:
    return operation.method.upper(), operation.path


def set_auth(wire: Wire, kind: str, auth: AuthMix, rng: random.Random, nova: bool) -> None:
    if kind == "generated":
        return  # whatever schemathesis drew (random strings, or nothing)
    wire.set_header("Authorization", None)
    wire.set_header("X-Auth-Token", None)
    value = auth.values[kind]
    if value is None:
        return
    if nova and value.startswith("Bearer ") and rng.random() < 0.5:
        wire.set_header("X-Auth-Token", value.removeprefix("Bearer "))
    else:
        wire.set_header("Authorization", value)


def steer(
    wire: Wire, key: tuple[str, str], base_url: str, rng: random.Random, consoles: list[str]
) -> None:
    """Point a well-formed case at real ids, so the workflow behind validation runs too."""
    server = rng.choice([SERVER, SERVER, STOPPED_SERVER, MISSING_SERVER])
    if key == NATIVE_CREATE and wire.body:
        body = json.loads(wire.body)
        if isinstance(body, dict):
            body.update(project_id=PROJECT, server_id=server)
            wire.body = json.dumps(body).encode()
    elif key == NOVA_CREATE:
        query = URL(wire.url, encoded=True).raw_query_string
        path = f"/v2.1/{PROJECT}/servers/{server}/remote-consoles"
        wire.url = base_url + path + (f"?{query}" if query else "")
        wire.set_header("OpenStack-API-Version", rng.choice(["compute 2.6", "compute latest"]))
    elif key in CONSOLE_BY_ID and consoles:
        wire.url = base_url + f"/v1/consoles/{rng.choice(consoles)}"


def apply_hostile(wire: Wire, hostile: HostileBody) -> None:
    wire.body = hostile.body
    wire.set_header("Content-Type", hostile.content_type)
    wire.set_header("Content-Encoding", hostile.content_encoding)


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 4096):
        yield body[start : start + 4096]


async def send(
    http: aiohttp.ClientSession, planned: Planned
) -> tuple[int, dict[str, list[str]], bytes, float]:
    wire = planned.wire
    data: Any = wire.body
    if planned.hostile is not None and planned.hostile.chunked:
        data = _chunks(wire.body or b"")
    elif wire.body is not None and len(wire.body) > 64 * 1024:
        data = io.BytesIO(wire.body)  # aiohttp warns about large raw bytes
    skip = {"Content-Type"} if wire.header("Content-Type") is None else set()
    started = time.perf_counter()
    async with http.request(
        wire.method,
        URL(wire.url, encoded=True),
        headers=wire.headers,
        data=data,
        skip_auto_headers=skip,
        allow_redirects=False,
    ) as response:
        body = await response.read()
        headers: dict[str, list[str]] = {}
        for name, value in response.headers.items():
            headers.setdefault(name, []).append(value)
        return response.status, headers, body, time.perf_counter() - started


def plan_requests(
    operations: list[Operation], base_url: str, rng: random.Random, auth: AuthMix
) -> tuple[list[Planned], int]:
    planned: list[Planned] = []
    unsendable = 0
    hostile = generate_hostile(HOSTILE_BODIES)
    for operation in operations:
        key = op_key(operation)
        protected = bool(operation.definition.raw.get("security", [{}]))
        count = CASES_PER_MODE.get(key, CASES_PUBLIC_DEFAULT)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for case in generate_cases(operation, mode, count):
                kinds = pick_auth_kinds(rng, AUTH_KINDS_PER_CASE) if protected else ["generated"]
                for kind in kinds:
                    wire = to_wire(case, base_url)
                    if wire is None:
                        unsendable += 1
                        continue
                    set_auth(wire, kind, auth, rng, nova=key == NOVA_CREATE)
                    planned.append(Planned(case, wire, kind))
    # Hostile bodies on the two create operations, mostly with a valid token (so they are read).
    creates = [op for op in operations if op_key(op) in (NATIVE_CREATE, NOVA_CREATE)]
    templates = [p for p in planned if op_key(p.case.operation) in (NATIVE_CREATE, NOVA_CREATE)]
    assert len(creates) == 2 and templates
    for body in hostile:
        template = rng.choice(templates)
        wire = to_wire(template.case, base_url)
        if wire is None:
            unsendable += 1
            continue
        kind = rng.choice(["valid", "valid", "valid", "admin", "none", "forged"])
        set_auth(wire, kind, auth, rng, nova=op_key(template.case.operation) == NOVA_CREATE)
        if op_key(template.case.operation) == NOVA_CREATE:
            steer(wire, NOVA_CREATE, base_url, rng, [])
        apply_hostile(wire, body)
        planned.append(Planned(template.case, wire, kind, body))
    rng.shuffle(planned)
    # Steering last, so the choice does not depend on generation order details.
    for item in planned:
        if item.hostile is None and auth.accepted(item.auth) and rng.random() < STEER_SHARE:
            if item.case.meta is None or item.case.meta.generation.mode == GenerationMode.POSITIVE:
                item.steered = True
        elif item.hostile is None and rng.random() < SWAP_METHOD_SHARE:
            path_item = item.case.operation.schema.raw_schema["paths"][item.case.operation.path]
            allowed = {method.upper() for method in path_item} | {"HEAD"}
            item.wire.method = rng.choice([m for m in ODD_METHODS if m not in allowed])
            item.swapped_method = True
    return planned, unsendable


def conformance_problems(
    planned: Planned, status: int, headers: dict[str, list[str]], body: bytes, elapsed: float
) -> str | None:
    response = schemathesis.Response(
        status_code=status,
        headers=headers,
        content=body,
        request=planned.wire.prepared,
        elapsed=elapsed,
        verify=True,
    )
    try:
        planned.case.validate_response(response, checks=RESPONSE_CHECKS)
    except AssertionError as exc:  # FailureGroup and the single check failures
        # Without schemathesis' curl line: it would repeat the URL (and maybe a console id).
        text = redact(str(exc).split("Reproduce with")[0])
        return f"{planned.wire.method} {redact(planned.wire.url)} -> {status}: {text[:400]}"
    return None


def redact(text: str) -> str:
    """Console ids are capabilities: failure messages show none whole."""
    return CONSOLE_ID.sub("<console-id>", text)


async def test_schema_fuzzing_gets_4xx_and_changes_nothing(
    serve_gateway: GatewayServer,
    real_redis: aioredis.Redis,
    redis_server: str,
    simulator: ComputeSimulator,
    http: aiohttp.ClientSession,
    security_figures: SecurityFigures,
) -> None:
    gateway = await serve_gateway(real_redis)
    async with http.get(f"{gateway.url}/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    operations = load_operations(document)
    assert len(operations) == 14

    rng = random.Random(SEED)
    auth = AuthMix()
    generation_started = time.perf_counter()
    planned, unsendable = plan_requests(operations, gateway.url, rng, auth)
    generation_s = time.perf_counter() - generation_started
    consoles = [await gateway.new_console(http) for _ in range(3)]

    tally = Tally(unsendable=unsendable)
    watch = WriteWatch(aioredis.Redis.from_url(redis_server))
    await watch.start()
    sending_started = time.perf_counter()
    try:
        for item in planned:
            key = op_key(item.case.operation)
            if item.steered:
                steer(item.wire, key, gateway.url, rng, consoles)
            calls_before = simulator.console_calls
            try:
                status, headers, body, elapsed = await send(http, item)
            except aiohttp.ClientError as exc:
                # Only a body the gateway refused unread may have its connection cut.
                kind = item.hostile.kind if item.hostile else "-"
                tally.cut_connections.append(f"{redact(item.wire.url)} {kind}: {exc!r}"[:300])
                await watch.drain()
                continue
            writes = await watch.drain()
            upstream_calls = simulator.console_calls - calls_before
            record(tally, item, status, headers, body, elapsed, writes, upstream_calls)
            if status == 201 and len(consoles) < 20:
                consoles.append(json.loads(body)["console"]["id"])
    finally:
        await watch.stop()
        await watch.client.aclose()
    sending_s = time.perf_counter() - sending_started

    security_figures.add(
        "fuzzing",
        inputs=tally.sent,
        refused=tally.refused,
        server_errors=len(tally.server_errors),
        state_changes=len(tally.state_changes),
        leaks=len(tally.leaks),
        statuses=tally.histogram(),
        operations=len(operations),
        upstream_refusals=tally.upstream_refusals,
        hostile_bodies=sum(tally.hostile_kinds.values()),
        hostile_kinds=" ".join(f"{k}:{n}" for k, n in sorted(tally.hostile_kinds.items())),
        auth_kinds=" ".join(f"{k}:{n}" for k, n in sorted(tally.auth_kinds.items())),
        shape_violations=len(tally.shape_problems),
        schema_violations=len(tally.schema_problems),
        cut_connections=len(tally.cut_connections),
        unsendable_cases=tally.unsendable,
        generation_s=round(generation_s, 1),
        sending_s=round(sending_s, 1),
        requests_per_s=round(tally.sent / sending_s),
    )
    assert tally.sent >= MIN_REQUESTS, tally.sent
    assert tally.server_errors == [], tally.server_errors[:10]
    assert tally.state_changes == [], tally.state_changes[:10]
    assert tally.leaks == [], tally.leaks[:10]
    assert tally.shape_problems == [], tally.shape_problems[:10]
    assert tally.schema_problems == [], tally.schema_problems[:10]
    assert tally.cut_connections == [], tally.cut_connections[:10]
    # The mix really reached every layer: refusals of each kind and real successes.
    for status in (200, 201, 204, 400, 401, 403, 404, 405, 409, 410, 413, 415):
        assert tally.statuses[status] > 0, (status, tally.histogram())
    assert tally.upstream_refusals > 0
    assert tally.unseen_creations == 0  # the write watcher saw every console record written
    assert sending_s < 300, sending_s  # generous: a shared 2-core machine


def record(
    tally: Tally,
    item: Planned,
    status: int,
    headers: dict[str, list[str]],
    body: bytes,
    elapsed: float,
    writes: list[tuple[str, str]],
    upstream_calls: int,
) -> None:
    tally.sent += 1
    tally.statuses[status] += 1
    tally.auth_kinds[item.auth] += 1
    if item.hostile is not None:
        tally.hostile_kinds[item.hostile.kind] += 1
    where = f"{item.wire.method} {redact(item.wire.url)[:120]} auth={item.auth}"
    if item.hostile is not None:
        where += f" hostile={item.hostile.kind}"
    flat = {name: values[0] for name, values in headers.items()}
    if status == 201 and not any(key.endswith(":console") for _, key in writes):
        tally.unseen_creations += 1
    if status >= 500:
        tally.server_errors.append(f"{where} -> {status} {body[:200]!r}")
    if 400 <= status < 500:
        upstream_refusal = status in (404, 409) and any(k.endswith(":creates") for _, k in writes)
        if upstream_refusal:
            tally.upstream_refusals += 1
        if not writes_allowed_for_refusal(status, writes):
            tally.state_changes.append(f"{where} -> {status} wrote {writes[:5]}")
        if upstream_calls and not upstream_refusal:
            tally.state_changes.append(f"{where} -> {status} called the upstream")
    if status >= 400:
        path = URL(item.wire.url, encoded=True).path
        for problem in error_shape_problems(path, status, flat, body):
            tally.shape_problems.append(f"{where} -> {status}: {problem}")
    if item.swapped_method:
        if status != 405:
            tally.shape_problems.append(f"{where} -> {status}, not 405")
    else:
        mismatch = conformance_problems(item, status, headers, body, elapsed)
        if mismatch is not None:
            tally.schema_problems.append(f"auth={item.auth} {mismatch}")
    text = body.decode("utf-8", "replace") + json.dumps(flat)
    if UPSTREAM_TOKEN in text or "vnc_auto.html" in text or "token=" in text:
        tally.leaks.append(where)
