"""deploy/kubernetes: schema-valid manifests, a kustomize-like render, the ConfigMap's config
through the gateway's own validation, and the invariants the drain and security rely on.

No kubectl or kustomize here: `render` below does what kustomize does with the features these
kustomizations use (resources, components, configMapGenerator, JSON 6902 patches, namespace,
images, labels), and fails on anything else, so a new feature needs a new line here."""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv  # type: ignore[import-untyped]

from gateway.config import ConfigError, Settings
from gateway.config_loader import load_settings
from gateway.relay import CLOSE_TIMEOUT_S

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
LINT = REPO / "scripts" / "lint-k8s"
KUSTOMIZATION = "kustomization.yaml"
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CLUSTER_SCOPED = {"Namespace"}
CONFIG_MAP = "console-gateway-config"
SECRET_NAME = "console-gateway-secrets"
POD_NAME = "console-gateway-7d9f8c6b5-x2x4q"

Obj = dict[str, Any]


def pinned_version() -> str:
    """The Kubernetes version scripts/lint-k8s pins, read from it so the two cannot drift."""
    pinned = re.search(r"K8S_VERSION:-([0-9.]+)", LINT.read_text())
    assert pinned is not None
    return pinned.group(1)


# --- a minimal kustomize ---------------------------------------------------------------------


def kustomization(directory: Path) -> Obj:
    spec = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    assert isinstance(spec, dict)
    known = {
        "apiVersion", "kind", "namespace", "resources", "components", "images", "labels",
        "configMapGenerator", "patches",
    }  # fmt: skip
    assert set(spec) <= known, f"{directory}: render() does not know {set(spec) - known}"
    return spec


