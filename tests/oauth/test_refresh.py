"""``refresh_token`` over the wire: the host refreshes, the sandbox gets no refresh token."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from credproxy.client import ProxyClient, ReauthRequiredError
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.oidc import OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import relay_for, start_oauth_daemon

REFRESH_GRANT = "refresh_token"


def test_concurrent_refreshes_share_one_provider_call_and_rotate_the_stored_refresh_token(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    daemon = start_oauth_daemon(
        credproxy_daemon, {"paste": oidc_server.provider_table("pkce_redirect")}
    )
    with ProxyClient(str(daemon.socket_path), daemon.token) as client:
        started = client.oauth_initiate("paste")
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc_server.oob_uri)
        first = client.oauth_exchange(started["session_id"], code)
    before = daemon.stored_token("paste")
    assert before is not None
    calls_before = oidc_server.token_requests().get(REFRESH_GRANT, 0)

    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(8)
    with relay_for(daemon) as relay:

        def refresh() -> None:
            with ProxyClient(str(relay.path), daemon.token) as proxy:
                barrier.wait(timeout=10)
                results.append(proxy.refresh_token("paste"))

        threads = [threading.Thread(target=refresh) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        received = relay.received()

    assert len(results) == 8
    assert {r["access_token"] for r in results} == {results[0]["access_token"]}
    assert results[0]["access_token"] != first["access_token"]
    assert oidc_server.token_requests().get(REFRESH_GRANT, 0) == calls_before + 1
    after = daemon.stored_token("paste")
    assert after is not None
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] == results[0]["access_token"]
    assert b"refresh_token" not in received
    assert after["refresh_token"].encode() not in received


def test_a_refresh_refused_with_invalid_grant_requires_a_new_login(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    stale = {
        "access_token": "old",
        "expiry": 1,
        "token_type": "Bearer",
        "refresh_token": "revoked-or-rotated-refresh",
    }
    daemon = start_oauth_daemon(
        credproxy_daemon,
        {"paste": oidc_server.provider_table("pkce_redirect")},
        tokens={("paste", "default"): stale},
    )
    with (
        ProxyClient(str(daemon.socket_path), daemon.token) as client,
        pytest.raises(ReauthRequiredError) as caught,
    ):
        client.refresh_token("paste")
    assert "credproxy login paste" in caught.value.message
    assert "revoked-or-rotated-refresh" not in caught.value.message
