"""The server side of one connection as a sans-IO state machine (``docs/protocol.md``).

In the manner of h11, this owns the whole life of a request: bytes go in
through ``receive_data``, events come out, answers go in through
``respond``/``fail``, and the bytes to write come out of ``data_to_send``. A
request counts against the in-flight limit from the frame that carried it
until its answer has been handed to the peer's socket (``written``), so a peer
that does not read cannot make the daemon build answers without end.

Admission is a question back to the caller (``HandshakeOffered``), answered
with ``admit`` or ``refuse``; cancel bookkeeping, the rate limit and every
deadline (partial frame, handshake, each request's call limit, a write that
does not drain) live here too, with ``now`` passed in, so the shell needs one
timer per connection set to ``next_deadline``. No sockets, no asyncio, no
clock, no domain imports: a grant is an opaque value returned by
``authenticate``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import FrameBudget, FrameDecoder, FrameError, encode_frame
from credproxy.protocol.limits import DEFAULT_LIMITS, Limits
from credproxy.protocol.messages import (
    HANDSHAKE,
    Cancel,
    Handshake,
    Request,
    RequestError,
    convert_payload,
    failure,
    parse_request,
    printable,
    request_id_of,
    success,
)
from credproxy.protocol.version import MIN_VERSION, SUPPORTED_VERSIONS, negotiate

HANDSHAKE_OP: Final = HANDSHAKE.name
MAX_IN_FLIGHT: Final = DEFAULT_LIMITS.max_in_flight
RATE_PER_SECOND: Final = DEFAULT_LIMITS.rate_per_second

Authenticate = Callable[[object], object | None]
"""Maps a presented capability token to an opaque grant, ``None`` to refuse."""


class ConnectionState(enum.Enum):
    AWAIT_HANDSHAKE = "await_handshake"
    AWAIT_ADMISSION = "await_admission"
    READY = "ready"
    DRAINING = "draining"
    """A frame broke the stream: nothing more is read, but the requests that
    came before it are answered as if they had arrived alone; then CLOSED."""
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeOffered:
    """Version and token check out; answer with ``admit()`` or ``refuse(message)``."""

    version: int
    grant: object


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """The handshake failed. ``unauthorized`` marks a token failure, which the
    caller throttles per peer before it calls ``send_rejection`` (or just closes)."""

    error: ProxyError
    unauthorized: bool


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Run the op; answer with ``respond`` or ``fail``."""

    request: Request


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Stop the work of ``target_id``; report with ``cancel_outcome``."""

    request_id: str
    target_id: str


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    """``request_id`` ran past the call limit; stop its work, then ``fail`` it."""

    request_id: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A frame the peer got wrong, answered already (if it can be). When
    ``close`` is set nothing more is read, and the connection ends once the
    answers of the requests still running are written. ``op`` is a printable
    op name for the audit line, or ``None``."""

    error: ProxyError
    close: bool
    op: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionTimedOut:
    """A partial frame, the handshake or a write took too long: close now."""

    reason: str


Event = (
    HandshakeOffered
    | HandshakeRejected
    | RequestReceived
    | CancelRequested
    | RequestTimedOut
    | ProtocolViolation
    | ConnectionTimedOut
)


class TokenBucket:
    """``rate`` requests per second with bursts up to ``rate``; time is passed in."""

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        self._rate = rate
        self._capacity = capacity if capacity is not None else rate
        self._tokens = self._capacity
        self._last: float | None = None

    def take(self, now: float) -> float | None:
        """``None`` when allowed, else the seconds until one request is allowed again."""
        if self._last is not None and now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        wait = (1.0 - self._tokens) / self._rate
        return math.ceil(wait * 1000.0) / 1000.0


_NO_DEADLINE: Final = math.inf


