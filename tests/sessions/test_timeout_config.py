"""LLXPRT_OAUTH_SESSION_TIMEOUT_SECONDS and constructor validation.

Accepted: a plain decimal positive integer of at most ten ASCII digits with no
leading zero. Everything else (signs, whitespace, underscores, fractions,
exponents, non-ASCII digits, the empty string) is rejected: a security
timeout is never guessed.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.sessions import TIMEOUT_ENV_VAR, OAuthSessionManager, parse_timeout_env

from .conftest import FakeClock, open_session


def test_env_var_overrides_the_timeout_argument() -> None:
    manager = OAuthSessionManager(30, environ={TIMEOUT_ENV_VAR: "900"})
    assert manager.timeout_s == 900


def test_timeout_argument_is_used_when_env_var_is_unset() -> None:
    assert OAuthSessionManager(30, environ={}).timeout_s == 30


def test_default_timeout_is_600_seconds() -> None:
    assert OAuthSessionManager(environ={}).timeout_s == 600


def test_env_var_is_read_from_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV_VAR, "42")
    assert OAuthSessionManager().timeout_s == 42
    monkeypatch.setenv(TIMEOUT_ENV_VAR, "nope")
    with pytest.raises(ValueError, match=TIMEOUT_ENV_VAR):
        OAuthSessionManager()


def test_timeout_from_the_environment_overrides_the_configured_one() -> None:
    clock = FakeClock()
    manager = OAuthSessionManager(600, clock=clock, environ={TIMEOUT_ENV_VAR: "5"})
    session_id = open_session(manager)
    clock.advance(6)
    assert manager.sweep_expired() == 1
    assert session_id not in manager


@pytest.mark.parametrize("raw", ["1", "600", "86400", "9999999999"])
def test_plain_positive_integers_are_accepted(raw: str) -> None:
    assert parse_timeout_env(raw) == int(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "0",
        "-5",
        "+600",
        "1.5",
        "600.0",
        "1e3",
        "abc",
        " 600",
        "600 ",
        "600\n",
        "6_00",
        "0600",
        "00",
        "\u0666\u0660\u0660",  # Arabic-Indic digits, which int() would accept
        "0x10",
        "inf",
        "10000000000",  # eleven digits: more than 300 years
    ],
)
def test_anything_but_a_plain_positive_integer_is_rejected_naming_variable_and_value(
    raw: str,
) -> None:
    with pytest.raises(ValueError) as info:
        OAuthSessionManager(environ={TIMEOUT_ENV_VAR: raw})
    message = str(info.value)
    assert TIMEOUT_ENV_VAR in message
    assert repr(raw) in message


def test_a_huge_bad_value_is_clipped_in_the_message() -> None:
    raw = "x" * 10_000
    with pytest.raises(ValueError) as info:
        parse_timeout_env(raw)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf])
def test_timeout_argument_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        OAuthSessionManager(timeout, environ={})


@pytest.mark.parametrize("field", ["max_sessions_per_identity", "max_sessions"])
@pytest.mark.parametrize("value", [0, -1, True])
def test_session_caps_must_be_positive_integers(field: str, value: int) -> None:
    caps = {"max_sessions_per_identity": 16, "max_sessions": 1024, field: value}
    with pytest.raises(ValueError, match=field):
        OAuthSessionManager(
            environ={},
            max_sessions_per_identity=caps["max_sessions_per_identity"],
            max_sessions=caps["max_sessions"],
        )


@given(raw=st.text(max_size=12) | st.integers(-5, 10**11).map(str))
def test_an_accepted_value_is_exactly_the_decimal_spelling_of_a_positive_integer(raw: str) -> None:
    """Nothing with a second spelling (sign, padding, other digits) is ever accepted."""
    try:
        seconds = parse_timeout_env(raw)
    except ValueError as error:
        assert TIMEOUT_ENV_VAR in str(error)
        return
    assert seconds > 0
    assert str(seconds) == raw
