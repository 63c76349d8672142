"""Renewing host tokens before they expire, so a sandbox rarely meets an expired one.

``ProactiveScheduler`` keeps one timer per provider:bucket whose token it has
seen (``observe``) and calls the injected ``refresh`` shortly before expiry.
It knows nothing of stores, providers or the network: the refresh callable
(the daemon's refresh coordinator) does the single-flight, locking and saving.

The policy, for a token with ``remaining`` seconds left by the wall clock:

- ``lead = min(max(300 s, 10% of remaining), remaining / 4)``. A quarter of
  the remaining life bounds it, so a short-lived token (60 s: renewed 15 s
  before expiry) is renewed about once per lifetime instead of at once and
  again and again; an expired token is renewed at once.
- ``jitter`` is uniform in ``0 .. min(30 s, 10% of remaining)``, taken off the
  renewal time so daemons sharing a store do not all fire together; being
  bounded, it never moves the renewal past expiry nor before now.
- Renewal is due at ``expiry - lead - jitter`` by the wall clock, or after the
  same delay measured on the monotonic clock, whichever comes first: a machine
  that slept (the wall clock ran on, the monotonic one did not) renews at once
  on waking, and a wall clock set back does not postpone renewal. A single
  sleep lasts at most ``MAX_SLEEP_S``, so a wake-up is noticed promptly.
- After a success the returned token is scheduled the same way, but never
  sooner than ``MIN_INTERVAL_S`` after the previous attempt: a refresh that
  answers with an unchanged or nearly expired token (the coordinator's
  cooldown) cannot make the scheduler spin.
- After a failure: retry after 30 s, doubling up to 30 min; after
  ``MAX_CONSECUTIVE_FAILURES`` failures in a row, or at once when the grant is
  gone (``REAUTH_REQUIRED``) or the provider no longer configured, give up
  with one WARNING line. Observing a token with a different expiry (a login,
  or another daemon's refresh) starts afresh. A token removed meanwhile by
  another process (``NOT_FOUND``, also "removed during the refresh") is
  forgotten at once, as ``forget`` would, with one INFO line.
- Tokens without a refresh token or without a numeric expiry are never
  scheduled.

Not thread-safe: use one scheduler from one event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.tokens import expiry_seconds

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "JITTER_MAX_S",
    "LEAD_FLOOR_S",
    "MAX_CONSECUTIVE_FAILURES",
    "MAX_SLEEP_S",
    "MIN_INTERVAL_S",
    "ProactiveScheduler",
    "RenewalClock",
    "RenewalStatus",
    "SystemRenewalClock",
    "backoff_delay",
    "jitter_bound",
    "renewal_lead",
]

logger = logging.getLogger(__name__)

LEAD_FLOOR_S: Final = 300.0
LEAD_FRACTION: Final = 0.1
LEAD_MAX_FRACTION: Final = 0.25
JITTER_MAX_S: Final = 30.0
JITTER_MAX_FRACTION: Final = 0.1
MAX_SLEEP_S: Final = 60.0
MIN_INTERVAL_S: Final = 30.0
BACKOFF_INITIAL_S: Final = 30.0
BACKOFF_MAX_S: Final = 1800.0
MAX_CONSECUTIVE_FAILURES: Final = 10
MAX_ERROR_CHARS: Final = 200
_PERMANENT_CODES: Final = frozenset({ErrorCode.REAUTH_REQUIRED, ErrorCode.PROVIDER_NOT_FOUND})

Refresh = Callable[[str, str], Awaitable[Mapping[str, Any]]]
Outcome = Literal["ok", "failed"]


class RenewalClock(Protocol):
    """Where the scheduler gets time: wall clock for expiry, monotonic for waiting."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemRenewalClock:
    """The real clocks and ``asyncio.sleep``."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class RenewalStatus:
    """What ``credproxy status`` shows for one token; times are wall-clock Unix seconds.

    ``next_at`` is None while a refresh runs and once renewal has stopped
    (given up, or the last refresh returned a token that cannot be renewed).
    """

    next_at: float | None
    last_outcome: Outcome | None
    last_error: str | None
    last_at: float | None
    consecutive_failures: int
    gave_up: bool


def renewal_lead(remaining: float) -> float:
    """Seconds before expiry to renew a token with ``remaining`` seconds left."""
    if remaining <= 0:
        return 0.0
    return min(max(LEAD_FLOOR_S, LEAD_FRACTION * remaining), LEAD_MAX_FRACTION * remaining)


def jitter_bound(remaining: float) -> float:
    """The largest jitter for a token with ``remaining`` seconds left."""
    if remaining <= 0:
        return 0.0
    return min(JITTER_MAX_S, JITTER_MAX_FRACTION * remaining)


def backoff_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
    exponent = min(max(failures, 1) - 1, 16)
    return min(BACKOFF_INITIAL_S * 2.0**exponent, BACKOFF_MAX_S)


def _schedulable_expiry(token: Mapping[str, Any]) -> float | None:
    """The token's expiry when it can be renewed at all, else None."""
    refresh_token = token.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        return None
    return expiry_seconds(token.get("expiry"))


