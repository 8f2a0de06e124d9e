"""The container image's recipe (Dockerfile, .dockerignore), proven without a Docker engine.

No Docker runs here, so the Dockerfile is parsed and checked (stages, what the runtime stage
installs, its user, health check, entry point, labels, environment), and then the runtime
stage's own commands are performed on this machine, with the image's paths mapped into a temp
dir: the wheel is built from exactly what the build stage copies, installed by the runtime
stage's RUN line into a clean venv, noVNC is copied as its COPY --from lines say, and the
entry point is started with the image's environment, from an empty working directory (nothing of
the checkout is importable), against the simulated compute API and a real Redis. The image's
HEALTHCHECK command is run against that process, and afterwards nothing may have been written
(the image runs with a read-only root filesystem).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config import ServerSettings
from tests.support import (
    BASE_CONFIG,
    HS_SECRET,
    PROJECT,
    SERVER,
    UPSTREAM_TOKEN,
    bearer,
    deep_merge,
    free_port,
    mint_jwt,
)

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
START_TIMEOUT_S = 20
# Anything that builds software, fetches it or opens a shell to the network has no place in the
# runtime stage (the base image's pip is used once, to install the wheel).
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|gcc|g\+\+|make|build-essential|npm|node|curl|wget|git|setuptools)\b"
)


# --- a small Dockerfile reader -------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.args)

    def flags(self) -> dict[str, str]:
        """Leading --name=value options (COPY --from, RUN --mount, HEALTHCHECK --interval)."""
        found: dict[str, str] = {}
        for word in self.words():
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            found[name] = value
        return found

    def operands(self) -> list[str]:
        return [w for w in self.words() if not w.startswith("--")]

    def exec_form(self, after: str = "") -> list[str]:
        """The JSON array of CMD, ENTRYPOINT or HEALTHCHECK (after the given word)."""
        text = self.args.split(after, 1)[1] if after else self.args
        value = json.loads(text.strip())
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return [str(v) for v in value]

    def pairs(self) -> dict[str, str]:
        """ENV / LABEL / ARG key=value pairs (quotes removed as the builder does)."""
        found: dict[str, str] = {}
        for word in self.words():
            key, _, value = word.partition("=")
            found[key] = value
        return found


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for instruction in self.all("ENV"):
            merged.update(instruction.pairs())
        return merged

    def workdir(self) -> str:
        return self.all("WORKDIR")[-1].args.strip() if self.all("WORKDIR") else "/"


def read_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage: comment lines dropped, backslash continuations joined."""
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # the builder drops comment lines, also inside continuations
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical.append((start, " ".join(pending)))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            words = instruction.operands()
            assert len(words) == 3 and words[1].upper() == "AS", f"line {number}: unnamed stage"
            stages.append(Stage(words[2], words[0]))
        else:
            assert stages, f"line {number}: {keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


STAGES = read_dockerfile(DOCKERFILE.read_text())
BY_NAME = {stage.name: stage for stage in STAGES}
RUNTIME = STAGES[-1]


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def mount_options(instruction: Instruction) -> dict[str, str]:
    mount = instruction.flags().get("mount", "")
    return dict(part.split("=", 1) for part in mount.split(",") if "=" in part)


# --- the recipe, read ----------------------------------------------------------------------


def test_three_stages_on_tag_pinned_slim_bases_and_every_from_names_an_earlier_stage() -> None:
    assert [(s.name, s.image) for s in STAGES] == [
        ("novnc", "node:20-bookworm-slim"),
        ("build", "python:3.11-slim-bookworm"),
        ("runtime", "python:3.11-slim-bookworm"),
    ]
    seen: set[str] = set()
    for stage in STAGES:
        for instruction in stage.instructions:
            source = instruction.flags().get("from") or mount_options(instruction).get("from")
            if source is not None:
                assert source in seen, f"line {instruction.line}: --from={source} is no stage"
        seen.add(stage.name)


def test_the_node_stage_installs_novnc_from_the_lock_file_without_dev_dependencies() -> None:
    stage = BY_NAME["novnc"]
    [copy] = stage.all("COPY")
    assert copy.operands()[:-1] == ["package.json", "package-lock.json"]
    [run] = stage.all("RUN")
    assert "npm ci --omit=dev" in run.args
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert "node_modules/@novnc/novnc" in lock["packages"]


