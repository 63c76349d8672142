"""Envelopes and payload schemas: every op, name syntax, id rules, and what errors reveal."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.protocol.errors import ProxyError
from credproxy.protocol.limits import MAX_ID_LENGTH
from credproxy.protocol.messages import (
    OPERATIONS,
    Cancel,
    Empty,
    Exchange,
    KeyName,
    ProviderBucket,
    ProviderOnly,
    RequestError,
    SaveToken,
    SessionRef,
    failure,
    parse_request,
    success,
)
from credproxy.protocol.ops import DEFAULT_BUCKET

SESSION = "0123456789abcdef" * 2
TOKEN = {"access_token": "at", "expiry": 1, "token_type": "Bearer"}

VALID: dict[str, tuple[dict[str, Any], type, dict[str, Any]]] = {
    "get_token": ({"provider": "gemini"}, ProviderBucket, {"bucket": DEFAULT_BUCKET}),
    "save_token": (
        {"provider": "gemini", "bucket": "work", "token": TOKEN},
        SaveToken,
        {"token": TOKEN},
    ),
    "remove_token": ({"provider": "gemini", "bucket": "work"}, ProviderBucket, {"bucket": "work"}),
    "list_providers": ({}, Empty, {}),
    "list_buckets": ({"provider": "gemini"}, ProviderOnly, {"provider": "gemini"}),
    "get_api_key": ({"name": "openai"}, KeyName, {"name": "openai"}),
    "list_api_keys": ({}, Empty, {}),
    "has_api_key": ({"name": "openai"}, KeyName, {"name": "openai"}),
    "get_bucket_stats": (
        {"provider": "anthropic"},
        ProviderBucket,
        {"provider": "anthropic", "bucket": "default"},
    ),
    "refresh_token": ({"provider": "qwen"}, ProviderBucket, {"provider": "qwen"}),
    "oauth_initiate": ({"provider": "qwen"}, ProviderBucket, {"bucket": DEFAULT_BUCKET}),
    "oauth_exchange": ({"session_id": SESSION, "code": "abc"}, Exchange, {"code": "abc"}),
    "oauth_poll": ({"session_id": SESSION}, SessionRef, {"session_id": SESSION}),
    "oauth_cancel": ({"session_id": SESSION}, SessionRef, {"session_id": SESSION}),
    "cancel": ({"targetId": "7"}, Cancel, {"targetId": "7"}),
}

REQUIRED: dict[str, list[str]] = {
    "get_token": ["provider"],
    "save_token": ["provider", "token"],
    "remove_token": ["provider"],
    "list_buckets": ["provider"],
    "get_api_key": ["name"],
    "has_api_key": ["name"],
    "get_bucket_stats": ["provider"],
    "refresh_token": ["provider"],
    "oauth_initiate": ["provider"],
    "oauth_exchange": ["session_id", "code"],
    "oauth_poll": ["session_id"],
    "oauth_cancel": ["session_id"],
    "cancel": ["targetId"],
}


def request(op: str, payload: Any = None, request_id: Any = "r1") -> dict[str, Any]:
    frame: dict[str, Any] = {"v": 2, "id": request_id, "op": op}
    if payload is not None:
        frame["payload"] = payload
    return frame


def rejection(frame: dict[str, Any], version: int = 2) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(frame, version)
    assert info.value.code == "INVALID_REQUEST"
    return info.value


def test_the_operation_table_is_the_protocols() -> None:
    assert set(OPERATIONS) == set(VALID)


@pytest.mark.parametrize("op", sorted(VALID))
def test_each_op_converts_its_valid_payload(op: str) -> None:
    payload, schema, expected = VALID[op]
    parsed = parse_request(request(op, payload), 2)
    assert (parsed.id, parsed.op) == ("r1", op)
    assert isinstance(parsed.payload, schema)
    for field, value in expected.items():
        assert getattr(parsed.payload, field) == value


@pytest.mark.parametrize(("op", "field"), [(op, f) for op, fs in REQUIRED.items() for f in fs])
def test_missing_required_field_is_named(op: str, field: str) -> None:
    payload = dict(VALID[op][0])
    del payload[field]
    error = rejection(request(op, payload))
    assert f"`{field}`" in error.message
    assert error.request_id == "r1"


@pytest.mark.parametrize("op", ["list_providers", "list_api_keys"])
def test_ops_without_fields_accept_a_missing_payload(op: str) -> None:
    assert isinstance(parse_request(request(op), 1).payload, Empty)


def test_unknown_payload_fields_are_ignored_for_forward_compatibility() -> None:
    parsed = parse_request(request("get_token", {"provider": "p", "future": 1}), 1)
    assert parsed.payload == ProviderBucket(provider="p")


@pytest.mark.parametrize(
    ("op", "payload", "field"),
    [
        ("get_token", {"provider": 1}, "provider"),
        ("get_token", {"provider": "p", "bucket": None}, "bucket"),
        ("save_token", {"provider": "p", "token": "at"}, "token"),
        ("save_token", {"provider": "p", "token": ["at"]}, "token"),
        ("oauth_exchange", {"session_id": SESSION, "code": ""}, "code"),
        ("oauth_exchange", {"session_id": SESSION, "code": "c" * 4097}, "code"),
        ("cancel", {"targetId": ""}, "targetId"),
        ("cancel", {"targetId": "t" * (MAX_ID_LENGTH + 1)}, "targetId"),
        ("cancel", {"targetId": 7}, "targetId"),
    ],
)
def test_wrong_field_type_or_size_is_named(op: str, payload: dict[str, Any], field: str) -> None:
    assert f"payload.{field}" in rejection(request(op, payload)).message


def test_code_of_the_maximum_length_is_accepted() -> None:
    parsed = parse_request(
        request("oauth_exchange", {"session_id": SESSION, "code": "c" * 4096}), 1
    )
    assert isinstance(parsed.payload, Exchange)


@pytest.mark.parametrize("payload", [[], "x", 1, None])
def test_payload_that_is_not_an_object_is_rejected(payload: Any) -> None:
    frame = {"v": 1, "id": "r1", "op": "get_token", "payload": payload}
    assert "payload" in rejection(frame).message


# --- name syntax -------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "gemini", "A.b_c-d@e", "0" * 64, "user@example.com"])
@pytest.mark.parametrize("field", ["provider", "bucket"])
def test_valid_names_are_accepted(name: str, field: str) -> None:
    payload = {"provider": "p", field: name}
    assert getattr(parse_request(request("get_token", payload), 1).payload, field) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "default\n",
        "\ndefault",
        "a b",
        "a:b",
        "a/b",
        "../etc",
        "é",
        "a\x00",
        "a\u200b",
    ],
)
@pytest.mark.parametrize(("op", "field"), [("get_token", "bucket"), ("get_api_key", "name")])
def test_invalid_names_are_rejected_naming_the_field(name: str, op: str, field: str) -> None:
    payload = {"provider": "p", field: name} if op == "get_token" else {field: name}
    error = rejection(request(op, payload))
    assert f"payload.{field}" in error.message


@given(name=st.text(min_size=4, max_size=80).map(lambda s: "zq" + s))
def test_name_errors_never_echo_the_value(name: str) -> None:
    try:
        parse_request(request("get_api_key", {"name": name}), 1)
    except RequestError as error:
        assert name not in error.message
        assert "regex" not in error.message


@pytest.mark.parametrize(
    "session_id",
    [SESSION.upper(), SESSION[:-1], SESSION + "0", SESSION + "\n", "g" * 32, ""],
)
def test_session_id_must_be_32_lowercase_hex(session_id: str) -> None:
    assert (
        "payload.session_id" in rejection(request("oauth_poll", {"session_id": session_id})).message
    )


# --- envelope: id and op ------------------------------------------------------


def test_missing_id_is_rejected_without_a_request_id() -> None:
    frame = {"v": 1, "op": "list_providers"}
    error = rejection(frame)
    assert "`id`" in error.message
    assert error.request_id is None


@pytest.mark.parametrize("bad_id", [1, None, [], {}, "", "x" * (MAX_ID_LENGTH + 1), True])
def test_id_must_be_a_string_of_1_to_128_characters(bad_id: Any) -> None:
    error = rejection(request("list_providers", request_id=bad_id))
    assert "`id`" in error.message
    assert error.request_id is None


def test_id_of_the_maximum_length_is_accepted() -> None:
    request_id = "x" * MAX_ID_LENGTH
    assert parse_request(request("list_providers", request_id=request_id), 1).id == request_id


@pytest.mark.parametrize("op", [None, 1, ["get_token"]])
def test_missing_or_non_string_op_is_rejected_keeping_the_id(op: Any) -> None:
    frame: dict[str, Any] = {"v": 1, "id": "r1"}
    if op is not None:
        frame["op"] = op
    error = rejection(frame)
    assert "`op`" in error.message
    assert error.request_id == "r1"


def test_unknown_op_is_rejected_keeping_the_id() -> None:
    error = rejection(request("steal_token"))
    assert "steal_token" in error.message
    assert error.request_id == "r1"


def test_handshake_is_not_an_operation_after_the_handshake() -> None:
    rejection(request("handshake", {"minVersion": 1}))


def test_echoed_unknown_op_is_clipped_and_printable() -> None:
    error = rejection(request("x" * 40 + "\x1b[2J"))
    assert "\x1b" not in error.message
    assert "x" * 33 not in error.message


def test_cancel_exists_only_from_version_2() -> None:
    assert "unknown op" in rejection(request("cancel", {"targetId": "1"}), version=1).message
    assert isinstance(parse_request(request("cancel", {"targetId": "1"}), 2).payload, Cancel)


# --- response envelopes -------------------------------------------------------


def test_success_envelope_carries_the_id() -> None:
    assert success("r1", 2, "get_token", {"a": 1}) == {
        "v": 2,
        "id": "r1",
        "ok": True,
        "data": {"a": 1},
    }


def test_handshake_envelopes_carry_the_op_instead_of_an_id() -> None:
    assert success(None, 1, "handshake", {"version": 1}) == {
        "v": 1,
        "op": "handshake",
        "ok": True,
        "data": {"version": 1},
    }
    assert failure(None, 1, "handshake", ProxyError("UNAUTHORIZED", "no")) == {
        "v": 1,
        "op": "handshake",
        "ok": False,
        "code": "UNAUTHORIZED",
        "error": "no",
    }


def test_failure_envelope_adds_retry_after_only_when_set() -> None:
    limited = failure("r1", 1, None, ProxyError("RATE_LIMITED", "slow down", retry_after=0.5))
    assert limited["retryAfter"] == 0.5
    assert "retryAfter" not in failure("r1", 1, None, ProxyError("NOT_FOUND", "no"))
