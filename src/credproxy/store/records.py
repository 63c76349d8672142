"""The credential protocols over named records, shared by the file and keyring backends.

Both backends keep one JSON record per credential under the name
``token/<provider>/<bucket>`` or ``key/<name>``; they differ only in how a
record is read, written and listed. Checking what a record holds, and telling
the user how to repair a damaged one, is the same for both and lives here.
"""

from __future__ import annotations

from typing import Any

from credproxy.store.base import CorruptRecordError, Token, validate_name


def token_record_id(provider: str, bucket: str) -> str:
    return f"token/{provider}/{bucket}"


def key_record_id(name: str) -> str:
    return f"key/{name}"


def describe(record_id: str) -> str:
    """The credential a record holds, in the user's words."""
    kind, _, rest = record_id.partition("/")
    if kind == "token":
        provider, _, bucket = rest.partition("/")
        return f"token {provider} (bucket {bucket})"
    return f"API key {rest}"


def remedy(record_id: str) -> str:
    """The command that replaces a damaged record."""
    kind, _, rest = record_id.partition("/")
    if kind == "token":
        provider, _, bucket = rest.partition("/")
        return (
            f"remove it with `credproxy token rm {provider} --bucket {bucket}` "
            "and import it or log in again"
        )
    return f"set it again with `credproxy key set {rest}`"


def corrupt(record_id: str, problem: str) -> CorruptRecordError:
    return CorruptRecordError(f"the stored {describe(record_id)} {problem}; {remedy(record_id)}")


class RecordStore:
    """``TokenStore`` and ``KeyStore`` on top of three record operations a backend supplies."""

    async def _load_record(self, record_id: str) -> Any:
        """The decoded record, or None when there is none."""
        raise NotImplementedError

    async def _store_record(self, record_id: str, value: dict[str, Any] | None) -> bool:
        """Write ``value``, or remove the record when it is None; True if something changed."""
        raise NotImplementedError

    async def _record_ids(self) -> list[str]:
        raise NotImplementedError

    async def get_token(self, provider: str, bucket: str) -> Token | None:
        record_id = token_record_id(provider, bucket)
        value = await self._load_record(record_id)
        if value is not None and not isinstance(value, dict):
            raise corrupt(record_id, "is not a token object")
        return value

    async def save_token(self, provider: str, bucket: str, token: Token) -> None:
        validate_name("provider", provider)
        validate_name("bucket", bucket)
        await self._store_record(token_record_id(provider, bucket), dict(token))

    async def remove_token(self, provider: str, bucket: str) -> bool:
        return await self._store_record(token_record_id(provider, bucket), None)

    async def list_providers(self) -> list[str]:
        return sorted({provider for provider, _ in await self._token_names()})

    async def list_buckets(self, provider: str) -> list[str]:
        return sorted(bucket for name, bucket in await self._token_names() if name == provider)

    async def _token_names(self) -> list[tuple[str, str]]:
        found = []
        for record_id in await self._record_ids():
            parts = record_id.split("/")
            if len(parts) == 3 and parts[0] == "token":
                found.append((parts[1], parts[2]))
        return found

    async def get_key(self, name: str) -> str | None:
        record_id = key_record_id(name)
        value = await self._load_record(record_id)
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            raise corrupt(record_id, "is not a key record")
        key: str = value["value"]
        return key

    async def set_key(self, name: str, value: str) -> None:
        validate_name("key", name)
        if not isinstance(value, str) or not value:
            raise ValueError("an API key must be a non-empty string")
        await self._store_record(key_record_id(name), {"value": value})

    async def remove_key(self, name: str) -> bool:
        return await self._store_record(key_record_id(name), None)

    async def list_keys(self) -> list[str]:
        names = []
        for record_id in await self._record_ids():
            kind, _, name = record_id.partition("/")
            if kind == "key" and name:
                names.append(name)
        return sorted(names)
