"""A store wrapper that holds every call until SIGUSR1: for the test suite only.

Some server rules (16 requests in flight, cancel, the call timeout, a graceful
SIGTERM with a request still running) can only be observed while requests are
genuinely in flight. A fast store makes that a race; this wrapper makes it
deterministic. It is switched on by the hidden ``--testing-hold-store`` option
of ``credproxy serve`` and by nothing else.
"""

from __future__ import annotations

import asyncio
import signal

from credproxy.store.base import CredentialStore, Token


class HeldStore:
    """Every call waits until the gate opens (SIGUSR1), then goes to ``inner``."""

    def __init__(self, inner: CredentialStore) -> None:
        self._inner = inner
        self._gate = asyncio.Event()
        self.record_lock_directory = getattr(inner, "record_lock_directory", None)

    def install_signal_handler(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._gate.set)

    async def get_token(self, provider: str, bucket: str) -> Token | None:
        await self._gate.wait()
        return await self._inner.get_token(provider, bucket)

    async def save_token(self, provider: str, bucket: str, token: Token) -> None:
        await self._gate.wait()
        await self._inner.save_token(provider, bucket, token)

    async def remove_token(self, provider: str, bucket: str) -> bool:
        await self._gate.wait()
        return await self._inner.remove_token(provider, bucket)

    async def list_providers(self) -> list[str]:
        await self._gate.wait()
        return await self._inner.list_providers()

    async def list_buckets(self, provider: str) -> list[str]:
        await self._gate.wait()
        return await self._inner.list_buckets(provider)

    async def get_key(self, name: str) -> str | None:
        await self._gate.wait()
        return await self._inner.get_key(name)

    async def set_key(self, name: str, value: str) -> None:
        await self._gate.wait()
        await self._inner.set_key(name, value)

    async def remove_key(self, name: str) -> bool:
        await self._gate.wait()
        return await self._inner.remove_key(name)

    async def list_keys(self) -> list[str]:
        await self._gate.wait()
        return await self._inner.list_keys()

    async def close(self) -> None:
        await self._inner.close()
