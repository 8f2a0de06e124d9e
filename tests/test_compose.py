"""deploy/compose: every service, port, path and setting compose.yaml names exists and fits.

No Docker engine runs here, so the file is read the way `docker compose` reads it: YAML (with
merge keys), then ${VAR} interpolation from .env (here .env.example), then each reference
checked against the repository, the gateway's own config validation and CLI parser, the shipped
nginx template, and the other services."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from gateway.auth.verifier import create_verifier
from gateway.cli import build_parser
from gateway.config import Settings
from gateway.config_loader import load_settings
from gateway.simulator.standalone import DEMO_PROJECT, SERVERS

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
MINT_SCRIPT = COMPOSE_DIR / "mint-trial-jwt.py"
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "console-gateway.conf.template"
NGINX_TEMPLATES_DIR = "/etc/nginx/templates/"

SERVICES = {"redis", "simulator", "gw-1", "gw-2", "lb"}
GATEWAYS = ("gw-1", "gw-2")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

Obj = dict[str, Any]


class InterpolationError(Exception):
    pass


# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME, $$
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution; an unset variable without a default is an error here
    (compose would only warn and substitute an empty string)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"]
        current = env.get(name)
        empty_counts_as_unset = op in (":-", ":?")
        if current is not None and not (empty_counts_as_unset and current == ""):
            return current
        if op in ("-", ":-"):
            return str(arg)
        raise InterpolationError(f"{name} is not set ({arg or 'no default'})")

    return _VARIABLE.sub(substitute, value)


def strings(value: Any) -> list[str]:
    """Every string value in a parsed YAML document (comments are not values)."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path}: not NAME=value: {line!r}"
        env[name.strip()] = value.strip()
    return env


def raw_compose() -> Obj:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@functools.cache
def compose() -> Obj:
    """compose.yaml as docker compose sees it with .env.example copied to .env."""
    data = interpolate(raw_compose(), read_env_file(ENV_EXAMPLE))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Obj]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: Obj) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # ["NAME=value", ...]
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str


def bind_mounts(service: Obj) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/", "~")):
                continue  # a named volume
        mounts.append(Mount((COMPOSE_DIR / source).resolve(), target))
    return mounts


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str


def published_ports(service: Obj) -> list[Published]:
    ports = []
    for spec in service.get("ports", []):
        if isinstance(spec, dict):
            ports.append(
                Published(
                    str(spec.get("host_ip", "0.0.0.0")),
                    int(spec["published"]),
                    int(spec["target"]),
                    str(spec.get("protocol", "tcp")),
                )
            )
            continue
        text, _, protocol = str(spec).partition("/")
        parts = text.rsplit(":", 2)
        assert len(parts) >= 2, f"{spec!r}: publish host ports explicitly, not at random"
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        ports.append(Published(host_ip, int(parts[-2]), int(parts[-1]), protocol or "tcp"))
    return ports


def command(service: Obj) -> list[str]:
    cmd = service.get("command", [])
    assert isinstance(cmd, list), "use the exec form (a list): no shell in between"
    return [str(part) for part in cmd]


def gateway_settings(name: str) -> Settings:
    """The settings a gateway container starts with: its CGW_CONFIG file (found through its
    bind mount) and its environment, validated by the gateway's own loader."""
    service = services()[name]
    env = environment(service)
    config_path = env["CGW_CONFIG"]
    mounts = {mount.target: mount.source for mount in bind_mounts(service)}
    assert config_path in mounts, f"{name}: CGW_CONFIG {config_path} is not a mounted file"
    return load_settings(mounts[config_path], env)


def simulator_args() -> Any:
    return build_parser().parse_args(command(services()["simulator"]))


def healthcheck_urls(service: Obj) -> list[str]:
    test = service["healthcheck"]["test"]
    return re.findall(r"https?://[^'\" ]+", " ".join(test))


# --- the file itself -------------------------------------------------------------------------


def test_the_trial_has_its_five_services_on_one_network() -> None:
    assert set(services()) == SERVICES
    networks = compose()["networks"]
    for name, service in services().items():
        attached = service.get("networks", [])
        assert set(attached) == {"trial"}, name
        assert set(attached) <= set(networks), name


def test_every_variable_comes_from_env_example_and_every_entry_there_is_used() -> None:
    # Required: without .env compose refuses to start instead of running with empty secrets.
    with pytest.raises(InterpolationError, match="CGW_"):
        interpolate(raw_compose(), {})
    used = {
        m["braced"] or m["bare"]
        for text in strings(raw_compose())
        for m in _VARIABLE.finditer(text)
        if not m["escaped"]
    }
    assert used == set(read_env_file(ENV_EXAMPLE))
    for value in read_env_file(ENV_EXAMPLE).values():
        assert value.startswith("replace-me"), "placeholders only: real secrets go in .env"