def test_the_build_stage_builds_only_the_wheel() -> None:
    stage = BY_NAME["build"]
    [run] = stage.all("RUN")
    assert run.words()[:2] == ["pip", "wheel"]
    assert "--no-deps" in run.words() and "-w /dist" in run.args


def test_the_runtime_stage_installs_only_the_built_wheel_and_no_build_tools() -> None:
    runs = RUNTIME.all("RUN")
    installs = [r for r in runs if "pip" in r.args and " install" in r.args]
    assert len(installs) == 1, "the runtime stage runs pip install exactly once"
    [install] = installs
    mount = mount_options(install)
    assert mount["type"] == "bind" and mount["from"] == "build" and mount["source"] == "/dist"
    command = install.args.split(install.words()[0], 1)[1]  # after the --mount flag
    pip_part = command.split("&&")[-1]
    packages = [w for w in shlex.split(pip_part.split(" install", 1)[1]) if not w.startswith("-")]
    assert packages == [f"{mount['target']}/*.whl"]
    assert "--no-cache-dir" in pip_part
    for run in runs:
        assert not BUILD_TOOLS.search(run.args.replace("--no-cache-dir", "")), run
    # noVNC's files come from the node stage; nothing else is copied in but the example config.
    copies = RUNTIME.all("COPY")
    from_node = {c.operands()[1] for c in copies if c.flags().get("from") == "novnc"}
    assert {"/opt/novnc/core", "/opt/novnc/vendor"} <= from_node
    assert [c.operands()[0] for c in copies if "from" not in c.flags()] == [
        "config/gateway.example.yaml"
    ]


def test_the_runtime_stage_runs_as_a_fixed_non_root_user() -> None:
    user = RUNTIME.one("USER").args.strip()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric (runAsNonRoot) and not root"
    assert gid.isdigit() and int(gid) != 0
    creates = " ".join(r.args for r in RUNTIME.all("RUN"))
    assert f"useradd --system --uid {uid} --gid {gid}" in creates
    assert f"groupadd --system --gid {gid}" in creates
    # USER comes after every RUN: nothing runs as root once the user is set.
    assert max(r.line for r in RUNTIME.all("RUN")) < RUNTIME.one("USER").line


def test_the_runtime_stage_environment_entry_point_and_health_check() -> None:
    env = RUNTIME.env()
    assert env["CGW_CONFIG"] == "/etc/console-gateway/gateway.yaml"
    assert env["CGW_SERVER_NOVNC_DIR"] == "/opt/novnc"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert not [k for k in env if re.search(r"SECRET|TOKEN|PASSWORD|REDIS_URL", k)]
    assert RUNTIME.one("EXPOSE").args.strip() == str(ServerSettings.model_fields["port"].default)
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert RUNTIME.one("ENTRYPOINT").exec_form() == list(project["scripts"])  # console-gateway
    assert RUNTIME.one("CMD").exec_form() == ["serve"]
    check = RUNTIME.one("HEALTHCHECK")
    assert {"interval", "timeout", "start-period", "retries"} <= set(check.flags())
    argv = check.exec_form(after="CMD")
    assert argv[0] == "/opt/venv/bin/python" and "/healthz" in argv[-1]


