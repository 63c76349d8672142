"""The sans-IO client core, driven with bytes only (no sockets)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credproxy.client import (
    InvalidRequestError,
    NotFoundError,
    ProtocolViolationError,
    ProxyClientError,
    RateLimitedError,
    UnauthorizedError,
)
from credproxy.client._core import (
    ClientCore,
    HandshakeComplete,
    HandshakeFailed,
    ResponseReceived,
    State,
    new_request_id,
    outgoing_token,
    string_list,
)
from credproxy.client._exceptions import SERVER_CODES
from credproxy.protocol.framing import FrameDecoder, encode_frame

TOKEN = "ab" * 32


def decode(frame: bytes) -> dict[str, Any]:
    [message] = FrameDecoder().feed(frame)
    return message


def ready_core(version: int = 2) -> ClientCore:
    core = ClientCore(TOKEN)
    core.initiate_handshake()
    events = core.receive_data(
        encode_frame({"v": version, "op": "handshake", "ok": True, "data": {"version": version}})
    )
    assert events == [HandshakeComplete(version)]
    return core


def answer(request_id: str, data: dict[str, Any], version: int = 2) -> bytes:
    message = {"v": version, "id": request_id, "ok": True, "data": data}
    return encode_frame(message, max_frame_bytes=4 * 1024 * 1024)


def refuse(request_id: str | None, code: str, message: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {"v": 2, "ok": False, "code": code, "error": message, **extra}
    if request_id is not None:
        body["id"] = request_id
    return encode_frame(body)


def test_handshake_offers_versions_one_to_two_and_the_capability_token() -> None:
    message = decode(ClientCore(TOKEN).initiate_handshake())
    assert message == {
        "v": 2,
        "op": "handshake",
        "payload": {"minVersion": 1, "maxVersion": 2, "capabilityToken": TOKEN},
    }


def test_handshake_without_a_token_sends_no_token_field() -> None:
    message = decode(ClientCore(None).initiate_handshake())
    assert "capabilityToken" not in message["payload"]


def test_core_repr_never_shows_the_capability_token() -> None:
    assert TOKEN not in repr(ready_core())


def test_requests_carry_the_negotiated_version_and_fresh_uuid4_ids() -> None:
    core = ready_core(version=1)
    first_id, first = core.send_request("list_providers")
    second_id, _ = core.send_request("list_providers")
    message = decode(first)
    assert message == {"v": 1, "id": first_id, "op": "list_providers", "payload": {}}
    assert uuid.UUID(first_id).version == 4
    assert first_id != second_id
    assert core.pending == {first_id, second_id}


def test_request_ids_are_uuid4_text_exactly_as_the_uuid_module_writes_it() -> None:
    ids = {new_request_id() for _ in range(500)}
    assert len(ids) == 500
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == request_id


def test_refused_handshake_becomes_a_typed_error_and_closes_the_core() -> None:
    core = ClientCore(TOKEN)
    core.initiate_handshake()
    [event] = core.receive_data(
        encode_frame(
            {"v": 2, "op": "handshake", "ok": False, "code": "UNAUTHORIZED", "error": "bad token"}
        )
    )
    assert isinstance(event, HandshakeFailed)
    assert isinstance(event.error, UnauthorizedError)
    assert event.error.code == "UNAUTHORIZED"
    assert core.state is State.CLOSED


@pytest.mark.parametrize("version", [0, 3, True, "2", None])
def test_handshake_accepting_a_version_we_did_not_offer_is_a_violation(version: object) -> None:
    core = ClientCore(TOKEN)
    core.initiate_handshake()
    with pytest.raises(ProtocolViolationError):
        core.receive_data(
            encode_frame({"v": 2, "op": "handshake", "ok": True, "data": {"version": version}})
        )
    assert core.state is State.CLOSED


def test_request_before_handshake_is_a_programming_error() -> None:
    core = ClientCore(TOKEN)
    with pytest.raises(RuntimeError):
        core.send_request("list_providers")
    core.initiate_handshake()
    with pytest.raises(RuntimeError):
        core.send_request("list_providers")


def test_responses_are_matched_by_id_not_by_order() -> None:
    core = ready_core()
    first_id, _ = core.send_request("get_api_key", {"name": "one"})
    second_id, _ = core.send_request("get_api_key", {"name": "two"})
    stream = answer(second_id, {"key": "second"}) + answer(first_id, {"key": "first"})
    events = core.receive_data(stream)
    assert events == [
        ResponseReceived(second_id, {"key": "second"}, None),
        ResponseReceived(first_id, {"key": "first"}, None),
    ]
    assert core.pending == frozenset()


def test_frames_split_into_single_bytes_still_decode() -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_api_keys")
    events: list[Any] = []
    for byte in answer(request_id, {"keys": ["a"]}):
        events.extend(core.receive_data(bytes([byte])))
    assert events == [ResponseReceived(request_id, {"keys": ["a"]}, None)]


@pytest.mark.parametrize(("code", "cls"), sorted(SERVER_CODES.items()))
def test_every_protocol_error_code_maps_to_its_exception_class(
    code: str, cls: type[ProxyClientError]
) -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_providers")
    [event] = core.receive_data(refuse(request_id, code, "it failed"))
    assert isinstance(event, ResponseReceived)
    with pytest.raises(cls) as caught:
        event.unwrap()
    assert type(caught.value) is cls
    assert caught.value.code == code
    assert caught.value.message == "it failed"


def test_rate_limited_carries_retry_after() -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_providers")
    [event] = core.receive_data(refuse(request_id, "RATE_LIMITED", "slow down", retryAfter=1.5))
    assert isinstance(event, ResponseReceived)
    with pytest.raises(RateLimitedError) as caught:
        event.unwrap()
    assert caught.value.retry_after == 1.5


@pytest.mark.parametrize("retry_after", [-1, "2", True, None])
def test_unusable_retry_after_is_dropped(retry_after: object) -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_providers")
    [event] = core.receive_data(refuse(request_id, "RATE_LIMITED", "x", retryAfter=retry_after))
    assert isinstance(event, ResponseReceived)
    assert event.error is not None and event.error.retry_after is None


def test_daemon_cannot_impersonate_a_client_side_error_class() -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_providers")
    [event] = core.receive_data(refuse(request_id, "CONNECTION_LOST", "fake"))
    assert isinstance(event, ResponseReceived)
    assert type(event.error) is ProxyClientError
    assert event.error.code == "CONNECTION_LOST"


def test_error_messages_lose_control_characters_and_are_clipped() -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_providers")
    hostile = "\x1b]0;owned\x07" + "A" * 5000
    [event] = core.receive_data(refuse(request_id, "NOT_FOUND\x1b[2J", hostile))
    assert isinstance(event, ResponseReceived) and event.error is not None
    assert "\x1b" not in event.error.message and "\x07" not in event.error.message
    assert len(event.error.message) <= 300
    assert "\x1b" not in event.error.code
    assert not isinstance(event.error, NotFoundError)


def test_bad_payload_is_refused_locally_naming_the_field_not_the_value() -> None:
    core = ready_core()
    with pytest.raises(InvalidRequestError) as caught:
        core.send_request("get_token", {"provider": "bad name/../secret-value", "bucket": "x"})
    assert "provider" in caught.value.message
    assert "secret-value" not in caught.value.message
    assert core.pending == frozenset()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "Out of range float"),
        (float("inf"), "Out of range float"),
        ({"sekrit-value"}, "set is not JSON serializable"),
        (b"sekrit-value", "bytes is not JSON serializable"),
        ("sekrit-value\ud800", "lone UTF-16 surrogate"),
    ],
)
def test_a_token_json_cannot_carry_is_refused_locally_without_its_value(
    value: object, reason: str
) -> None:
    """msgspec wrote NaN as null, changing the token; the client says so instead."""
    core = ready_core()
    token = {"access_token": "at", "expiry": 1.0, "token_type": "Bearer", "extra": value}
    with pytest.raises(InvalidRequestError) as caught:
        core.send_request("save_token", {"provider": "p", "bucket": "b", "token": token})
    assert reason in caught.value.message
    assert "sekrit" not in caught.value.message
    assert core.pending == frozenset()


def test_unknown_ops_are_sent_unchecked_so_the_daemon_decides() -> None:
    core = ready_core()
    request_id, frame = core.send_request("future_op", {"anything": 1})
    assert decode(frame)["op"] == "future_op"
    assert request_id in core.pending


def test_cancel_is_refused_locally_on_version_one() -> None:
    core = ready_core(version=1)
    with pytest.raises(InvalidRequestError):
        core.send_request("cancel", {"targetId": "x"})


def test_send_cancel_on_version_two_names_the_target_and_drops_both_answers() -> None:
    core = ready_core()
    target_id, _ = core.send_request("get_token", {"provider": "p"})
    frame = core.send_cancel(target_id)
    assert frame is not None
    message = decode(frame)
    assert message["op"] == "cancel"
    assert message["payload"] == {"targetId": target_id}
    assert core.pending == frozenset()
    late = answer(target_id, {"access_token": "t"}) + answer(message["id"], {"cancelled": True})
    assert core.receive_data(late) == []


def test_send_cancel_on_version_one_only_forgets_the_request() -> None:
    core = ready_core(version=1)
    target_id, _ = core.send_request("list_providers")
    assert core.send_cancel(target_id) is None
    assert core.receive_data(answer(target_id, {"providers": []}, version=1)) == []


def test_response_without_id_is_a_violation_that_names_the_code() -> None:
    core = ready_core()
    core.send_request("list_providers")
    with pytest.raises(ProtocolViolationError) as caught:
        core.receive_data(refuse(None, "INVALID_REQUEST", "missing field `id`"))
    assert "INVALID_REQUEST" in caught.value.message
    assert core.state is State.CLOSED


@pytest.mark.parametrize(
    "body",
    [
        {"ok": True},
        {"ok": True, "data": []},
        {"ok": "yes", "data": {}},
        {"data": {}},
    ],
)
def test_malformed_responses_are_violations(body: dict[str, Any]) -> None:
    core = ready_core()
    request_id, _ = core.send_request("list_providers")
    with pytest.raises(ProtocolViolationError):
        core.receive_data(encode_frame({"v": 2, "id": request_id, **body}))


@pytest.mark.parametrize(
    ("version", "length"), [(1, 65_537), (2, 4 * 1024 * 1024 + 1)], ids=["v1-64KiB", "v2-4MiB"]
)
def test_oversize_length_header_is_a_violation_before_any_body_arrives(
    version: int, length: int
) -> None:
    core = ready_core(version)
    with pytest.raises(ProtocolViolationError):
        core.receive_data(length.to_bytes(4, "big"))
    assert core.state is State.CLOSED


def test_a_version_2_answer_may_exceed_64_kib() -> None:
    core = ready_core(2)
    request_id, _ = core.send_request("list_providers")
    big = {"providers": ["p" * 60_000, "q" * 60_000]}
    (event,) = core.receive_data(answer(request_id, big))
    assert isinstance(event, ResponseReceived) and event.data == big


def test_non_object_frame_is_a_violation() -> None:
    core = ready_core()
    body = b"[1,2]"
    with pytest.raises(ProtocolViolationError):
        core.receive_data(len(body).to_bytes(4, "big") + body)


def test_frames_before_the_handshake_was_sent_are_a_violation() -> None:
    core = ClientCore(TOKEN)
    with pytest.raises(ProtocolViolationError):
        core.receive_data(answer("x", {}))


def test_closed_connection_reports_every_pending_id() -> None:
    core = ready_core()
    ids = {core.send_request("list_providers")[0] for _ in range(3)}
    assert core.connection_closed() == ids
    assert core.pending == frozenset()
    assert core.receive_data(answer(next(iter(ids)), {})) == []


def test_outgoing_token_never_carries_a_refresh_token() -> None:
    token = {"access_token": "a", "expiry": 1, "token_type": "Bearer", "refresh_token": "r"}
    assert outgoing_token(token) == {"access_token": "a", "expiry": 1, "token_type": "Bearer"}


def test_string_list_rejects_non_string_items() -> None:
    with pytest.raises(ProtocolViolationError):
        string_list({"keys": ["a", 1]}, "keys")
    assert string_list({"keys": ["a"]}, "keys") == ["a"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_objects = st.dictionaries(
    st.sampled_from(["v", "id", "op", "ok", "data", "code", "error", "retryAfter"])
    | st.text(max_size=6),
    json_values,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=17))
def test_arbitrary_bytes_never_raise_anything_but_a_violation(data: bytes, chunk: int) -> None:
    for core in (ClientCore(TOKEN), ready_core()):
        if core.state is State.NEW:
            core.initiate_handshake()
        try:
            for start in range(0, len(data), chunk):
                core.receive_data(data[start : start + chunk])
        except ProtocolViolationError:
            assert core.state is State.CLOSED


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(frame_objects, max_size=5), in_handshake=st.booleans())
def test_arbitrary_json_objects_become_events_or_a_violation(
    frames: list[dict[str, Any]], in_handshake: bool
) -> None:
    core = ClientCore(TOKEN)
    core.initiate_handshake()
    if not in_handshake:
        core = ready_core()
        core.send_request("list_providers")
    stream = b"".join(encode_frame(frame) for frame in frames)
    try:
        events = core.receive_data(stream)
    except ProtocolViolationError:
        return
    for event in events:
        if isinstance(event, ResponseReceived):
            assert (event.data is None) != (event.error is None)
            if event.error is not None:
                assert event.error.message.isprintable()
