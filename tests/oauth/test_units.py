"""Pure pieces of the OAuth package: PKCE, state, error reduction, config, token model."""

from __future__ import annotations

import io
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.client import (
    ExchangeFailedError,
    ProxyClientError,
    SessionAlreadyUsedError,
    SessionExpiredError,
    SessionNotFoundError,
)
from credproxy.client.login import (
    EXPIRED_MESSAGE,
    GONE_MESSAGE,
    USED_MESSAGE,
    Prompter,
    describe_start,
    explain,
)
from credproxy.oauth.errors import KNOWN_ERRORS, UNKNOWN_ERROR, OAuthFlowError, reduce_error_code
from credproxy.oauth.flows import (
    next_poll_interval,
    seconds_from_provider,
    split_pasted_code,
    token_from_response,
)
from credproxy.oauth.pkce import PkcePair, challenge_s256, new_state, new_verifier
from credproxy.protocol.errors import ErrorCode
from credproxy.settings import ConfigError
from tests.fixtures.settings import provider_config, providers_of, settings_of

UNRESERVED = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


def test_s256_challenge_matches_the_rfc_7636_appendix_b_example() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert challenge_s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_use_the_unreserved_alphabet_and_length_of_rfc_7636() -> None:
    verifiers = {new_verifier() for _ in range(200)}
    assert len(verifiers) == 200
    assert all(UNRESERVED.match(v) for v in verifiers)


def test_state_values_are_unguessable_and_distinct() -> None:
    states = {new_state() for _ in range(200)}
    assert len(states) == 200
    assert all(len(s) >= 43 for s in states)


def test_the_verifier_never_shows_in_a_pkce_pairs_repr() -> None:
    pair = PkcePair.generate()
    assert pair.verifier not in repr(pair)
    assert pair.challenge == challenge_s256(pair.verifier)


@pytest.mark.parametrize("error", sorted(KNOWN_ERRORS))
def test_registered_error_codes_survive_reduction(error: str) -> None:
    assert reduce_error_code({"error": error, "error_description": "x"}) == error


@pytest.mark.parametrize(
    "body",
    [
        {"error": "invalid_grant; code=SECRET"},
        {"error": ["invalid_grant"]},
        {"error": "Invalid_Grant"},
        {"error_description": "only a description"},
        "invalid_grant",
        None,
    ],
)
def test_anything_else_reduces_to_unknown_error(body: Any) -> None:
    assert reduce_error_code(body) == UNKNOWN_ERROR


@given(description=st.text(max_size=200), uri=st.text(max_size=200))
def test_a_provider_error_message_never_carries_provider_text(description: str, uri: str) -> None:
    body = {"error": "invalid_grant", "error_description": description, "error_uri": uri}
    error = OAuthFlowError.from_provider("prov", body)
    assert error.message == (
        "prov: the provider refused the code or grant (wrong, used or expired) (invalid_grant)"
    )
    assert error.code == ErrorCode.EXCHANGE_FAILED
    assert error.to_proxy_error().message == error.message


def test_a_refused_refresh_keeps_the_code_it_was_given() -> None:
    error = OAuthFlowError.from_provider("p", {"error": "x"}, code=ErrorCode.REAUTH_REQUIRED)
    assert error.code == "REAUTH_REQUIRED"
    assert error.oauth_error == UNKNOWN_ERROR