def _describe(exc: Exception) -> str:
    """A short reason safe to log and show: a protocol error's code and message
    (written for the peer, never a secret), otherwise only the exception's type,
    since arbitrary exception text may quote a request or a token."""
    text = f"{exc.code}: {exc.message}" if isinstance(exc, ProxyError) else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@dataclass(slots=True)
class _Entry:
    expiry: float
    due_wall: float | None = None
    due_mono: float | None = None
    task: asyncio.Task[None] | None = None
    refreshing: bool = False
    last_outcome: Outcome | None = None
    last_error: str | None = None
    last_at: float | None = None
    attempt_wall: float | None = None
    attempt_mono: float | None = None
    consecutive_failures: int = 0
    gave_up: bool = False


class ProactiveScheduler:
    """One renewal timer per provider:bucket observed; see the module docstring."""

    def __init__(
        self,
        refresh: Refresh,
        *,
        clock: RenewalClock | None = None,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """``refresh(provider, bucket)`` returns the refreshed host-side token,
        refresh token included. ``forget`` and ``aclose`` cancel a call in
        flight; a refresh that must finish anyway shields itself."""
        self._refresh = refresh
        self._clock: RenewalClock = clock if clock is not None else SystemRenewalClock()
        self._rng = rng if rng is not None else random.Random()
        self._log = log if log is not None else logger
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._closed = False

    def observe(self, provider: str, bucket: str, token: Mapping[str, Any]) -> None:
        """Schedule renewal of a host-side token just served or stored.

        Called on the ``get_token`` path, so the unchanged case is one dict
        lookup and one comparison. A token whose expiry differs from the one
        scheduled replaces the schedule and clears a failure streak or a
        give-up; while a refresh is running, its own result decides the next
        schedule instead.
        """
        if self._closed:
            return
        key = (provider, bucket)
        entry = self._entries.get(key)
        if entry is not None and entry.expiry == token.get("expiry"):
            return
        expiry = _schedulable_expiry(token)
        if expiry is None:
            return
        if entry is None:
            entry = _Entry(expiry=expiry)
            self._entries[key] = entry
        entry.expiry = expiry
        if entry.refreshing:
            return
        entry.consecutive_failures = 0
        entry.gave_up = False
        self._plan(entry, expiry)
        self._start(key, entry)

    def forget(self, provider: str, bucket: str) -> None:
        """Stop renewing a token (removed, logged out)."""
        entry = self._entries.pop((provider, bucket), None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()

    def status(self, provider: str, bucket: str) -> RenewalStatus | None:
        entry = self._entries.get((provider, bucket))
        if entry is None:
            return None
        return RenewalStatus(
            next_at=self._next_at(entry),
            last_outcome=entry.last_outcome,
            last_error=entry.last_error,
            last_at=entry.last_at,
            consecutive_failures=entry.consecutive_failures,
            gave_up=entry.gave_up,
        )

    async def aclose(self) -> None:
        """Cancel every timer and wait until none runs; later calls do nothing."""
        self._closed = True
        tasks = [entry.task for entry in self._entries.values() if entry.task is not None]
        self._entries.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _next_at(self, entry: _Entry) -> float | None:
        """When renewal fires, by the wall clock: the earlier of its two deadlines."""
        if entry.due_wall is None or entry.due_mono is None or entry.refreshing:
            return None
        by_monotonic = self._clock.time() + max(0.0, entry.due_mono - self._clock.monotonic())
        return min(entry.due_wall, by_monotonic)

    def _plan(self, entry: _Entry, expiry: float) -> None:
        now = self._clock.time()
        remaining = expiry - now
        jitter = self._rng.uniform(0.0, jitter_bound(remaining))
        delay = max(0.0, remaining - renewal_lead(remaining) - jitter)
        self._set_due(entry, delay, now)

    def _set_due(self, entry: _Entry, delay: float, now_wall: float) -> None:
        """Due after ``delay`` seconds on both clocks, and never sooner than
        ``MIN_INTERVAL_S`` after the previous attempt on both."""
        due_wall = now_wall + delay
        due_mono = self._clock.monotonic() + delay
        if entry.attempt_wall is not None and entry.attempt_mono is not None:
            due_wall = max(due_wall, entry.attempt_wall + MIN_INTERVAL_S)
            due_mono = max(due_mono, entry.attempt_mono + MIN_INTERVAL_S)
        entry.due_wall = due_wall
        entry.due_mono = due_mono

    def _start(self, key: tuple[str, str], entry: _Entry) -> None:
        if entry.task is not None:
            entry.task.cancel()
        task = asyncio.get_running_loop().create_task(
            self._run(key, entry), name=f"credproxy-renewal-{key[0]}:{key[1]}"
        )
        entry.task = task
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """Retrieve the outcome, so nothing is ever reported as never retrieved."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("token renewal stopped by an unexpected %s", type(exc).__name__)

    async def _run(self, key: tuple[str, str], entry: _Entry) -> None:
        while True:
            await self._wait_until_due(entry)
            entry.refreshing = True
            renewing = entry.expiry
            entry.attempt_wall = self._clock.time()
            entry.attempt_mono = self._clock.monotonic()
            try:
                token = await self._refresh(*key)
            except Exception as exc:
                entry.refreshing = False
                if not self._failed(key, entry, exc, renewing):
                    return
                continue
            entry.refreshing = False
            if not self._succeeded(entry, token):
                return

    async def _wait_until_due(self, entry: _Entry) -> None:
        while True:
            due_wall, due_mono = entry.due_wall, entry.due_mono
            if due_wall is None or due_mono is None:
                raise RuntimeError("renewal timer started without a due time")
            left = min(due_wall - self._clock.time(), due_mono - self._clock.monotonic())
            if left <= 0:
                return
            await self._clock.sleep(min(left, MAX_SLEEP_S))

    def _succeeded(self, entry: _Entry, token: Mapping[str, Any]) -> bool:
        """Record a renewal; True when the returned token is scheduled again."""
        now = self._clock.time()
        entry.last_outcome = "ok"
        entry.last_error = None
        entry.last_at = now
        entry.consecutive_failures = 0
        expiry = _schedulable_expiry(token) if isinstance(token, Mapping) else None
        if expiry is None:
            entry.due_wall = entry.due_mono = None
            return False
        entry.expiry = expiry
        self._plan(entry, expiry)
        return True

    def _failed(self, key: tuple[str, str], entry: _Entry, exc: Exception, renewing: float) -> bool:
        """Record a failed renewal; True when it is retried."""
        now = self._clock.time()
        entry.last_outcome = "failed"
        entry.last_error = _describe(exc)
        entry.last_at = now
        if entry.expiry != renewing:
            # A fresh token was observed while this refresh ran: schedule that one.
            entry.consecutive_failures = 0
            self._plan(entry, entry.expiry)
            return True
        if isinstance(exc, ProxyError) and exc.code == ErrorCode.NOT_FOUND:
            # Removed by another process (a host `logout` or `token rm`, maybe during
            # this refresh): nothing is left to renew, and a later login observes anew.
            if self._entries.get(key) is entry:
                del self._entries[key]
            self._log.info("token renewal for %s:%s stopped: the token was removed", *key)
            return False
        entry.consecutive_failures += 1
        permanent = isinstance(exc, ProxyError) and exc.code in _PERMANENT_CODES
        if permanent or entry.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            entry.gave_up = True
            entry.due_wall = entry.due_mono = None
            self._log.warning(
                "token renewal for %s:%s stopped after %d failed attempt(s) (%s); "
                "renewal starts again after a new login",
                key[0],
                key[1],
                entry.consecutive_failures,
                entry.last_error,
            )
            return False
        self._log.info(
            "token renewal for %s:%s failed (%s), attempt %d, next in %.0f s",
            key[0],
            key[1],
            entry.last_error,
            entry.consecutive_failures,
            backoff_delay(entry.consecutive_failures),
        )
        self._set_due(entry, backoff_delay(entry.consecutive_failures), now)
        return True