def test_oci_labels_name_the_project_version() -> None:
    labels = RUNTIME.all("LABEL")[0].pairs()
    args = {k: v for a in RUNTIME.all("ARG") for k, v in a.pairs().items()}
    for key in ("title", "description", "version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{key}" in labels
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert args["VERSION"] == project["version"]


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(include?, pattern) in file order; the last matching rule wins, as in Docker."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern):
            if token == "**/":
                regex += "(?:.*/)?"
            elif token == "**":
                regex += ".*"
            elif token == "*":
                regex += "[^/]*"
            elif token == "?":
                regex += "[^/]"
            elif token.startswith("["):
                regex += token
            else:
                regex += re.escape(token)
        rules.append((include, re.compile(regex)))
    return rules


def in_build_context(path: str) -> bool:
    """Whether Docker sends this path: a rule matches the path or one of its parent dirs."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    sent = True
    for include, pattern in dockerignore_rules():
        if any(pattern.fullmatch(p) for p in prefixes):
            sent = include
    return sent


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    sources = [
        source
        for stage in STAGES
        for copy in stage.all("COPY")
        if "from" not in copy.flags()
        for source in copy.operands()[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert in_build_context(source), f"{source} is copied but .dockerignore leaves it out"
    assert in_build_context("gateway/web/static/console.js")
    for left_out in (".git/config", ".venv/bin/python", "node_modules/@novnc/novnc/core/rfb.js",
                     "test-output/browser/console.png", "tests/test_image.py", ".mypy_cache/x",
                     ".pytest_cache/x", "gateway/__pycache__/app.cpython-311.pyc", "build/lib/x",
                     "dist/x.whl", "docs/_build/index.html", "deploy/compose/.env",
                     "console_gateway.egg-info/PKG-INFO", "config/local.yaml"):  # fmt: skip
        assert not in_build_context(left_out), f"{left_out} would be sent to the builder"


def test_lint_image_passes_on_the_dockerfile_and_fails_on_a_sloppy_one(tmp_path: Path) -> None:
    script = REPO / "scripts" / "lint-image"
    clean = subprocess.run([script], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:3.11-slim-bookworm\nRUN pip install aiohttp\n")
    failed = subprocess.run([script, sloppy], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "DL3013" in failed.stdout


# --- the recipe, performed -----------------------------------------------------------------


@dataclass
class Image:
    """The runtime stage's filesystem, with the image's paths mapped into a temp dir."""

    root: Path
    mapping: dict[str, Path]

    def path(self, image_path: str) -> Path:
        for prefix, local in sorted(self.mapping.items(), key=lambda kv: -len(kv[0])):
            if image_path == prefix or image_path.startswith(prefix + "/"):
                return Path(str(local) + image_path[len(prefix) :])
        raise AssertionError(f"{image_path} is not mapped")

    def word(self, word: str) -> str:
        """A command-line word with image paths (also in KEY=/path) mapped."""
        for prefix in sorted(self.mapping, key=len, reverse=True):
            local = str(self.mapping[prefix]).replace("\\", "\\\\")
            word = re.sub(rf"(^|[=:]){re.escape(prefix)}(?=/|$|:)", rf"\g<1>{local}", word)
        return word


def perform_run(image: Image, run: Instruction, cwd: Path) -> None:
    """A RUN line, the way /bin/sh -c would, with this machine's Python for `python`/`pip`.

    Only difference: --no-cache-dir is dropped, so pip's cache makes this fast."""
    shell = run.args
    for word in run.words():
        if not word.startswith("--"):
            break
        shell = shell.split(word, 1)[1]
    for command in shell.split("&&"):
        argv: list[str] = []
        for word in shlex.split(command):
            if word == "--no-cache-dir":
                continue
            if not argv and word == "python":
                argv += [sys.executable]
            elif not argv and word == "pip":
                argv += [sys.executable, "-m", "pip"]
            else:
                mapped = image.word(word)
                argv += sorted(glob.glob(mapped)) if "*" in mapped else [mapped]
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("image")
    build = BY_NAME["build"]
    # The build stage: a context with only what it copies (and .dockerignore lets through).
    context = root / "build-src"
    for copy in build.all("COPY"):
        *sources, destination = copy.operands()
        target = context / destination.removeprefix(build.workdir()).lstrip("./")
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target if len(sources) == 1 else target / source,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target / Path(source).name)
    dist = root / "dist"
    wheel_image = Image(root, {"/dist": dist})
    for run in build.all("RUN"):
        perform_run(wheel_image, run, context)
    # The runtime stage.
    image = Image(root, {
        "/opt/venv": root / "opt/venv", "/opt/novnc": root / "opt/novnc",
        "/etc/console-gateway": root / "etc/console-gateway", "/usr/share/doc": root / "doc",
    })  # fmt: skip
    for run in RUNTIME.all("RUN"):
        if "useradd" in run.args:
            continue  # creating a system user needs root and changes this machine
        mount = mount_options(run)
        if mount:
            image.mapping[mount["target"]] = dist
        perform_run(image, run, root)
    novnc_workdir = BY_NAME["novnc"].workdir()
    for copy in RUNTIME.all("COPY"):
        source, destination = copy.operands()
        if copy.flags().get("from") == "novnc":  # its `npm ci` = scripts/bootstrap's, in REPO
            local = REPO / source.removeprefix(novnc_workdir).lstrip("/")
        else:
            assert "from" not in copy.flags(), copy
            local = REPO / source
        target = image.path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if local.is_dir() else shutil.copy)(local, target)
    image.path("/etc/console-gateway").mkdir(parents=True)
    return image


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*")
    }


