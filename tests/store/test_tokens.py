"""The token model: validation messages, the sanitize choke point, and the merge rule."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.tokens import MAX_TOKEN_FIELDS, merge, sanitize, validate_token

STORED: dict[str, Any] = {
    "access_token": "old-access",
    "refresh_token": "old-refresh",
    "expiry": 1_700_000_000,
    "token_type": "Bearer",
    "scope": "openid",
    "id_token": "old-id",
    "resource_url": "https://old.example/api",
    "account_id": "acct-old",
    "provider_extra": {"plan": "pro"},
}


def valid(**overrides: Any) -> dict[str, Any]:
    token: dict[str, Any] = {"access_token": "a", "expiry": 1_900_000_000, "token_type": "Bearer"}
    token.update(overrides)
    return token


# --- validate_token -----------------------------------------------------------------


def test_valid_token_is_returned_as_a_new_dict_with_extra_fields_kept() -> None:
    raw = valid(scope="x", account_id="acct", refresh_token="r", nested={"a": [1, 2]})
    result = validate_token(raw)
    assert result == raw
    assert result is not raw


@pytest.mark.parametrize("expiry", [0, 1, 1_900_000_000, 1_900_000_000.5])
def test_expiry_accepts_non_negative_unix_seconds(expiry: float) -> None:
    assert validate_token(valid(expiry=expiry))["expiry"] == expiry


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("access_token", None),
        ("access_token", ""),
        ("access_token", 12),
        ("expiry", None),
        ("expiry", "1900000000"),
        ("expiry", True),
        ("expiry", -1),
        ("expiry", math.inf),
        ("expiry", math.nan),
        ("expiry", 10**400),
        ("token_type", None),
        ("token_type", ""),
        ("token_type", ["Bearer"]),
        ("refresh_token", 5),
        ("refresh_token", {"nested": "x"}),
    ],
)
def test_invalid_field_is_rejected_naming_the_field_never_the_value(field: str, value: Any) -> None:
    secret_marker = "s3cr3t-value-never-echoed"
    raw = valid(**{field: value})
    raw["decoy"] = secret_marker
    with pytest.raises(ProxyError) as caught:
        validate_token(raw)
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert f"token.{field}" in str(caught.value)
    assert secret_marker not in str(caught.value)
    if isinstance(value, str) and value:
        assert value not in str(caught.value)


@pytest.mark.parametrize("missing", ["access_token", "expiry", "token_type"])
def test_missing_required_field_is_rejected(missing: str) -> None:
    raw = valid()
    del raw[missing]
    with pytest.raises(ProxyError, match=f"token.{missing}"):
        validate_token(raw)


def test_absent_or_null_refresh_token_is_allowed() -> None:
    assert "refresh_token" not in validate_token(valid())
    assert validate_token(valid(refresh_token=None))["refresh_token"] is None


@pytest.mark.parametrize("raw", [None, [], "token", 42])
def test_non_object_token_is_rejected(raw: Any) -> None:
    with pytest.raises(ProxyError, match="must be a JSON object") as caught:
        validate_token(raw)
    assert caught.value.code == ErrorCode.INVALID_REQUEST


def test_token_with_too_many_fields_is_rejected() -> None:
    raw = valid(**{f"f{index}": index for index in range(MAX_TOKEN_FIELDS)})
    assert len(raw) > MAX_TOKEN_FIELDS
    with pytest.raises(ProxyError, match=f"more than {MAX_TOKEN_FIELDS} fields"):
        validate_token(raw)
    at_limit = valid(**{f"f{index}": index for index in range(MAX_TOKEN_FIELDS - 3)})
    assert len(validate_token(at_limit)) == MAX_TOKEN_FIELDS


# --- sanitize -------------------------------------------------------------------------


def test_sanitize_drops_the_refresh_token_and_keeps_everything_else() -> None:
    result = sanitize(STORED)
    assert "refresh_token" not in result
    assert result == {key: value for key, value in STORED.items() if key != "refresh_token"}


def test_sanitize_does_not_modify_its_argument() -> None:
    token = dict(STORED)
    sanitize(token)
    assert token == STORED


def test_sanitize_drops_even_an_empty_or_null_refresh_token() -> None:
    assert "refresh_token" not in sanitize(valid(refresh_token=""))
    assert "refresh_token" not in sanitize(valid(refresh_token=None))


# --- merge -----------------------------------------------------------------------------


def test_access_token_and_expiry_always_come_from_the_new_token() -> None:
    merged = merge(STORED, {"access_token": "new-access", "expiry": 1_800_000_000})
    assert merged["access_token"] == "new-access"
    assert merged["expiry"] == 1_800_000_000


def test_expiry_can_move_backwards_the_new_token_is_authoritative() -> None:
    assert merge(STORED, {"access_token": "n", "expiry": 5})["expiry"] == 5


def test_new_non_empty_refresh_token_replaces_the_stored_one() -> None:
    merged = merge(STORED, valid(refresh_token="rotated"))
    assert merged["refresh_token"] == "rotated"


@pytest.mark.parametrize("incoming_refresh", ["", None, 7, "absent"])
def test_empty_or_missing_refresh_token_keeps_the_stored_one(incoming_refresh: Any) -> None:
    incoming = valid()
    if incoming_refresh != "absent":
        incoming["refresh_token"] = incoming_refresh
    assert merge(STORED, incoming)["refresh_token"] == "old-refresh"


def test_no_refresh_token_anywhere_leaves_none_in_the_result() -> None:
    stored = {key: value for key, value in STORED.items() if key != "refresh_token"}
    assert "refresh_token" not in merge(stored, valid(refresh_token=""))


@pytest.mark.parametrize(
    "field", ["scope", "token_type", "id_token", "resource_url", "account_id", "provider_extra"]
)
def test_other_fields_are_replaced_when_present(field: str) -> None:
    merged = merge(STORED, valid(**{field: "new-value"}))
    assert merged[field] == "new-value"


@pytest.mark.parametrize(
    "field", ["scope", "id_token", "resource_url", "account_id", "provider_extra"]
)
def test_other_fields_are_kept_when_absent(field: str) -> None:
    merged = merge(STORED, {"access_token": "n", "expiry": 2, "token_type": "Bearer"})
    assert merged[field] == STORED[field]


def test_token_type_is_kept_when_absent() -> None:
    assert merge(STORED, {"access_token": "n", "expiry": 2})["token_type"] == "Bearer"


def test_new_fields_unknown_to_the_stored_token_are_added() -> None:
    assert merge(STORED, valid(new_field=[1, 2]))["new_field"] == [1, 2]


def test_merge_into_nothing_is_the_new_token_without_an_empty_refresh_token() -> None:
    assert merge(None, valid(refresh_token="r")) == valid(refresh_token="r")
    assert merge(None, valid(refresh_token="")) == valid()
    assert merge({}, valid()) == valid()


def test_merge_modifies_neither_argument() -> None:
    stored = dict(STORED)
    incoming = valid(refresh_token="", scope="s2")
    merge(stored, incoming)
    assert stored == STORED
    assert incoming == valid(refresh_token="", scope="s2")


json_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=6)
    | st.lists(st.integers(), max_size=2)
)
token_dicts = st.dictionaries(
    st.sampled_from(
        ["access_token", "refresh_token", "expiry", "token_type", "scope", "id_token", "x", "y"]
    ),
    json_values,
    max_size=8,
)


@given(stored=token_dicts, incoming=token_dicts)
def test_merge_rule_holds_for_arbitrary_tokens(
    stored: dict[str, Any], incoming: dict[str, Any]
) -> None:
    merged = merge(stored, incoming)
    assert set(merged) <= set(stored) | set(incoming)
    for key in set(stored) | set(incoming):
        if key == "refresh_token":
            new = incoming.get(key)
            if isinstance(new, str) and new:
                assert merged[key] == new
            elif key in stored:
                assert merged[key] == stored[key]
            else:
                assert key not in merged
        elif key in incoming:
            assert merged[key] == incoming[key]
        else:
            assert merged[key] == stored[key]


@given(token=token_dicts)
def test_sanitize_never_returns_a_refresh_token_and_keeps_the_rest(token: dict[str, Any]) -> None:
    result = sanitize(token)
    assert "refresh_token" not in result
    assert result == {key: value for key, value in token.items() if key != "refresh_token"}


# --- the secret boundary at any depth -----------------------------------------------


def test_sanitize_removes_refresh_tokens_nested_at_any_depth_and_host_metadata() -> None:
    token = valid(
        refresh_token="top",
        credproxy_host={"last_refresh": {"outcome": "ok"}},
        extra={"refresh_token": "nested", "keep": [{"refresh_token": "deep", "x": 1}, "s"]},
    )
    assert sanitize(token) == valid(extra={"keep": [{"x": 1}, "s"]})
    assert token["extra"]["refresh_token"] == "nested"  # the stored copy is untouched


def test_sanitize_survives_a_nesting_deeper_than_the_recursion_limit() -> None:
    deep: Any = {"refresh_token": "bottom"}
    for _ in range(5_000):
        deep = {"d": [deep]}
    cleaned = sanitize(valid(extra=deep))
    node = cleaned["extra"]
    while "d" in node:
        node = node["d"][0]
    assert node == {}


def test_a_sandbox_token_loses_every_host_only_field_before_the_merge() -> None:
    from credproxy.tokens import from_sandbox

    incoming = from_sandbox(
        valid(
            refresh_token="planted",
            credproxy_host={"refreshed_at": 1},
            extra={"refresh_token": "planted"},
        )
    )
    assert incoming == valid(extra={})
    merged = merge(STORED, incoming)
    assert merged["refresh_token"] == "old-refresh"


def test_merge_keeps_the_stored_host_metadata_whatever_incoming_says() -> None:
    stored = {**STORED, "credproxy_host": {"refreshed_at": 5}}
    merged = merge(stored, valid(credproxy_host={"refreshed_at": 99}))
    assert merged["credproxy_host"] == {"refreshed_at": 5}
