"""Compute API microversion negotiation, as nova does it (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from gateway import errors

_VERSION = re.compile(r"^([1-9]\d*)\.(0|[1-9]\d*)$")


class Version(NamedTuple):
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


MIN_VERSION = Version(2, 1)
# The remote-consoles body and answer are the same from 2.6 to 2.96 for novnc, so the gateway
# accepts the whole range standard clients may pin.
MAX_VERSION = Version(2, 96)
REMOTE_CONSOLES_MIN = Version(2, 6)


def requested_version_text(headers: Mapping[str, str]) -> str | None:
    """The compute entry of OpenStack-API-Version wins over the legacy Nova header."""
    for item in headers.get("OpenStack-API-Version", "").split(","):
        service, _, version = item.strip().partition(" ")
        if service.lower() == "compute":
            return version.strip()
    legacy = headers.get("X-OpenStack-Nova-API-Version")
    return legacy.strip() if legacy is not None else None


def negotiate(headers: Mapping[str, str]) -> Version:
    """The version a request asked for; no header means 2.1, like nova."""
    text = requested_version_text(headers)
    if text is None:
        return MIN_VERSION
    if text.lower() == "latest":
        return MAX_VERSION
    match = _VERSION.match(text)
    if match is None:
        raise errors.BadRequest(
            "API Version String is of invalid format. Must be of format MajorNum.MinorNum."
        )
    version = Version(int(match.group(1)), int(match.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise errors.NotAcceptable(
            f"Version {version} is not supported by the API. "
            f"Minimum is {MIN_VERSION} and maximum is {MAX_VERSION}."
        )
    return version


def version_headers(version: Version) -> dict[str, str]:
    return {
        "OpenStack-API-Version": f"compute {version}",
        "X-OpenStack-Nova-API-Version": str(version),
        "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
    }
