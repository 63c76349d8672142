"""The sans-IO connection rules, driven without sockets or clocks."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from credproxy.grants import Grant
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import FrameBudget, FrameDecoder, encode_frame
from credproxy.protocol.limits import (
    DEFAULT_LIMITS,
    LARGE_FRAME_BYTES,
    SMALL_FRAME_BYTES,
    Limits,
)
from credproxy.protocol.server import (
    CancelRequested,
    ConnectionState,
    ConnectionTimedOut,
    HandshakeOffered,
    HandshakeRejected,
    ProtocolViolation,
    RequestReceived,
    RequestTimedOut,
    ServerConnection,
    TokenBucket,
)
from credproxy.server.connection import HandshakeThrottle

TOKEN = "a" * 64
GRANT = Grant(grant_id="g", providers=frozenset({"p"}))


def _auth(token: object) -> Grant | None:
    return GRANT if token == TOKEN else None


def _sent(conn: ServerConnection) -> list[dict[str, Any]]:
    """Every frame the core queued since the last call, decoded."""
    return FrameDecoder(LARGE_FRAME_BYTES).feed(conn.data_to_send())


def _one(conn: ServerConnection) -> dict[str, Any]:
    (frame,) = _sent(conn)
    return frame


def _hello(v: int = 2, **payload: Any) -> bytes:
    return encode_frame({"v": v, "op": "handshake", "payload": payload})


def _ready(**kwargs: Any) -> ServerConnection:
    conn = ServerConnection(_auth, **kwargs)
    (event,) = conn.receive_data(_hello(minVersion=1, maxVersion=2, capabilityToken=TOKEN), 0.0)
    assert isinstance(event, HandshakeOffered)
    conn.admit()
    assert _one(conn)["ok"] is True
    conn.written()
    return conn


def _req(rid: str, op: str = "get_token", **payload: Any) -> bytes:
    message = {"v": 2, "id": rid, "op": op, "payload": payload or {"provider": "p"}}
    return encode_frame(message, max_frame_bytes=LARGE_FRAME_BYTES)


def _answer(conn: ServerConnection, rid: str) -> None:
    conn.respond(rid, {})
    conn.data_to_send()
    conn.written()


def test_handshake_picks_highest_common_version_and_grant() -> None:
    conn = ServerConnection(_auth)
    (event,) = conn.receive_data(_hello(minVersion=1, maxVersion=7, capabilityToken=TOKEN), 0.0)
    assert isinstance(event, HandshakeOffered)
    assert event.version == 2 and event.grant is GRANT
    assert conn.data_to_send() == b"", "nothing is answered before admission"
    conn.admit()
    assert _one(conn) == {"v": 2, "op": "handshake", "ok": True, "data": {"version": 2}}
    assert conn.state is ConnectionState.READY


def test_refused_admission_answers_resource_exhausted_and_closes() -> None:
    conn = ServerConnection(_auth)
    hello = _hello(minVersion=1, maxVersion=2, capabilityToken=TOKEN)
    (event,) = conn.receive_data(hello + _req("1"), 0.0)
    assert isinstance(event, HandshakeOffered)
    conn.refuse("this sandbox already has 128 connections open")
    reply = _one(conn)
    assert reply["code"] == "RESOURCE_EXHAUSTED" and reply["op"] == "handshake"
    assert conn.close_after_write and conn.closed
    assert conn.receive_data(b"", 0.0) == []


def test_frames_after_the_handshake_wait_for_admission() -> None:
    conn = ServerConnection(_auth)
    hello = _hello(minVersion=1, maxVersion=2, capabilityToken=TOKEN)
    (event,) = conn.receive_data(hello + _req("1"), 0.0)
    assert isinstance(event, HandshakeOffered)
    conn.admit()
    (request,) = conn.receive_data(b"", 0.0)
    assert isinstance(request, RequestReceived) and request.request.id == "1"


def test_first_frame_other_than_handshake_is_refused_and_closes() -> None:
    conn = ServerConnection(_auth)
    events = conn.receive_data(_req("1") + _req("2"), 0.0)
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, ProtocolViolation) and event.close
    assert _one(conn)["code"] == "INVALID_REQUEST"
    assert conn.state is ConnectionState.CLOSED and conn.close_after_write


def test_wrong_token_is_rejected_as_unauthorized_and_later_frames_ignored() -> None:
    conn = ServerConnection(_auth)
    events = conn.receive_data(_hello(capabilityToken="b" * 64) + _req("1"), 0.0)
    (event,) = events
    assert isinstance(event, HandshakeRejected) and event.unauthorized
    assert conn.data_to_send() == b"", "the shell throttles before the answer goes out"
    conn.send_rejection()
    assert _one(conn)["code"] == "UNAUTHORIZED"
    assert conn.receive_data(_req("2"), 0.0) == []


def test_version_is_checked_before_the_token() -> None:
    conn = ServerConnection(_auth)
    (event,) = conn.receive_data(_hello(minVersion=3, maxVersion=4, capabilityToken="x"), 0.0)
    assert isinstance(event, HandshakeRejected) and not event.unauthorized
    conn.send_rejection()
    assert _one(conn)["code"] == "UNKNOWN_VERSION"


def test_duplicate_in_flight_id_is_invalid_until_the_first_is_answered() -> None:
    conn = _ready()
    first, second = conn.receive_data(_req("x") + _req("x"), 0.0)
    assert isinstance(first, RequestReceived)
    assert isinstance(second, ProtocolViolation) and not second.close
    assert _one(conn)["code"] == "INVALID_REQUEST"
    conn.respond("x", {})
    (third,) = conn.receive_data(_req("x"), 0.0)
    assert isinstance(third, RequestReceived)


def test_seventeenth_request_in_flight_is_resource_exhausted() -> None:
    conn = _ready()
    data = b"".join(_req(str(i)) for i in range(17))
    events = conn.receive_data(data, 0.0)
    assert all(isinstance(e, RequestReceived) for e in events[:16])
    last = events[16]
    assert isinstance(last, ProtocolViolation)
    reply = _one(conn)
    assert reply["code"] == "RESOURCE_EXHAUSTED" and reply["id"] == "16"
    conn.fail("0", ProxyError(ErrorCode.CANCELLED, "cancelled"))
    conn.data_to_send()
    conn.written()
    (again,) = conn.receive_data(_req("17"), 0.0)
    assert isinstance(again, RequestReceived)


def test_an_answer_counts_in_flight_until_it_is_written() -> None:
    conn = _ready()
    events = conn.receive_data(b"".join(_req(str(i)) for i in range(16)), 0.0)
    assert len(events) == 16
    for i in range(16):
        conn.respond(str(i), {})
    conn.data_to_send()
    conn.write_blocked(1.0)
    (refused,) = conn.receive_data(_req("late"), 1.0)
    assert isinstance(refused, ProtocolViolation)
    reply = _one(conn)
    assert reply["code"] == "RESOURCE_EXHAUSTED" and "not yet read" in reply["error"]
    conn.written()
    (accepted,) = conn.receive_data(_req("later"), 1.0)
    assert isinstance(accepted, RequestReceived)


def test_a_write_that_does_not_drain_closes_after_the_write_limit() -> None:
    conn = _ready(limits=Limits(write_s=30.0))
    conn.write_blocked(10.0)
    assert conn.next_deadline() == 40.0
    assert conn.expire(39.9) == []
    (event,) = conn.expire(40.0)
    assert isinstance(event, ConnectionTimedOut) and conn.closed


def test_answers_of_one_turn_leave_as_one_write() -> None:
    conn = _ready()
    conn.receive_data(_req("a") + _req("b") + _req("c"), 0.0)
    for rid in "abc":
        conn.respond(rid, {"n": rid})
    assert [frame["id"] for frame in _sent(conn)] == ["a", "b", "c"]
    assert conn.data_to_send() == b""


def test_cancel_of_a_running_request_asks_the_shell_and_reports_its_outcome() -> None:
    conn = _ready()
    conn.receive_data(_req("t"), 0.0)
    (event,) = conn.receive_data(_req("c", "cancel", targetId="t"), 0.0)
    assert event == CancelRequested("c", "t")
    assert conn.is_cancelling("t")
    conn.cancel_outcome("c", "t", True)
    conn.fail("t", ProxyError(ErrorCode.CANCELLED, "the request was cancelled"))
    replies = {frame["id"]: frame for frame in _sent(conn)}
    assert replies["c"]["data"] == {"cancelled": True}
    assert replies["t"]["code"] == "CANCELLED"
    assert not conn.is_cancelling("t")


def test_cancel_of_an_unknown_or_finished_request_answers_false_itself() -> None:
    conn = _ready()
    conn.receive_data(_req("t"), 0.0)
    _answer(conn, "t")
    assert conn.receive_data(_req("c", "cancel", targetId="t"), 0.0) == []
    assert _one(conn) == {"v": 2, "id": "c", "ok": True, "data": {"cancelled": False}}


def test_a_request_past_the_call_limit_times_out_once() -> None:
    conn = _ready(limits=Limits(call_s=15.0))
    conn.receive_data(_req("slow"), 100.0)
    assert conn.next_deadline() == 115.0
    assert conn.expire(114.0) == []
    assert conn.expire(115.0) == [RequestTimedOut("slow")]
    assert conn.is_timed_out("slow")
    assert conn.expire(200.0) == []
    conn.fail("slow", ProxyError(ErrorCode.INTERNAL_ERROR, "timed out"))
    assert conn.next_deadline() == float("inf")


def test_an_id_used_again_gets_its_own_call_limit() -> None:
    """Found by the stateful model (a long run): the answered request's deadline entry stayed
    queued behind an older one and timed out the new request of the same id early."""
    conn = _ready(limits=Limits(call_s=15.0))
    conn.receive_data(_req("older"), 0.0)
    conn.receive_data(_req("again"), 1.0)
    _answer(conn, "again")
    assert conn.next_deadline() == 15.0
    conn.receive_data(_req("again"), 10.0)
    assert conn.expire(15.0) == [RequestTimedOut("older")]
    assert conn.next_deadline() == 25.0
    assert conn.expire(16.0) == []
    assert not conn.is_timed_out("again")
    assert conn.expire(25.0) == [RequestTimedOut("again")]


def test_a_partial_frame_times_out_from_its_last_progress() -> None:
    conn = _ready(limits=Limits(partial_frame_s=5.0))
    assert conn.receive_data(_req("p")[:6], 10.0) == []
    assert conn.next_deadline() == 15.0
    (event,) = conn.expire(15.0)
    assert event == ConnectionTimedOut("partial frame timeout")


def test_handshake_must_come_within_the_handshake_limit() -> None:
    conn = ServerConnection(_auth, limits=Limits(handshake_s=30.0), now=5.0)
    assert conn.next_deadline() == 35.0
    (event,) = conn.expire(35.0)
    assert event == ConnectionTimedOut("no handshake")


def test_frame_limit_is_64k_before_the_handshake_and_on_v1_and_4m_on_v2() -> None:
    early = ServerConnection(_auth)
    (event,) = early.receive_data(struct.pack(">I", SMALL_FRAME_BYTES + 1), 0.0)
    assert isinstance(event, ProtocolViolation) and event.close
    v1 = ServerConnection(_auth)
    v1.receive_data(_hello(1, capabilityToken=TOKEN), 0.0)
    v1.admit()
    (event,) = v1.receive_data(struct.pack(">I", SMALL_FRAME_BYTES + 1), 0.0)
    assert isinstance(event, ProtocolViolation) and event.close
    assert _ready().receive_data(struct.pack(">I", LARGE_FRAME_BYTES), 0.0) == []
    (event,) = _ready().receive_data(struct.pack(">I", LARGE_FRAME_BYTES + 1), 0.0)
    assert isinstance(event, ProtocolViolation) and event.close


def test_large_partial_frames_wait_for_the_daemons_budget() -> None:
    budget = FrameBudget(LARGE_FRAME_BYTES + 100)
    first, second = _ready(budget=budget), _ready(budget=budget)
    big = _req("big", "save_token", provider="p", token={"x": "y" * (LARGE_FRAME_BYTES - 200)})
    assert first.receive_data(big[:100_000], 0.0) == []
    assert budget.used == len(big) - 4
    assert second.receive_data(big[:100_000], 0.0) == []
    assert second.waiting_for_budget and budget.used == len(big) - 4
    woken: list[str] = []
    budget.wait(2, lambda: woken.append("second"))
    (event,) = first.receive_data(big[100_000:], 0.0)
    assert isinstance(event, RequestReceived)
    assert budget.used == 0 and woken == ["second"]
    (event,) = second.receive_data(big[100_000:], 0.0)
    assert isinstance(event, RequestReceived) and not second.waiting_for_budget
    second.close()
    assert budget.used == 0


def test_rate_limit_allows_sixty_then_answers_rate_limited_with_retry_after() -> None:
    conn = _ready()
    for i in range(60):
        (event,) = conn.receive_data(_req(str(i)), 0.0)
        assert isinstance(event, RequestReceived)
        _answer(conn, str(i))
    (limited,) = conn.receive_data(_req("61"), 0.0)
    assert isinstance(limited, ProtocolViolation)
    reply = _one(conn)
    assert reply["code"] == "RATE_LIMITED" and reply["id"] == "61"
    assert 0 < reply["retryAfter"] <= 1 / 60 + 0.001
    (later,) = conn.receive_data(_req("62"), 1 / 60)
    assert isinstance(later, RequestReceived)


def test_token_bucket_refills_with_the_passed_clock() -> None:
    bucket = TokenBucket(2.0)
    assert bucket.take(10.0) is None
    assert bucket.take(10.0) is None
    assert bucket.take(10.0) == 0.5
    assert bucket.take(10.25) == 0.25
    assert bucket.take(10.5) is None


def test_invalid_payload_is_answered_without_closing() -> None:
    conn = _ready()
    (event,) = conn.receive_data(_req("1", provider=5), 0.0)
    assert isinstance(event, ProtocolViolation) and not event.close
    reply = _one(conn)
    assert reply["code"] == "INVALID_REQUEST" and reply["id"] == "1"
    assert "provider" in reply["error"]
    assert conn.state is ConnectionState.READY


def test_framing_error_closes_without_a_response() -> None:
    conn = _ready()
    (event,) = conn.receive_data(b"\x00\x00\x00\x02\xff\xfe", 0.0)
    assert isinstance(event, ProtocolViolation)
    assert event.close and conn.data_to_send() == b""
    assert conn.state is ConnectionState.CLOSED


BROKEN_FRAMES = {
    "length over the limit": struct.pack(">I", LARGE_FRAME_BYTES + 1),
    "body not JSON": b'\x00\x00\x00\x05{"v":',
    "body not UTF-8": b"\x00\x00\x00\x02\xff\xfe",
    "body not an object": b"\x00\x00\x00\x02[]",
}


def _shape(event: object) -> object:
    """An event as comparable values (``ProxyError`` compares by identity)."""
    if isinstance(event, ProtocolViolation):
        return ("violation", event.error.code, event.error.message, event.close, event.op)
    return event


def _answer_all(conn: ServerConnection, events: list[Any]) -> bytes:
    """Answer every request event the way a shell would, in reverse order, and
    return what the core hands over for the socket."""
    for event in reversed(events):
        if isinstance(event, RequestReceived):
            conn.respond(event.request.id, {"for": event.request.id})
        elif isinstance(event, CancelRequested):
            conn.cancel_outcome(event.request_id, event.target_id, True)
            conn.fail(event.target_id, ProxyError(ErrorCode.CANCELLED, "cancelled"))
    return conn.data_to_send()


@pytest.mark.parametrize("broken", list(BROKEN_FRAMES.values()), ids=list(BROKEN_FRAMES))
def test_good_frames_before_a_broken_one_in_one_chunk_are_answered_as_if_alone(
    broken: bytes,
) -> None:
    """Fuzzing finding: the core went CLOSED on the broken frame and dropped the
    answers of the good frames read from the same chunk."""
    good = (
        _req("a")
        + _req("b", "no_such_op")
        + _req("c", "get_api_key", name=5)
        + _req("d", "cancel", targetId="a")
        + _req("e", "list_providers", ignored="field")
    )
    alone = _ready()
    alone_events = alone.receive_data(good, 0.0)
    expected = _answer_all(alone, alone_events)

    conn = _ready()
    events = conn.receive_data(good + broken + _req("after"), 0.0)
    *request_events, last = events
    assert [_shape(e) for e in request_events] == [_shape(e) for e in alone_events]
    assert isinstance(last, ProtocolViolation) and last.close
    assert conn.state is ConnectionState.DRAINING and conn.input_ended
    assert not conn.close_after_write, "answers still owed"
    assert conn.receive_data(_req("later"), 0.0) == [], "nothing after the broken frame is read"
    assert _answer_all(conn, request_events) == expected
    assert [frame["id"] for frame in FrameDecoder(LARGE_FRAME_BYTES).feed(expected)] == [
        "b",
        "c",
        "e",
        "d",
        "a",
    ]
    assert conn.closed and conn.close_after_write
    assert conn.in_flight == 3, "answers count until written"
    conn.written()
    assert conn.in_flight == 0 and conn.data_to_send() == b""


def test_requests_still_running_at_a_broken_frame_are_answered_before_the_close() -> None:
    conn = _ready()
    (running,) = conn.receive_data(_req("slow"), 0.0)
    assert isinstance(running, RequestReceived)
    (event,) = conn.receive_data(BROKEN_FRAMES["body not JSON"], 1.0)
    assert isinstance(event, ProtocolViolation) and event.close
    assert conn.state is ConnectionState.DRAINING and not conn.has_partial_frame
    assert conn.next_deadline() == DEFAULT_LIMITS.call_s, "the call limit still runs"
    conn.respond("slow", {"late": True})
    assert _one(conn) == {"v": 2, "id": "slow", "ok": True, "data": {"late": True}}
    assert conn.closed and conn.close_after_write


def test_a_broken_frame_with_nothing_running_closes_after_what_is_queued() -> None:
    conn = _ready()
    events = conn.receive_data(_req("x", "no_such_op") + BROKEN_FRAMES["body not UTF-8"], 0.0)
    assert [type(event) for event in events] == [ProtocolViolation, ProtocolViolation]
    assert _one(conn)["id"] == "x"
    assert conn.closed and conn.close_after_write


def test_cancel_is_unknown_in_version_1() -> None:
    conn = ServerConnection(_auth)
    hello = encode_frame({"v": 1, "op": "handshake", "payload": {"capabilityToken": TOKEN}})
    (offered,) = conn.receive_data(hello, 0.0)
    assert isinstance(offered, HandshakeOffered) and offered.version == 1
    conn.admit()
    conn.data_to_send()
    cancel = encode_frame({"v": 1, "id": "c", "op": "cancel", "payload": {"targetId": "x"}})
    (event,) = conn.receive_data(cancel, 0.0)
    assert isinstance(event, ProtocolViolation)
    assert _one(conn)["code"] == "INVALID_REQUEST"


async def test_handshake_throttle_doubles_per_uid_and_never_delays_other_uids() -> None:
    """The throttle's sleep and clock are injected: delays are recorded, not waited."""
    now = [0.0]
    slept: list[tuple[str, float]] = []
    current = {"uid": ""}

    async def fake_sleep(delay: float) -> None:
        slept.append((current["uid"], delay))

    throttle = HandshakeThrottle(
        base_delay_s=0.1,
        max_delay_s=0.5,
        forget_after_s=60.0,
        clock=lambda: now[0],
        sleep=fake_sleep,
    )

    async def fail(uid: int) -> None:
        current["uid"] = str(uid)
        assert await throttle.penalize(uid)

    for _ in range(4):
        await fail(1000)
    await fail(2000)
    assert slept == [("1000", 0.1), ("1000", 0.2), ("1000", 0.4), ("1000", 0.5), ("2000", 0.1)]
    now[0] = 120.0
    slept.clear()
    await fail(1000)
    assert slept == [("1000", 0.1)]


async def test_handshake_throttle_serializes_one_uid_and_caps_the_queue() -> None:
    release = asyncio.Event()

    async def held_sleep(delay: float) -> None:
        await release.wait()

    throttle = HandshakeThrottle(max_waiting=2, sleep=held_sleep)
    first = asyncio.create_task(throttle.penalize(7))
    second = asyncio.create_task(throttle.penalize(7))
    await asyncio.sleep(0)
    assert await throttle.penalize(7) is False
    release.set()
    assert await first and await second