def test_dot_env_is_ignored_by_git_and_the_trial_files_are_not() -> None:
    def ignored(path: Path) -> bool:
        result = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", str(path.relative_to(REPO))],
            cwd=REPO, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0

    assert ignored(COMPOSE_DIR / ".env"), ".env holds the trial's secrets: never commit it"
    for path in (COMPOSE_FILE, ENV_EXAMPLE, MINT_SCRIPT, COMPOSE_DIR / "gateway.yaml"):
        assert path.is_file() and not ignored(path), path
    # The path the comments tell people to run is the one mounted.
    mounted = {m.target for name in GATEWAYS for m in bind_mounts(services()[name])}
    assert "/etc/console-gateway/mint-trial-jwt.py" in mounted
    assert "python /etc/console-gateway/mint-trial-jwt.py" in COMPOSE_FILE.read_text()


def test_build_contexts_and_dockerfiles_exist() -> None:
    built = [name for name, service in services().items() if "build" in service]
    assert set(built) == {"simulator", *GATEWAYS}, "the gateways and the simulator share one image"
    images = {services()[name]["image"] for name in built}
    assert len(images) == 1, "one image, built once"
    for name in built:
        build = services()[name]["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == REPO, name
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def test_the_image_entrypoint_is_console_gateway() -> None:
    """compose.yaml gives only the subcommand (serve, simulate): the image supplies the rest."""
    instructions = re.findall(
        r"^\s*ENTRYPOINT\s+(.+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE
    )
    assert instructions, "the Dockerfile has no ENTRYPOINT"
    entrypoint = json.loads(instructions[-1])  # the runtime stage's, in exec form
    assert entrypoint[-1] == "console-gateway"


def test_every_bind_mounted_host_path_exists() -> None:
    count = 0
    for name, service in services().items():
        for mount in bind_mounts(service):
            assert mount.source.exists(), f"{name}: {mount.source} does not exist"
            assert mount.source.is_relative_to(REPO), f"{name}: {mount.source} is outside the repo"
            count += 1
    assert count >= 5  # config + mint script on each gateway, the nginx template


def test_published_ports_do_not_collide_and_stay_on_loopback() -> None:
    seen: dict[tuple[int, str], str] = {}
    for name, service in services().items():
        for port in published_ports(service):
            key = (port.host_port, port.protocol)
            assert key not in seen, f"{name} and {seen[key]} both publish {port.host_port}"
            seen[key] = name
            assert port.host_ip == "127.0.0.1", f"{name}: a trial listens on loopback only"
    assert {"lb", *GATEWAYS} <= set(seen.values())


def test_depends_on_names_existing_services_with_healthchecks_and_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for name, service in services().items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        graph[name] = set(depends)
        for target, spec in depends.items():
            assert target in services(), f"{name} depends on unknown {target}"
            assert spec["condition"] in CONDITIONS
            assert spec["condition"] == "service_healthy", f"{name} -> {target}"
    assert graph["lb"] == set(GATEWAYS)
    for gateway in GATEWAYS:
        assert graph[gateway] == {"redis", "simulator"}

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        for nxt in graph[node]:
            visit(nxt, (*path, node))

    for node in graph:
        visit(node, ())


# --- nginx: the shipped template, fed with service names -------------------------------------


def test_nginx_renders_the_shipped_template_with_every_variable_defined() -> None:
    lb = services()["lb"]
    assert str(lb["image"]).startswith("nginx:"), "the official image does the envsubst"
    templates = [m for m in bind_mounts(lb) if m.target.startswith(NGINX_TEMPLATES_DIR)]
    assert [m.source for m in templates] == [NGINX_TEMPLATE]
    assert templates[0].target.endswith(".template")
    env = environment(lb)
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text()))
    assert needed == {"CGW_LISTEN", "CGW_UPSTREAM_1", "CGW_UPSTREAM_2"}
    assert needed <= set(env), "an undefined ${VAR} would stay in the file and break nginx"
    # Every defined variable is substituted: none may shadow one of nginx's own $variables.
    nginx_variables = set(re.findall(r"\$([a-z_][a-z0-9_]*)", NGINX_TEMPLATE.read_text()))
    assert not {name.lower() for name in env} & nginx_variables


def test_nginx_listens_where_it_is_published_and_proxies_to_both_gateways() -> None:
    lb = services()["lb"]
    env = environment(lb)
    listen = int(env["CGW_LISTEN"])
    assert [p.container_port for p in published_ports(lb)] == [listen]
    assert any(f":{listen}/" in url for url in healthcheck_urls(lb))
    upstreams = [env["CGW_UPSTREAM_1"], env["CGW_UPSTREAM_2"]]
    hosts = [u.rpartition(":")[0] for u in upstreams]
    assert sorted(hosts) == sorted(GATEWAYS)
    for upstream in upstreams:
        host, _, port = upstream.rpartition(":")
        assert int(port) == gateway_settings(host).server.port


