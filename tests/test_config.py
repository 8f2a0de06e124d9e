"""Settings: YAML + environment, validation that names the key, masking."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings
from gateway.config_loader import load_settings, masked_dump

REPO = Path(__file__).resolve().parent.parent
MakeSettings = Callable[..., Settings]


def test_base_config_is_valid(make_settings: MakeSettings) -> None:
    settings = make_settings()
    assert settings.cache.console_url_ttl_s == 540
    assert settings.upstream.microversion == "2.6"
    assert settings.redis.url == ""


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"cache": {"console_url_ttl_s": 600}}, "cache.console_url_ttl_s"),
        ({"cache": {"console_url_ttl_s": 0}}, "cache.console_url_ttl_s"),
        ({"cache": {"console_url_ttl_s": 601}}, "cache.console_url_ttl_s"),
        ({"upstream": {"compute_url": "ftp://ecs.example.com"}}, "upstream.compute_url"),
        ({"upstream": {"compute_url": "ecs.example.com"}}, "upstream.compute_url"),
        ({"auth": {"algorithms": ["HS257"]}}, "auth.algorithms.0"),
        ({"auth": {"algorithms": ["none"]}}, "auth.algorithms.0"),
        ({"auth": {"hs256_secret": None}}, "auth"),
        ({"auth": {"algorithms": ["RS256"]}}, "auth"),
        ({"auth": {"algorithms": ["HS256", "RS256"]}}, "auth"),
        ({"auth": {"hs256_secret": "short"}}, "auth"),
        ({"upstream": {"microversion": "2.5"}}, "upstream.microversion"),
        ({"upstream": {"microversion": "two"}}, "upstream.microversion"),
        ({"upstream": {"token": ""}}, "upstream"),
        ({"upstream": {"console_hosts": []}}, "upstream.console_hosts"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"public_base_url": "gw.example.com"}}, "server.public_base_url"),
        (
            {"server": {"allowed_origins": ["https://portal.example.com/path"]}},
            "server.allowed_origins",
        ),
        ({"server": {"trusted_proxies": ["not-a-net"]}}, "server.trusted_proxies.0"),
        ({"redis": {"url": "http://redis:6379"}}, "redis.url"),
        ({"sessions": {"ttl_s": 5000, "max_lifetime_s": 3600}}, "sessions"),
        ({"server": {"colour": "blue"}}, "server.colour"),
    ],
)
def test_bad_value_gives_one_line_naming_the_key(
    make_settings: MakeSettings, override: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(override)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid configuration: {key}:")


def test_missing_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 8080}\n")
    with pytest.raises(ConfigError, match=r"^invalid configuration: auth: is required$"):
        load_settings(path, {})


def test_environment_overrides_file(make_settings: MakeSettings) -> None:
    settings = make_settings(
        env={
            "CGW_REDIS_URL": "redis://127.0.0.1:7000/1",
            "CGW_AUTH_HS256_SECRET": "x" * 40,
            "CGW_UPSTREAM_TOKEN": "from-env",
            "CGW_CACHE_CONSOLE_URL_TTL_S": "300",
            "CGW_SERVER_ALLOWED_ORIGINS": '["https://a.example.com", "https://b.example.com"]',
            "UNRELATED": "ignored",
        }
    )
    assert settings.redis.url == "redis://127.0.0.1:7000/1"
    assert settings.auth.hs256_secret is not None
    assert settings.auth.hs256_secret.get_secret_value() == "x" * 40
    assert settings.upstream.token.get_secret_value() == "from-env"
    assert settings.cache.console_url_ttl_s == 300
    assert settings.server.allowed_origins == ("https://a.example.com", "https://b.example.com")


def test_environment_value_is_validated_too(make_settings: MakeSettings) -> None:
    with pytest.raises(ConfigError, match=r"cache\.console_url_ttl_s"):
        make_settings(env={"CGW_CACHE_CONSOLE_URL_TTL_S": "900"})


def test_keystone_from_environment(make_settings: MakeSettings) -> None:
    keystone = {"auth_url": "http://127.0.0.1:5000/v3", "username": "svc", "project_id": "p1"}
    settings = make_settings(
        {"upstream": {"token": "", "keystone": keystone}},
        env={"CGW_UPSTREAM_KEYSTONE_PASSWORD": "pw-from-env"},
    )
    assert settings.upstream.keystone is not None
    assert settings.upstream.keystone.password.get_secret_value() == "pw-from-env"


def test_masked_dump_hides_every_secret(make_settings: MakeSettings) -> None:
    keystone = {
        "auth_url": "http://127.0.0.1:5000/v3",
        "username": "svc",
        "project_id": "p1",
        "password": "keystone-password-SECRET",
    }
    settings = make_settings({"upstream": {"token": "", "keystone": keystone}})
    dumped = repr(masked_dump(settings))
    assert "keystone-password-SECRET" not in dumped
    assert "test-secret-that-is-long" not in dumped
    assert "***" in dumped
    assert "keystone-password-SECRET" not in repr(settings)


def test_settings_are_frozen(make_settings: MakeSettings) -> None:
    settings = make_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, {})
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "absent.yaml", {})


def test_example_config_documents_every_key() -> None:
    example = REPO / "config" / "gateway.example.yaml"
    settings = load_settings(example, {"CGW_UPSTREAM_TOKEN": "t"})
    text = example.read_text()
    for section, field in Settings.model_fields.items():
        assert f"\n{section}:" in text
        model = field.annotation
        for key in getattr(model, "model_fields", {}):
            assert f" {key}:" in text, f"{section}.{key} is not documented in the example"
    assert settings.server.public_base_url == "https://gw.example.com"
