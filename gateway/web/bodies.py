"""Reading untrusted JSON bodies: bounded size, no compression tricks, bounded nesting."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway import errors


def _too_deep(raw: str, max_depth: int) -> bool:
    """Count bracket nesting outside strings, so json.loads never recurses past max_depth."""
    if raw.count("[") + raw.count("{") <= max_depth:
        return False  # not enough brackets to nest that deep: skip the per-character walk
    depth = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_json_object(raw: bytes, *, max_depth: int) -> dict[str, Any]:
    """Parse a body that must be a JSON object; BadRequest for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BadRequest("The request body is not valid UTF-8.") from None
    if _too_deep(text, max_depth):
        raise errors.BadRequest("The request body is nested too deeply.")
    try:
        value = json.loads(text)
    except ValueError:
        raise errors.BadRequest("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise errors.BadRequest("The request body must be a JSON object.")
    return value


def check_content_headers(request: web.Request) -> None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise errors.UnsupportedMediaType("Compressed request bodies are not accepted.")
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("The request body must be application/json.")


async def read_json_object(
    request: web.Request, *, max_bytes: int, max_depth: int
) -> dict[str, Any]:
    check_content_headers(request)
    if request.content_length is not None and request.content_length > max_bytes:
        raise errors.PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
    # Content-Length may be absent (chunked) or lie; count what actually arrives.
    body = bytearray()
    async for chunk in request.content.iter_chunked(8192):
        body += chunk
        if len(body) > max_bytes:
            raise errors.PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
    return parse_json_object(bytes(body), max_depth=max_depth)
