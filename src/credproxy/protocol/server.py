"""The server side of one connection as a sans-IO state machine (``protocol.md``).

In the manner of h11: bytes go in through ``receive_data``, events come out,
and response bytes are built by methods that keep the in-flight table right.
No sockets, no asyncio, no clock: the caller passes ``now`` (monotonic
seconds) for the rate limiter and decides who a capability token belongs to
through the ``authenticate`` callable, so tests and fuzzers can drive every
rule here without I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from credproxy.grants import Grant
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame
from credproxy.protocol.messages import (
    MAX_ID_LENGTH,
    Handshake,
    Request,
    RequestError,
    convert_payload,
    failure,
    parse_request,
    success,
)
from credproxy.protocol.version import negotiate

MAX_IN_FLIGHT: Final = 16
RATE_PER_SECOND: Final = 60.0
HANDSHAKE_OP: Final = "handshake"

Authenticate = Callable[[object], Grant | None]


class ConnectionState(enum.Enum):
    AWAIT_HANDSHAKE = "await_handshake"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeAccepted:
    """The peer is in; ``response`` must be written before any other response."""

    version: int
    grant: Grant
    response: bytes


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """Write ``response`` completely, then close. ``unauthorized`` marks a token
    failure, which the caller throttles per peer."""

    error: ProxyError
    response: bytes
    unauthorized: bool


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A frame the peer got wrong. ``response`` (if any) goes out first; when
    ``close`` is set the connection ends after it. ``op`` is a printable op
    name for the audit line, or ``None`` when the frame carried none."""

    error: ProxyError
    response: bytes | None
    close: bool
    op: str | None = None


Event = HandshakeAccepted | HandshakeRejected | RequestReceived | ProtocolViolation


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


class ServerConnection:
    """Protocol rules of one accepted connection, from first byte to close."""

    def __init__(
        self,
        authenticate: Authenticate,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        rate_per_second: float = RATE_PER_SECOND,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._authenticate = authenticate
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_in_flight = max_in_flight
        self._bucket = TokenBucket(rate_per_second)
        self._in_flight: set[str] = set()
        self.state = ConnectionState.AWAIT_HANDSHAKE
        self.version = 1
        self.grant: Grant | None = None

    @property
    def has_partial_frame(self) -> bool:
        return self._decoder.has_partial_frame

    @property
    def in_flight(self) -> frozenset[str]:
        return frozenset(self._in_flight)

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Decode ``data`` and apply the connection rules to each complete frame.

        After an event that closes the connection no further frames are looked
        at: the peer cannot be trusted to be in sync any more.
        """
        if self.state is ConnectionState.CLOSED:
            return []
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self.state = ConnectionState.CLOSED
            return [ProtocolViolation(ProxyError(ErrorCode.INVALID_REQUEST, str(exc)), None, True)]
        events: list[Event] = []
        for frame in frames:
            if self.state is ConnectionState.AWAIT_HANDSHAKE:
                events.append(self._handshake(frame))
            elif self.state is ConnectionState.READY:
                events.append(self._request(frame, now))
            if self.closed:
                break
        return events

    def _handshake(self, frame: dict[str, Any]) -> Event:
        envelope_version = frame.get("v")
        # ``in`` alone would let 1.0 and True through (they compare equal to 1).
        reply_version = envelope_version if type(envelope_version) is int else 1
        if reply_version not in (1, 2):
            reply_version = 1
        if frame.get("op") != HANDSHAKE_OP:
            self.state = ConnectionState.CLOSED
            error = ProxyError(ErrorCode.INVALID_REQUEST, "the first message must be the handshake")
            op = frame.get("op")
            response = self._encode(failure(_safe_id(frame), reply_version, HANDSHAKE_OP, error))
            return ProtocolViolation(error, response, True, _printable(op))
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
        self.state = ConnectionState.READY
        self.version = version
        self.grant = grant
        response = self._encode(success(None, version, HANDSHAKE_OP, {"version": version}))
        return HandshakeAccepted(version, grant, response)

    def _reject(self, error: ProxyError, version: int, *, unauthorized: bool) -> Event:
        self.state = ConnectionState.CLOSED
        response = self._encode(failure(None, version, HANDSHAKE_OP, error))
        return HandshakeRejected(error, response, unauthorized)

    def _request(self, frame: dict[str, Any], now: float) -> Event:
        request_id = _safe_id(frame)
        op = _printable(frame.get("op"))
        retry_after = self._bucket.take(now)
        if retry_after is not None:
            error = ProxyError(
                ErrorCode.RATE_LIMITED,
                "too many requests on this connection",
                retry_after=retry_after,
            )
            return self._violation(error, request_id, op)
        try:
            request = parse_request(frame, self.version)
        except RequestError as exc:
            return self._violation(exc, exc.request_id, op)
        if request.id in self._in_flight:
            error = ProxyError(
                ErrorCode.INVALID_REQUEST, "field `id` repeats the id of a request still in flight"
            )
            return self._violation(error, None, op)
        if len(self._in_flight) >= self._max_in_flight:
            error = ProxyError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"more than {self._max_in_flight} requests in flight on this connection",
            )
            return self._violation(error, request.id, op)
        self._in_flight.add(request.id)
        return RequestReceived(request)

    def _violation(self, error: ProxyError, request_id: str | None, op: str | None) -> Event:
        response = self._encode(failure(request_id, self.version, None, error))
        return ProtocolViolation(error, response, False, op)

    def send_success(self, request_id: str, data: dict[str, Any]) -> bytes:
        """The response that ends request ``request_id``; it leaves the in-flight table."""
        self._in_flight.discard(request_id)
        return encode_frame(success(request_id, self.version, None, data))

    def send_failure(self, request_id: str, error: ProxyError) -> bytes:
        self._in_flight.discard(request_id)
        return self._encode(failure(request_id, self.version, None, error))

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def close(self) -> None:
        self.state = ConnectionState.CLOSED

    @staticmethod
    def _encode(message: dict[str, Any]) -> bytes:
        return encode_frame(message)


def _safe_id(frame: dict[str, Any]) -> str | None:
    """The id to echo in an error reply, only when it is a well-formed id."""
    raw = frame.get("id")
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LENGTH:
        return raw
    return None


def _printable(op: object) -> str | None:
    if not isinstance(op, str):
        return None
    clipped = op[:32]
    return "".join(ch if ch.isprintable() else "?" for ch in clipped)