def base(**extra: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "client_id": "cli",
        "flow": "device_code",
        "token_endpoint": "https://id.example.com/token",
        "device_authorization_endpoint": "https://id.example.com/device",
    }
    table.update(extra)
    return table


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({**base(), "client_id": None}, "client_id"),
        (base(flow="implicit"), "flow"),
        (base(token_endpoint="http://id.example.com/token"), "token_endpoint"),
        (base(token_endpoint="ftp://id.example.com/token"), "token_endpoint"),
        (base(device_authorization_endpoint=None), "device_authorization_endpoint"),
        (
            base(flow="pkce_redirect", authorization_endpoint="https://a.example/auth"),
            "redirect_uri",
        ),
        (base(flow="browser_redirect"), "authorization_endpoint"),
        (base(redirect_port=70000), "redirect_port"),
        (base(redirect_port=True), "redirect_port"),
        (base(redirect_path="callback"), "redirect_path"),
        (base(scopes=["a b"]), "scopes"),
        (base(auth_params={"state": "fixed"}), "auth_params.state"),
        (base(auth_params={"prompt": 1}), "auth_params"),
        (base(poll_interval_s=0), "poll_interval_s"),
        (base(timeout_s=60), "timeout_s"),
        (base(token_auth_method="client_secret_post"), "client_secret"),
        (base(clientid="typo"), "clientid"),
        (base(device_pkce="yes"), "device_pkce"),
    ],
)
def test_config_errors_name_the_provider_and_the_field(table: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        provider_config("acme", table)
    message = str(caught.value)
    assert "\n" not in message
    assert f"[providers.acme] {field}" in message or (
        f"{field!r} in [providers.acme]" in message or f"[providers.acme.{field}]" in message
    )


def test_the_client_secret_never_shows_in_errors_or_repr() -> None:
    secret = "s3cr3t-client-secret"
    config = provider_config("acme", base(client_secret=secret))
    assert config.token_auth_method == "client_secret_basic"
    assert secret not in repr(config)
    assert config.client_auth() == ({}, ("cli", secret))
    post = provider_config(
        "acme", base(client_secret=secret, token_auth_method="client_secret_post")
    )
    assert post.client_auth() == ({"client_id": "cli", "client_secret": secret}, None)
    with pytest.raises(ConfigError) as caught:
        provider_config("acme", base(client_secret=secret, token_auth_method="magic"))
    assert secret not in str(caught.value)


def test_loopback_http_and_discovery_only_configs_are_accepted() -> None:
    providers = providers_of(
        {
            "providers": {
                "local": base(token_endpoint="http://127.0.0.1:9/token"),
                "oidc": {
                    "client_id": "c",
                    "issuer": "https://id.example.com",
                    "flow": "pkce_redirect",
                    "redirect_uri": "https://id.example.com/oob",
                    "scopes": "openid email",
                },
            }
        }
    )
    assert providers["oidc"].scopes == ("openid", "email")
    assert providers["oidc"].static_endpoints() is None
    assert providers["local"].poll_interval_s == 5.0


def test_a_bad_provider_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="table names use 1 to 64 of"):
        settings_of({"providers": {"bad name": base()}})


def test_session_limits_come_from_the_oauth_table() -> None:
    oauth = settings_of({"oauth": {"max_sessions_per_identity": 64}}).oauth
    assert (oauth.max_sessions_per_identity, oauth.max_sessions) == (64, 1024)
    with pytest.raises(ConfigError, match=r"\[oauth\] max_sessions: expected `int` >= 1"):
        settings_of({"oauth": {"max_sessions": 0}})


def test_token_responses_become_the_token_model_with_absolute_expiry() -> None:
    token = token_from_response(
        "p",
        {
            "access_token": "a",
            "token_type": "Bearer",
            "expires_in": 120,
            "refresh_token": "r",
            "scope": "openid",
            "id_token": "i",
        },
        now=1000.5,
    )
    assert token == {
        "access_token": "a",
        "token_type": "Bearer",
        "expiry": 1120,
        "refresh_token": "r",
        "scope": "openid",
        "id_token": "i",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "Bearer", "expires_in": 5},
        {"access_token": "", "token_type": "Bearer"},
        {"access_token": "a", "expires_in": -1},
        {"access_token": "a", "expires_in": "soon"},
        {"access_token": "a", "refresh_token": 5},
        {"access_token": "a", "expires_in": 10**400},
        {"access_token": "a", "expires_in": "9" * 400},
        {"access_token": "a", "expires_in": 1e300},
    ],
)
def test_unusable_token_responses_fail_naming_fields_only(body: dict[str, Any]) -> None:
    with pytest.raises(OAuthFlowError) as caught:
        token_from_response("p", body, now=0)
    assert caught.value.code == ErrorCode.EXCHANGE_FAILED
    assert caught.value.message.startswith("p: ")


