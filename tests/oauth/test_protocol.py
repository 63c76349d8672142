"""The login operations on the wire, against a real daemon process and oidc-provider."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from credproxy.client import ProxyClient
from tests.fixtures.daemon import DaemonFactory, RawClient
from tests.fixtures.oidc import CLIENT_ID, OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import OAuthDaemon, relay_for, start_oauth_daemon


def providers_for(server: OidcServer) -> dict[str, dict[str, Any]]:
    return {
        "paste": server.provider_table("pkce_redirect"),
        "device": server.provider_table("device_code"),
        "evil": {
            "client_id": CLIENT_ID,
            "flow": "pkce_redirect",
            "scopes": ["openid", "offline_access"],
            "authorization_endpoint": server.url("/auth"),
            "token_endpoint": server.url("/evil/token"),
            "redirect_uri": server.oob_uri,
        },
    }


@pytest.fixture
def daemon(credproxy_daemon: DaemonFactory, oidc_server: OidcServer) -> OAuthDaemon:
    return start_oauth_daemon(
        credproxy_daemon,
        providers_for(oidc_server),
        oauth={"max_sessions_per_identity": 64},
    )


def client_of(daemon: OAuthDaemon) -> RawClient:
    return daemon.handle.client()


def fail_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["code"])


def test_initiate_for_an_unconfigured_provider_is_provider_not_found(daemon: OAuthDaemon) -> None:
    with client_of(daemon) as raw:
        reply = raw.request("oauth_initiate", {"provider": "nowhere"})
        refresh = raw.request("refresh_token", {"provider": "nowhere"})
    assert fail_code(reply) == "PROVIDER_NOT_FOUND"
    assert "add a [providers.nowhere] table" in reply["error"]  # says what to do
    assert fail_code(refresh) == "PROVIDER_NOT_FOUND"
    assert refresh["error"] == reply["error"]


def test_initiate_outside_the_grant_is_unauthorized_whether_or_not_configured(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    daemon = start_oauth_daemon(
        credproxy_daemon, providers_for(oidc_server), "--allow", "paste:work"
    )
    with client_of(daemon) as raw:
        configured = raw.request("oauth_initiate", {"provider": "device"})
        unconfigured = raw.request("oauth_initiate", {"provider": "nowhere"})
        other_bucket = raw.request("oauth_initiate", {"provider": "paste", "bucket": "home"})
        allowed = raw.request("oauth_initiate", {"provider": "paste", "bucket": "work"})
    assert fail_code(configured) == "UNAUTHORIZED"
    assert fail_code(unconfigured) == "UNAUTHORIZED"
    assert configured["error"] == unconfigured["error"]
    assert fail_code(other_bucket) == "UNAUTHORIZED"
    assert allowed["ok"] is True
    assert allowed["data"]["flow_type"] == "pkce_redirect"


def test_initiate_answers_a_fresh_128_bit_session_id_and_only_what_the_user_must_see(
    daemon: OAuthDaemon,
) -> None:
    with client_of(daemon) as raw:
        paste = raw.request("oauth_initiate", {"provider": "paste"})["data"]
        device = raw.request("oauth_initiate", {"provider": "device"})["data"]
    assert set(paste) == {"session_id", "flow_type", "auth_url"}
    assert set(device) <= {
        "session_id",
        "flow_type",
        "verification_url",
        "verification_url_complete",
        "user_code",
        "pollIntervalMs",
    }
    for data in (paste, device):
        assert len(data["session_id"]) == 32
        int(data["session_id"], 16)
    assert paste["session_id"] != device["session_id"]
    assert device["pollIntervalMs"] == 50


def test_each_op_is_refused_for_the_other_flow_type_naming_it(daemon: OAuthDaemon) -> None:
    with client_of(daemon) as raw:
        paste = raw.request("oauth_initiate", {"provider": "paste"})["data"]["session_id"]
        device = raw.request("oauth_initiate", {"provider": "device"})["data"]["session_id"]
        poll = raw.request("oauth_poll", {"session_id": paste})
        exchange = raw.request("oauth_exchange", {"session_id": device, "code": "x"})
        still = raw.request("oauth_poll", {"session_id": device})
    assert fail_code(poll) == "INVALID_REQUEST"
    assert "pkce_redirect" in poll["error"]
    assert fail_code(exchange) == "INVALID_REQUEST"
    assert "device_code" in exchange["error"]
    assert still["data"]["status"] == "pending"  # the refused op did not consume it


def test_a_failed_exchange_consumes_the_session_and_replays_are_already_used(
    daemon: OAuthDaemon, oidc_server: OidcServer
) -> None:
    with client_of(daemon) as raw:
        started = raw.request("oauth_initiate", {"provider": "paste"})["data"]
        sid = started["session_id"]
        wrong = raw.request("oauth_exchange", {"session_id": sid, "code": "nope"})
        with HeadlessUser() as user:
            good_code = user.copy_code(started["auth_url"], oidc_server.oob_uri)
        replay = raw.request("oauth_exchange", {"session_id": sid, "code": good_code})
    assert fail_code(wrong) == "EXCHANGE_FAILED"
    assert fail_code(replay) == "SESSION_ALREADY_USED"
    assert daemon.stored_token("paste") is None


def test_a_successful_exchange_cannot_be_replayed(
    daemon: OAuthDaemon, oidc_server: OidcServer
) -> None:
    with client_of(daemon) as raw:
        started = raw.request("oauth_initiate", {"provider": "paste"})["data"]
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc_server.oob_uri)
        first = raw.request("oauth_exchange", {"session_id": started["session_id"], "code": code})
        again = raw.request("oauth_exchange", {"session_id": started["session_id"], "code": code})
    assert first["ok"] is True
    assert "refresh_token" not in first["data"]
    assert first["data"]["access_token"]
    assert fail_code(again) == "SESSION_ALREADY_USED"


def test_poll_reports_completion_once_and_then_the_session_is_gone(
    daemon: OAuthDaemon,
) -> None:
    with client_of(daemon) as raw:
        started = raw.request("oauth_initiate", {"provider": "device"})["data"]
        sid = started["session_id"]
        with HeadlessUser() as user:
            user.enter_device_code(started["verification_url"], started["user_code"])
        while True:
            reply = raw.request("oauth_poll", {"session_id": sid})
            if reply["data"]["status"] != "pending":
                break
            assert reply["data"]["pollIntervalMs"] == 50
            time.sleep(0.05)  # honour pollIntervalMs, as a client must
        after = raw.request("oauth_poll", {"session_id": sid})
    assert reply["data"]["status"] == "complete"
    assert reply["data"]["access_token"]
    assert "refresh_token" not in reply["data"]
    assert fail_code(after) == "SESSION_NOT_FOUND"


def test_oauth_cancel_is_idempotent_and_ends_the_session(daemon: OAuthDaemon) -> None:
    with client_of(daemon) as raw:
        sid = raw.request("oauth_initiate", {"provider": "device"})["data"]["session_id"]
        first = raw.request("oauth_cancel", {"session_id": sid})
        second = raw.request("oauth_cancel", {"session_id": sid})
        unknown = raw.request("oauth_cancel", {"session_id": "0" * 32})
        poll = raw.request("oauth_poll", {"session_id": sid})
    assert first["ok"] is True and first["data"] == {}
    assert second["ok"] is True and unknown["ok"] is True
    assert fail_code(poll) == "SESSION_NOT_FOUND"


def test_a_provider_that_echoes_secrets_in_its_error_leaks_nothing_to_the_sandbox(
    daemon: OAuthDaemon, oidc_server: OidcServer
) -> None:
    """The /evil/token endpoint answers 400 with the request's form fields (code,
    verifier, client id) and headers copied into error_description and error_uri."""
    with relay_for(daemon) as relay, RawClient(relay.path) as raw:
        assert raw.handshake(daemon.token)["ok"] is True
        started = raw.request("oauth_initiate", {"provider": "evil"})["data"]
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc_server.oob_uri)
        reply = raw.request("oauth_exchange", {"session_id": started["session_id"], "code": code})
        received = relay.received()
    assert fail_code(reply) == "EXCHANGE_FAILED"
    assert reply["error"] == (
        "evil: the provider refused the code or grant (wrong, used or expired) (invalid_grant)"
    )
    seen = oidc_server.seen_secrets()
    assert seen["code_verifier"]  # the evil endpoint did receive verifiers
    for verifier in seen["code_verifier"]:
        assert verifier.encode() not in received
    bare_code = code.split("#")[0]
    assert bare_code.encode() not in received
    assert b"echo" not in received
    assert b"error_uri" not in received


def test_fifty_concurrent_logins_each_get_their_own_token(
    daemon: OAuthDaemon, oidc_server: OidcServer
) -> None:
    count = 50
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def login(index: int) -> None:
        try:
            with ProxyClient(str(daemon.socket_path), daemon.token) as client:
                barrier.wait(timeout=30)
                started = client.oauth_initiate("paste", f"b{index}")
                with HeadlessUser(f"user{index}") as user:
                    code = user.copy_code(started["auth_url"], oidc_server.oob_uri)
                results[index] = client.oauth_exchange(started["session_id"], code)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=login, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert len(results) == count
    assert len({r["access_token"] for r in results.values()}) == count
    refresh_tokens = set()
    for index, token in results.items():
        stored = daemon.stored_token("paste", f"b{index}")
        assert stored is not None
        assert stored["access_token"] == token["access_token"]
        refresh_tokens.add(stored["refresh_token"])
    assert len(refresh_tokens) == count
