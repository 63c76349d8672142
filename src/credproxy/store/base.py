"""Store interfaces. The daemon sees only these protocols, never a backend.

All methods are coroutines so a backend that blocks (keyring over D-Bus, file
locks) runs its work off the event loop; the server bounds every call by time.
Names arrive validated (``protocol.ops.NAME_PATTERN``); backends check
again with ``validate_name`` since the host CLI calls them directly.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, runtime_checkable

from credproxy.protocol.ops import NAME_RE

Token = dict[str, Any]


class StoreError(Exception):
    """A backend failure; the message says what to do and never carries a secret."""


class StoreUnavailableError(StoreError):
    """The backend cannot be reached right now (a network store down or slow); retrying
    later may succeed. Clients are told ``UNREACHABLE_ANSWER``, the log gets the details."""


UNREACHABLE_ANSWER: Final = "the host's credential store is unreachable; retry shortly"


class CorruptRecordError(StoreError):
    """One record cannot be decrypted or parsed; the others are still readable."""


def validate_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"invalid {kind} name: use 1 to 64 of A-Z a-z 0-9 . _ @ -")
    return value


@runtime_checkable
class TokenStore(Protocol):
    async def get_token(self, provider: str, bucket: str) -> Token | None: ...

    async def save_token(self, provider: str, bucket: str, token: Token) -> None:
        """Store ``token`` as given (callers merge first)."""

    async def remove_token(self, provider: str, bucket: str) -> bool:
        """True if something was removed."""

    async def list_providers(self) -> list[str]:
        """Sorted provider names that have at least one token."""

    async def list_buckets(self, provider: str) -> list[str]:
        """Sorted bucket names of ``provider``."""


@runtime_checkable
class KeyStore(Protocol):
    async def get_key(self, name: str) -> str | None: ...

    async def set_key(self, name: str, value: str) -> None: ...

    async def remove_key(self, name: str) -> bool: ...

    async def list_keys(self) -> list[str]:
        """Sorted key names."""


class CredentialStore(TokenStore, KeyStore, Protocol):
    """A backend that holds both tokens and API keys."""

    async def close(self) -> None: ...
