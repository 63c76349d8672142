"""Refreshing a stored token on the host (RFC 6749 section 6).

At most one provider call per provider:bucket at a time, and at most one per
cooldown (protocol.md: 30 s): concurrent callers share the call in flight,
and callers inside the cooldown get its outcome (the stored token, or the same
error) without a new provider call. ``invalid_grant`` means the grant is gone
(a rotated token reused, or revoked): ``REAUTH_REQUIRED``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from credproxy.oauth.errors import OAuthFlowError, provider_not_found
from credproxy.oauth.flows import Clock, request_token
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.tokens import Token

if TYPE_CHECKING:
    from credproxy.oauth.config import ProviderRegistry
    from credproxy.oauth.http import OAuthHttp
    from credproxy.oauth.runtime import TokenWriter

REFRESH_COOLDOWN_S: Final = 30.0
_PRUNE_AT: Final = 256


@dataclass(slots=True)
class _Attempt:
    at: float
    error: ProxyError | None


class RefreshCoordinator:
    def __init__(
        self,
        providers: ProviderRegistry,
        http: OAuthHttp,
        writer: TokenWriter,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        cooldown_s: float = REFRESH_COOLDOWN_S,
    ) -> None:
        """Every store access goes through ``writer`` and every provider call through
        ``http``; both bound their own time."""
        self._providers = providers
        self._http = http
        self._writer = writer
        self._clock = clock
        self._monotonic = monotonic
        self._cooldown_s = cooldown_s
        self._inflight: dict[tuple[str, str], asyncio.Task[Token]] = {}
        self._last: dict[tuple[str, str], _Attempt] = {}
        self.provider_calls = 0

    async def refresh(self, provider: str, bucket: str) -> Token:
        """The refreshed token, refresh token included (callers sanitize).

        The provider call runs in its own task, so a caller that gives up
        (cancelled request) does not cancel it for the others sharing it.
        """
        key = (provider, bucket)
        running = self._inflight.get(key)
        if running is None:
            last = self._last.get(key)
            if last is not None and self._monotonic() - last.at < self._cooldown_s:
                if last.error is not None:
                    raise ProxyError(last.error.code, last.error.message)
                token = await self._writer.load(provider, bucket)
                if token is not None:
                    return token
            running = asyncio.get_running_loop().create_task(self._run(key))
            running.add_done_callback(_retrieve)
            self._inflight[key] = running
        return await asyncio.shield(running)

    async def _run(self, key: tuple[str, str]) -> Token:
        """One refresh; its outcome is remembered for the cooldown only when the
        provider was actually called (a missing token or provider costs nothing to
        recheck, and must not let a sandbox grow the table with made-up names)."""
        called: list[bool] = []
        try:
            token = await self._refresh_once(*key, called)
        except ProxyError as exc:
            if called:
                self._remember(key, exc)
            raise
        except Exception:
            failure = ProxyError(ErrorCode.INTERNAL_ERROR, "the refresh failed on the host")
            if called:
                self._remember(key, failure)
            raise failure from None
        else:
            self._remember(key, None)
            return token
        finally:
            self._inflight.pop(key, None)

    def _remember(self, key: tuple[str, str], error: ProxyError | None) -> None:
        now = self._monotonic()
        if len(self._last) >= _PRUNE_AT:
            for stale in [k for k, a in self._last.items() if now - a.at >= self._cooldown_s]:
                del self._last[stale]
        self._last[key] = _Attempt(now, error)

    async def _refresh_once(self, provider: str, bucket: str, called: list[bool]) -> Token:
        config = self._providers.get(provider)
        if config is None:
            raise provider_not_found(provider)
        stored = await self._writer.load(provider, bucket)
        if stored is None:
            raise ProxyError(
                ErrorCode.NOT_FOUND,
                f"no token stored for provider {provider!r} bucket {bucket!r}",
            )
        refresh_token = stored.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ProxyError(
                ErrorCode.REAUTH_REQUIRED,
                f"{provider}: no refresh token is stored; run `credproxy login {provider}`",
            )
        try:
            endpoints = await self._providers.endpoints(config, self._http)
            called.append(True)
            self.provider_calls += 1
            fresh = await request_token(
                config,
                endpoints,
                self._http,
                {"grant_type": "refresh_token", "refresh_token": refresh_token},
                step="refresh request",
                clock=self._clock,
            )
        except OAuthFlowError as exc:
            if exc.oauth_error == "invalid_grant":
                raise ProxyError(
                    ErrorCode.REAUTH_REQUIRED,
                    f"{provider}: the provider refused the refresh (invalid_grant); "
                    f"run `credproxy login {provider}` again",
                ) from None
            raise exc.to_proxy_error() from None
        return await self._writer.save(provider, bucket, fresh)


def _retrieve(task: asyncio.Task[Token]) -> None:
    """Mark the outcome as seen so asyncio never logs a traceback for an unshared failure."""
    if not task.cancelled():
        task.exception()
