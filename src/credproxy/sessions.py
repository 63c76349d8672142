"""Login sessions on the host: single-use, expiring, bound to the identity that opened them.

Implements the credential-proxy plan PLAN-20250214-CREDPROXY, phase P26,
requirements R17.1-R17.3, R18.1, R19.1 and R20.1-R20.9 (``protocol.md``,
"Login over the proxy"). No network and no wall clock: lifetimes come from
an injected monotonic clock so tests never sleep to see expiry.

Rules kept here:

- A session id is ``secrets.token_hex(16)``: 128 random bits, 32 lowercase hex.
- ``get_session`` checks, in order: unknown id (``SESSION_NOT_FOUND``), used
  (``SESSION_ALREADY_USED``), older than the timeout (``SESSION_EXPIRED``; the
  session is removed), identity (``UNAUTHORIZED``).
- Identity is the peer uid and the connection's grant. The pid is recorded
  for audit only: one sandbox may run its login from several processes, and
  pids are reused, so a pid proves nothing the uid and grant do not.
- A session owns the resources attached to it (its background task, its
  loopback listener); whichever way it ends, they are cancelled or closed.
- Open sessions are bounded per identity and in total, so one sandbox cannot
  fill the host's memory or starve the others. A login being started holds a
  place (``admit``) before the provider is contacted, so the caps also bound
  the provider calls a sandbox can cause.
- Logins started are also bounded per identity over time (twice its
  open-session cap a minute, 32 by default): a
  sandbox that cancels each login at once never meets the open-session cap,
  and would otherwise make the host call the provider (a device
  authorization request, a discovery fetch) as fast as it can send.
- Sessions are kept in creation order, which is expiry order because the
  timeout is the same for all, and used ids in a separate set, so a sweep
  touches only what it removes.

Not thread-safe: use one manager from one event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from credproxy.grants import Grant
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.messages import FLOW_TYPES, FlowType
from credproxy.tokens import Token, sanitize

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_MAX_SESSIONS_PER_IDENTITY",
    "DEFAULT_TIMEOUT_S",
    "FLOW_TYPES",
    "TIMEOUT_ENV_VAR",
    "Admission",
    "FlowType",
    "OAuthSession",
    "OAuthSessionManager",
    "PeerIdentity",
    "SessionResult",
    "parse_timeout_env",
]

logger = logging.getLogger(__name__)

TIMEOUT_ENV_VAR: Final = "LLXPRT_OAUTH_SESSION_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_S: Final = 600.0
DEFAULT_GC_INTERVAL_S: Final = 60.0
DEFAULT_MAX_SESSIONS_PER_IDENTITY: Final = 16
DEFAULT_MAX_SESSIONS: Final = 1024
STARTS_PER_CAP: Final = 2
"""Logins one identity may start per ``START_WINDOW_S``, as a multiple of its open-session cap."""
START_WINDOW_S: Final = 60.0
SESSION_ID_BYTES: Final = 16

ResultStatus = Literal["pending", "complete", "error"]

Resource: TypeAlias = asyncio.Future[Any] | Callable[[], object]
"""What a session can own: a task/future (cancelled) or a closer (called)."""

# Digits only, no sign, no whitespace, no underscores, no leading zero: exactly
# the strings whose meaning nobody can dispute. ``int()`` alone would accept
# " 600", "+600", "6_00" and non-ASCII digits.
_POSITIVE_INTEGER: Final = re.compile(r"[1-9][0-9]{0,9}")
_MAX_SHOWN_VALUE: Final = 40


def parse_timeout_env(raw: str) -> int:
    """The session timeout from ``LLXPRT_OAUTH_SESSION_TIMEOUT_SECONDS``.

    A security timeout must not be guessed, so anything but a plain positive
    decimal integer (at most ten digits) is an error naming the variable and
    the value, never a silent fall back to the default. The value is not a
    secret; it is clipped so a huge variable does not flood the message.
    """
    if _POSITIVE_INTEGER.fullmatch(raw) is None:
        shown = raw if len(raw) <= _MAX_SHOWN_VALUE else raw[:_MAX_SHOWN_VALUE] + "..."
        raise ValueError(
            f"{TIMEOUT_ENV_VAR} must be a positive integer number of seconds "
            f"(digits only, e.g. 600), got {shown!r}"
        )
    return int(raw)


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who opened a session: the peer's uid and pid (SO_PEERCRED) and the connection's grant.

    ``matches`` decides who may use a session; ``pid`` takes no part in it.
    """

    uid: int | None = None
    pid: int | None = None
    grant: Grant | None = None

    @property
    def key(self) -> tuple[int | None, Grant | None]:
        """The part of the identity that sessions are bound to and counted by."""
        return (self.uid, self.grant)

    def matches(self, other: PeerIdentity) -> bool:
        """Same grant and same uid.

        An unknown uid only matches an unknown uid: if one side's uid is known
        and the other's is not, the peers cannot be shown to be the same user,
        so the answer is no (fail closed).
        """
        return self.uid == other.uid and self.grant == other.grant


