"""Refreshing a stored token on the host, once per credential (RFC 6749 section 6).

``RefreshCoordinator`` makes one provider call per provider:bucket however many
callers ask, in this process and across processes sharing the store:

- in process, concurrent callers share the call in flight (single-flight), and
  callers within the cooldown (protocol.md: 30 s) get its outcome again;
- across processes, the call runs under the record's refresh lock
  (``store.writepath.refresh_lock``); after taking it the record is read again
  and the provider is not called when another process already refreshed it
  (the double-check: the refresh token or the refresh time changed since this
  caller's view, or a refresh within the cooldown left a token that is still
  comfortably valid);
- transient failures (network error, timeout, 5xx, 429 with ``Retry-After``) are
  retried twice, after 1 s and 3 s or as ``Retry-After`` says, within the 15 s
  host limit; ``invalid_grant`` means the grant is gone (``REAUTH_REQUIRED``) and,
  like every other refusal, is never retried;
- the result is saved (and, in the file store, fsynced) before any caller gets
  it, so the rotated refresh token survives a daemon killed right after;
- the save is a compare-and-set on the refresh token used: a logout or a new
  login that happened during the provider call wins;
- every store call is bounded by the write path (``store.writepath``), so a
  renewal with no request around it cannot hang on a stuck keyring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from credproxy.oauth.errors import OAuthFlowError, provider_not_found
from credproxy.oauth.flows import Clock, request_token
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.store.base import UNREACHABLE_ANSWER, StoreUnavailableError
from credproxy.store.writepath import StoreTimeoutError, WritePath, host_metadata, refresh_lock
from credproxy.tokens import REFRESH_TOKEN, Token

if TYPE_CHECKING:
    from credproxy.oauth.config import Endpoints, ProviderConfig, ProviderRegistry
    from credproxy.oauth.http import OAuthHttp

log = logging.getLogger("credproxy.refresh")

REFRESH_COOLDOWN_S: Final = 30.0
RETRY_DELAYS_S: Final = (1.0, 3.0)
REFRESH_BUDGET_S: Final = 15.0
"""The host's limit for one refresh, retries included (protocol.md, "Limits and timeouts")."""
STILL_VALID_S: Final = 30.0
"""A token refreshed by another process is reused only if it stays valid this long."""
_PRUNE_AT: Final = 256

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _Attempt:
    at: float
    error: ProxyError | None


