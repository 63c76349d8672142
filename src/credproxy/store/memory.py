"""In-memory backend: for tests and throwaway daemons; nothing survives a restart."""

from __future__ import annotations

import copy

from credproxy.store.base import Token, validate_name


class MemoryStore:
    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], Token] = {}
        self._keys: dict[str, str] = {}

    async def get_token(self, provider: str, bucket: str) -> Token | None:
        token = self._tokens.get((provider, bucket))
        return copy.deepcopy(token) if token is not None else None

    async def save_token(self, provider: str, bucket: str, token: Token) -> None:
        validate_name("provider", provider)
        validate_name("bucket", bucket)
        self._tokens[(provider, bucket)] = copy.deepcopy(token)

    async def remove_token(self, provider: str, bucket: str) -> bool:
        return self._tokens.pop((provider, bucket), None) is not None

    async def list_providers(self) -> list[str]:
        return sorted({provider for provider, _ in self._tokens})

    async def list_buckets(self, provider: str) -> list[str]:
        return sorted(bucket for name, bucket in self._tokens if name == provider)

    async def get_key(self, name: str) -> str | None:
        return self._keys.get(name)

    async def set_key(self, name: str, value: str) -> None:
        validate_name("key", name)
        self._keys[name] = value

    async def remove_key(self, name: str) -> bool:
        return self._keys.pop(name, None) is not None

    async def list_keys(self) -> list[str]:
        return sorted(self._keys)

    async def close(self) -> None:
        return None