@dataclass(frozen=True, slots=True)
class SessionResult:
    """The login's outcome as ``oauth_poll`` reports it.

    ``token`` is sanitized (no refresh token); ``code`` and ``message`` are
    shown to the peer, so they must not carry a secret.
    """

    status: ResultStatus
    token: Token | None = None
    code: str | None = None
    message: str | None = None


_PENDING: Final = SessionResult("pending")

_IdentityKey: TypeAlias = tuple[int | None, Grant | None]


class Admission:
    """One place under the session caps, held from the admission check until the
    session exists (or the login is abandoned), so logins still contacting the
    provider count against the cap too."""

    __slots__ = ("held", "key")

    def __init__(self, key: _IdentityKey) -> None:
        self.key: Final = key
        self.held = True


class _Closer:
    """Runs the resources of ended sessions and keeps their async work reachable.

    Owned by a manager; shared by its sessions so ``wait_closed`` can await
    every closer and cancelled task the manager started.
    """

    def __init__(self) -> None:
        self.pending: set[asyncio.Future[Any]] = set()

    def close(self, resource: Resource) -> None:
        if isinstance(resource, asyncio.Future):
            self._cancel(resource)
        else:
            self._call(resource)

    def _cancel(self, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        try:
            current = asyncio.current_task()
        except RuntimeError:
            current = None
        if future is current:
            # A task that ends its own session is already finishing; cancelling
            # it would abort its remaining cleanup at its next await.
            return
        future.cancel()
        self._track(future)

    def _call(self, closer: Callable[[], object]) -> None:
        try:
            outcome = closer()
        except Exception as exc:
            _log_failure("closer", closer, exc)
            return
        if not inspect.isawaitable(outcome):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(outcome):
                outcome.close()
            logger.warning(
                "login session: async closer %s not run: no running event loop",
                _describe(closer),
            )
            return
        task = loop.create_task(_await(outcome))
        task.add_done_callback(lambda done: _report_closer(closer, done))
        self._track(task)

    def _track(self, future: asyncio.Future[Any]) -> None:
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)


async def _await(awaitable: Awaitable[object]) -> None:
    await awaitable


def _describe(obj: object) -> str:
    """Names a callable for a log line by its qualified name only, never its arguments."""
    if isinstance(obj, asyncio.Task):
        obj = obj.get_coro()
    target = getattr(obj, "func", obj)  # functools.partial
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return str(name)


def _log_failure(what: str, obj: object, exc: BaseException) -> None:
    # Only the exception's type: its message or traceback may hold a code,
    # a URL with a state parameter or a token.
    logger.warning("login session: %s %s failed with %s", what, _describe(obj), type(exc).__name__)


