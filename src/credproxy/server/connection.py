"""One accepted connection: the I/O shell around ``protocol.server.ServerConnection``.

The sans-IO core decides what every frame means and when every deadline
falls; this shell only reads, feeds the core, starts or cancels handler work,
and writes what the core emits. Everything answered during one turn of the
event loop leaves in one write. One timer per connection is set to the core's
earliest deadline. A handler that finishes without waiting (a store call on a
fast backend) runs inline and needs no task; one that waits continues in a
task. Each outcome is audited before its answer is queued, so the audit line
is on its way by the time the peer sees the answer. A misbehaving peer can
only lose its own connection; nothing here lets its bytes take down the
daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Final, cast

from credproxy.audit import KNOWN_OPS, AuditEvent, AuditLog, safe_grant, safe_name
from credproxy.grants import Grant
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import HEADER_BYTES, FrameBudget, FrameError, SecretLeakError
from credproxy.protocol.limits import DEFAULT_LIMITS, SMALL_FRAME_BYTES, Limits
from credproxy.protocol.messages import Request
from credproxy.protocol.server import (
    Authenticate,
    CancelRequested,
    ConnectionTimedOut,
    Event,
    HandshakeOffered,
    HandshakeRejected,
    ProtocolViolation,
    RequestReceived,
    RequestTimedOut,
    ServerConnection,
)
from credproxy.server.admission import SlotView
from credproxy.server.context import HandlerTable, PeerCredentials, RequestContext, ServerState
from credproxy.server.handlers import not_available
from credproxy.store.base import UNREACHABLE_ANSWER, StoreError, StoreUnavailableError

PARTIAL_FRAME_TIMEOUT_S: Final = DEFAULT_LIMITS.partial_frame_s
HANDSHAKE_TIMEOUT_S: Final = DEFAULT_LIMITS.handshake_s
PRE_HANDSHAKE_READ_BYTES: Final = HEADER_BYTES + SMALL_FRAME_BYTES
"""The largest handshake frame: what ``read_what_was_sent`` takes at most."""

_GENERIC_FAILURE: Final = "the host could not complete the operation; see the daemon log"
_TIMEOUT_FAILURE: Final = "the operation timed out on the host"
_OUTCOMES: Final = frozenset({"ok", "TIMEOUT", *ErrorCode})
_AUDIT_BEHIND: Final = "the host's audit log is behind; try again shortly"

log = logging.getLogger("credproxy.server")


class HandshakeThrottle:
    """Slows capability-token guessing per peer uid.

    Failed handshakes of one uid are answered one at a time, each after a delay
    that doubles with every recent failure (capped), so all connections of that
    uid together get a bounded number of guesses per second. Other uids and
    successful handshakes never wait.
    """

    def __init__(
        self,
        *,
        base_delay_s: float = 0.05,
        max_delay_s: float = 2.0,
        forget_after_s: float = 60.0,
        max_waiting: int = 32,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._base = base_delay_s
        self._max = max_delay_s
        self._forget = forget_after_s
        self._max_waiting = max_waiting
        self._entries: dict[int | None, _ThrottleEntry] = {}

    async def penalize(self, uid: int | None) -> bool:
        """Wait out the penalty; ``False`` if too many failures of ``uid`` are
        already queued, in which case the caller closes without answering."""
        clock = self._clock or asyncio.get_running_loop().time
        entry = self._entries.setdefault(uid, _ThrottleEntry())
        if entry.waiting >= self._max_waiting:
            return False
        entry.waiting += 1
        try:
            async with entry.lock:
                now = clock()
                if now - entry.last_failure > self._forget:
                    entry.failures = 0
                entry.failures += 1
                entry.last_failure = now
                delay = min(self._max, self._base * 2.0 ** min(entry.failures - 1, 32))
                await self._sleep(delay)
        finally:
            entry.waiting -= 1
            if entry.waiting == 0 and entry.failures == 0:
                self._entries.pop(uid, None)
        return True


@dataclass
class _ThrottleEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    last_failure: float = float("-inf")
    waiting: int = 0


@dataclass(frozen=True)
class ConnectionSettings:
    """What every connection of one daemon shares."""

    state: ServerState
    handlers: HandlerTable
    authenticate: Authenticate
    audit: AuditLog
    throttle: HandshakeThrottle
    limits: Limits = DEFAULT_LIMITS
    budget: FrameBudget | None = None
    admit: Callable[[Grant, PeerCredentials], str | None] | None = None
    """Asked once the token checks out; a message refuses the connection with
    ``RESOURCE_EXHAUSTED`` (the daemon's per-grant connection cap)."""


_SHUTTING_DOWN: Final = ProxyError(
    ErrorCode.INTERNAL_ERROR, "the daemon shut down before the operation finished"
)
_CANCELLED: Final = ProxyError(ErrorCode.CANCELLED, "the request was cancelled")


class _Resume:
    """Continues a coroutine whose first step ran inline, inside a task.

    The inline step returned the future the coroutine waits on; yielding that
    same future hands the wait to the task, and every later step is passed
    straight through, cancellation included.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, dict[str, Any]], first: object) -> None:
        self._coro = coro
        self._first = first

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        coro = self._coro
        pending = self._first
        while True:
            try:
                yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    pending = coro.send(None)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


class Connection(asyncio.Protocol):
    """The shell of one accepted connection."""

    def __init__(
        self,
        settings: ConnectionSettings,
        on_open: Callable[[Connection, asyncio.Transport], PeerCredentials | None],
        on_close: Callable[[Connection], None],
    ) -> None:
        self._settings = settings
        self.peer = PeerCredentials(None, None, None)
        self._on_open = on_open
        self._on_close = on_close
        self._admitted = False
        self._loop = asyncio.get_running_loop()
        self.opened = self._loop.time()
        self._last_answer_at = self.opened
        self._core = ServerConnection(
            settings.authenticate,
            limits=settings.limits,
            budget=settings.budget,
            now=self.opened,
        )
        self._transport: asyncio.Transport | None = None
        self._grant: Grant | None = None
        self._grant_text: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._write_paused = False
        self._paused_at = 0
        self._reading_paused = False
        self._stopping = False
        self._eof = False
        self._broken = False
        self._rate_limited = False
        self.closed = asyncio.Event()

    @property
    def grant(self) -> Grant | None:
        """The grant once the handshake succeeded; ``None`` before."""
        return self._grant

    @property
    def buffered_input(self) -> int:
        return self._core.buffered

    @property
    def shutting_down(self) -> bool:
        return self._stopping

    @property
    def closing(self) -> bool:
        """It gives its place up by itself: shutting down, or its transport closing."""
        transport = self._transport
        return self._stopping or self._broken or transport is None or transport.is_closing()

    def admission_view(self) -> SlotView:
        """How this connection looks to admission when the daemon is full."""
        core = self._core
        limits = self._settings.limits
        unfinished = self._grant is None or core.has_partial_frame
        return SlotView(
            pid=self.peer.pid,
            serving=core.in_flight > 0 or bool(self._tasks),
            last_progress=max(core.last_frame_at, self._last_answer_at),
            stall_after_s=limits.stall_s if unfinished else limits.idle_s,
            unfinished=unfinished,
        )

    def evict(self) -> None:
        """Give the place up to a newcomer: nothing is in flight, so nothing is lost."""
        self._stopping = True
        self._pause_reading()
        self._drop_work()
        if self._transport is not None:
            self._transport.close()

    def read_what_was_sent(self) -> None:
        """Take in, now, what the peer sent that the loop has not read yet.

        The daemon calls this before closing a connection still waiting for its
        handshake, so a handshake that only waits for the loop's next read is
        answered instead of cut off. The socket is non-blocking: nothing waits."""
        if self._transport is None or self._broken or self._stopping or self._reading_paused:
            return
        if self._core.waiting_for_budget:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            data = os.read(sock.fileno(), PRE_HANDSHAKE_READ_BYTES)
        except OSError:
            return  # nothing there (EAGAIN) or a reset the transport will see itself
        if data:
            self.data_received(data)

    # --- transport callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        peer = self._on_open(self, transport)
        if peer is None:
            self._broken = True
            transport.close()
            return
        self._admitted = True
        self.peer = peer
        log.debug("connection opened by uid %s (pid %s)", peer.uid, peer.pid)
        self._transport = transport
        high = self._settings.limits.write_high_water
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        core = self._core
        self._handle(core.receive_data(data, self._loop.time()))
        if core.waiting_for_budget:
            self._wait_for_budget()
        self._flush()

    def eof_received(self) -> bool:
        """The peer closed its side: requests in flight may still finish."""
        self._eof = True
        self._flush()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken = True
        self._drop_work()
        self._core.close()
        if self._settings.budget is not None:
            self._settings.budget.forget(id(self))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed.is_set():
            self.closed.set()
            if self._admitted:
                self._on_close(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._paused_at = self._transport.get_write_buffer_size()
        self._core.write_blocked(self._loop.time())
        self._arm_timer()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._core.written()
        if self._reading_paused and not self._core.waiting_for_budget and not self._stopping:
            self._resume_reading()

    # --- events from the core ---------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RequestReceived):
                self._rate_limited = False
                self._start(event.request)
            elif isinstance(event, ProtocolViolation):
                self._violation(event)
            elif isinstance(event, CancelRequested):
                task = self._tasks.get(event.target_id)
                cancelled = task is not None and task.cancel()
                self._core.cancel_outcome(event.request_id, event.target_id, cancelled)
                self._audit("cancel", "ok", None, 0.0)
            elif isinstance(event, RequestTimedOut):
                task = self._tasks.get(event.request_id)
                if task is not None:
                    task.cancel()
            elif isinstance(event, HandshakeOffered):
                self._offered(event)
            elif isinstance(event, HandshakeRejected):
                self._rejected(event)
            elif isinstance(event, ConnectionTimedOut):
                if event.reason != "the peer stopped reading its answers":
                    self._audit("invalid", "TIMEOUT", None, None)
                log.debug("closing connection of uid %s: %s", self.peer.uid, event.reason)
                self._abort()

    def _offered(self, event: HandshakeOffered) -> None:
        grant = event.grant
        assert isinstance(grant, Grant)
        refusal = self._settings.admit(grant, self.peer) if self._settings.admit else None
        if refusal is not None:
            self._audit("handshake", ErrorCode.RESOURCE_EXHAUSTED, None, None)
            self._core.refuse(refusal)
            return
        self._grant = grant
        self._grant_text = safe_grant(grant.describe())
        self._audit("handshake", "ok", None, None)
        self._core.admit()
        self._handle(self._core.receive_data(b"", self._loop.time()))

    def _rejected(self, event: HandshakeRejected) -> None:
        self._audit("handshake", event.error.code, None, None)
        if not event.unauthorized:
            self._core.send_rejection()
            return
        self._pause_reading()
        self._spawn(self._answer_after_penalty())

    async def _answer_after_penalty(self) -> None:
        if await self._settings.throttle.penalize(self.peer.uid):
            self._core.send_rejection()
            self._flush()
        else:
            self._abort()

    def _violation(self, event: ProtocolViolation) -> None:
        limited = event.error.code == ErrorCode.RATE_LIMITED
        if not (limited and self._rate_limited):  # a flood is audited once, not per frame
            self._audit(event.op or "invalid", event.error.code, None, None)
        self._rate_limited = limited
        if event.close:
            # Requests of earlier frames still run and are answered before the
            # close (``_flush``), as after the peer's EOF; nothing more is read.
            log.debug("closing connection of uid %s: %s", self.peer.uid, event.error.message)
            self._pause_reading()

    # --- running ops -------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        settings = self._settings
        bound = settings.handlers.get(request.op)
        if bound is None:
            self._finish(request, None, self._loop.time(), error=not_available(request.op))
            return
        if not settings.audit.accepting:
            settings.audit.refused()
            self._core.fail(request.id, ProxyError(ErrorCode.INTERNAL_ERROR, _AUDIT_BEHIND))
            return
        assert self._grant is not None
        ctx = RequestContext(
            settings.state, self._grant, self.peer, self._core.version, request.id, request.op
        )
        started = self._loop.time()
        coro = bound.run(ctx, request.payload)
        if not bound.eager:
            self._track(request, ctx, started, coro)
            return
        try:
            first = coro.send(None)
        except StopIteration as stop:
            self._finish(request, ctx, started, data=stop.value)
            return
        except Exception as exc:
            self._finish(request, ctx, started, error=self._error_for(request.op, exc))
            return
        self._track(request, ctx, started, _Resume(coro, first))

    def _track(
        self,
        request: Request,
        ctx: RequestContext,
        started: float,
        work: Coroutine[Any, Any, dict[str, Any]] | _Resume,
    ) -> None:
        task = self._loop.create_task(self._run_task(request, ctx, started, work))
        self._tasks[request.id] = task
        task.add_done_callback(lambda _: self._task_done(request, ctx, started, task, work))

    def _task_done(
        self,
        request: Request,
        ctx: RequestContext,
        started: float,
        task: asyncio.Task[None],
        work: Coroutine[Any, Any, dict[str, Any]] | _Resume,
    ) -> None:
        request_id = request.id
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]
        if task.cancelled():
            # Cancelled before its first step: the handler never ran, so
            # nothing answered it yet.
            work.close()
            error = self._cancel_reason(request_id)
            if error is not None:
                self._finish(request, ctx, started, error=error)
        self._schedule_flush()

    async def _run_task(
        self,
        request: Request,
        ctx: RequestContext,
        started: float,
        work: Coroutine[Any, Any, dict[str, Any]] | _Resume,
    ) -> None:
        try:
            data = await work
        except asyncio.CancelledError:
            error = self._cancel_reason(request.id)
            if error is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._finish(request, ctx, started, error=error)
        except Exception as exc:
            self._finish(request, ctx, started, error=self._error_for(request.op, exc))
        else:
            self._finish(request, ctx, started, data=data)

    def _cancel_reason(self, request_id: str) -> ProxyError | None:
        if self._broken:
            return None
        if self._core.is_timed_out(request_id):
            log.warning("request timed out after %.1f s", self._settings.limits.call_s)
            return ProxyError(ErrorCode.INTERNAL_ERROR, _TIMEOUT_FAILURE)
        if self._core.is_cancelling(request_id):
            return _CANCELLED
        if self._stopping:
            return _SHUTTING_DOWN
        return None

    @staticmethod
    def _error_for(op: str, exc: Exception) -> ProxyError:
        if isinstance(exc, ProxyError):
            return exc
        if isinstance(exc, StoreUnavailableError):
            log.error("%s failed: %s", op, exc)
            return ProxyError(ErrorCode.INTERNAL_ERROR, UNREACHABLE_ANSWER)
        if isinstance(exc, StoreError):
            log.error("%s failed in the credential store: %s", op, exc)
        elif isinstance(exc, TimeoutError):
            log.warning("%s timed out on the host", op)
            return ProxyError(ErrorCode.INTERNAL_ERROR, _TIMEOUT_FAILURE)
        else:
            log.error("%s failed unexpectedly: %s", op, type(exc).__name__)
        return ProxyError(ErrorCode.INTERNAL_ERROR, _GENERIC_FAILURE)

    def _finish(
        self,
        request: Request,
        ctx: RequestContext | None,
        started: float,
        *,
        data: dict[str, Any] | None = None,
        error: ProxyError | None = None,
    ) -> None:
        """Audit the outcome, then queue the answer."""
        core = self._core
        if error is None:
            assert data is not None
            try:
                core.respond(request.id, data)
            except SecretLeakError as exc:
                log.error(
                    "%s produced a response that cannot be sent: %s",
                    request.op,
                    type(exc).__name__,
                )
                error = ProxyError(ErrorCode.INTERNAL_ERROR, _GENERIC_FAILURE)
            except FrameError:
                error = ProxyError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"the answer is larger than a protocol version {core.version} frame "
                    "allows; connect with protocol version 2",
                )
        names = ctx.audit if ctx is not None else None
        self._last_answer_at = self._loop.time()
        duration = (self._last_answer_at - started) * 1000.0
        self._audit(request.op, "ok" if error is None else error.code, names, duration)
        if error is not None:
            core.fail(request.id, error)

    # --- output and time ----------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write everything the core answered since the last flush, in one write."""
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or self._broken:
            return
        core = self._core
        data = core.data_to_send()
        if data:
            transport.write(data)
            if not self._write_paused:
                core.written()
            elif (
                transport.get_write_buffer_size()
                > self._paused_at + self._settings.limits.write_high_water
            ):
                # Answers the peer does not read are built no further than
                # this: refusals still go out, but past one high-water mark
                # more the peer is not read either until it reads.
                self._pause_reading()
        idle = not self._tasks and not self._side_tasks
        if core.close_after_write or (idle and (core.closed or self._eof)):
            # Closing waits for what was just written; after the peer's EOF
            # the answers of requests still running went out first.
            self._close()
            return
        self._arm_timer()

    def _arm_timer(self) -> None:
        """One timer per connection, at the core's earliest deadline. A timer that
        fires early (the deadline it was set for has gone) just re-arms."""
        deadline = self._core.next_deadline()
        if deadline >= self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline != float("inf"):
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._handle(self._core.expire(self._loop.time()))
        self._flush()

    def _wait_for_budget(self) -> None:
        budget = self._settings.budget
        assert budget is not None
        self._pause_reading()
        budget.wait(id(self), self._budget_freed)

    def _budget_freed(self) -> None:
        if self._broken:
            return
        self._handle(self._core.receive_data(b"", self._loop.time()))
        if self._core.waiting_for_budget:
            self._wait_for_budget()
        elif not self._write_paused and not self._stopping:
            self._resume_reading()
        self._flush()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._core.input_ended:
            return
        if self._reading_paused and self._transport is not None and not self._broken:
            self._reading_paused = False
            self._transport.resume_reading()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # --- ending ----------------------------------------------------------------------

    def _drop_work(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._side_tasks):
            task.cancel()

    def _close(self) -> None:
        """Close once what is queued is written; a peer that will not read it
        loses the connection when the write timer runs out."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self._loop.call_later(self._settings.limits.write_s, transport.abort)

    def _abort(self) -> None:
        self._broken = True
        self._drop_work()
        if self._transport is not None:
            self._transport.abort()

    def begin_shutdown(self, grace_s: float) -> None:
        """Stop reading; requests already in flight get ``grace_s`` to finish."""
        if self._stopping:
            return
        self._stopping = True
        self._pause_reading()
        self._spawn(self._shutdown(grace_s))

    async def _shutdown(self, grace_s: float) -> None:
        pending = list(self._tasks.values())
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._flush()
        self._close()

    def abort(self) -> None:
        """Drop everything now: the daemon is past its grace period."""
        self._abort()

    # --- audit -------------------------------------------------------------------------

    def _audit(
        self, op: str, outcome: str, names: dict[str, str] | None, duration_ms: float | None
    ) -> None:
        """Every value here is typed already: the op is checked against the op
        table, the outcome is ``ok`` or an error code of ours, and names that could
        be a credential are redacted through ``safe_name``'s remembered verdicts."""
        event = AuditEvent(
            ts=round(time.time(), 3),
            op=op if op in KNOWN_OPS else "unknown",
            outcome=outcome if outcome in _OUTCOMES else safe_name(outcome),
            provider=_maybe(names, "provider"),
            bucket=_maybe(names, "bucket"),
            key=_maybe(names, "key"),
            flow_type=_maybe(names, "flow_type"),
            peer_uid=self.peer.uid,
            peer_pid=self.peer.pid,
            grant=self._grant_text,
            duration_ms=None if duration_ms is None else round(duration_ms, 3),
        )
        self._settings.audit.record(event)


def _maybe(names: dict[str, str] | None, field_name: str) -> str | None:
    if not names:
        return None
    value = names.get(field_name)
    return None if value is None else safe_name(value)
