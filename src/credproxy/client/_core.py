"""The client side of the protocol, sans-IO (``protocol.md``, "Handshake" and "Envelopes").

``ClientCore`` is one connection's state machine: it makes the bytes to send
and turns received bytes into events. It never touches a socket, a task or a
clock, so the blocking ``ProxyClient`` and the asyncio ``AsyncProxyClient``
share every protocol decision and differ only in how bytes move.

The daemon is trusted less than it might seem: every frame is checked before
it becomes an event, and anything malformed ends the connection.

Frames go through the standard library's JSON codec and payloads are checked
against ``protocol.ops`` first, so a sandbox-side command never imports
msgspec; only a payload that check cannot pass loads the msgspec schemas.
For the same reason the records here are named tuples, not dataclasses
(``dataclasses`` brings ``inspect``), request ids are made without ``uuid``
(which brings ``platform``) and ``random`` loads only for a retry.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final, Generic, NamedTuple, TypeVar

from credproxy.client._exceptions import (
    ConnectFailedError,
    InvalidRequestError,
    ProxyClientError,
    ResourceExhaustedError,
    connect_failed,
    from_wire,
    protocol_violation,
)
from credproxy.protocol.codec import STDLIB_JSON
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import FrameDecoder, FrameError, encode_frame
from credproxy.protocol.ops import CANCEL, DEFAULT_BUCKET, REQUEST_OPS
from credproxy.protocol.sizes import frame_limit
from credproxy.protocol.version import MAX_VERSION, MIN_VERSION
from credproxy.tokens import sanitize

T = TypeVar("T")

CANCEL_MIN_VERSION: Final = CANCEL.min_version
_MAX_DISCARDED: Final = 1024


class State(Enum):
    NEW = "new"
    HANDSHAKING = "handshaking"
    READY = "ready"
    CLOSED = "closed"


class HandshakeComplete(NamedTuple):
    version: int


class HandshakeFailed(NamedTuple):
    error: ProxyClientError


class ResponseReceived(NamedTuple):
    request_id: str
    data: dict[str, Any] | None
    error: ProxyClientError | None

    def unwrap(self) -> dict[str, Any]:
        """The ``data`` object, or the typed error the daemon answered with."""
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


Event = HandshakeComplete | HandshakeFailed | ResponseReceived


class ClientCore:
    """One connection: handshake, then requests matched to responses by id."""

    def __init__(
        self,
        capability_token: str | None,
        *,
        min_version: int = MIN_VERSION,
        max_version: int = MAX_VERSION,
    ) -> None:
        self._token = capability_token
        self._min = min_version
        self._max = max_version
        self._decoder = FrameDecoder(codec=STDLIB_JSON)
        self._state = State.NEW
        self._version: int | None = None
        self._pending: set[str] = set()
        self._discarded: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"ClientCore(state={self._state.value}, version={self._version})"

    @property
    def state(self) -> State:
        return self._state

    @property
    def version(self) -> int | None:
        """The negotiated protocol version once the handshake succeeded."""
        return self._version

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def is_pending(self, request_id: str) -> bool:
        """True while ``request_id`` was sent and neither answered nor given up on."""
        return request_id in self._pending

    def initiate_handshake(self) -> bytes:
        if self._state is not State.NEW:
            raise RuntimeError("the handshake is sent once, as the first frame")
        payload: dict[str, Any] = {"minVersion": self._min, "maxVersion": self._max}
        if self._token is not None:
            payload["capabilityToken"] = self._token
        self._state = State.HANDSHAKING
        return encode_frame(
            {"v": self._max, "op": "handshake", "payload": payload}, codec=STDLIB_JSON
        )

    def send_request(self, op: str, payload: Mapping[str, Any] | None = None) -> tuple[str, bytes]:
        """A new request id and the frame to write.

        Payloads of known operations are checked as the daemon checks them (one
        of names only at a glance, any other against the daemon's own schema),
        so a bad name fails here with a clear message and never costs a round
        trip.
        """
        if self._state is not State.READY or self._version is None:
            raise RuntimeError("requests are sent only after a successful handshake")
        body = dict(payload or {})
        facts = REQUEST_OPS.get(op)
        if facts is not None:
            if self._version < facts.min_version:
                raise InvalidRequestError(
                    ErrorCode.INVALID_REQUEST,
                    f"{op} needs protocol version {facts.min_version}; "
                    f"the daemon speaks {self._version}",
                )
            if not facts.plainly_valid(body):
                check_against_schema(op, body)
        request_id = new_request_id()
        try:
            frame = encode_frame(
                {"v": self._version, "id": request_id, "op": op, "payload": body},
                max_frame_bytes=frame_limit(self._version),
                codec=STDLIB_JSON,
            )
        except FrameError as exc:
            raise InvalidRequestError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(ErrorCode.INVALID_REQUEST, unencodable(exc)) from None
        self._pending.add(request_id)
        return request_id, frame

    @property
    def supports_cancel(self) -> bool:
        return self._version is not None and self._version >= CANCEL_MIN_VERSION

    def send_cancel(self, target_id: str) -> bytes | None:
        """Give up on ``target_id`` and, on version 2, the ``cancel`` frame to send.

        The cancel request's own answer is dropped when it arrives: nobody
        waits for it.
        """
        self.discard(target_id)
        if not self.supports_cancel or self._state is not State.READY:
            return None
        request_id, frame = self.send_request("cancel", {"targetId": target_id})
        self.discard(request_id)
        return frame

    def discard(self, request_id: str) -> None:
        """Stop waiting for ``request_id``; a late answer is dropped silently."""
        if request_id in self._pending:
            self._pending.discard(request_id)
            self._discarded[request_id] = None
            while len(self._discarded) > _MAX_DISCARDED:
                self._discarded.popitem(last=False)

    def connection_closed(self) -> frozenset[str]:
        """The ids that will never be answered now that the connection is gone."""
        self._state = State.CLOSED
        lost = frozenset(self._pending)
        self._pending.clear()
        return lost

    def receive_data(self, data: bytes) -> list[Event]:
        """Events for the frames completed by ``data``.

        Raises ``ProtocolViolationError`` when the stream cannot be trusted any
        more; the caller must then close the connection.
        """
        if self._state is State.CLOSED:
            return []
        decoder = self._decoder
        decoder.receive(data)
        events: list[Event] = []
        while not self._is_closed():
            # One frame at a time: the frame limit grows once version 2 is agreed.
            try:
                frame = decoder.next_frame()
            except FrameError as exc:
                self._state = State.CLOSED
                raise protocol_violation(f"the credential proxy sent a bad frame: {exc}") from None
            if frame is None:
                break
            event = self._handle_frame(frame)
            if event is not None:
                events.append(event)
        return events

    def _is_closed(self) -> bool:
        return self._state is State.CLOSED

    def _handle_frame(self, frame: dict[str, Any]) -> Event | None:
        if self._state is State.HANDSHAKING:
            return self._handle_handshake(frame)
        if self._state is not State.READY:
            self._state = State.CLOSED
            raise protocol_violation("the credential proxy spoke before the handshake")
        request_id = frame.get("id")
        if not isinstance(request_id, str):
            self._state = State.CLOSED
            error = _error_of(frame)
            detail = f" ({error.code}: {error.message})" if error is not None else ""
            raise protocol_violation(
                f"the credential proxy sent a response without a request id{detail}"
            )
        if request_id not in self._pending:
            self._discarded.pop(request_id, None)
            return None
        self._pending.discard(request_id)
        ok = frame.get("ok")
        if ok is True:
            data = frame.get("data")
            if not isinstance(data, dict):
                self._state = State.CLOSED
                raise protocol_violation("the credential proxy sent a success without data")
            return ResponseReceived(request_id, data, None)
        error = _error_of(frame)
        if error is None:
            self._state = State.CLOSED
            raise protocol_violation("the credential proxy sent a response without `ok`")
        return ResponseReceived(request_id, None, error)

    def _handle_handshake(self, frame: dict[str, Any]) -> Event:
        ok = frame.get("ok")
        if ok is True:
            data = frame.get("data")
            version = data.get("version") if isinstance(data, dict) else None
            if (
                isinstance(version, bool)
                or not isinstance(version, int)
                or not self._min <= version <= self._max
            ):
                self._state = State.CLOSED
                raise protocol_violation(
                    "the credential proxy accepted the handshake with a version "
                    f"outside {self._min}..{self._max}"
                )
            self._version = version
            self._decoder.max_frame_bytes = frame_limit(version)
            self._state = State.READY
            return HandshakeComplete(version)
        error = _error_of(frame)
        self._state = State.CLOSED
        if error is None:
            raise protocol_violation("the credential proxy sent a malformed handshake answer")
        return HandshakeFailed(error)


def new_request_id() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` makes it."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def unencodable(exc: TypeError | ValueError) -> str:
    """Why a payload is not JSON, without its text (it may hold a token)."""
    if isinstance(exc, UnicodeEncodeError):
        why = "a string holds a lone UTF-16 surrogate"
    else:
        # json's own messages name a type or the problem, never a value.
        why = str(exc)
    return f"the payload cannot be sent as JSON: {why}"


def check_against_schema(op: str, payload: dict[str, Any]) -> None:
    """Check ``payload`` against the op's msgspec schema, the same one the daemon uses.

    Loaded here, on the first payload ``protocol.ops`` cannot pass at a
    glance (a bad name, a token, a session id), not by every sandbox command.
    """
    from credproxy.protocol.messages import OPERATIONS, convert_payload

    try:
        convert_payload(payload, OPERATIONS[op].payload)
    except ProxyError as exc:
        raise InvalidRequestError(exc.code, exc.message) from None


def _error_of(frame: dict[str, Any]) -> ProxyClientError | None:
    if frame.get("ok") is not False:
        return None
    return from_wire(frame.get("code"), frame.get("error"), frame.get("retryAfter"))


def handshake_complete(events: list[Event]) -> bool:
    """True once ``events`` finish the handshake; the daemon's refusal is raised."""
    for event in events:
        if isinstance(event, HandshakeFailed):
            raise event.error
        if isinstance(event, HandshakeComplete):
            return True
    return False


def connect_error(path: str, exc: OSError) -> ConnectFailedError:
    """What to tell the user when the socket at ``path`` cannot be opened."""
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return connect_failed(
            f"no credential proxy is listening at {path}; is the host daemon still running?"
        )
    if isinstance(exc, PermissionError):
        return connect_failed(f"permission denied opening {path}")
    if exc.errno == errno.EAGAIN:
        return connect_failed(
            f"the credential proxy at {path} is not accepting connections (its queue is full)"
        )
    return connect_failed(f"cannot connect to {path}: {exc.strerror or type(exc).__name__}")


class _ClosedDuringHandshake(ConnectFailedError):
    """The daemon dropped a connection still waiting for its handshake answer."""


def closed_during_handshake() -> ConnectFailedError:
    return _ClosedDuringHandshake(
        "CONNECT_FAILED", "the credential proxy closed the connection during the handshake"
    )


def still_busy(busy: ProxyClientError, seconds: float) -> ProxyClientError:
    """The error for a request whose time ran out while the daemon stayed busy.

    The busy answer (its queue full, a waiting connection closed, every place of
    this grant taken) says what is wrong; a bare timeout would hide it, and
    whether the last attempt or the request's time ends first is a race.
    """
    return type(busy)(busy.code, f"{busy.message} (tried for {seconds:g} s)")


class ConnectFailure(Enum):
    """Why an attempt to open a connection failed, as far as retrying goes."""

    BUSY = "busy"
    """Alive but busy: its listen queue is full, it closed a connection that
    still waited for its handshake answer (its cap on waiting connections), or
    it answered the handshake RESOURCE_EXHAUSTED (this grant's connections are
    all taken, by clients that will close theirs)."""
    NOT_LISTENING = "not listening"
    """ECONNREFUSED: a socket file nobody listens on (a daemon restarting or gone)."""
    FINAL = "final"


def classify_connect_failure(exc: BaseException) -> ConnectFailure:
    if isinstance(exc, _ClosedDuringHandshake | ResourceExhaustedError):
        return ConnectFailure.BUSY
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure.NOT_LISTENING
    if isinstance(exc, OSError) and exc.errno == errno.EAGAIN:
        return ConnectFailure.BUSY
    return ConnectFailure.FINAL


CONNECT_BACKOFF_FIRST_S: Final = 0.01
CONNECT_BACKOFF_MAX_S: Final = 0.5
NOT_LISTENING_WINDOW_S: Final = 1.0
"""A refused connect is tried again only this long: past it the daemon is gone,
and ``credproxy token get`` should say so at once, not after its whole timeout."""


class ConnectRetry:
    """When to try opening a connection again; decisions only, no clock or sleep.

    Sandboxes that start together meet a daemon whose listen queue or
    pre-handshake places are full. Such attempts are tried again after a
    random delay (full jitter, doubling up to ``CONNECT_BACKOFF_MAX_S``) while
    the caller's budget (the request timeout) lasts, so a burst spreads out
    instead of failing. Only opening is retried: the handshake is the first
    frame and carries nothing but the token, so a fresh connection is
    harmless; a connection that broke after its handshake is never replaced
    silently (``protocol.md``, "Limits and timeouts").
    """

    def __init__(self, budget_s: float, rand: Callable[[], float] | None = None) -> None:
        self._budget = budget_s
        self._rand = rand
        self.attempts = 1
        self.busy: ProxyClientError | None = None
        """The daemon's last busy answer, reported if the time runs out."""

    def after_failure(
        self,
        exc: ConnectFailedError | ResourceExhaustedError | OSError,
        path: str,
        elapsed_s: float,
    ) -> float:
        """The delay before the next attempt; raises the error to report on giving up."""
        failure = classify_connect_failure(exc)
        error = exc if isinstance(exc, ProxyClientError) else connect_error(path, exc)
        delay = self.delay_after(failure, elapsed_s)
        if delay is None:
            if self.busy is not None and failure is ConnectFailure.BUSY:
                raise still_busy(error, self._budget) from None
            raise error from None
        if failure is ConnectFailure.BUSY:
            self.busy = error
        return delay

    def timed_out(self) -> ProxyClientError | None:
        """The error for time running out after a busy answer (else ``None``): the
        busy answer says what is wrong, and whether the retry gave up first or the
        time ended inside the last attempt is a race."""
        return None if self.busy is None else still_busy(self.busy, self._budget)

    def delay_after(self, failure: ConnectFailure, elapsed_s: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up."""
        if failure is ConnectFailure.FINAL:
            return None
        if failure is ConnectFailure.NOT_LISTENING and elapsed_s >= NOT_LISTENING_WINDOW_S:
            return None
        doubled = CONNECT_BACKOFF_FIRST_S * (1 << min(self.attempts, 16))
        ceiling = min(CONNECT_BACKOFF_MAX_S, doubled)
        if self._rand is None:
            import random  # only now: most connections never retry

            self._rand = random.random
        delay = ceiling * self._rand()
        if elapsed_s + delay >= self._budget:
            return None
        self.attempts += 1
        return delay


# One operation as both clients send it: the payload to write and the check
# its answer must pass. The blocking and asyncio methods differ only in how
# they wait for ``request``.


class Call(NamedTuple, Generic[T]):
    op: str
    payload: dict[str, Any]
    result: Callable[[dict[str, Any]], T]


def _nothing(data: dict[str, Any]) -> None:
    return None


def _as_is(data: dict[str, Any]) -> dict[str, Any]:
    return data


def token_result(data: dict[str, Any]) -> dict[str, Any]:
    access = data.get("access_token")
    if not isinstance(access, str):
        raise protocol_violation("the credential proxy sent a token without access_token")
    return data


def string_list(data: dict[str, Any], field: str) -> list[str]:
    value = data.get(field)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise protocol_violation(f"the credential proxy sent `{field}` that is not a string list")
    return list(value)


def string_field(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise protocol_violation(f"the credential proxy sent `{field}` that is not a string")
    return value


def bool_field(data: dict[str, Any], field: str) -> bool:
    value = data.get(field)
    if not isinstance(value, bool):
        raise protocol_violation(f"the credential proxy sent `{field}` that is not a boolean")
    return value


def outgoing_token(token: Mapping[str, Any]) -> dict[str, Any]:
    """A sandbox never holds a refresh token; one passed in is not sent."""
    return sanitize(token)


def _list_of(field: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda data: string_list(data, field)


def get_token(provider: str, bucket: str = DEFAULT_BUCKET) -> Call[dict[str, Any]]:
    return Call("get_token", {"provider": provider, "bucket": bucket}, token_result)


def save_token(provider: str, token: Mapping[str, Any], bucket: str = DEFAULT_BUCKET) -> Call[None]:
    payload = {"provider": provider, "bucket": bucket, "token": outgoing_token(token)}
    return Call("save_token", payload, _nothing)


def remove_token(provider: str, bucket: str = DEFAULT_BUCKET) -> Call[None]:
    return Call("remove_token", {"provider": provider, "bucket": bucket}, _nothing)


def list_providers() -> Call[list[str]]:
    return Call("list_providers", {}, _list_of("providers"))


def list_buckets(provider: str) -> Call[list[str]]:
    return Call("list_buckets", {"provider": provider}, _list_of("buckets"))


def get_api_key(name: str) -> Call[str]:
    return Call("get_api_key", {"name": name}, lambda data: string_field(data, "key"))


def list_api_keys() -> Call[list[str]]:
    return Call("list_api_keys", {}, _list_of("keys"))


def has_api_key(name: str) -> Call[bool]:
    return Call("has_api_key", {"name": name}, lambda data: bool_field(data, "exists"))


def get_bucket_stats(provider: str, bucket: str = DEFAULT_BUCKET) -> Call[dict[str, Any]]:
    """Requests served from one bucket since the daemon started (LLxprt's client asks)."""
    return Call("get_bucket_stats", {"provider": provider, "bucket": bucket}, dict)


def refresh_token(provider: str, bucket: str = DEFAULT_BUCKET) -> Call[dict[str, Any]]:
    return Call("refresh_token", {"provider": provider, "bucket": bucket}, token_result)


def oauth_initiate(provider: str, bucket: str = DEFAULT_BUCKET) -> Call[dict[str, Any]]:
    return Call("oauth_initiate", {"provider": provider, "bucket": bucket}, _as_is)


def oauth_exchange(session_id: str, code: str) -> Call[dict[str, Any]]:
    return Call("oauth_exchange", {"session_id": session_id, "code": code}, token_result)


def oauth_poll(session_id: str) -> Call[dict[str, Any]]:
    return Call("oauth_poll", {"session_id": session_id}, _as_is)


def oauth_cancel(session_id: str) -> Call[None]:
    return Call("oauth_cancel", {"session_id": session_id}, _nothing)
