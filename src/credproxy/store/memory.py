"""In-memory backend: for tests and throwaway daemons; nothing survives a restart.

Tokens are kept as encoded JSON, so every read hands out a fresh copy that a
caller may change freely; decoding is several times cheaper than ``deepcopy``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from credproxy.store.base import Token, validate_name

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(dict).decode


class MemoryStore:
    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], bytes] = {}
        self._keys: dict[str, str] = {}

    async def get_token(self, provider: str, bucket: str) -> Token | None:
        encoded = self._tokens.get((provider, bucket))
        return _decode(encoded) if encoded is not None else None

    async def save_token(self, provider: str, bucket: str, token: Token) -> None:
        validate_name("provider", provider)
        validate_name("bucket", bucket)
        self._tokens[(provider, bucket)] = _encode(token)

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