def run_env(image: Image, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The image's ENV (mapped), plus what a deployment adds; nothing from this process."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **extra}
    for key, value in RUNTIME.env().items():
        env[key] = image.word(value.replace("${PATH}", env.get("PATH", "")))
    env["CGW_SERVER_PORT"] = str(port)
    return env


async def wait_ready(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not become ready")


async def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@contextlib.contextmanager
def empty_dirs(root: Path, *names: str) -> Iterator[list[Path]]:
    dirs = [root / name for name in names]
    for path in dirs:
        path.mkdir()
    yield dirs
    for path in dirs:
        assert not list(path.iterdir()), f"the gateway wrote {list(path.iterdir())}"


async def test_the_installed_wheel_serves_as_the_image_would(
    image: Image, tmp_path: Path, compute_url: str, redis_server: str
) -> None:
    config = deep_merge(BASE_CONFIG, {
        "server": {"host": "127.0.0.1"},
        "upstream": {"compute_url": compute_url},
        "drain": {"grace_s": 0.2, "deadline_s": 5},
    })  # fmt: skip
    del config["auth"]["hs256_secret"], config["upstream"]["token"]  # secrets: environment only
    config_path = image.path(RUNTIME.env()["CGW_CONFIG"])
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    before = snapshot(image.root / "opt", image.root / "etc")
    with empty_dirs(tmp_path, "cwd", "home", "tmp") as (cwd, home, tmp):
        env = run_env(image, port, {"HOME": str(home), "TMPDIR": str(tmp),
                                    "CGW_AUTH_HS256_SECRET": HS_SECRET,
                                    "CGW_UPSTREAM_TOKEN": UPSTREAM_TOKEN,
                                    "CGW_REDIS_URL": redis_server})  # fmt: skip
        # Installed from the wheel into the venv, not imported from the checkout.
        python = str(shutil.which("python", path=env["PATH"]))
        assert python == str(image.path("/opt/venv/bin/python"))
        code, where = await run([python, "-c", "import gateway; print(gateway.__file__)"], env, cwd)
        assert code == 0 and where.startswith(str(image.path("/opt/venv/lib"))), where
        argv = RUNTIME.one("ENTRYPOINT").exec_form() + RUNTIME.one("CMD").exec_form()
        program = shutil.which(argv[0], path=env["PATH"])
        assert program == str(image.path("/opt/venv/bin/console-gateway"))
        log = tmp_path / "gateway.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                program, *argv[1:], env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=sink, stderr=sink,
            )  # fmt: skip
        try:
            try:
                await wait_ready(url, process)
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
            await check_serving(url)
            check = RUNTIME.one("HEALTHCHECK").exec_form(after="CMD")
            probe = [str(image.path(check[0])), *check[1:]]
            assert await run(probe, env, cwd) == (0, "")
            # ... and it fails when nothing answers on the port.
            code, output = await run(probe, {**env, "CGW_SERVER_PORT": str(free_port())}, cwd)
            assert code != 0 and "Connection refused" in output
            process.send_signal(signal.SIGTERM)  # the drain, then a clean exit
            assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert "noVNC is not installed" not in log.read_text()
    assert snapshot(image.root / "opt", image.root / "etc") == before, "the gateway wrote files"


async def check_serving(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for probe in ("healthz", "readyz"):
            async with http.get(f"{url}/{probe}") as response:
                assert response.status == 200, probe
        body = {"project_id": PROJECT, "server_id": SERVER}
        async with http.post(f"{url}/v1/consoles", json=body, headers=bearer(mint_jwt())) as resp:
            assert resp.status == 201, await resp.text()
            console_id = (await resp.json())["console"]["id"]
        async with http.get(f"{url}/console/{console_id}") as response:
            assert response.status == 200
            assert "static/console.js" in await response.text()
        # The package's own static files (package-data in the wheel) and noVNC from /opt/novnc.
        for path, marker in (("static/console.js", "import"),
                             ("static/novnc/core/rfb.js", "export default class RFB")):  # fmt: skip
            async with http.get(f"{url}/{path}") as response:
                assert response.status == 200, path
                assert marker in await response.text(), path