class RefreshCoordinator:
    def __init__(
        self,
        providers: ProviderRegistry,
        http: OAuthHttp,
        writes: WritePath,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        cooldown_s: float = REFRESH_COOLDOWN_S,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        budget_s: float = REFRESH_BUDGET_S,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Every store access goes through ``writes`` and every provider call through
        ``http``; ``sleep`` and the delays are injectable so tests never wait long."""
        self._providers = providers
        self._http = http
        self._writes = writes
        self._clock = clock
        self._monotonic = monotonic
        self._cooldown_s = cooldown_s
        self._retry_delays_s = tuple(retry_delays_s)
        self._budget_s = budget_s
        self._sleep = sleep
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
                token = await self._writes.read_token(provider, bucket)
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
        except StoreTimeoutError:
            failure = ProxyError(
                ErrorCode.INTERNAL_ERROR, "the host's credential store did not answer in time"
            )
            if called:
                self._remember(key, failure)
            raise failure from None
        except StoreUnavailableError as exc:
            log.error("refresh of %s/%s: %s", key[0], key[1], exc)
            failure = ProxyError(ErrorCode.INTERNAL_ERROR, UNREACHABLE_ANSWER)
            if called:
                self._remember(key, failure)
            raise failure from None
        except Exception:
            failure = ProxyError(ErrorCode.INTERNAL_ERROR, "the refresh failed on the host")
            if called:
                self._remember(key, failure)
            raise failure from None
        else:
            if called:
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
        view = await self._writes.read_token(provider, bucket)
        if view is None:
            raise _not_stored(provider, bucket)
        async with self._writes.locks.hold(refresh_lock(provider, bucket)):
            # Under the record lock too: a save that overran its time bound may still be
            # writing the rotated refresh token, and the provider must never see an old one.
            current = await self._writes.read_token_locked(provider, bucket)
            if current is None:
                raise _not_stored(provider, bucket)
            used = current.get(REFRESH_TOKEN)
            if not isinstance(used, str) or not used:
                raise ProxyError(
                    ErrorCode.REAUTH_REQUIRED,
                    f"{provider}: no refresh token is stored; run `credproxy login {provider}`",
                )
            if self._refreshed_elsewhere(view, current):
                return current
            called.append(True)
            try:
                endpoints = await self._providers.endpoints(config, self._http)
                fresh = await self._call_provider(config, endpoints, used)
            except ProxyError as exc:
                await self._writes.record_refresh_failure(
                    provider, bucket, used, exc.code, exc.message, now=self._clock()
                )
                raise
            except OAuthFlowError as exc:
                await self._writes.record_refresh_failure(
                    provider, bucket, used, exc.code, exc.message, now=self._clock()
                )
                raise exc.to_proxy_error() from None
            saved = await self._writes.apply_refresh(
                provider, bucket, used, fresh, now=self._clock()
            )
        if saved is None:
            raise ProxyError(
                ErrorCode.NOT_FOUND,
                f"the token for provider {provider!r} bucket {bucket!r} was removed (logout) "
                f"while it was being refreshed; run `credproxy login {provider}` to use it again",
            )
        return saved

    def _refreshed_elsewhere(self, view: Token, current: Token) -> bool:
        """True when the stored token no longer needs this caller's refresh."""
        before, now_meta = host_metadata(view), host_metadata(current)
        if current.get(REFRESH_TOKEN) != view.get(REFRESH_TOKEN):
            return True
        refreshed_at = now_meta.get("refreshed_at")
        if refreshed_at != before.get("refreshed_at"):
            return True
        if not isinstance(refreshed_at, int | float) or isinstance(refreshed_at, bool):
            return False
        now = self._clock()
        expiry = current.get("expiry")
        return (
            now - refreshed_at < self._cooldown_s
            and isinstance(expiry, int | float)
            and expiry - now > STILL_VALID_S
        )

    async def _call_provider(
        self, config: ProviderConfig, endpoints: Endpoints, refresh_token: str
    ) -> Token:
        """The refresh grant, retried on transient failures within the host's budget."""
        started = self._monotonic()
        delays = list(self._retry_delays_s)
        attempts = 0
        while True:
            attempts += 1
            self.provider_calls += 1
            try:
                return await request_token(
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
                        f"{config.name}: the provider refused the refresh (invalid_grant); "
                        f"run `credproxy login {config.name}` again",
                    ) from None
                if not exc.transient or not delays:
                    raise _final(exc, attempts) from None
                delay = delays.pop(0)
                if exc.retry_after is not None:
                    delay = exc.retry_after
                if self._monotonic() - started + delay > self._budget_s:
                    raise _final(exc, attempts, waited=delay) from None
                await self._sleep(delay)


def _final(exc: OAuthFlowError, attempts: int, *, waited: float | None = None) -> ProxyError:
    """The error after the last attempt, saying how often it was tried."""
    if waited is not None:
        note = f"; the provider asked to wait {waited:g} s, beyond the host's limit"
    elif attempts > 1:
        note = f" (tried {attempts} times)"
    else:
        note = ""
    return ProxyError(exc.code, f"{exc.message}{note}; the stored token is unchanged")


def _not_stored(provider: str, bucket: str) -> ProxyError:
    return ProxyError(
        ErrorCode.NOT_FOUND, f"no token stored for provider {provider!r} bucket {bucket!r}"
    )


def _retrieve(task: asyncio.Task[Token]) -> None:
    """Mark the outcome as seen so asyncio never logs a traceback for an unshared failure."""
    if not task.cancelled():
        task.exception()
