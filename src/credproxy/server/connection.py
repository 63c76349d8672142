"""One accepted connection: asyncio I/O around ``protocol.server.ServerConnection``.

The sans-IO core decides what each frame means; this module adds what needs a
clock or a task: the 5 s partial-frame timeout, the handshake throttle, one
task per request (at most 16) each bounded by the call timeout, ``cancel``,
and whole-frame writes under one lock. Each outcome is audited before its
response is written, so the audit line exists by the time the peer sees the
answer. A misbehaving peer can only lose its own connection; nothing here
lets its bytes take down the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from credproxy.audit import AuditEvent, AuditLog
from credproxy.grants import Grant
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import MAX_FRAME_BYTES, FrameError, encode_frame
from credproxy.protocol.messages import Cancel, Request, failure
from credproxy.protocol.server import (
    MAX_IN_FLIGHT,
    RATE_PER_SECOND,
    Authenticate,
    HandshakeAccepted,
    HandshakeRejected,
    ProtocolViolation,
    RequestReceived,
    ServerConnection,
)
from credproxy.server.context import Handler, PeerCredentials, RequestContext, ServerState
from credproxy.server.handlers import not_available
from credproxy.store.base import StoreError

READ_CHUNK: Final = 65_536
PARTIAL_FRAME_TIMEOUT_S: Final = 5.0
WRITE_TIMEOUT_S: Final = 30.0
HANDSHAKE_TIMEOUT_S: Final = 30.0
"""An unauthenticated connection holds a file descriptor; it gets this long to handshake."""

_GENERIC_FAILURE: Final = "the host could not complete the operation; see the daemon log"
_TIMEOUT_FAILURE: Final = "the operation timed out on the host"

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
    handlers: Mapping[str, Handler]
    authenticate: Authenticate
    audit: AuditLog
    throttle: HandshakeThrottle
    frame_timeout_s: float = PARTIAL_FRAME_TIMEOUT_S
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    max_in_flight: int = MAX_IN_FLIGHT
    rate_per_second: float = RATE_PER_SECOND
    admit: Callable[[Grant], str | None] | None = None
    """Asked once the token checks out; a message refuses the connection with
    ``RESOURCE_EXHAUSTED`` (the daemon's per-grant connection cap)."""


_SHUTTING_DOWN: Final = ProxyError(
    ErrorCode.INTERNAL_ERROR, "the daemon shut down before the operation finished"
)


def _cancelled() -> ProxyError:
    return ProxyError(ErrorCode.CANCELLED, "the request was cancelled")


class _Close(Exception):
    """Internal: the read loop ends and in-flight requests are dropped."""


class Connection:
    def __init__(
        self,
        settings: ConnectionSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials,
    ) -> None:
        self._settings = settings
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self._proto = ServerConnection(
            settings.authenticate,
            max_in_flight=settings.max_in_flight,
            rate_per_second=settings.rate_per_second,
            max_frame_bytes=MAX_FRAME_BYTES,
        )
        self._grant: Grant | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancellable: set[str] = set()
        self._cancel_requested: set[str] = set()
        self._writers: set[asyncio.Task[None]] = set()
        self._live: set[asyncio.Task[None]] = set()
        """Every request task until its response is written, reused ids included."""
        self._reader_task: asyncio.Task[bool] | None = None
        self._stopping = False
        self._grace_s = 0.0
        self._broken = False
        self._rate_limited = False
        self.opened = asyncio.get_running_loop().time()
        self.closed = asyncio.Event()

    @property
    def grant(self) -> Grant | None:
        """The grant once the handshake succeeded; ``None`` before."""
        return self._grant

    @property
    def shutting_down(self) -> bool:
        return self._stopping

    async def run(self) -> None:
        """Serve until EOF, a fatal protocol error, or ``begin_shutdown``."""
        self._reader_task = asyncio.create_task(self._read_loop())
        drop_in_flight = True
        try:
            drop_in_flight = await self._reader_task
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        finally:
            if self._stopping:
                await self._settle(self._grace_s)
            elif drop_in_flight:
                await self._settle(0.0)
            else:
                await self._settle(self._settings.state.call_timeout_s + 1.0)
            await self._close_transport()
            self.closed.set()

    def begin_shutdown(self, grace_s: float) -> None:
        """Stop reading; requests already in flight get ``grace_s`` to finish."""
        self._stopping = True
        self._grace_s = grace_s
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()

    async def _read_loop(self) -> bool:
        """Returns whether in-flight requests must be dropped (fatal error) or
        may finish (the peer closed its side)."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        partial_since: float | None = None
        try:
            while True:
                deadline = self._read_deadline(opened, partial_since)
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await self._reader.read(READ_CHUNK)
                except TimeoutError:
                    reason = (
                        "partial frame timeout" if partial_since is not None else "no handshake"
                    )
                    self._audit_violation(None, "TIMEOUT")
                    log.info("closing connection of uid %s: %s", self.peer.uid, reason)
                    return True
                except (ConnectionError, OSError):
                    return True
                if not data:
                    return False
                now = loop.time()
                was_partial = partial_since is not None
                events = self._proto.receive_data(data, now)
                if not self._proto.has_partial_frame:
                    partial_since = None
                elif events or not was_partial:
                    partial_since = now
                for event in events:
                    await self._dispatch(event)
        except _Close:
            return True

    def _read_deadline(self, opened: float, partial_since: float | None) -> float | None:
        deadlines: list[float] = []
        if partial_since is not None:
            deadlines.append(partial_since + self._settings.frame_timeout_s)
        if self._grant is None:
            deadlines.append(opened + self._settings.handshake_timeout_s)
        return min(deadlines) if deadlines else None

    async def _dispatch(
        self, event: HandshakeAccepted | HandshakeRejected | RequestReceived | ProtocolViolation
    ) -> None:
        if isinstance(event, HandshakeAccepted):
            refusal = self._settings.admit(event.grant) if self._settings.admit else None
            if refusal is not None:
                self._audit_handshake(ErrorCode.RESOURCE_EXHAUSTED)
                error = ProxyError(ErrorCode.RESOURCE_EXHAUSTED, refusal)
                await self._write(encode_frame(failure(None, event.version, "handshake", error)))
                raise _Close
            self._grant = event.grant
            self._audit_handshake("ok")
            await self._write(event.response)
        elif isinstance(event, HandshakeRejected):
            self._audit_handshake(event.error.code)
            if event.unauthorized and not await self._settings.throttle.penalize(self.peer.uid):
                raise _Close
            await self._write(event.response)
            raise _Close
        elif isinstance(event, ProtocolViolation):
            limited = event.error.code == ErrorCode.RATE_LIMITED
            if not (limited and self._rate_limited):  # a flood is audited once, not per frame
                self._audit_violation(event.op, event.error.code)
            self._rate_limited = limited
            if event.response is not None:
                await self._write(event.response)
            if event.close:
                log.info("closing connection of uid %s: %s", self.peer.uid, event.error.message)
                raise _Close
        else:
            self._rate_limited = False
            if event.request.op == "cancel":
                await self._cancel(event.request)
            elif len(self._live) + len(self._writers) >= self._settings.max_in_flight:
                await self._refuse_busy(event.request)
            else:
                self._start(event.request)

    async def _refuse_busy(self, request: Request) -> None:
        """The sans-IO core counts a request until its answer is built; this counts it
        until the answer is written. A peer that never reads would otherwise have
        every answer built and parked behind the write lock, 16 at a time without
        end, and grow the daemon's memory by a response per request. Refusing here
        awaits the write, so such a peer also stops being read."""
        error = ProxyError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"more than {self._settings.max_in_flight} requests in flight on this connection"
            " (answers not yet read count too)",
        )
        self._audit_violation(request.op, error.code)
        await self._write(self._proto.send_failure(request.id, error))

    def _start(self, request: Request) -> None:
        task = asyncio.create_task(self._serve(request))
        self._tasks[request.id] = task
        self._live.add(task)
        task.add_done_callback(self._live.discard)
        self._cancellable.add(request.id)
        task.add_done_callback(functools.partial(self._forget, request.id, request.op))

    def _forget(self, request_id: str, op: str, task: asyncio.Task[None]) -> None:
        """Clean up after ``task``, unless its id was already reused by a newer request.

        A task cancelled before its first step never ran ``_serve``, so nothing
        answered it; a requested cancel is answered here instead.
        """
        if self._tasks.get(request_id) is not task:
            return
        del self._tasks[request_id]
        self._cancellable.discard(request_id)
        if task.cancelled() and request_id in self._cancel_requested:
            frame = self._proto.send_failure(request_id, _cancelled())
            self._audit(op, ErrorCode.CANCELLED, {}, None)
            writer = asyncio.get_running_loop().create_task(self._write(frame))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        self._cancel_requested.discard(request_id)

    async def _cancel(self, request: Request) -> None:
        payload = request.payload
        assert isinstance(payload, Cancel)
        target = self._tasks.get(payload.targetId)
        cancelled = False
        if target is not None and payload.targetId in self._cancellable:
            self._cancel_requested.add(payload.targetId)
            target.cancel()
            cancelled = True
        self._audit(request.op, "ok", {}, 0.0)
        await self._write(self._proto.send_success(request.id, {"cancelled": cancelled}))

    async def _serve(self, request: Request) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert self._grant is not None
        ctx = RequestContext(
            state=self._settings.state,
            grant=self._grant,
            peer=self.peer,
            version=self._proto.version,
            request_id=request.id,
            op=request.op,
        )
        try:
            frame, outcome = await self._call(ctx, request)
        except asyncio.CancelledError:
            requested = request.id in self._cancel_requested
            if not (requested or self._stopping) or self._broken:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self._cancel_requested.discard(request.id)
            error = _cancelled() if requested else _SHUTTING_DOWN
            frame, outcome = self._proto.send_failure(request.id, error), error.code
        self._cancellable.discard(request.id)
        self._audit(request.op, outcome, ctx.audit, (loop.time() - started) * 1000.0)
        await self._write(frame)

    async def _call(self, ctx: RequestContext, request: Request) -> tuple[bytes, str]:
        handler = self._settings.handlers.get(request.op)
        try:
            if handler is None:
                raise not_available(request.op)
            async with asyncio.timeout(self._settings.state.call_timeout_s):
                data = await handler(ctx, request.payload)
            self._cancellable.discard(request.id)
            return self._proto.send_success(request.id, data), "ok"
        except ProxyError as exc:
            return self._proto.send_failure(request.id, exc), exc.code
        except TimeoutError:
            log.warning(
                "%s timed out after %.1f s", request.op, self._settings.state.call_timeout_s
            )
            error = ProxyError(ErrorCode.INTERNAL_ERROR, _TIMEOUT_FAILURE)
        except StoreError as exc:
            log.error("%s failed in the credential store: %s", request.op, exc)
            error = ProxyError(ErrorCode.INTERNAL_ERROR, _GENERIC_FAILURE)
        except FrameError as exc:
            log.error(
                "%s produced a response that cannot be sent: %s", request.op, type(exc).__name__
            )
            error = ProxyError(ErrorCode.INTERNAL_ERROR, _GENERIC_FAILURE)
        except Exception as exc:
            log.error("%s failed unexpectedly: %s", request.op, type(exc).__name__)
            error = ProxyError(ErrorCode.INTERNAL_ERROR, _GENERIC_FAILURE)
        return self._proto.send_failure(request.id, error), error.code

    async def _write(self, frame: bytes) -> None:
        """Write one whole frame. A peer that stops reading for ``WRITE_TIMEOUT_S``
        loses the connection instead of pinning its requests and buffers."""
        if self._broken:
            return
        async with self._write_lock:
            if self._broken:
                return
            try:
                self._writer.write(frame)
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await self._writer.drain()
            except (ConnectionError, OSError, TimeoutError):
                self._broken = True
                self._writer.transport.abort()

    def abort(self) -> None:
        """Drop everything now: the daemon is past its grace period."""
        self._broken = True
        for task in (*self._live, *self._writers):
            task.cancel()
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._writer.transport.abort()

    async def _settle(self, grace_s: float) -> None:
        pending = [task for task in (*self._live, *self._writers) if not task.done()]
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _close_transport(self) -> None:
        self._proto.close()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    def _audit_handshake(self, outcome: str) -> None:
        self._audit("handshake", outcome, {}, None)

    def _audit_violation(self, op: str | None, outcome: str) -> None:
        self._audit(op or "invalid", outcome, {}, None)

    def _audit(
        self, op: str, outcome: str, names: Mapping[str, object], duration_ms: float | None
    ) -> None:
        self._settings.audit.record(
            AuditEvent.build(
                op=op,
                outcome=outcome,
                names=names,
                peer_uid=self.peer.uid,
                peer_pid=self.peer.pid,
                grant=self._grant.describe() if self._grant is not None else None,
                duration_ms=duration_ms,
            )
        )
