"""Where the proxy gets real secrets: the daemon's store, and its refresh machinery for tokens.

``SecretSource`` is the small face the proxy sees. ``StoreSecrets`` reads API
keys and tokens from the store and takes access tokens through the daemon's
``refresh.RefreshCoordinator`` when they expire within ``margin_s`` (or when the
upstream refused the one we sent), so any number of concurrent requests on an
expired token share one refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, Protocol

from credproxy.protocol.errors import ProxyError
from credproxy.tokens import expiry_seconds

if TYPE_CHECKING:
    from credproxy.oauth.flows import Clock
    from credproxy.oauth.runtime import OAuthRuntime
    from credproxy.store.base import CredentialStore

REFRESH_MARGIN_S: Final = 60.0
STORE_TIMEOUT_S: Final = 15.0


class SecretUnavailable(Exception):
    """No usable secret; the message says what the user should do and holds no secret."""


class SecretSource(Protocol):
    async def api_key(self, name: str) -> str: ...

    async def access_token(
        self, provider: str, bucket: str, *, force_refresh: bool = False
    ) -> str: ...


class StoreSecrets:
    def __init__(
        self,
        store: CredentialStore,
        oauth: OAuthRuntime | None,
        *,
        clock: Clock = time.time,
        margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self._store = store
        self._oauth = oauth
        self._clock = clock
        self._margin_s = margin_s

    async def api_key(self, name: str) -> str:
        async with _bounded():
            value = await self._store.get_key(name)
        if not value:
            raise SecretUnavailable(
                f"no API key named {name!r} is stored on the host; run `credproxy key set {name}`"
            )
        return value

    async def access_token(self, provider: str, bucket: str, *, force_refresh: bool = False) -> str:
        if self._oauth is None:
            raise SecretUnavailable("this daemon has no OAuth runtime")
        async with _bounded():
            token = await self._store.get_token(provider, bucket)
        if token is None:
            raise SecretUnavailable(
                f"no token stored for {provider}:{bucket}; run `credproxy login {provider}`"
            )
        expiry = expiry_seconds(token.get("expiry"))
        due = expiry is None or expiry - self._clock() < self._margin_s
        if force_refresh or due:
            try:
                token = await self._oauth.refresher.refresh(provider, bucket)
            except ProxyError as exc:
                if not due:
                    access = token.get("access_token")
                    if isinstance(access, str) and access:
                        return access
                raise SecretUnavailable(
                    f"refreshing {provider}:{bucket} failed: {exc.message}"
                ) from None
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise SecretUnavailable(f"the token for {provider}:{bucket} has no access_token")
        return access


@contextlib.asynccontextmanager
async def _bounded() -> AsyncIterator[None]:
    """A store that hangs (a locked keyring) must not hang the sandbox's request."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            yield
    except TimeoutError:
        raise SecretUnavailable("the host's credential store did not answer in time") from None
