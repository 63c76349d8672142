"""One server connection's sans-IO core against a model, under any interleaving.

A stateful hypothesis run over ``protocol.server.ServerConnection``: the peer
sends handshakes (valid, bad version, bad token, repeated), requests (valid,
unknown ops, bad ids and payloads, duplicate ids, cancels), frames at and past
the size limit, and garbage, all split at arbitrary points; the shell side
admits or refuses, answers running requests in any order, stops and resumes
reading, and lets the injected clock run past every deadline. The model is a
few sets and counters written from ``docs/protocol.md``; after every step the
core must agree with it on the events it hands the shell, the bytes it hands
the socket, its state, what is in flight and its next deadline, and:

- every admitted request is answered exactly once, unless an abort closed the
  connection (a timeout), and no answer carries an id the peer did not send;
- in flight never exceeds the cap; no frame past the agreed limit is accepted;
- nothing but the documented errors is raised (``RuntimeError`` for an
  admission answer with no handshake waiting, ``FrameError`` for an answer
  too large to encode); nothing is read or written after CLOSED.

Time runs on a 1/64 s grid and the rate is 8 per second, so the model's token
bucket in exact fractions and the core's in floats agree to the bit.

The suite runs a short derandomized budget. For a long run set
``CREDPROXY_FUZZ_EXAMPLES`` (and optionally ``CREDPROXY_FUZZ_STEPS``), e.g.
``CREDPROXY_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/protocol/test_fuzz_server_core.py``;
a long run draws fresh random seeds each time, and hypothesis's memory grows
with the count (figures in ``docs/reliability.md``, "Fuzzing").
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from hypothesis import event as note
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import FrameDecoder, FrameError
from credproxy.protocol.limits import Limits
from credproxy.protocol.server import (
    CancelRequested,
    ConnectionState,
    ConnectionTimedOut,
    Event,
    HandshakeOffered,
    HandshakeRejected,
    ProtocolViolation,
    RequestReceived,
    RequestTimedOut,
    ServerConnection,
)

TOKEN: Final = "c" * 64
GRANT: Final = object()
RATE: Final = 8
LIMITS: Final = Limits(
    small_frame_bytes=512,
    large_frame_bytes=2048,
    max_in_flight=4,
    rate_per_second=RATE,
    partial_frame_s=5.0,
    handshake_s=30.0,
    call_s=15.0,
    write_s=30.0,
)
TICK: Final = Fraction(1, 64)
ABSENT: Final = object()
"""A field left out of the frame."""

READING: Final = (ConnectionState.AWAIT_HANDSHAKE, ConnectionState.READY)
ANSWERING: Final = (ConnectionState.READY, ConnectionState.DRAINING)
WAITING_FOR_HANDSHAKE: Final = (ConnectionState.AWAIT_HANDSHAKE, ConnectionState.AWAIT_ADMISSION)


def _authenticate(token: object) -> object | None:
    return GRANT if token == TOKEN else None


def _body(fields: dict[str, Any]) -> bytes:
    kept = {key: value for key, value in fields.items() if value is not ABSENT}
    return json.dumps(kept, separators=(",", ":")).encode()


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@dataclass(frozen=True)
class Hello:
    """A handshake frame."""

    v: object
    low: object
    high: object
    token_ok: bool
    pad: int = 0

    def encode(self) -> bytes:
        payload: dict[str, Any] = {"capabilityToken": TOKEN if self.token_ok else "d" * 64}
        if self.low is not ABSENT:
            payload["minVersion"] = self.low
        if self.high is not ABSENT:
            payload["maxVersion"] = self.high
        if self.pad:
            payload["pad"] = "x" * self.pad
        return _frame(_body({"v": self.v, "op": "handshake", "payload": payload}))


@dataclass(frozen=True)
class Call:
    """A frame after the handshake (or instead of it). ``valid`` is the
    catalogue's verdict on op and payload; ``None`` for a cancel, whose
    verdict depends on the version and the target."""

    rid: object
    op: object
    payload: object
    valid: bool | None
    pad: int = 0

    def encode(self) -> bytes:
        fields = {"v": 2, "id": self.rid, "op": self.op, "payload": self.payload}
        if self.pad:
            fields["pad"] = "x" * self.pad
        return _frame(_body(fields))


@dataclass(frozen=True)
class Broken:
    """Bytes that end the stream: a length past the limit, or a bad body."""

    raw: bytes
    oversize_by: int | None = None
    """For a header alone: how far past the limit in force when it is read."""


Message = Hello | Call | Broken

GOOD_OFFERS: Final = (
    (1, ABSENT, ABSENT),
    (2, ABSENT, ABSENT),
    (2, 1, 2),
    (1, 1, 1),
    (2, 2, 5),
    (ABSENT, 0, 1),
)
"""(v, minVersion, maxVersion) that a server of versions 1 and 2 accepts."""
IDS: Final = ("a", "b", "c")
BAD_IDS: Final = (ABSENT, "", 5, None, "i" * 129)
VALID_CALLS: Final[tuple[tuple[object, object], ...]] = (
    ("list_providers", {}),
    ("list_api_keys", ABSENT),
    ("get_token", {"provider": "p"}),
    ("has_api_key", {"name": "k", "ignored": [1, 2]}),
)
BAD_CALLS: Final[tuple[tuple[object, object], ...]] = (
    ("get_token", {"provider": 5}),
    ("get_token", {}),
    ("get_api_key", {"name": "not a name"}),
    ("list_buckets", [1]),
    ("steal_everything", {}),
    ("handshake", {"capabilityToken": TOKEN}),
    ("", {}),
    ("o" * 40, {}),
    (ABSENT, {}),
    (7, {}),
)
BAD_BODIES: Final = (b'{"v":2,"id":', b"\xff\xfe", b"[]", b"", b"null")

ids = st.sampled_from(IDS)
any_id = st.one_of(ids, st.sampled_from(BAD_IDS))
pace = st.tuples(st.sampled_from([0, 8, 8, 16, 64]), st.integers(0, 6))
"""Ticks since the peer's last send (8 ticks buy one request at the rate), and
how many bytes of the new frames stay in its socket for a later read."""


def _readable_id(raw: object) -> str | None:
    return raw if isinstance(raw, str) and 0 < len(raw) <= 128 else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _negotiate(hello: Hello) -> int | None:
    """The version picked, or ``None`` for UNKNOWN_VERSION (``protocol.md``, "Handshake")."""
    low, high = hello.low, hello.high
    if low is ABSENT and high is ABSENT:
        if not _is_int(hello.v):
            return None
        low = high = hello.v
    if not _is_int(low) or not _is_int(high):
        return None
    assert isinstance(low, int) and isinstance(high, int)
    fitting = [v for v in (1, 2) if low <= v <= high]
    return max(fitting) if fitting else None


def _shape(frame: dict[str, Any]) -> dict[str, Any]:
    """An answer as the model predicts it: everything but the error's wording."""
    shaped = dict(frame)
    if "error" in shaped:
        assert isinstance(shaped["error"], str) and shaped["error"]
        shaped["error"] = "..."
    return shaped


