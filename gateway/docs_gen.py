"""Generates docs/configuration.md from the settings model and the example file's comments.

    python -m gateway.docs_gen            # print the reference
    python -m gateway.docs_gen --write    # rewrite docs/configuration.md

Types, defaults, constraints, environment names and secrets come from gateway/config.py;
cross-key rules from the messages its validators raise; descriptions from the `key: value  #
comment` lines of config/gateway.example.yaml, so the prose lives in one place.
tests/test_docs.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import ipaddress
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.config import ENV_PREFIX, Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FILE = PROJECT_ROOT / "config" / "gateway.example.yaml"
OUTPUT_FILE = PROJECT_ROOT / "docs" / "configuration.md"

# Keys the example file shows without an inline comment. Prefer adding the comment there; an
# entry here is used only while the example has none.
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "auth.jwks_url": "JWKS URL of the token issuer (one of the three key sources)",
    "auth.public_key_file": "PEM public key file (one of the three key sources)",
    "upstream.connect_timeout_s": "TCP + TLS connect timeout of one compute API attempt",
    "upstream.keystone": "Keystone v3 password authentication instead of a static token",
    "upstream.keystone.auth_url": "Keystone endpoint; `/auth/tokens` (after `/v3`) is appended",
    "upstream.keystone.username": "service user",
    "upstream.keystone.user_domain_name": "the service user's domain",
    "upstream.keystone.project_id": "project the service token is scoped to",
    "redis.key_prefix": "prefix of every Redis key and channel",
    "limits.create_window_s": "length of the console-creation window",
    "logging.level": "log level of every logger",
}

_VALIDATOR_TYPES = {"_http_url": "http(s) URL"}
_SCALARS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "string",
}
_IP_NETWORKS = {ipaddress.IPv4Network, ipaddress.IPv6Network}


@dataclass(frozen=True)
class Key:
    dotted: str  # "server.port", "upstream.keystone.password"
    env: str
    type: str
    default: str
    constraints: str
    secret: bool
    description: str


# --- descriptions from the example file --------------------------------------------------


_SECTION = re.compile(r"^([a-z_]+):\s*(?:#.*)?$")
_KEY = re.compile(r"^(?P<indent> +)(?:# ?(?P<pad> *))?(?P<key>[a-z_0-9]+):(?P<rest>.*)$")
_COMMENT = re.compile(r"\s#\s?(.*)$")


def example_descriptions(text: str) -> dict[str, str]:
    """Map "section.key" (and "upstream.keystone.key") to the comment on its line.

    Commented-out keys (`# hs256_secret: ""  # ...`) count too: the example shows
    alternatives that way.
    """
    found: dict[str, str] = {}
    section: str | None = None
    parent: str | None = None  # a nested mapping such as keystone
    for line in text.splitlines():
        if match := _SECTION.match(line):
            section, parent = match.group(1), None
            continue
        match = _KEY.match(line)
        if section is None or match is None:
            continue
        depth = len(match.group("indent")) + len(match.group("pad") or "")
        key, rest = match.group("key"), match.group("rest")
        if depth <= 2:
            parent = key if not rest.strip() or rest.strip().startswith("#") else None
            dotted = f"{section}.{key}"
        elif parent is not None:
            dotted = f"{section}.{parent}.{key}"
        else:
            continue
        comment = _COMMENT.search(" " + rest)
        if comment and comment.group(1).strip():
            found[dotted] = comment.group(1).strip()
    return found


# --- the model ---------------------------------------------------------------------------


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007 - rebuilt from runtime arguments
    return annotation, False


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    inner, optional = _strip_none(annotation)
    name = _type_name(inner, metadata or [])
    return f"{name} or null" if optional else name


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    origin = get_origin(annotation)
    for item in metadata:
        func = getattr(item, "func", None)
        if func is not None and func.__name__ in _VALIDATOR_TYPES:
            return _VALIDATOR_TYPES[func.__name__]
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _type_name(base, list(extra))
    if origin is tuple:
        return f"list of {_type_name(get_args(annotation)[0], [])}"
    if origin is Literal:
        return "string"
    if origin in (Union, types.UnionType) and set(get_args(annotation)) <= _IP_NETWORKS:
        return "IP network (CIDR)"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    return str(getattr(annotation, "__name__", annotation))


def _literal_choices(annotation: Any) -> tuple[str, ...]:
    inner, _ = _strip_none(annotation)
    if get_origin(inner) is tuple:
        inner = get_args(inner)[0]
    if get_origin(inner) is Literal:
        return tuple(str(a) for a in get_args(inner))
    return ()


def _is_secret(annotation: Any) -> bool:
    inner, _ = _strip_none(annotation)
    return inner is SecretStr


def _is_list(annotation: Any) -> bool:
    return get_origin(_strip_none(annotation)[0]) is tuple


def constraints(field: FieldInfo) -> str:
    parts: list[str] = []
    is_list = _is_list(field.annotation)
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            parts.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} item(s)" if is_list else "not empty")
        elif getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    choices = _literal_choices(field.annotation)
    if choices:
        parts.append("one of " + ", ".join(f"`{c}`" for c in choices))
    return ", ".join(parts)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return _yaml_scalar(value.get_secret_value())
    if isinstance(value, str):
        quote = value == "" or value.endswith(":") or value[:1] in "*[{&!|>'\"%@`#"
        return f'"{value}"' if quote else value
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default is PydanticUndefined:
        return "(generated)"
    if isinstance(field.default, BaseModel):
        return "(section defaults)"
    return f"`{_yaml_scalar(field.default)}`"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    inner, _ = _strip_none(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None


def iter_keys(descriptions: dict[str, str]) -> Iterator[tuple[str, type[BaseModel], list[Key]]]:
    """Every section (nested mappings as their own section) with its keys, in model order."""
    for section, section_field in Settings.model_fields.items():
        model = _model_of(section_field.annotation)
        assert model is not None
        yield from _section(section, model, f"{ENV_PREFIX}{section.upper()}_", descriptions)


def _section(
    dotted: str, model: type[BaseModel], env_prefix: str, descriptions: dict[str, str]
) -> Iterator[tuple[str, type[BaseModel], list[Key]]]:
    keys: list[Key] = []
    nested: list[tuple[str, type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        path = f"{dotted}.{name}"
        env = f"{env_prefix}{name.upper()}"
        sub = _model_of(field.annotation)
        if sub is not None:
            nested.append((path, sub, env + "_"))
        keys.append(
            Key(
                dotted=path,
                env=env,
                type=type_name(field.annotation, field.metadata),
                default=default_text(field),
                constraints=constraints(field),
                secret=_is_secret(field.annotation),
                description=descriptions.get(path) or FALLBACK_DESCRIPTIONS.get(path, ""),
            )
        )
    yield dotted, model, keys
    for path, sub, env_prefix_sub in nested:
        yield from _section(path, sub, env_prefix_sub, descriptions)


# --- cross-key rules from the validators --------------------------------------------------


def validator_rules(model: type[BaseModel]) -> list[str]:
    """The messages a section's validators raise, in source order: its cross-key rules."""
    tree = ast.parse(inspect.getsource(model))
    rules: list[str] = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef):
            continue
        field = _validated_field(func)
        names = _constant_names(func)
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and isinstance(node.exc.func, ast.Name)
                and node.exc.func.id == "ValueError"
                and node.exc.args
            ):
                message = _message(node.exc.args[0], names)
                rules.append(f"`{field}`: {message}" if field else message)
    return rules


