"""docs/: the configuration reference is current, error codes are explained, links hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import WSCloseCode

from gateway import docs_gen, errors
from gateway.revocation import REVOKED_CLOSE_CODE
from gateway.upstream import console_ws
from gateway.web import ws

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "config" / "gateway.example.yaml"


# --- configuration reference -------------------------------------------------------------


def test_configuration_reference_is_current() -> None:
    expected = docs_gen.render(EXAMPLE.read_text(encoding="utf-8"))
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == expected, (
        "docs/configuration.md is stale: run .venv/bin/python -m gateway.docs_gen --write"
    )


def test_a_changed_example_comment_changes_the_reference() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    changed = text.replace("# listen port", "# the port to listen on", 1)
    assert changed != text
    assert "| the port to listen on |" in docs_gen.render(changed)
    assert docs_gen.render(changed) != docs_gen.render(text)


def test_every_model_key_is_documented_with_its_environment_variable() -> None:
    reference = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = docs_gen.all_model_keys()
    assert "upstream.keystone.password" in keys
    assert len(keys) > 60
    for dotted in keys:
        section, name = dotted.rsplit(".", 1)
        env = "CGW_" + dotted.replace(".", "_").upper()
        body = _section_body(reference, section)
        assert re.search(rf"^\| `{name}` \|.*\| `{env}` \|", body, re.M), dotted


def _section_body(markdown: str, section: str) -> str:
    match = re.search(rf"^## `{re.escape(section)}`.*?$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match is not None, f"no section {section}"
    return match.group(1)


def test_every_key_has_a_description() -> None:
    descriptions = docs_gen.example_descriptions(EXAMPLE.read_text(encoding="utf-8"))
    missing = [
        key.dotted
        for _, _, keys in docs_gen.iter_keys(descriptions)
        for key in keys
        if not key.description
    ]
    assert missing == []


def test_fallback_descriptions_name_real_keys() -> None:
    assert set(docs_gen.FALLBACK_DESCRIPTIONS) <= set(docs_gen.all_model_keys())


def test_example_comments_are_read_per_section_including_commented_out_keys() -> None:
    text = """\
server:
  port: 8080        # listen port
  host: 0.0.0.0
auth:
  # hs256_secret: ""     # env only
  # Exactly one key source:
upstream:
  # keystone:
  #   password: ""       # env CGW_UPSTREAM_KEYSTONE_PASSWORD
  timeout_s: 10          # overall deadline
redis:
  url: redis://h:6379/0  # the store
