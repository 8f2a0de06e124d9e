"""The command line: check-config and serve fail with one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import BASE_CONFIG, deep_merge

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CGW_")}, **(env or {})},
    )


def write_config(tmp_path: Path, override: dict[str, object]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(deep_merge(BASE_CONFIG, override)))
    return path


def test_check_config_prints_masked_settings(tmp_path: Path) -> None:
    result = run_cli(
        "check-config",
        str(write_config(tmp_path, {})),
        env={"CGW_REDIS_URL": "redis://127.0.0.1:7777/0"},
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["upstream"]["token"] == "***"
    assert printed["auth"]["hs256_secret"] == "***"
    assert printed["redis"]["url"] == "redis://127.0.0.1:7777/0"
    assert "SECRET" not in result.stdout and "long-enough" not in result.stdout


def test_check_config_refuses_ttl_of_600_in_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "check-config", str(write_config(tmp_path, {"cache": {"console_url_ttl_s": 600}}))
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cache.console_url_ttl_s" in lines[0]
    assert result.stdout == ""


def test_serve_with_bad_config_stops_with_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstream": {"compute_url": "not-a-url"}})
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "console-gateway: invalid configuration: upstream.compute_url: "
        "must be an http(s) URL with a host"
    ]


def test_serve_reads_cgw_config_and_env_secrets(tmp_path: Path) -> None:
    config = deep_merge(BASE_CONFIG, {})
    del config["auth"]["hs256_secret"]
    path = write_config(tmp_path, {})
    path.write_text(yaml.safe_dump(config))
    result = run_cli("check-config", str(path), env={"CGW_AUTH_HS256_SECRET": "s" * 40})
    assert result.returncode == 0, result.stderr
    missing = run_cli("check-config", str(path))
    assert missing.returncode == 2 and "auth" in missing.stderr