def test_a_token_response_drops_fields_that_repeat_a_sent_secret_but_keeps_refresh_token() -> None:
    body = {
        "access_token": "a-token",
        "refresh_token": "same-refresh-token",
        "echo": {"refresh_token": "same-refresh-token"},
        "verifier_was_sent-verifier-123": 1,
        "note": "x",
    }
    token = token_from_response(
        "p", body, now=0, sent=["same-refresh-token", "sent-verifier-123", "x"]
    )
    assert token["refresh_token"] == "same-refresh-token"
    assert token["note"] == "x"  # "x" is too short to count as an echo
    assert "echo" not in token
    assert "verifier_was_sent-verifier-123" not in token


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), float("nan"), float("inf"), -1, 10**10 + 1, True, "5", None]
)
def test_provider_seconds_outside_the_usable_range_are_refused_not_raised(value: object) -> None:
    """A device response's interval or expires_in this large once raised OverflowError."""
    assert seconds_from_provider(value) is None


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("abc", ("abc", None)),
        ("  abc#st  \n", ("abc", "st")),
        ("abc#", ("abc", "")),
        ("https://x.example/oob?code=abc&state=st", ("abc", "st")),
        ("https://x.example/oob?code=a&code=b", ("", None)),
    ],
)
def test_pasted_codes_are_split_into_code_and_state(
    pasted: str, expected: tuple[str, str | None]
) -> None:
    assert split_pasted_code(pasted) == expected


def test_device_polling_follows_rfc_8628_section_3_5() -> None:
    assert next_poll_interval(5.0, "authorization_pending") == 5.0
    assert next_poll_interval(5.0, "slow_down") == 10.0
    assert next_poll_interval(10.0, "slow_down") == 15.0
    for final in ("access_denied", "expired_token", "invalid_grant", "unknown_error"):
        assert next_poll_interval(5.0, final) is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_spinner_on_a_terminal_and_sparse_lines_otherwise() -> None:
    now = [0.0]
    tty = Terminal()
    prompter = Prompter(out=tty, clock=lambda: now[0])
    prompter.show("device_code", {"verification_url": "https://v", "user_code": "AB-CD"})
    for second in range(3):
        now[0] = float(second)
        prompter.progress()
    assert "\r| waiting for the login to complete (0 s)" in tty.getvalue()
    assert "\r- waiting" in tty.getvalue()

    plain = io.StringIO()
    now[0] = 0.0
    prompter = Prompter(out=plain, clock=lambda: now[0])
    prompter.show("device_code", {"verification_url": "https://v", "user_code": "AB-CD"})
    for second in range(25):
        now[0] = float(second)
        prompter.progress()
    lines = [line for line in plain.getvalue().splitlines() if line.startswith("waiting")]
    assert lines == [
        "waiting for the login to complete (10 s)",
        "waiting for the login to complete (20 s)",
    ]
    assert "\r" not in plain.getvalue()


def test_what_the_user_sees_is_stripped_of_control_characters() -> None:
    lines = describe_start("pkce_redirect", {"auth_url": "https://a/\x1b[2Jx"})
    assert all("\x1b" not in line for line in lines)
    assert "https://a/?[2Jx" in lines[1]


def test_the_pasted_code_is_read_from_a_non_terminal_stdin() -> None:
    prompter = Prompter(out=io.StringIO(), source=io.StringIO("the-code#state\n"))
    assert prompter.read_code() == "the-code#state"


def test_the_documented_example_config_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "config.toml"
    config = tomllib.loads(path.read_text())
    providers = {
        name: provider
        for name, provider in providers_of(config).items()
        if name in config["providers"]
    }
    assert {p.flow for p in providers.values()} == {
        "pkce_redirect",
        "device_code",
        "browser_redirect",
    }
    assert settings_of(config).oauth.max_sessions == 1024


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (SessionExpiredError("SESSION_EXPIRED", "x"), EXPIRED_MESSAGE),
        (SessionAlreadyUsedError("SESSION_ALREADY_USED", "x"), USED_MESSAGE),
        (SessionNotFoundError("SESSION_NOT_FOUND", "x"), GONE_MESSAGE),
        (ExchangeFailedError("EXCHANGE_FAILED", "p: refused"), "Login failed: p: refused"),
    ],
)
def test_session_failures_tell_the_user_what_to_do(error: ProxyClientError, message: str) -> None:
    explained = explain(error)
    assert explained.message == message
    assert explained.code == error.code