def _answer(rid: str | None, version: int, op: str | None, **rest: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"v": version}
    if rid is not None:
        frame["id"] = rid
    elif op is not None:
        frame["op"] = op
    if "code" in rest:
        frame["ok"] = False
        frame["code"] = rest.pop("code")
        frame["error"] = "..."
        if "retry" in rest:
            frame["retryAfter"] = rest.pop("retry")
    else:
        frame["ok"] = True
        frame["data"] = rest.pop("data")
    assert not rest
    return frame


class ServerConnectionModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ServerConnection(_authenticate, limits=LIMITS, now=0.0)
        self.now = Fraction(0)
        # What the peer sent: messages in order, the bytes of all of them,
        # how many bytes the core got, and where each message ends.
        self.outbox: list[tuple[int, int, Message]] = []
        self.sent = bytearray()
        self.delivered = 0
        self.consumed = 0
        """Offset where the first message not yet taken in by the core starts."""
        self.header_read = False
        """The core parsed the header of the message at ``consumed``."""
        self.next_message = 0
        # The model of the core.
        self.state = ConnectionState.AWAIT_HANDSHAKE
        self.version = 1
        self.offered: int | None = None
        self.tokens = Fraction(RATE)
        self.bucket_last: Fraction | None = None
        self.running: dict[str, str] = {}
        self.deadline_of: dict[str, tuple[Fraction, int]] = {}
        self.cancelling: set[str] = set()
        self.timed_out: set[str] = set()
        self.unwritten = 0
        self.unacknowledged = 0
        self.partial_since: Fraction | None = None
        self.write_blocked_since: Fraction | None = None
        self.close_after_write = False
        self.expected: list[dict[str, Any]] = []
        """Answers the core owes the socket since the last flush, in order."""
        self.pending_events: list[tuple[Any, ...]] = []
        """Events the core owes the shell for the current input."""
        # The world around it.
        self.stalled = False
        self.eof = False
        self.transport_closed = False
        self.seq = 0
        self.instance: dict[str, int] = {}
        self.admitted: set[int] = set()
        self.answered: Counter[int] = Counter()
        self.lost: set[int] = set()
        self.ids_sent: set[str] = set()

    @initialize(
        opening=st.sampled_from(["admitted", "admitted", "admitted", "offered", "silent"]),
        offer=st.sampled_from(GOOD_OFFERS),
    )
    def open_the_connection(self, opening: str, offer: tuple[object, object, object]) -> None:
        """Most runs start admitted, so that their steps reach the request rules."""
        if opening != "silent":
            self._send(Hello(offer[0], offer[1], offer[2], True), (0, 0))
        if opening == "admitted":
            self.admit()

    # --- the peer ------------------------------------------------------------------

    def _send(self, message: Message, pace: tuple[int, int]) -> None:
        self._send_all([message], pace)

    def _send_all(self, messages: list[Message], pace: tuple[int, int]) -> None:
        """After ``pace[0]`` ticks, queue the frames and deliver all but the last
        ``pace[1]`` bytes in one read."""
        gap, held_back = pace
        if gap:
            self.time_passes(gap)
        for message in messages:
            raw = message.raw if isinstance(message, Broken) else message.encode()
            start = len(self.sent)
            self.sent += raw
            self.outbox.append((start, len(self.sent), message))
            if isinstance(message, Call) and isinstance(message.rid, str):
                self.ids_sent.add(message.rid)
        self._deliver(max(self.delivered, len(self.sent) - held_back))

    def _deliver(self, upto: int) -> None:
        chunk = bytes(self.sent[self.delivered : upto])
        self.delivered = upto
        events = self.core.receive_data(chunk, float(self.now))
        if self.transport_closed:
            assert events == [], "the core read bytes after CLOSED"
            assert self.core.data_to_send() == b""
            return
        self._take_in()
        self._shell(events)

    @precondition(lambda self: self._peer_may_send())
    @rule(
        v=st.sampled_from([1, 2, 3, True, "2", ABSENT]),
        low=st.sampled_from([ABSENT, 1, 2, 3, "1", 0]),
        high=st.sampled_from([ABSENT, 1, 2, 5, 1.5]),
        token_ok=st.booleans(),
        pace=pace,
    )
    def doubtful_handshake(
        self, v: object, low: object, high: object, token_ok: bool, pace: tuple[int, int]
    ) -> None:
        """Valid, bad version, bad token, and (after the first) repeated."""
        self._send(Hello(v, low, high, token_ok), pace)

    @precondition(lambda self: self._peer_may_send())
    @rule(offer=st.sampled_from(GOOD_OFFERS), pace=pace)
    def good_handshake(self, offer: tuple[object, object, object], pace: tuple[int, int]) -> None:
        self._send(Hello(offer[0], offer[1], offer[2], True), pace)

    @precondition(lambda self: self._peer_may_send())
    @rule(
        batch=st.lists(st.tuples(ids, st.sampled_from(VALID_CALLS)), min_size=1, max_size=5),
        pace=pace,
    )
    def valid_requests(
        self, batch: list[tuple[str, tuple[object, object]]], pace: tuple[int, int]
    ) -> None:
        """One to five in one read: duplicate ids, the in-flight cap and the rate all bite."""
        self._send_all([Call(rid, op, payload, True) for rid, (op, payload) in batch], pace)

    @precondition(lambda self: self._peer_may_send())
    @rule(rid=any_id, call=st.sampled_from(VALID_CALLS + BAD_CALLS), pace=pace)
    def doubtful_request(
        self, rid: object, call: tuple[object, object], pace: tuple[int, int]
    ) -> None:
        self._send(Call(rid, call[0], call[1], call in VALID_CALLS), pace)

    @precondition(lambda self: self._peer_may_send())
    @rule(rid=ids, data=st.data(), pace=pace)
    def cancel(self, rid: str, data: st.DataObject, pace: tuple[int, int]) -> None:
        """Mostly of a running request; else of one unknown, or an empty id."""
        targets = [*sorted(self.running), "a", "", "never-sent"]
        target_id = data.draw(st.sampled_from(targets), label="target")
        self._send(Call(rid, "cancel", {"targetId": target_id}, None), pace)

    @precondition(lambda self: self._peer_may_send())
    @rule(rid=ids, pace=pace)
    def frame_of_exactly_the_limit(self, rid: str, pace: tuple[int, int]) -> None:
        """Sized for the limit in force now, which only grows until it is read."""
        limit = self._frame_limit()
        message: Message
        if self.state is ConnectionState.AWAIT_HANDSHAKE:
            bare = len(Hello(2, 1, 2, True, pad=1).encode()) - 5
            message = Hello(2, 1, 2, True, pad=limit - bare)
        else:
            bare = len(Call(rid, "list_providers", {}, True, pad=1).encode()) - 5
            message = Call(rid, "list_providers", {}, True, pad=limit - bare)
        assert len(message.encode()) == 4 + limit
        self._send(message, pace)

    @precondition(
        lambda self: (
            self._peer_may_send()
            and self.state in READING
            and self.next_message == len(self.outbox)
        )
    )
    @rule(
        past=st.integers(1, 3 * 1024 * 1024) | st.none(),
        body=st.sampled_from(BAD_BODIES),
        tail=st.binary(max_size=8),
    )
    def stream_breaks(self, past: int | None, body: bytes, tail: bytes) -> None:
        """A length past the limit in force (``past``), else a body that is no
        JSON object; then bytes that must never be read. Sent when every earlier
        frame is in, so the limit in force is the one read against."""
        if past is not None:
            header = (self._frame_limit() + past).to_bytes(4, "big")
            self._send(Broken(header + tail, oversize_by=past), (0, 0))
        else:
            self._send(Broken(_frame(body) + tail), (0, 0))

    @precondition(lambda self: self.delivered < len(self.sent))
    @rule(data=st.data())
    def more_bytes_arrive(self, data: st.DataObject) -> None:
        self._deliver(data.draw(st.integers(self.delivered + 1, len(self.sent)), label="upto"))

    @precondition(lambda self: self._peer_may_send())
    @rule()
    def peer_closes_its_side(self) -> None:
        """EOF: the kernel hands over what was sent first; the core never sees EOF
        itself, the shell closes once nothing runs."""
        if self.delivered < len(self.sent):
            self._deliver(len(self.sent))
        self.eof = True
        self._flush()

    @rule()
    def peer_stops_reading(self) -> None:
        if self.transport_closed:
            return
        self.core.write_blocked(float(self.now))
        if self.write_blocked_since is None:
            self.write_blocked_since = self.now
        self.stalled = True

    @rule()
    def peer_reads_again(self) -> None:
        if self.transport_closed:
            return
        self.core.written()
        self.unacknowledged = 0
        self.write_blocked_since = None
        self.stalled = False

    def _peer_may_send(self) -> bool:
        return not self.eof

    # --- the shell ---------------------------------------------------------------

    @precondition(lambda self: self.state is ConnectionState.AWAIT_ADMISSION)
    @rule()
    def admit(self) -> None:
        assert self.offered is not None
        self.core.admit()
        self.state = ConnectionState.READY
        self.version = self.offered
        self.offered = None
        self.expected.append(
            _answer(None, self.version, "handshake", data={"version": self.version})
        )
        events = self.core.receive_data(b"", float(self.now))
        self._take_in()
        self._shell(events)

    @precondition(lambda self: self.state is ConnectionState.AWAIT_ADMISSION)
    @rule()
    def refuse(self) -> None:
        assert self.offered is not None
        self.core.refuse("this grant holds its connection cap")
        self.expected.append(
            _answer(None, self.offered, "handshake", code=ErrorCode.RESOURCE_EXHAUSTED)
        )
        self._close_after_write()
        self._flush()

    @precondition(lambda self: self.state is not ConnectionState.AWAIT_ADMISSION)
    @rule(admit=st.booleans())
    def admission_answer_with_no_handshake_waiting_is_refused(self, admit: bool) -> None:
        try:
            if admit:
                self.core.admit()
            else:
                self.core.refuse("no")
        except RuntimeError:
            pass
        else:
            raise AssertionError("an admission answer was taken with no handshake waiting")
        self._flush()

    @precondition(lambda self: any(op != "cancel" for op in self.running.values()))
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        """Some running requests, in any order, in one turn; a cancelled or
        timed-out one fails the way the shell fails it."""
        order = data.draw(st.permutations(sorted(self._answerable())), label="order")
        for rid in order[: data.draw(st.integers(1, len(order)), label="how many")]:
            if rid in self.timed_out:
                error: ProxyError | None = ProxyError(ErrorCode.INTERNAL_ERROR, "timed out")
            elif rid in self.cancelling:
                error = ProxyError(ErrorCode.CANCELLED, "cancelled")
            elif data.draw(st.booleans(), label="ok"):
                error = None
            else:
                error = ProxyError(ErrorCode.NOT_FOUND, "no such key")
            if error is None:
                self.core.respond(rid, {"for": rid})
                self._finish(rid, _answer(rid, self.version, None, data={"for": rid}))
            else:
                self.core.fail(rid, error)
                self._finish(rid, _answer(rid, self.version, None, code=error.code))
        self._flush()

    @precondition(lambda self: any(op != "cancel" for op in self.running.values()))
    @rule(data=st.data())
    def answer_too_large_to_encode(self, data: st.DataObject) -> None:
        """``respond`` raises FrameError and the request stays running."""
        rid = data.draw(st.sampled_from(sorted(self._answerable())), label="request")
        try:
            self.core.respond(rid, {"blob": "x" * self._out_limit()})
        except FrameError:
            pass
        else:
            raise AssertionError("an answer past the frame limit was encoded")
        self._flush()

    @rule(ticks=st.sampled_from([1, 16, 64, 64, 5 * 64, 15 * 64, 31 * 64]))
    def time_passes(self, ticks: int) -> None:
        self.now += ticks * TICK
        if self.transport_closed:
            return
        events = self.core.expire(float(self.now))
        assert events == self._expire(), events
        self._shell(events)

    # --- the model's rules, written from protocol.md --------------------------------

    def _frame_limit(self) -> int:
        return LIMITS.frame_limit(self.version if self.state is ConnectionState.READY else None)

    def _out_limit(self) -> int:
        return LIMITS.frame_limit(self.version if self.state in ANSWERING else None)

    def _answerable(self) -> list[str]:
        return [rid for rid, op in self.running.items() if op != "cancel"]

    def _in_flight(self) -> int:
        return len(self.running) + self.unwritten + self.unacknowledged

    def _holds_partial_frame(self) -> bool:
        reading = self.state in READING or self.state is ConnectionState.AWAIT_ADMISSION
        return reading and not self.transport_closed and self.delivered > self.consumed

    def _take_in(self) -> None:
        """Predict what ``receive_data`` did with everything delivered so far."""
        if self.state not in READING and self.state is not ConnectionState.AWAIT_ADMISSION:
            return
        had_partial = self.partial_since is not None
        progressed = False
        while self.state in READING and self.next_message < len(self.outbox):
            start, end, message = self.outbox[self.next_message]
            if self.delivered - start < 4:
                break
            if not self.header_read:
                self.header_read = True
                length = int.from_bytes(self.sent[start : start + 4], "big")
                if length > self._frame_limit():
                    assert isinstance(message, Broken) and message.oversize_by is not None
                    self._broken_stream()
                    return
            if self.delivered < end:
                break
            progressed = True
            self.consumed = end
            self.header_read = False
            self.next_message += 1
            if isinstance(message, Broken):
                self._broken_stream()
                return
            if self.state is ConnectionState.AWAIT_HANDSHAKE:
                self._handshake(message)
            else:
                self._request(message)
        if not self._holds_partial_frame():
            self.partial_since = None
        elif progressed or not had_partial:
            self.partial_since = self.now

    def _broken_stream(self) -> None:
        self.pending_events.append(("violation", ErrorCode.INVALID_REQUEST, True, None))
        self.partial_since = None
        if self.running:
            self.state = ConnectionState.DRAINING
        else:
            self._close_after_write()

    def _close_after_write(self) -> None:
        self.state = ConnectionState.CLOSED
        self.close_after_write = True
        self.partial_since = None

    def _handshake(self, message: Message) -> None:
        v = message.v if isinstance(message, Hello) else 2
        reply = v if type(v) is int and v in (1, 2) else 1
        if isinstance(message, Call) and message.op == "handshake":
            token = (
                message.payload.get("capabilityToken")
                if isinstance(message.payload, dict)
                else None
            )
            message = Hello(v, ABSENT, ABSENT, token == TOKEN)
        if isinstance(message, Call):
            op = message.op if isinstance(message.op, str) else None
            printable = None if op is None else op[:32]
            self.expected.append(
                _answer(
                    _readable_id(message.rid), reply, "handshake", code=ErrorCode.INVALID_REQUEST
                )
            )
            self.pending_events.append(("violation", ErrorCode.INVALID_REQUEST, True, printable))
            self._close_after_write()
            return
        assert isinstance(message, Hello), "a broken frame never reaches the handshake"
        version = _negotiate(message)
        if version is None:
            self._reject(reply, ErrorCode.UNKNOWN_VERSION, unauthorized=False)
        elif not message.token_ok:
            self._reject(version, ErrorCode.UNAUTHORIZED, unauthorized=True)
        else:
            self.state = ConnectionState.AWAIT_ADMISSION
            self.offered = version
            self.pending_events.append(("offered", version))

    def _reject(self, version: int, code: ErrorCode, *, unauthorized: bool) -> None:
        self.state = ConnectionState.CLOSED
        self.pending_events.append(("rejected", code, unauthorized))
        # The shell sends the rejection at once (after the throttle, for a bad token).
        self.expected.append(_answer(None, version, "handshake", code=code))
        self.close_after_write = True

    def _take_token(self) -> float | None:
        now = self.now
        if self.bucket_last is not None and now > self.bucket_last:
            self.tokens = min(Fraction(RATE), self.tokens + (now - self.bucket_last) * RATE)
        if self.bucket_last is None or now > self.bucket_last:
            self.bucket_last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return math.ceil(float((1 - self.tokens) / RATE) * 1000.0) / 1000.0

    def _request(self, message: Message) -> None:
        if not isinstance(message, Call):
            # A handshake repeated after the handshake: an op that does not exist now.
            message = Call(ABSENT, "handshake", {}, False)
        rid = _readable_id(message.rid)
        printable = message.op[:32] if isinstance(message.op, str) else None
        version = self.version

        def violation(code: ErrorCode, answer_id: str | None, **extra: Any) -> None:
            self.expected.append(_answer(answer_id, version, None, code=code, **extra))
            self.pending_events.append(("violation", code, False, printable))

        retry = self._take_token()
        if retry is not None:
            violation(ErrorCode.RATE_LIMITED, rid, retry=retry)
            return
        if message.valid is None:
            target = message.payload["targetId"] if isinstance(message.payload, dict) else ""
            valid = version >= 2 and bool(target)
        else:
            valid = message.valid
        if rid is None or not valid:
            violation(ErrorCode.INVALID_REQUEST, rid)
            return
        if rid in self.running:
            violation(ErrorCode.INVALID_REQUEST, None)
            return
        if self.write_blocked_since is not None:
            violation(ErrorCode.RESOURCE_EXHAUSTED, rid)
            return
        if self._in_flight() >= LIMITS.max_in_flight:
            violation(ErrorCode.RESOURCE_EXHAUSTED, rid)
            return
        if message.op == "cancel":
            assert isinstance(message.payload, dict)
            target = message.payload["targetId"]
            if target in self.running and target not in self.cancelling:
                self._admit_request(rid, "cancel")
                self.cancelling.add(target)
                self.pending_events.append(("cancel", rid, target))
            else:
                self.expected.append(_answer(rid, version, None, data={"cancelled": False}))
            return
        assert isinstance(message.op, str)
        self._admit_request(rid, message.op)
        self.pending_events.append(("request", rid, message.op))

    def _admit_request(self, rid: str, op: str) -> None:
        if rid in self.instance and self.deadline_of:
            note("an id used again while an older request runs")
        self.running[rid] = op
        self.seq += 1
        self.instance[rid] = self.seq
        self.admitted.add(self.seq)
        if op != "cancel":
            self.deadline_of[rid] = (self.now + int(LIMITS.call_s), self.seq)

    def _finish(self, rid: str, answer: dict[str, Any]) -> None:
        del self.running[rid]
        self.deadline_of.pop(rid, None)
        self.cancelling.discard(rid)
        self.timed_out.discard(rid)
        if self.state is ConnectionState.CLOSED:
            return  # the connection is gone; the answer is dropped
        self.answered[self.instance[rid]] += 1
        self.expected.append(answer)
        self.unwritten += 1
        if self.state is ConnectionState.DRAINING and not self.running:
            self._close_after_write()

    def _deadlines(self) -> list[tuple[Fraction, int, str]]:
        return sorted(
            (deadline, seq, rid)
            for rid, (deadline, seq) in self.deadline_of.items()
            if rid not in self.timed_out
        )

    def _next_deadline(self) -> float:
        candidates: list[Fraction] = []
        if self.partial_since is not None:
            candidates.append(self.partial_since + int(LIMITS.partial_frame_s))
        if self.state in WAITING_FOR_HANDSHAKE:
            candidates.append(Fraction(int(LIMITS.handshake_s)))
        if self.write_blocked_since is not None:
            candidates.append(self.write_blocked_since + int(LIMITS.write_s))
        deadlines = self._deadlines()
        if deadlines:
            candidates.append(deadlines[0][0])
        return float(min(candidates)) if candidates else math.inf

    def _expire(self) -> list[Event]:
        now = self.now
        if self.state is ConnectionState.CLOSED and not self.running:
            return []
        reason = None
        if self.write_blocked_since is not None and now >= self.write_blocked_since + 30:
            reason = "the peer stopped reading its answers"
        elif self.partial_since is not None and now >= self.partial_since + 5:
            reason = "partial frame timeout"
        elif self.state in WAITING_FOR_HANDSHAKE and now >= 30:
            reason = "no handshake"
        if reason is not None:
            self.state = ConnectionState.CLOSED
            self.partial_since = None
            return [ConnectionTimedOut(reason)]
        events: list[Event] = []
        for deadline, _, rid in self._deadlines():
            if deadline <= now:
                self.timed_out.add(rid)
                events.append(RequestTimedOut(rid))
        return events

    # --- what the shell does with the core's events, and the checks ------------------

    def _shell(self, events: list[Event]) -> None:
        expected, self.pending_events = self.pending_events, []
        got: list[tuple[Any, ...]] = []
        for event in events:
            note(type(event).__name__)
            if isinstance(event, RequestReceived):
                got.append(("request", event.request.id, event.request.op))
            elif isinstance(event, ProtocolViolation):
                got.append(("violation", event.error.code, event.close, event.op))
            elif isinstance(event, CancelRequested):
                got.append(("cancel", event.request_id, event.target_id))
            elif isinstance(event, HandshakeOffered):
                assert event.grant is GRANT
                got.append(("offered", event.version))
            elif isinstance(event, HandshakeRejected):
                got.append(("rejected", event.error.code, event.unauthorized))
                self.core.send_rejection()
        assert got == expected, (got, expected)
        for event in events:
            if isinstance(event, CancelRequested):
                # The shell cancels the target's task; a target with no task
                # (a cancel request) cannot be stopped.
                target = event.target_id
                stopped = self.running.get(target, "cancel") != "cancel"
                self.core.cancel_outcome(event.request_id, target, stopped)
                if not stopped:
                    self.cancelling.discard(target)
                self._finish(
                    event.request_id,
                    _answer(event.request_id, self.version, None, data={"cancelled": stopped}),
                )
            elif isinstance(event, ConnectionTimedOut):
                self._transport_gone(aborted=True)
        self._flush()

    def _flush(self) -> None:
        """What ``Connection._flush`` does: one write, then maybe the close."""
        if self.transport_closed:
            assert self.core.data_to_send() == b""
            return
        data = self.core.data_to_send()
        frames = FrameDecoder(LIMITS.large_frame_bytes).feed(data)
        note(f"state {self.state.value}")
        for frame in frames:
            note(f"answer {frame.get('code', 'ok')}")
        assert [_shape(frame) for frame in frames] == self.expected
        for frame in frames:
            assert "id" not in frame or frame["id"] in self.ids_sent, frame
        self.expected = []
        self.unacknowledged += self.unwritten
        self.unwritten = 0
        if data and not self.stalled:
            self.core.written()
            self.unacknowledged = 0
            self.write_blocked_since = None
        if self.close_after_write or (
            not self._answerable() and (self.state is ConnectionState.CLOSED or self.eof)
        ):
            self._transport_gone(aborted=False)

    def _transport_gone(self, *, aborted: bool) -> None:
        still_running = {self.instance[rid] for rid in self.running}
        assert aborted or not still_running, "a graceful close lost answers"
        self.lost |= still_running
        self.expected = []  # an abort drops what was not written yet
        self.core.close()
        self.state = ConnectionState.CLOSED
        self.partial_since = None
        self.transport_closed = True

    # --- invariants ----------------------------------------------------------------

    @invariant()
    def core_agrees_with_the_model(self) -> None:
        core = self.core
        assert core.state is self.state
        if self.transport_closed:
            assert core.receive_data(b"\x00\x00\x00\x02{}", float(self.now)) == []
            assert core.data_to_send() == b""
            return
        assert core.close_after_write == self.close_after_write
        assert core.running == frozenset(self.running)
        assert core.in_flight == self._in_flight()
        assert core.has_partial_frame == self._holds_partial_frame()
        assert (self.partial_since is not None) == self._holds_partial_frame()
        assert core.next_deadline() == self._next_deadline()
        for rid in self.running:
            assert core.is_cancelling(rid) == (rid in self.cancelling)
            assert core.is_timed_out(rid) == (rid in self.timed_out)

    @invariant()
    def in_flight_never_exceeds_the_cap(self) -> None:
        assert self.core.in_flight <= LIMITS.max_in_flight

    @invariant()
    def every_admitted_request_is_answered_at_most_once(self) -> None:
        assert all(count <= 1 for count in self.answered.values())
        assert set(self.answered) <= self.admitted

    def teardown(self) -> None:
        """Answer whatever still runs; then every admitted request that an abort
        did not take away has exactly one answer."""
        if not self.transport_closed:
            for rid in self._answerable():
                self.core.fail(rid, ProxyError(ErrorCode.INTERNAL_ERROR, "shutting down"))
                self._finish(rid, _answer(rid, self.version, None, code=ErrorCode.INTERNAL_ERROR))
            self._flush()
        for seq in self.admitted - self.lost:
            assert self.answered[seq] == 1, seq


_LONG_RUN = "CREDPROXY_FUZZ_EXAMPLES" in os.environ
ServerConnectionModel.TestCase.settings = settings(
    derandomize=not _LONG_RUN,
    max_examples=int(os.environ.get("CREDPROXY_FUZZ_EXAMPLES", "150")),
    stateful_step_count=int(os.environ.get("CREDPROXY_FUZZ_STEPS", "40")),
    deadline=None,
    database=None,
)
test_server_core_agrees_with_its_model = ServerConnectionModel.TestCase