def load_objects(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no object"
    return docs


def render(directory: Path, inherited: list[Obj] | None = None) -> list[Obj]:
    """The objects `kubectl kustomize directory` would print (without ConfigMap hash suffixes)."""
    spec = kustomization(directory)
    objects = copy.deepcopy(inherited or [])
    for entry in spec.get("resources", []):
        target = directory / entry
        objects += render(target) if target.is_dir() else load_objects(target)
    for entry in spec.get("components", []):
        component = directory / entry
        assert kustomization(component)["kind"] == "Component"
        objects = render(component, objects)
    for generator in spec.get("configMapGenerator", []):
        generate_config_map(directory, generator, objects)
    for patch in spec.get("patches", []):
        apply_patch(directory, patch, objects)
    for label_set in spec.get("labels", []):
        assert not label_set.get("includeSelectors", False)
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label_set["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in all_containers(objects):
            name = re.split(r"[:@]", container["image"].rsplit("/", 1)[-1])[0]
            repository = container["image"].rsplit("/", 1)[0] + "/" + name
            if repository == image["name"]:
                container["image"] = f"{image.get('newName', repository)}:{image['newTag']}"
    return objects


def generate_config_map(directory: Path, generator: Obj, objects: list[Obj]) -> None:
    data = {}
    for entry in generator["files"]:
        key, _, source = entry.rpartition("=")
        data[key or Path(source).name] = (directory / source).read_text()
    existing = [o for o in objects if o["kind"] == "ConfigMap" and named(o, generator["name"])]
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        assert not existing, f"ConfigMap {generator['name']} generated twice"
        meta = {"name": generator["name"]}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    else:
        assert existing, f"{behavior} of a ConfigMap {generator['name']} that does not exist"
        if behavior == "replace":
            existing[0]["data"] = data
        else:
            existing[0]["data"].update(data)


def apply_patch(directory: Path, patch: Obj, objects: list[Obj]) -> None:
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    ops = yaml.safe_load(text)
    assert isinstance(ops, list), "only JSON 6902 patches (a list of operations) are supported"
    target = patch["target"]
    matches = [
        o
        for o in objects
        if o["kind"] == target["kind"]
        and named(o, target["name"])
        and o["apiVersion"] == "/".join(p for p in (target.get("group"), target["version"]) if p)
    ]
    assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
    for op in ops:
        json_patch(matches[0], op)


def json_patch(obj: Obj, op: Obj) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: int | str = int(last) if isinstance(node, list) and last != "-" else last
    if op["op"] == "replace":
        _ = node[key]  # must exist, as in kustomize
        node[key] = op["value"]
    elif op["op"] == "add":
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else int(key), op["value"])
        else:
            node[key] = op["value"]
    elif op["op"] == "remove":
        del node[key]
    else:
        raise AssertionError(f"unsupported patch op {op['op']}")


def named(obj: Obj, name: str) -> bool:
    return bool(obj["metadata"]["name"] == name)


def all_containers(objects: list[Obj]) -> list[Obj]:
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]
    return [c for pod in pods for c in pod.get("containers", []) + pod.get("initContainers", [])]


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def gateway_container(objects: list[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- the config in the ConfigMap, as the pod would see it -----------------------------------


def secret_example() -> dict[str, str]:
    (secret,) = load_objects(SECRET_EXAMPLE)
    assert secret["metadata"]["name"] == SECRET_NAME
    return dict(secret["stringData"])


def pod_env(objects: list[Obj], secret: dict[str, str]) -> dict[str, str]:
    """The environment of the gateway container, with the Secret's values filled in."""
    container = gateway_container(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["secretRef"]["name"] == SECRET_NAME
        env.update(secret)
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            assert var["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME
            env[var["name"]] = secret[var["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = POD_NAME
    return env


def mounted_config(objects: list[Obj], tmp_path: Path) -> Path:
    """Write the ConfigMap's file where CGW_CONFIG says the pod finds it (under tmp_path)."""
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and named(o, CONFIG_MAP))
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == CONFIG_MAP]
    container = gateway_container(objects)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount.get("readOnly") is True
    env = {v["name"]: v.get("value") for v in container["env"]}
    config_path = Path(env["CGW_CONFIG"])
    assert config_path.parent == Path(mount["mountPath"]), "CGW_CONFIG is not in the mount"
    key = config_path.name
    assert key in config_map["data"], f"the ConfigMap has no key {key}"
    target = tmp_path / key
    target.write_text(config_map["data"][key])
    return target


def pod_settings(objects: list[Obj], tmp_path: Path) -> Settings:
    return load_settings(mounted_config(objects, tmp_path), pod_env(objects, secret_example()))


TREES = ("base", "overlay", "overlay+servicemonitor")


@functools.cache
def _rendered(name: str) -> list[Obj]:
    if name == "overlay+servicemonitor":
        return render(BASE / "servicemonitor", rendered("overlay"))
    return render({"base": BASE, "overlay": OVERLAY}[name])


def rendered(name: str) -> list[Obj]:
    """One rendering per session (failing inside the test that needs it); a private copy."""
    return copy.deepcopy(_rendered(name))


@pytest.fixture(params=["base", "overlay"])
def tree(request: pytest.FixtureRequest) -> list[Obj]:
    return rendered(request.param)


# --- (a) the pinned schema -------------------------------------------------------------------


def lint(*files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(LINT), *map(str, files)], capture_output=True, text=True, env=env, timeout=60
    )


def test_lint_script_validates_every_manifest_and_passes() -> None:
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for path in sorted(K8S.rglob("*.yaml")):
        rel = str(path.relative_to(REPO))
        (line,) = [x for x in lines if x.split()[1].rstrip(":") == rel]
        if path.name == KUSTOMIZATION or path.name == "gateway.yaml":
            assert line.startswith("SKIP"), line
        elif path.name == "servicemonitor.yaml":
            assert line.startswith("SKIP") and "custom resource" in line, line
        else:
            assert line.startswith("OK"), line
            assert "patch" in line or f"Kubernetes {pinned_version().rsplit('.', 1)[0]}" in line


@pytest.mark.parametrize(
    ("find", "replace", "error"),
    [
        ("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", "was unexpected"),
        ("containerPort: 8080", "containerPort: http-port", "is not of type"),
        ("kind: Deployment", "kind: Deploymnet", "Couldn't find schema"),
    ],
)
def test_lint_script_rejects_a_broken_manifest(
    tmp_path: Path, find: str, replace: str, error: str
) -> None:
    broken = tmp_path / "deployment.yaml"
    text = (BASE / "deployment.yaml").read_text()
    assert find in text
    broken.write_text(text.replace(find, replace, 1))
    result = lint(broken)
    assert result.returncode == 1
    assert f"ERROR {broken}" in result.stderr and error in result.stderr


@pytest.mark.parametrize("name", TREES)
def test_rendered_objects_match_the_pinned_schema(name: str) -> None:
    objects = rendered(name)
    checked = 0
    for obj in objects + load_objects(SECRET_EXAMPLE):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        kv.validate(obj, pinned_version(), strict=True)
        checked += 1
    assert checked >= 7
    if name == "overlay+servicemonitor":
        monitor = one(objects, "ServiceMonitor")
        service = one(objects, "Service")
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in ports
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()


# --- (b) every path a kustomization names exists ---------------------------------------------


def test_every_path_in_the_kustomizations_exists_and_every_file_is_used() -> None:
    used: set[Path] = set()
    kustomizations = sorted(K8S.rglob(KUSTOMIZATION))
    assert len(kustomizations) == 3
    for kfile in kustomizations:
        spec, here = kustomization(kfile.parent), kfile.parent
        used.add(kfile)
        for entry in spec.get("resources", []) + spec.get("components", []):
            target = (here / entry).resolve()
            assert target.is_file() or (target / KUSTOMIZATION).is_file(), f"{kfile}: {entry}"
            used.add(target)
        for generator in spec.get("configMapGenerator", []):
            for entry in generator["files"]:
                target = (here / entry.rpartition("=")[2]).resolve()
                assert target.is_file(), f"{kfile}: {entry}"
                used.add(target)
        for patch in spec.get("patches", []):
            if "path" in patch:
                assert (here / patch["path"]).is_file(), f"{kfile}: {patch['path']}"
                used.add((here / patch["path"]).resolve())
    unused = {p.resolve() for p in K8S.rglob("*.yaml")} - used
    assert unused == {SECRET_EXAMPLE.resolve()}, "files no kustomization uses"


def test_no_secret_value_is_rendered_and_the_example_holds_placeholders() -> None:
    for name in TREES:
        assert not [o for o in rendered(name) if o["kind"] == "Secret"], name
    secret = secret_example()
    assert set(secret) <= {
        "CGW_UPSTREAM_TOKEN", "CGW_UPSTREAM_KEYSTONE_PASSWORD", "CGW_REDIS_URL",
        "CGW_AUTH_HS256_SECRET",
    }  # fmt: skip
    assert all("REPLACE" in value for value in secret.values())


# --- (c) the ConfigMap through the gateway's own validation ----------------------------------


def test_config_map_config_is_valid_for_the_gateway(tree: list[Obj], tmp_path: Path) -> None:
    settings = pod_settings(tree, tmp_path)
    container = gateway_container(tree)
    (port,) = container["ports"]
    assert settings.server.port == port["containerPort"]
    assert settings.server.instance_id == POD_NAME
    assert settings.auth.jwks_url is not None and settings.auth.hs256_secret is None
    assert settings.redis.url == secret_example()["CGW_REDIS_URL"]
    assert settings.redis.url.startswith("redis+sentinel://")
    assert settings.upstream.token is not None
    assert settings.upstream.token.get_secret_value() == secret_example()["CGW_UPSTREAM_TOKEN"]
    assert str(settings.server.novnc_dir) == "/opt/novnc"
    assert settings.server.allowed_origins and settings.upstream.console_hosts
    assert settings.server.public_base_url.startswith("https://")


def test_config_map_config_needs_the_secret(tree: list[Obj], tmp_path: Path) -> None:
    config = mounted_config(tree, tmp_path)
    with pytest.raises(ConfigError, match="upstream"):
        load_settings(config, {})


def test_overlay_replaces_the_config_and_applies_its_changes() -> None:
    base, overlay = rendered("base"), rendered("overlay")
    assert one(base, "Deployment")["spec"]["replicas"] == 3
    assert one(overlay, "Deployment")["spec"]["replicas"] == 4
    assert one(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 4
    assert gateway_container(base)["image"] == "ghcr.io/example/console-gateway:0.1.0"
    image = "registry.example.org/platform/console-gateway:0.1.0"
    assert gateway_container(overlay)["image"] == image
    assert all(
        o["metadata"].get("namespace") == "console-gateway"
        for o in overlay
        if o["kind"] not in CLUSTER_SCOPED
    )
    config = {o["kind"]: o for o in overlay}["ConfigMap"]["data"]["gateway.yaml"]
    assert config == (OVERLAY / "gateway.yaml").read_text()


# --- (d) invariants --------------------------------------------------------------------------


def test_termination_grace_fits_prestop_and_drain(tree: list[Obj], tmp_path: Path) -> None:
    drain = pod_settings(tree, tmp_path).drain
    pod = one(tree, "Deployment")["spec"]["template"]["spec"]
    pre_stop = gateway_container(tree)["lifecycle"]["preStop"]
    sleep_s = pre_stop["sleep"]["seconds"]
    assert sleep_s >= 3, "preStop must give the ingress time to drop the pod"
    assert drain.grace_s < drain.deadline_s
    # SIGTERM arrives after preStop; the process exits by deadline_s plus the close timeout.
    assert pod["terminationGracePeriodSeconds"] >= sleep_s + drain.deadline_s + CLOSE_TIMEOUT_S


def test_probes_use_healthz_and_readyz_on_the_container_port(tree: list[Obj]) -> None:
    container = gateway_container(tree)
    (port,) = container["ports"]
    expected = {
        "livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz",
    }  # fmt: skip
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in (port["name"], port["containerPort"])
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness.get("failureThreshold", 3) <= 5


def test_the_container_is_locked_down(tree: list[Obj]) -> None:
    pod = one(tree, "Deployment")["spec"]["template"]["spec"]
    ctx = gateway_container(tree)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    mounts = gateway_container(tree)["volumeMounts"]
    writable = {m["mountPath"] for m in mounts if not m.get("readOnly")}
    assert writable == {"/tmp"}  # noqa: S108 - the pod's emptyDir, the only writable path
    limits = gateway_container(tree)["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits)
    assert {"cpu", "memory"} <= set(gateway_container(tree)["resources"]["requests"])


def test_network_policy_limits_both_directions(tree: list[Obj]) -> None:
    policy = one(tree, "NetworkPolicy")
    pod_labels = one(tree, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"] and [p["port"] for p in rule["ports"]] == ["http"]
    egress_ports = set()
    for rule in policy["spec"]["egress"]:
        assert rule["to"], "an egress rule without `to` allows every destination"
        egress_ports |= {(p["port"], p["protocol"]) for p in rule["ports"]}
    assert egress_ports == {
        (53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (443, "TCP"), (6080, "TCP"),
    }  # fmt: skip


def test_service_pdb_and_hpa_select_the_gateway(tree: list[Obj]) -> None:
    deployment = one(tree, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(tree, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    pdb = one(tree, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = one(tree, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] >= 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