# --- the gateways: their config validates and names the other services -----------------------


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_config_validates_and_points_at_compose_services(name: str) -> None:
    settings = gateway_settings(name)
    assert settings.auth.hs256_secret is not None  # from .env, not from the file
    assert (
        settings.upstream.token.get_secret_value()
        == read_env_file(ENV_EXAMPLE)["CGW_UPSTREAM_TOKEN"]
    )
    compute = urlsplit(settings.upstream.compute_url)
    assert compute.hostname == "simulator" and compute.hostname in services()
    assert compute.port == simulator_args().compute_port
    assert list(settings.upstream.console_hosts) == [simulator_args().public_host]
    assert simulator_args().public_host in services()
    redis = urlsplit(settings.redis.url)
    assert redis.scheme == "redis" and redis.hostname in services()
    assert str(services()[str(redis.hostname)]["image"]).startswith("redis:")
    assert (redis.port or 6379) == 6379


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_serves_on_its_healthchecked_and_published_port(name: str) -> None:
    service, settings = services()[name], gateway_settings(name)
    assert command(service) == ["serve"]
    assert build_parser().parse_args(command(service)).command == "serve"
    (url,) = healthcheck_urls(service)
    assert urlsplit(url).port == settings.server.port and urlsplit(url).path == "/readyz"
    assert [p.container_port for p in published_ports(service)] == [settings.server.port]
    assert str(settings.server.novnc_dir) == "/opt/novnc"  # where the image puts noVNC


def test_gateways_differ_only_in_instance_id_and_port() -> None:
    one, two = (gateway_settings(name) for name in GATEWAYS)
    assert one.server.instance_id == "gw-1" and two.server.instance_id == "gw-2"
    assert one.model_copy(update={"server": two.server}) == two
    assert one.server.model_copy(update={"instance_id": "gw-2"}) == two.server


def test_console_links_point_at_the_published_load_balancer() -> None:
    settings = gateway_settings("gw-1")
    public = urlsplit(settings.server.public_base_url)
    (lb_port,) = published_ports(services()["lb"])
    assert public.hostname in ("localhost", "127.0.0.1")
    assert public.port == lb_port.host_port
    origins = {urlsplit(o).netloc for o in settings.server.allowed_origins}
    assert f"127.0.0.1:{lb_port.host_port}" in origins | {public.netloc}


def test_gateways_trust_exactly_the_load_balancer_address() -> None:
    lb_address = ipaddress.ip_address(services()["lb"]["networks"]["trial"]["ipv4_address"])
    (subnet,) = (
        ipaddress.ip_network(cfg["subnet"])
        for cfg in compose()["networks"]["trial"]["ipam"]["config"]
    )
    assert lb_address in subnet
    for name in GATEWAYS:
        trusted = gateway_settings(name).server.trusted_proxies
        assert trusted == (ipaddress.ip_network(f"{lb_address}/32"),), name


def test_stop_grace_period_covers_the_drain() -> None:
    for name in GATEWAYS:
        service, settings = services()[name], gateway_settings(name)
        match = re.fullmatch(r"(\d+)s", str(service["stop_grace_period"]))
        assert match is not None
        assert int(match.group(1)) > settings.drain.deadline_s
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


# --- the simulator ---------------------------------------------------------------------------


def test_simulator_command_parses_and_accepts_the_gateways_token() -> None:
    service = services()["simulator"]
    args = simulator_args()
    assert args.command == "simulate" and args.host == "0.0.0.0"
    assert args.public_host == "simulator"
    (url,) = healthcheck_urls(service)
    assert urlsplit(url).port == args.compute_port
    token = environment(service)["CGW_SIM_SERVICE_TOKEN"]
    assert token == gateway_settings("gw-1").upstream.token.get_secret_value()
    assert "demo-server" in SERVERS and "demo-stopped" in SERVERS  # the servers the comments name
    assert "demo-server" in COMPOSE_FILE.read_text() and DEMO_PROJECT in COMPOSE_FILE.read_text()


# --- the trial JWT ---------------------------------------------------------------------------


def mint(*args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGW_")}
    if secret is not None:
        env["CGW_AUTH_HS256_SECRET"] = secret
    return subprocess.run(
        [sys.executable, str(MINT_SCRIPT), *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


async def test_minted_trial_jwt_is_accepted_by_the_gateway_config() -> None:
    settings = gateway_settings("gw-1")
    assert settings.auth.hs256_secret is not None
    secret = settings.auth.hs256_secret.get_secret_value()
    user = mint(secret=secret)
    admin = mint("ops", "--admin", secret=secret)
    assert user.returncode == 0 and admin.returncode == 0, user.stderr + admin.stderr
    async with aiohttp.ClientSession() as session:
        verifier = create_verifier(settings.auth, session)
        principal = await verifier.verify(user.stdout.strip())
        assert principal.subject == "trial-user" and not principal.is_admin
        assert principal.projects == {DEMO_PROJECT}
        boss = await verifier.verify(admin.stdout.strip())
        assert boss.subject == "ops" and boss.is_admin


def test_mint_refuses_without_a_secret() -> None:
    result = mint(secret=None)
    assert result.returncode == 2 and result.stdout == ""
    assert "CGW_AUTH_HS256_SECRET" in result.stderr
