"""Every Redis key the gateway uses, built in one pure place."""

from __future__ import annotations

import hashlib
import json

from gateway.errors import BadRequest
from gateway.models import ID_PATTERN, ConsoleTarget


def _part(value: str) -> str:
    # Braces would move a key to another Cluster slot and ':' or '/' could make two
    # targets share a key; the web layer validates ids already, this is the last line.
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest("The console target is not valid.")
    return value


def _subject_digest(subject: str) -> str:
    # A JWT subject is any string (braces, colons, e-mail addresses); hashing keeps keys
    # bounded and hash tags intact, and keeps names out of a Redis dump's key list.
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


class KeySpace:
    """Key names under one prefix; a key's derived lock/error keys share its hash tag.

    The ``{...}`` hash tag pins all keys of one server (or console) to one Redis
    Cluster slot, so multi-key scripts over a key and its lock stay legal there.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # RedisSettings.key_prefix already forbids braces

    def console_url(self, target: ConsoleTarget) -> str:
        tag = f"t:{_part(target.project_id)}/{_part(target.server_id)}"
        return f"{self.prefix}{{{tag}}}:url:{_part(target.type)}:{_part(target.protocol)}"

    def console(self, id_hash: str) -> str:
        return f"{self.prefix}{{c:{_part(id_hash)}}}:console"

    def keystone_token(self, auth_url: str, username: str, project_id: str) -> str:
        # Hashed, not embedded: the names are not secret, but a key must not grow with
        # them or carry a URL, and JSON keeps ("a", "b:c") apart from ("a:b", "c").
        identity = json.dumps([auth_url, username, project_id]).encode()
        digest = hashlib.sha256(identity).hexdigest()[:32]
        return f"{self.prefix}{{k:{digest}}}:keystone"

    def live_on_console(self, id_hash: str) -> str:
        """ZSET of one console's live WebSockets on every instance; beside its record."""
        return f"{self.prefix}{{c:{_part(id_hash)}}}:live"

    def live_of_subject(self, subject: str) -> str:
        """ZSET of one subject's live WebSockets on every instance."""
        return f"{self.prefix}{{s:{_subject_digest(subject)}}}:live"

    def creations_of_subject(self, subject: str) -> str:
        """ZSET of one subject's recent console creations (the rate-limit window)."""
        return f"{self.prefix}{{s:{_subject_digest(subject)}}}:creates"

    def revocations(self) -> str:
        # A pub/sub channel, not a key: Cluster broadcasts PUBLISH to every node, so it
        # needs no hash tag.
        return f"{self.prefix}revocations"

    def lock_for(self, key: str) -> str:
        return f"{key}:lock"

    def error_for(self, key: str) -> str:
        return f"{key}:err"