def _report_closer(closer: Callable[[], object], task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log_failure("closer", closer, exc)


class OAuthSession:
    """One login in progress.

    The OAuth engineer's contract:

    - ``flow`` is the flow instance for this login alone (its PKCE verifier,
      state, device code stay in it and never leave the host).
    - ``attach(task_or_closer)`` hands ownership of background work to the
      session: a device-code poll task, a loopback listener's close function.
      When the session ends they are cancelled or closed. A task that ends
      with an exception while the result is still pending fails the session
      (``ProxyError`` keeps its code and message; anything else becomes a
      generic ``INTERNAL_ERROR``) and the exception is logged by type only.
    - ``complete(token)`` / ``fail(code, message)`` record the outcome that
      ``oauth_poll`` reports; the first call wins. ``complete`` keeps only the
      sanitized token: save the full token to the store before calling it.
    - A used session is removed by the next sweep, which closes what is
      attached: work that must outlive ``mark_used`` (the code exchange)
      belongs to the caller, not to the session.
    """

    __slots__ = (
        "_closer",
        "_ended",
        "_result",
        "_stack",
        "_used",
        "_used_ids",
        "bucket",
        "created_at",
        "flow",
        "flow_type",
        "identity",
        "provider",
        "session_id",
    )

    def __init__(
        self,
        *,
        session_id: str,
        provider: str,
        bucket: str,
        flow_type: FlowType,
        flow: Any,
        identity: PeerIdentity,
        created_at: float,
        closer: _Closer,
        used_ids: set[str],
    ) -> None:
        self.session_id: Final = session_id
        self.provider: Final = provider
        self.bucket: Final = bucket
        self.flow_type: Final[FlowType] = flow_type
        self.flow: Final[Any] = flow
        self.identity: Final = identity
        self.created_at: Final = created_at
        self._used = False
        self._ended = False
        self._result = _PENDING
        self._stack: contextlib.ExitStack | None = None
        """What the session owns, closed last attached first when it ends; made
        on the first ``attach`` (a code-paste login owns nothing)."""
        self._closer = closer
        self._used_ids = used_ids

    def __repr__(self) -> str:
        # The id lets its holder use the session: never shown in full.
        return (
            f"OAuthSession(provider={self.provider!r}, bucket={self.bucket!r}, "
            f"flow_type={self.flow_type!r}, used={self._used}, ended={self._ended}, "
            f"status={self._result.status!r})"
        )

    @property
    def used(self) -> bool:
        """Set through ``OAuthSessionManager.mark_used`` (or here), which also files the id
        where the sweep finds it cheaply. Single use: it never goes back to False."""
        return self._used

    @used.setter
    def used(self, value: bool) -> None:
        if not value:
            if self._used:
                raise ValueError("a used login session cannot be made unused")
            return
        if not self._used:
            self._used = True
            if not self._ended:
                self._used_ids.add(self.session_id)

    @property
    def ended(self) -> bool:
        """True once removed, swept, expired on access or cleared."""
        return self._ended

    @property
    def result(self) -> SessionResult:
        return self._result

    def complete(self, token: Token) -> bool:
        """Record success; False if the outcome was already settled."""
        if self._result.status != "pending":
            return False
        self._result = SessionResult("complete", token=sanitize(token))
        return True

    def fail(self, code: ErrorCode | str, message: str) -> bool:
        """Record failure; ``message`` is shown to the peer. False if already settled."""
        if self._result.status != "pending":
            return False
        self._result = SessionResult("error", code=str(code), message=message)
        return True

    def attach(self, resource: Resource) -> None:
        """Make the session own ``resource``; on an ended session it is closed at once."""
        if not isinstance(resource, asyncio.Future) and not callable(resource):
            raise TypeError("a session can own an asyncio task/future or a callable closer")
        if isinstance(resource, asyncio.Future):
            resource.add_done_callback(self._on_task_done)
        if self._ended:
            self._closer.close(resource)
            return
        if self._stack is None:
            self._stack = contextlib.ExitStack()
        self._stack.callback(self._closer.close, resource)

    def _on_task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here so asyncio never logs its traceback
        if exc is None:
            return
        _log_failure("background task", task, exc)
        if isinstance(exc, ProxyError):
            self.fail(exc.code, exc.message)
        else:
            self.fail(ErrorCode.INTERNAL_ERROR, "the login failed on the host; start it again")

    def _end(self) -> None:
        """Close owned resources, last attached first. Ending is synchronous
        (``remove_session`` is called from handlers and the sweep), so tasks are
        cancelled at once and async closers run as tasks ``wait_closed`` awaits."""
        self._ended = True
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


class OAuthSessionManager:
    """The host's table of login sessions (see the module docstring for the rules)."""

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sessions_per_identity: int = DEFAULT_MAX_SESSIONS_PER_IDENTITY,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``environ`` defaults to ``os.environ``; when it sets ``TIMEOUT_ENV_VAR``,
        that value (validated by ``parse_timeout_env``) replaces ``timeout_s``."""
        env = os.environ if environ is None else environ
        raw = env.get(TIMEOUT_ENV_VAR)
        timeout = float(parse_timeout_env(raw)) if raw is not None else timeout_s
        if isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        for name, cap in (
            ("max_sessions_per_identity", max_sessions_per_identity),
            ("max_sessions", max_sessions),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"{name} must be a positive integer, got {cap!r}")
        self.timeout_s: Final = timeout
        self.max_sessions_per_identity: Final = max_sessions_per_identity
        self.max_sessions: Final = max_sessions
        self.max_starts_per_window: Final = STARTS_PER_CAP * max_sessions_per_identity
        self._clock = clock
        self._sessions: OrderedDict[str, OAuthSession] = OrderedDict()
        self._used_ids: set[str] = set()
        self._flow_owners: dict[object, str] = {}
        """Live sessions by their flow object (flows hash by identity; the session holds
        the flow, so an entry never outlives it): one flow must not serve two logins."""
        self._per_identity: dict[_IdentityKey, int] = {}
        """Open sessions plus held admissions, per identity."""
        self._admitted = 0
        self._starts: dict[_IdentityKey, deque[float]] = {}
        """When each identity's recent logins were admitted, oldest first."""
        self._closer = _Closer()
        self._gc_task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    @property
    def gc_running(self) -> bool:
        return self._gc_task is not None and not self._gc_task.done()

    def create_session(
        self,
        provider: str,
        bucket: str,
        flow_type: FlowType,
        flow: Any,
        identity: PeerIdentity,
        *,
        admission: Admission | None = None,
    ) -> str:
        """Open a session and return its id.

        With a held ``admission`` of the same identity the session takes its
        place; without one, ``RESOURCE_EXHAUSTED`` as ``ensure_capacity``.
        """
        if flow_type not in FLOW_TYPES:
            raise ValueError(f"unknown flow type {flow_type!r}")
        if flow is not None and flow in self._flow_owners:
            raise ValueError("this flow object already belongs to a live session")
        key = identity.key
        if admission is not None and admission.held and admission.key == key:
            admission.held = False
            self._admitted -= 1
        else:
            self.ensure_capacity(identity)
            self._per_identity[key] = self._per_identity.get(key, 0) + 1
        session_id = secrets.token_hex(SESSION_ID_BYTES)
        while session_id in self._sessions:  # 2**-128 per draw; kept for the invariant
            session_id = secrets.token_hex(SESSION_ID_BYTES)
        self._sessions[session_id] = OAuthSession(
            session_id=session_id,
            provider=provider,
            bucket=bucket,
            flow_type=flow_type,
            flow=flow,
            identity=identity,
            created_at=self._clock(),
            closer=self._closer,
            used_ids=self._used_ids,
        )
        if flow is not None:
            self._flow_owners[flow] = session_id
        return session_id

    def ensure_capacity(self, identity: PeerIdentity) -> None:
        """``RESOURCE_EXHAUSTED`` when the identity or the host already holds the maximum
        of open sessions and admitted logins (expired and used sessions are swept
        first, so only live logins count).

        Cheap and without network, so it runs (through ``admit``) before any
        provider work: a sandbox at its cap cannot make the host contact the
        provider or bind a listener for a session it would never get.
        """
        key = identity.key
        if (
            len(self._sessions) + self._admitted >= self.max_sessions
            or self._per_identity.get(key, 0) >= self.max_sessions_per_identity
        ):
            self.sweep_expired()
        if self._per_identity.get(key, 0) >= self.max_sessions_per_identity:
            raise ProxyError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"too many open login sessions for this sandbox (at most "
                f"{self.max_sessions_per_identity}); finish or cancel one, or wait until an "
                f"abandoned one expires ({self.timeout_s:g} s after it started)",
            )
        if len(self._sessions) + self._admitted >= self.max_sessions:
            raise ProxyError(
                ErrorCode.RESOURCE_EXHAUSTED,
                "too many open login sessions on the host; try again later",
            )

    @contextlib.contextmanager
    def admit(self, identity: PeerIdentity) -> Iterator[Admission]:
        """``ensure_capacity``, then hold a place for ``identity`` until the block ends.

        Wrap the provider work of a new login in this and pass the admission to
        ``create_session``: a burst of concurrent logins cannot all pass the
        check and then each make a provider call for a session only one can get.
        """
        self.ensure_capacity(identity)
        self._count_start(identity.key)
        admission = Admission(identity.key)
        self._per_identity[admission.key] = self._per_identity.get(admission.key, 0) + 1
        self._admitted += 1
        try:
            yield admission
        finally:
            if admission.held:
                admission.held = False
                self._admitted -= 1
                self._drop_place(admission.key)

    def _count_start(self, key: _IdentityKey) -> None:
        """``RATE_LIMITED`` past ``max_starts_per_window`` logins of one identity in
        ``START_WINDOW_S``; otherwise count this one."""
        now = self._clock()
        for stale_key in [k for k, t in self._starts.items() if now - t[-1] >= START_WINDOW_S]:
            del self._starts[stale_key]
        starts = self._starts.setdefault(key, deque())
        while starts and now - starts[0] >= START_WINDOW_S:
            starts.popleft()
        if len(starts) >= self.max_starts_per_window:
            wait = max(0.001, math.ceil((START_WINDOW_S - (now - starts[0])) * 1000.0) / 1000.0)
            raise ProxyError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.max_starts_per_window} logins started by this sandbox in "
                f"{START_WINDOW_S:g} s; wait before starting another",
                retry_after=wait,
            )
        starts.append(now)

    def get_session(self, session_id: str, identity: PeerIdentity) -> OAuthSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise ProxyError(ErrorCode.SESSION_NOT_FOUND, "no login session with that id")
        if session.used:
            raise ProxyError(
                ErrorCode.SESSION_ALREADY_USED,
                "this login session was already used; start a new login",
            )
        if self._expired(session, self._clock()):
            self._remove(session)
            raise ProxyError(
                ErrorCode.SESSION_EXPIRED,
                f"the login session expired after {self.timeout_s:g} s; start a new login",
            )
        if not session.identity.matches(identity):
            raise ProxyError(ErrorCode.UNAUTHORIZED, "Session peer identity mismatch")
        return session

    def mark_used(self, session_id: str) -> None:
        """Consume the session: later lookups get ``SESSION_ALREADY_USED``; the next sweep
        removes it."""
        session = self._sessions.get(session_id)
        if session is None:
            raise ProxyError(ErrorCode.SESSION_NOT_FOUND, "no login session with that id")
        session.used = True

    def remove_session(self, session_id: str) -> None:
        """End the session and close what it owns; unknown ids are ignored (idempotent cancel)."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._remove(session)

    def sweep_expired(self) -> int:
        """Remove expired and used sessions; return how many.

        Walks the oldest sessions only until the first live one, then the used
        set: the cost is proportional to what is removed, not to what lives.
        """
        now = self._clock()
        doomed: list[OAuthSession] = []
        for session in self._sessions.values():
            if not self._expired(session, now):
                break
            doomed.append(session)
        for session in doomed:
            self._remove(session)
        removed = len(doomed)
        used = list(self._used_ids)
        self._used_ids.clear()  # in place: every session holds this set
        for session_id in used:
            consumed = self._sessions.get(session_id)
            if consumed is not None:
                self._remove(consumed)
                removed += 1
        return removed

    def start_gc(self, interval_s: float = DEFAULT_GC_INTERVAL_S) -> None:
        """Sweep every ``interval_s`` seconds on the running loop, replacing an earlier GC."""
        if isinstance(interval_s, bool) or not math.isfinite(interval_s) or interval_s <= 0:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        loop = asyncio.get_running_loop()
        self.stop_gc()
        self._gc_task = loop.create_task(self._gc(interval_s), name="credproxy-session-gc")

    def stop_gc(self) -> None:
        task, self._gc_task = self._gc_task, None
        if task is not None:
            self._closer.close(task)

    def clear_all(self) -> None:
        """End every session and stop the GC (daemon shutdown)."""
        self.stop_gc()
        while self._sessions:
            self._remove(next(iter(self._sessions.values())))

    async def wait_closed(self) -> None:
        """Wait until every async closer and cancelled task the manager started has finished.

        A task that swallows its cancellation keeps this waiting; callers that
        must not hang (daemon shutdown) bound it with ``asyncio.timeout``.
        """
        while self._closer.pending:
            await asyncio.gather(*self._closer.pending, return_exceptions=True)

    async def aclose(self) -> None:
        """``clear_all`` and wait for the resulting cleanup: the port of every loopback
        listener is free when this returns."""
        self.clear_all()
        await self.wait_closed()

    def _expired(self, session: OAuthSession, now: float) -> bool:
        return now - session.created_at > self.timeout_s

    def _remove(self, session: OAuthSession) -> None:
        session_id = session.session_id
        del self._sessions[session_id]
        self._used_ids.discard(session_id)
        self._drop_place(session.identity.key)
        if session.flow is not None:
            self._flow_owners.pop(session.flow, None)
        session._end()

    def _drop_place(self, key: _IdentityKey) -> None:
        remaining = self._per_identity[key] - 1
        if remaining:
            self._per_identity[key] = remaining
        else:
            del self._per_identity[key]

    async def _gc(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.sweep_expired()
            except Exception as exc:  # the GC must outlive one bad sweep
                _log_failure("sweep", self.sweep_expired, exc)