def _validated_field(func: ast.FunctionDef) -> str | None:
    for deco in func.decorator_list:
        if (
            isinstance(deco, ast.Call)
            and isinstance(deco.func, ast.Name)
            and deco.func.id == "field_validator"
            and deco.args
            and isinstance(deco.args[0], ast.Constant)
        ):
            return str(deco.args[0].value)
    return None


def _constant_names(func: ast.FunctionDef) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return found


def _message(node: ast.expr, names: dict[str, Any]) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                expr = value.value
                if isinstance(expr, ast.Name) and expr.id in names:
                    known = names[expr.id]
                    parts.append(", ".join(map(str, known)) if isinstance(known, tuple) else known)
                else:
                    parts.append("…")
        return "".join(parts)
    return ast.unparse(node)


# --- rendering ---------------------------------------------------------------------------


_HEADER = """\
# Configuration reference

<!-- Generated by `python -m gateway.docs_gen --write` from gateway/config.py and the comments
in config/gateway.example.yaml. Do not edit by hand: tests/test_docs.py fails when it is stale. -->

One YAML file, named by `console-gateway serve --config FILE` or the `CGW_CONFIG` environment
variable. Every key can be overridden by the environment variable in the *environment* column
(`CGW_<SECTION>_<KEY>`; keys of `upstream.keystone` are `CGW_UPSTREAM_KEYSTONE_<KEY>`). An
environment value starting with `[` or `{` is read as YAML, so lists are written
`CGW_SERVER_ALLOWED_ORIGINS='["https://portal.example.com"]'`; anything else is a string that
the model converts (`CGW_SERVER_PORT=9000`, `CGW_RELAY_FRESH_URL_PER_CONNECT=true`).

Keys marked **secret** belong in the environment (a Kubernetes Secret), not in the file:
`console-gateway check-config FILE` prints the effective settings with them masked. A bad value
stops the process with one line naming the key, for example
`console-gateway: invalid configuration: cache.console_url_ttl_s: Input should be less than 600`.
An unknown key is an error too (`is not a known setting`).

[`config/gateway.example.yaml`](../config/gateway.example.yaml) is a complete, commented example.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(example_text: str) -> str:
    descriptions = example_descriptions(example_text)
    out = [_HEADER]
    for section, model, keys in iter_keys(descriptions):
        required = _section_required(section)
        out.append(f"\n## `{section}`{' (required)' if required else ''}\n")
        out.append("| key | type | default | constraints | environment | description |")
        out.append("|---|---|---|---|---|---|")
        for key in keys:
            kind = f"{key.type}, **secret**" if key.secret else key.type
            out.append(
                "| "
                + " | ".join(
                    _cell(cell)
                    for cell in (
                        f"`{key.dotted.rsplit('.', 1)[1]}`",
                        kind,
                        key.default,
                        key.constraints,
                        f"`{key.env}`",
                        key.description,
                    )
                )
                + " |"
            )
        rules = validator_rules(model)
        if rules:
            out.append("\nRules checked at start-up:\n")
            out.extend(f"- {_cell(rule)}" for rule in rules)
    return "\n".join(out) + "\n"


def _section_required(section: str) -> bool:
    model: type[BaseModel] = Settings
    field: FieldInfo | None = None
    for part in section.split("."):
        field = model.model_fields[part]
        sub = _model_of(field.annotation)
        if sub is None:
            break
        model = sub
    return field is not None and field.is_required()


def all_model_keys() -> list[str]:
    """Every dotted key of the settings model (for tests)."""
    return [key.dotted for _, _, keys in iter_keys({}) for key in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.docs_gen", description=__doc__)
    parser.add_argument("--example", type=Path, default=EXAMPLE_FILE, help="the example YAML")
    parser.add_argument("--write", action="store_true", help=f"write {OUTPUT_FILE}")
    args = parser.parse_args(argv)
    text = render(args.example.read_text(encoding="utf-8"))
    if args.write:
        OUTPUT_FILE.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT_FILE.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