class ServerConnection:
    """Protocol rules of one accepted connection, from first byte to close."""

    def __init__(
        self,
        authenticate: Authenticate,
        *,
        limits: Limits = DEFAULT_LIMITS,
        budget: FrameBudget | None = None,
        now: float = 0.0,
    ) -> None:
        self._authenticate = authenticate
        self.limits = limits
        self._decoder = FrameDecoder(limits.frame_limit(None), budget)
        self._budget = budget
        self._out_queued = 0
        """Budget bytes held by large answers queued, not yet handed to the socket."""
        self._out_flushed = 0
        """Budget bytes held by large answers handed over, not yet written."""
        self._bucket = TokenBucket(limits.rate_per_second)
        self._running: dict[str, str] = {}
        """Request id -> op, from the request's frame until its answer is built."""
        self._cancelling: set[str] = set()
        self._timed_out: set[str] = set()
        self._deadlines: deque[tuple[float, str]] = deque()
        """(deadline, id) in arrival order, which is deadline order: every
        request gets the same call limit and ``now`` never goes back. An entry
        counts only while it is its id's entry in ``_deadline_of``: an id may
        be used again once answered, while its old entry still waits here."""
        self._deadline_of: dict[str, float] = {}
        self._unwritten = 0
        """Answers built and queued, not yet handed to the socket."""
        self._unacknowledged = 0
        """Answers handed to the socket that still sit in its buffer past the high-water mark."""
        self._outgoing: list[bytes] = []
        self._close_after_write = False
        self._opened = now
        self.last_frame_at = now
        """When the last whole frame arrived (the open time before the first)."""
        self._partial_since: float | None = None
        self._write_blocked_since: float | None = None
        self.state = ConnectionState.AWAIT_HANDSHAKE
        self.version = MIN_VERSION
        self.grant: object | None = None
        self._offered: tuple[int, object] | None = None
        self._rejection: bytes | None = None

    # --- state the shell reads ---------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def close_after_write(self) -> bool:
        """The connection ends once what ``data_to_send`` returns is written."""
        return self._close_after_write

    @property
    def input_ended(self) -> bool:
        """Nothing more will be read from the peer: stop reading the socket."""
        return self.state in (ConnectionState.DRAINING, ConnectionState.CLOSED)

    @property
    def has_partial_frame(self) -> bool:
        return self._decoder.has_partial_frame

    @property
    def buffered(self) -> int:
        """Input bytes held for a frame not yet complete."""
        return self._decoder.buffered

    @property
    def waiting_for_budget(self) -> bool:
        """A large frame waits for room in the daemon's frame budget: stop reading."""
        return self._decoder.blocked

    @property
    def in_flight(self) -> int:
        return len(self._running) + self._unwritten + self._unacknowledged

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    def next_deadline(self) -> float:
        """The earliest moment ``expire`` has something to do (``inf`` for never)."""
        deadline = _NO_DEADLINE
        if self._partial_since is not None:
            deadline = self._partial_since + self.limits.partial_frame_s
        if self.state in (ConnectionState.AWAIT_HANDSHAKE, ConnectionState.AWAIT_ADMISSION):
            deadline = min(deadline, self._opened + self.limits.handshake_s)
        if self._write_blocked_since is not None:
            deadline = min(deadline, self._write_blocked_since + self.limits.write_s)
        deadlines = self._deadlines
        current = self._deadline_of
        while deadlines and current.get(deadlines[0][1]) != deadlines[0][0]:
            deadlines.popleft()
        if deadlines:
            deadline = min(deadline, deadlines[0][0])
        return deadline

    # --- input ---------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Decode ``data`` and apply the connection rules to each complete frame.

        Stops at a handshake that waits for admission (call again with ``b""``
        once answered) and after any event that closes the connection: the
        peer cannot be trusted to be in sync any more. A frame that breaks the
        stream ends the input only: the requests of earlier frames, in this
        call or before, are still answered (``DRAINING``), as on the peer's EOF.
        """
        if self.input_ended:
            return []
        decoder = self._decoder
        if data:
            decoder.receive(data)
        events: list[Event] = []
        had_partial = self._partial_since is not None
        progressed = False
        try:
            while self.state is ConnectionState.READY or (
                self.state is ConnectionState.AWAIT_HANDSHAKE
            ):
                frame = decoder.next_frame()
                if frame is None:
                    break
                progressed = True
                if self.state is ConnectionState.READY:
                    event = self._request(frame, now)
                else:
                    event = self._handshake(frame)
                if event is not None:
                    events.append(event)
        except FrameError as exc:
            self._end_input()
            error = ProxyError(ErrorCode.INVALID_REQUEST, str(exc))
            events.append(ProtocolViolation(error, True))
            return events
        if progressed:
            self.last_frame_at = now
        if not decoder.has_partial_frame:
            self._partial_since = None
        elif progressed or not had_partial:
            self._partial_since = now
        return events

    def _handshake(self, frame: dict[str, Any]) -> Event:
        envelope_version = frame.get("v")
        # ``in`` alone would let 1.0 and True through (they compare equal to 1).
        reply_version = envelope_version if type(envelope_version) is int else MIN_VERSION
        if reply_version not in SUPPORTED_VERSIONS:
            reply_version = MIN_VERSION
        op = frame.get("op")
        if op != HANDSHAKE_OP:
            error = ProxyError(ErrorCode.INVALID_REQUEST, "the first message must be the handshake")
            self._queue(failure(request_id_of(frame), reply_version, HANDSHAKE_OP, error))
            self._close_after_write = True
            self.state = ConnectionState.CLOSED
            return ProtocolViolation(error, True, printable(op))
        raw_payload = frame.get("payload", {})
        try:
            if not isinstance(raw_payload, dict):
                raise RequestError("field `payload` must be an object")
            offer = convert_payload(raw_payload, Handshake)
            version = negotiate(envelope_version, offer)
        except ProxyError as exc:
            return self._reject(exc, reply_version, unauthorized=False)
        grant = self._authenticate(offer.capabilityToken)
        if grant is None:
            error = ProxyError(ErrorCode.UNAUTHORIZED, "missing or invalid capability token")
            return self._reject(error, version, unauthorized=True)
        self.state = ConnectionState.AWAIT_ADMISSION
        self._offered = (version, grant)
        return HandshakeOffered(version, grant)

    def _reject(self, error: ProxyError, version: int, *, unauthorized: bool) -> Event:
        self.state = ConnectionState.CLOSED
        self._rejection = encode_frame(failure(None, version, HANDSHAKE_OP, error))
        return HandshakeRejected(error, unauthorized)

    def send_rejection(self) -> None:
        """Queue the answer to a rejected handshake; the connection ends after it."""
        if self._rejection is not None:
            self._outgoing.append(self._rejection)
            self._rejection = None
            self._close_after_write = True

    def admit(self) -> None:
        """The daemon takes the peer in: answer the handshake, raise the frame limit."""
        if self._offered is None or self.state is not ConnectionState.AWAIT_ADMISSION:
            raise RuntimeError("no handshake waits for admission")
        version, grant = self._offered
        self._offered = None
        self.state = ConnectionState.READY
        self.version = version
        self.grant = grant
        self._decoder.max_frame_bytes = self.limits.frame_limit(version)
        self._queue(success(None, version, HANDSHAKE_OP, {"version": version}))

    def refuse(self, message: str) -> None:
        """The daemon will not take one more connection of this grant."""
        if self._offered is None or self.state is not ConnectionState.AWAIT_ADMISSION:
            raise RuntimeError("no handshake waits for admission")
        version, _ = self._offered
        self._offered = None
        error = ProxyError(ErrorCode.RESOURCE_EXHAUSTED, message)
        self._queue(failure(None, version, HANDSHAKE_OP, error))
        self._close_after_write = True
        self.state = ConnectionState.CLOSED

    def _request(self, frame: dict[str, Any], now: float) -> Event | None:
        request_id = request_id_of(frame)
        retry_after = self._bucket.take(now)
        if retry_after is not None:
            error = ProxyError(
                ErrorCode.RATE_LIMITED,
                "too many requests on this connection",
                retry_after=retry_after,
            )
            return self._violation(error, request_id, frame)
        try:
            request = parse_request(frame, self.version, request_id)
        except RequestError as exc:
            return self._violation(exc, exc.request_id, frame)
        rid = request.id
        if rid in self._running:
            error = ProxyError(
                ErrorCode.INVALID_REQUEST, "field `id` repeats the id of a request still in flight"
            )
            return self._violation(error, None, frame)
        limit = self.limits.max_in_flight
        if self._write_blocked_since is not None:
            error = ProxyError(
                ErrorCode.RESOURCE_EXHAUSTED,
                "answers not yet read fill this connection; read them before sending more",
            )
            return self._violation(error, rid, frame)
        if self.in_flight >= limit:
            detail = " (answers not yet read count too)" if len(self._running) < limit else ""
            error = ProxyError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"more than {limit} requests in flight on this connection{detail}",
            )
            return self._violation(error, rid, frame)
        if request.op == "cancel":
            return self._cancel(request)
        self._running[rid] = request.op
        deadline = now + self.limits.call_s
        self._deadlines.append((deadline, rid))
        self._deadline_of[rid] = deadline
        return RequestReceived(request)

    def _cancel(self, request: Request) -> Event | None:
        payload = request.payload
        assert isinstance(payload, Cancel)
        target = payload.targetId
        if target in self._running and target not in self._cancelling:
            self._running[request.id] = request.op
            self._cancelling.add(target)
            return CancelRequested(request.id, target)
        self._queue(success(request.id, self.version, None, {"cancelled": False}))
        return None

    def cancel_outcome(self, request_id: str, target_id: str, cancelled: bool) -> None:
        """Answer the ``cancel`` request; a target that could not be stopped
        (it had just finished) is no longer cancelling."""
        if not cancelled:
            self._cancelling.discard(target_id)
        self.respond(request_id, {"cancelled": cancelled})

    def is_cancelling(self, request_id: str) -> bool:
        return request_id in self._cancelling

    def is_timed_out(self, request_id: str) -> bool:
        return request_id in self._timed_out

    def _violation(self, error: ProxyError, request_id: str | None, frame: dict[str, Any]) -> Event:
        self._queue(failure(request_id, self.version, None, error))
        return ProtocolViolation(error, False, printable(frame.get("op")))

    # --- time ------------------------------------------------------------------------

    def expire(self, now: float) -> list[Event]:
        """Events for every deadline at or before ``now``."""
        if self.state is ConnectionState.CLOSED and not self._running:
            return []
        if self._write_blocked_since is not None and (
            now >= self._write_blocked_since + self.limits.write_s
        ):
            self._close_now()
            return [ConnectionTimedOut("the peer stopped reading its answers")]
        if self._partial_since is not None and now >= (
            self._partial_since + self.limits.partial_frame_s
        ):
            self._close_now()
            return [ConnectionTimedOut("partial frame timeout")]
        if self.state in (ConnectionState.AWAIT_HANDSHAKE, ConnectionState.AWAIT_ADMISSION) and (
            now >= self._opened + self.limits.handshake_s
        ):
            self._close_now()
            return [ConnectionTimedOut("no handshake")]
        events: list[Event] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, rid = deadlines.popleft()
            if self._deadline_of.get(rid) == deadline and rid not in self._timed_out:
                self._timed_out.add(rid)
                events.append(RequestTimedOut(rid))
        return events

    # --- output ----------------------------------------------------------------------

    def respond(self, request_id: str, data: dict[str, Any]) -> None:
        """The successful answer that ends ``request_id``.

        Raises ``FrameError`` (the request stays running, to be ``fail``ed)
        when the answer cannot be encoded: too large, or carrying a refresh token.
        """
        if request_id not in self._running:
            return
        frame = encode_frame(
            success(request_id, self.version, None, data), max_frame_bytes=self._out_limit()
        )
        if len(frame) > self.limits.small_frame_bytes and self._budget is not None:
            if not self._budget.reserve(len(frame)):
                error = ProxyError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    "the host is busy with other large answers; try again shortly",
                )
                self.fail(request_id, error)
                return
            self._out_queued += len(frame)
        if self._finish(request_id):
            self._outgoing.append(frame)

    def fail(self, request_id: str, error: ProxyError) -> None:
        if request_id not in self._running:
            return
        frame = encode_frame(
            failure(request_id, self.version, None, error), max_frame_bytes=self._out_limit()
        )
        if self._finish(request_id):
            self._outgoing.append(frame)

    def _finish(self, request_id: str) -> bool:
        del self._running[request_id]
        self._deadline_of.pop(request_id, None)
        self._cancelling.discard(request_id)
        self._timed_out.discard(request_id)
        if self.state is ConnectionState.CLOSED:
            return False
        self._unwritten += 1
        if self.state is ConnectionState.DRAINING and not self._running:
            self._close_after_write = True
            self.state = ConnectionState.CLOSED
        return True

    def _queue(self, message: dict[str, Any]) -> None:
        self._outgoing.append(encode_frame(message, max_frame_bytes=self._out_limit()))

    def _out_limit(self) -> int:
        answering = self.state in (ConnectionState.READY, ConnectionState.DRAINING)
        return self.limits.frame_limit(self.version if answering else None)

    def data_to_send(self) -> bytes:
        """Everything answered since the last call, as one write."""
        outgoing = self._outgoing
        if not outgoing:
            return b""
        data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        outgoing.clear()
        self._unacknowledged += self._unwritten
        self._unwritten = 0
        self._out_flushed += self._out_queued
        self._out_queued = 0
        return data

    def written(self) -> None:
        """What ``data_to_send`` returned left our buffers (or sits below the
        high-water mark): those answers stop counting as in flight."""
        self._unacknowledged = 0
        self._write_blocked_since = None
        if self._out_flushed and self._budget is not None:
            held, self._out_flushed = self._out_flushed, 0
            self._budget.release(held)

    def write_blocked(self, now: float) -> None:
        """The socket buffer is past the high-water mark; the write timer starts."""
        if self._write_blocked_since is None:
            self._write_blocked_since = now

    def _end_input(self) -> None:
        """Read nothing more; close once the requests still running are answered."""
        self._decoder.close()
        self._partial_since = None
        if self._running:
            self.state = ConnectionState.DRAINING
        else:
            self._close_after_write = True
            self.state = ConnectionState.CLOSED

    def _close_now(self) -> None:
        self.state = ConnectionState.CLOSED
        self._decoder.close()
        self._partial_since = None

    def close(self) -> None:
        """The transport is gone: drop buffered input and output, give back their budget."""
        self._close_now()
        self._outgoing.clear()
        held = self._out_queued + self._out_flushed
        self._out_queued = self._out_flushed = 0
        if held and self._budget is not None:
            self._budget.release(held)
