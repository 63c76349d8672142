"""Grants: what one sandbox may do, and the capability tokens that carry them.

A capability token is 256 random bits shown as 64 lowercase hex characters.
The daemon keeps only SHA-256 digests of the tokens it issued and compares a
presented token by hashing it and comparing digests in constant time, so
neither the comparison nor a memory dump of the table reveals a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Final

from credproxy.protocol.ops import DEFAULT_BUCKET

CAPABILITY_TOKEN_HEX: Final = 64


@dataclass(frozen=True, slots=True)
class Grant:
    """Permissions fixed when a sandbox is launched.

    ``providers`` holds ``"provider"`` (every bucket) or ``"provider:bucket"``
    entries; ``None`` means every provider. ``keys`` likewise for API key names.
    ``grant_id`` makes two grants with equal rules distinct identities, so two
    sandboxes never share login sessions.
    """

    grant_id: str
    providers: frozenset[str] | None = frozenset()
    keys: frozenset[str] | None = frozenset()
    can_save: bool = False
    can_remove: bool = False
    label: str = field(default="", compare=False)

    @classmethod
    def full(cls) -> Grant:
        return cls(
            grant_id="full",
            providers=None,
            keys=None,
            can_save=True,
            can_remove=True,
            label="full access",
        )

    @property
    def is_full(self) -> bool:
        return self.providers is None and self.keys is None and self.can_save and self.can_remove

    def allows_provider(self, provider: str) -> bool:
        """True if some bucket of ``provider`` is readable."""
        if self.providers is None:
            return True
        prefix = provider + ":"
        return any(entry == provider or entry.startswith(prefix) for entry in self.providers)

    def allows_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> bool:
        if self.providers is None:
            return True
        return provider in self.providers or f"{provider}:{bucket}" in self.providers

    def allows_key(self, name: str) -> bool:
        return self.keys is None or name in self.keys

    def describe(self) -> str:
        """A short audit-friendly summary; holds names only, never secrets."""
        if self.is_full:
            return "full"
        providers = "*" if self.providers is None else ",".join(sorted(self.providers))
        keys = "*" if self.keys is None else ",".join(sorted(self.keys))
        flags = ("+save" if self.can_save else "") + ("+remove" if self.can_remove else "")
        return f"providers=[{providers}] keys=[{keys}]{flags}"


def new_capability_token() -> str:
    return secrets.token_hex(CAPABILITY_TOKEN_HEX // 2)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class CapabilityTable:
    """Maps issued capability tokens (by digest) to grants."""

    def __init__(self) -> None:
        self._entries: list[tuple[bytes, Grant]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, grant: Grant) -> str:
        token = new_capability_token()
        self._entries.append((_digest(token), grant))
        return token

    def add(self, token: str, grant: Grant) -> None:
        self._entries.append((_digest(token), grant))

    def lookup(self, presented: object) -> Grant | None:
        """The grant for ``presented``, comparing every entry so timing reveals nothing."""
        if not isinstance(presented, str):
            return None
        candidate = _digest(presented)
        found: Grant | None = None
        for digest, grant in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = grant
        return found