"""
    assert docs_gen.example_descriptions(text) == {
        "server.port": "listen port",
        "auth.hs256_secret": "env only",
        "upstream.keystone.password": "env CGW_UPSTREAM_KEYSTONE_PASSWORD",
        "upstream.timeout_s": "overall deadline",
        "redis.url": "the store",
    }


def test_keys_carry_constraints_secrets_and_environment_names() -> None:
    keys = {key.dotted: key for _, _, ks in docs_gen.iter_keys({}) for key in ks}
    assert keys["cache.console_url_ttl_s"].constraints == "> 0, < 600"
    assert keys["server.port"].constraints == "≥ 1, ≤ 65535"
    assert keys["logging.format"].constraints == "one of `json`, `text`"
    assert "matches `^[A-Za-z0-9:_.-]{0,32}$`" in keys["redis.key_prefix"].constraints
    assert keys["upstream.console_hosts"].default == "required"
    assert keys["upstream.console_hosts"].type == "list of string"
    assert keys["server.trusted_proxies"].type == "list of IP network (CIDR)"
    assert keys["auth.jwks_url"].type == "http(s) URL or null"
    assert keys["upstream.keystone.auth_url"].env == "CGW_UPSTREAM_KEYSTONE_AUTH_URL"
    assert {k for k, key in keys.items() if key.secret} == {
        "auth.hs256_secret",
        "upstream.token",
        "upstream.keystone.password",
    }


def test_cross_key_rules_come_from_the_validators() -> None:
    reference = (DOCS / "configuration.md").read_text(encoding="utf-8")
    upstream = _section_body(reference, "upstream")
    assert "- set exactly one of token (CGW_UPSTREAM_TOKEN) or keystone" in upstream
    redis = _section_body(reference, "redis")
    assert "redis+sentinel" in redis


# --- troubleshooting ----------------------------------------------------------------------


def _error_classes() -> list[type[errors.GatewayError]]:
    found: list[type[errors.GatewayError]] = [errors.GatewayError]
    pending = [errors.GatewayError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


def _troubleshooting() -> str:
    guide = (DOCS / "operator-guide.md").read_text(encoding="utf-8")
    start = guide.index("## Troubleshooting by error code")
    end = guide.find("\n## ", start + 1)
    return guide[start : end if end != -1 else len(guide)]


def test_every_error_code_is_in_the_troubleshooting_section() -> None:
    classes = _error_classes()
    assert console_ws.UpstreamRefused in classes  # defined outside gateway/errors.py
    section = _troubleshooting()
    for cls in classes:
        row = f"| {cls.status} | `{cls.code}` |"
        assert row in section, f"{cls.__name__}: no troubleshooting row {row!r}"


def test_every_websocket_close_code_is_in_the_troubleshooting_section() -> None:
    codes = {
        int(WSCloseCode.GOING_AWAY),  # drain, shutdown
        int(WSCloseCode.UNSUPPORTED_DATA),  # a text frame from the browser
        int(WSCloseCode.MESSAGE_TOO_BIG),  # over relay.max_frame_bytes
        int(WSCloseCode.INTERNAL_ERROR),  # the upstream refused or vanished
        int(WSCloseCode.TRY_AGAIN_LATER),  # over a connection limit
        ws.CLOSE_UNKNOWN_CONSOLE,
        ws.CLOSE_CONSOLE_GONE,
        REVOKED_CLOSE_CODE,
    }
    assert codes == {1001, 1003, 1009, 1011, 1013, 4404, 4410}
    section = _troubleshooting()
    for code in codes:
        assert re.search(rf"^\| {code} \| \S", section, re.M), code


# --- links --------------------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|/)", re.I)


def _slug(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    body = _FENCE.sub("", markdown)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", body, re.M)}


def broken_links(directory: Path) -> list[str]:
    broken: list[str] = []
    for doc in sorted(directory.glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for target in _LINK.findall(_FENCE.sub("", text)):
            if _EXTERNAL.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (doc.parent / path_part).resolve() if path_part else doc
            if not resolved.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif (
                anchor
                and resolved.suffix == ".md"
                and anchor not in _anchors(resolved.read_text(encoding="utf-8"))
            ):
                broken.append(f"{doc.name}: {target} (no such heading)")
    return broken


def test_every_relative_link_in_docs_points_to_an_existing_file() -> None:
    docs = sorted(p.name for p in DOCS.glob("*.md"))
    assert docs == [
        "README.md", "SECURITY.md", "configuration.md", "operator-guide.md", "portal-integration.md"
    ]  # fmt: skip
    assert broken_links(DOCS) == []


def test_the_link_check_finds_missing_files_and_headings(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Some `code` (here)\n\n"
        "[ok](b.md) [ok](#some-code-here) [ok](https://example.com/x) [bad](missing.md)\n"
        "[bad](b.md#nowhere) [ok](b.md#the-end)\n\n```\n[ignored](in-a-fence.md)\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "b.md").write_text("## The end\n", encoding="utf-8")
    assert broken_links(tmp_path) == [
        "a.md: missing.md (no such file)",
        "a.md: b.md#nowhere (no such heading)",
    ]


@pytest.mark.parametrize("doc", ["operator-guide.md", "portal-integration.md", "README.md"])
def test_guides_link_the_configuration_reference(doc: str) -> None:
    assert "(configuration.md" in (DOCS / doc).read_text(encoding="utf-8")


def test_python_examples_in_docs_are_valid_python() -> None:
    blocks = [
        block
        for doc in sorted(DOCS.glob("*.md"))
        for block in re.findall(
            r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S
        )
    ]
    assert blocks, "the portal guide has a Python embedding example"
    for block in blocks:
        compile(block, "<docs example>", "exec")
