"""Building the settings once at start-up: YAML file, CGW_* environment overrides, masking."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from gateway.config import ENV_PREFIX, ConfigError, Settings


def load_settings(path: str | Path | None, env: Mapping[str, str]) -> Settings:
    """Build the settings once at start-up; raise ConfigError naming the first bad key."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    merged = _apply_env(raw, env)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        reason = exc.__class__.__name__
        raise ConfigError(f"config file {path}: not valid YAML ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay CGW_<SECTION>_<KEY> (and CGW_UPSTREAM_KEYSTONE_<KEY>) on the file's values."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = _env_name_to_path(name[len(ENV_PREFIX) :].lower())
        if path is None:
            continue
        target = merged
        for part in path[:-1]:
            existing = target.get(part)
            target[part] = dict(existing) if isinstance(existing, dict) else {}
            target = target[part]
        target[path[-1]] = _parse_env_value(value)
    return merged


def _env_name_to_path(name: str) -> list[str] | None:
    """Map 'auth_hs256_secret' to ['auth', 'hs256_secret'] using the model's own field names."""
    for section, field in Settings.model_fields.items():
        if not name.startswith(section + "_"):
            continue
        key = name[len(section) + 1 :]
        annotation = field.annotation
        nested = getattr(annotation, "model_fields", {})
        if key in nested:
            return [section, key]
        if section == "upstream" and key.startswith("keystone_"):
            return [section, "keystone", key[len("keystone_") :]]
    return None


def _parse_env_value(value: str) -> Any:
    """Lists and numbers may be given as YAML/JSON ('[a, b]', '30'); other values stay strings."""
    stripped = value.strip()
    if stripped.startswith(("[", "{")):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            return value
    return value


def _first_error_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(_readable_loc(error["loc"])) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a known setting"
    return f"invalid configuration: {key}: {message}"


def _readable_loc(loc: tuple[int | str, ...]) -> list[str]:
    """Field names and list indexes, without pydantic's union-branch labels."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and not re.fullmatch(r"[a-z_][a-z0-9_]*", part):
            break
        parts.append(str(part))
    return parts


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by '***'."""
    data = settings.model_dump(mode="json")

    def mask(node: Any, model: BaseModel) -> Any:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                node[name] = "***" if value.get_secret_value() else ""
            elif isinstance(value, BaseModel):
                mask(node[name], value)
        return node

    return mask(data, settings)  # type: ignore[no-any-return]
