"""The sans-IO connection rules, driven without sockets or clocks."""

from __future__ import annotations

import asyncio
from typing import Any

from credproxy.grants import Grant
from credproxy.protocol.framing import FrameDecoder, encode_frame
from credproxy.protocol.server import (
    ConnectionState,
    HandshakeAccepted,
    HandshakeRejected,
    ProtocolViolation,
    RequestReceived,
    ServerConnection,
    TokenBucket,
)
from credproxy.server.connection import HandshakeThrottle

TOKEN = "a" * 64
GRANT = Grant(grant_id="g", providers=frozenset({"p"}))


def _auth(token: object) -> Grant | None:
    return GRANT if token == TOKEN else None


def _decode(data: bytes | None) -> dict[str, Any]:
    assert data is not None
    (frame,) = FrameDecoder().feed(data)
    return frame


def _hello(**payload: Any) -> bytes:
    return encode_frame({"v": 2, "op": "handshake", "payload": payload})


def _ready() -> ServerConnection:
    conn = ServerConnection(_auth)
    (event,) = conn.receive_data(_hello(minVersion=1, maxVersion=2, capabilityToken=TOKEN), 0.0)
    assert isinstance(event, HandshakeAccepted)
    return conn


def _req(rid: str, op: str = "get_token", **payload: Any) -> bytes:
    return encode_frame({"v": 2, "id": rid, "op": op, "payload": payload or {"provider": "p"}})


def test_handshake_picks_highest_common_version_and_grant() -> None:
    conn = ServerConnection(_auth)
    (event,) = conn.receive_data(_hello(minVersion=1, maxVersion=7, capabilityToken=TOKEN), 0.0)
    assert isinstance(event, HandshakeAccepted)
    assert event.version == 2 and event.grant is GRANT
    assert _decode(event.response) == {
        "v": 2,
        "op": "handshake",
        "ok": True,
        "data": {"version": 2},
    }
    assert conn.state is ConnectionState.READY


def test_first_frame_other_than_handshake_is_refused_and_closes() -> None:
    conn = ServerConnection(_auth)
    events = conn.receive_data(_req("1") + _req("2"), 0.0)
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, ProtocolViolation) and event.close
    assert _decode(event.response)["code"] == "INVALID_REQUEST"
    assert conn.state is ConnectionState.CLOSED


def test_wrong_token_is_rejected_as_unauthorized_and_later_frames_ignored() -> None:
    conn = ServerConnection(_auth)
    events = conn.receive_data(_hello(capabilityToken="b" * 64) + _req("1"), 0.0)
    (event,) = events
    assert isinstance(event, HandshakeRejected) and event.unauthorized
    assert _decode(event.response)["code"] == "UNAUTHORIZED"
    assert conn.receive_data(_req("2"), 0.0) == []


def test_version_is_checked_before_the_token() -> None:
    conn = ServerConnection(_auth)
    (event,) = conn.receive_data(_hello(minVersion=3, maxVersion=4, capabilityToken="x"), 0.0)
    assert isinstance(event, HandshakeRejected) and not event.unauthorized
    assert _decode(event.response)["code"] == "UNKNOWN_VERSION"


def test_duplicate_in_flight_id_is_invalid_until_the_first_is_answered() -> None:
    conn = _ready()
    first, second = conn.receive_data(_req("x") + _req("x"), 0.0)
    assert isinstance(first, RequestReceived)
    assert isinstance(second, ProtocolViolation) and not second.close
    assert _decode(second.response)["code"] == "INVALID_REQUEST"
    conn.send_success("x", {})
    (third,) = conn.receive_data(_req("x"), 0.0)
    assert isinstance(third, RequestReceived)


def test_seventeenth_request_in_flight_is_resource_exhausted() -> None:
    conn = _ready()
    data = b"".join(_req(str(i)) for i in range(17))
    events = conn.receive_data(data, 0.0)
    assert all(isinstance(e, RequestReceived) for e in events[:16])
    last = events[16]
    assert isinstance(last, ProtocolViolation)
    reply = _decode(last.response)
    assert reply["code"] == "RESOURCE_EXHAUSTED" and reply["id"] == "16"
    conn.send_failure("0", _cancelled())
    (again,) = conn.receive_data(_req("17"), 0.0)
    assert isinstance(again, RequestReceived)


def _cancelled() -> Any:
    from credproxy.protocol.errors import ErrorCode, ProxyError

    return ProxyError(ErrorCode.CANCELLED, "cancelled")


def test_rate_limit_allows_sixty_then_answers_rate_limited_with_retry_after() -> None:
    conn = _ready()
    for i in range(60):
        (event,) = conn.receive_data(_req(str(i)), 0.0)
        assert isinstance(event, RequestReceived)
        conn.send_success(str(i), {})
    (limited,) = conn.receive_data(_req("61"), 0.0)
    assert isinstance(limited, ProtocolViolation)
    reply = _decode(limited.response)
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
    reply = _decode(event.response)
    assert reply["code"] == "INVALID_REQUEST" and reply["id"] == "1"
    assert "provider" in reply["error"]
    assert conn.state is ConnectionState.READY


def test_framing_error_closes_without_a_response() -> None:
    conn = _ready()
    (event,) = conn.receive_data(b"\x00\x00\x00\x02\xff\xfe", 0.0)
    assert isinstance(event, ProtocolViolation)
    assert event.close and event.response is None
    assert conn.state is ConnectionState.CLOSED


def test_cancel_is_unknown_in_version_1() -> None:
    conn = ServerConnection(_auth)
    hello = encode_frame({"v": 1, "op": "handshake", "payload": {"capabilityToken": TOKEN}})
    (accepted,) = conn.receive_data(hello, 0.0)
    assert isinstance(accepted, HandshakeAccepted) and accepted.version == 1
    cancel = encode_frame({"v": 1, "id": "c", "op": "cancel", "payload": {"targetId": "x"}})
    (event,) = conn.receive_data(cancel, 0.0)
    assert isinstance(event, ProtocolViolation)
    assert _decode(event.response)["code"] == "INVALID_REQUEST"


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
