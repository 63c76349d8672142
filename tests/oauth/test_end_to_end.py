"""Logins through a real daemon process, driven by a real ``credproxy login`` client
process, completed at the real oidc-provider by the headless user agent.

Every byte the daemon sends to the client passes a recording relay, so the
tests can prove that no refresh token, PKCE verifier, authorization code or
device code crossed into the sandbox, and that the ``state`` appeared only
inside the URL the user must open.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.daemon import DaemonFactory, daemon_env
from tests.fixtures.oidc import OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.conftest import StartLogin
from tests.oauth.harness import OAuthDaemon, Relay, relay_for, start_oauth_daemon

URL_LINE = r"^\s+(http\S+)$"
DEVICE_LINE = r"^Open (\S+) and enter the code: (\S+)$"


def providers_for(server: OidcServer) -> dict[str, dict[str, Any]]:
    return {
        "paste": server.provider_table("pkce_redirect"),
        "device": server.provider_table("device_code"),
        "browser": server.provider_table("browser_redirect"),
    }


@pytest.fixture
def daemon(credproxy_daemon: DaemonFactory, oidc_server: OidcServer) -> OAuthDaemon:
    return start_oauth_daemon(credproxy_daemon, providers_for(oidc_server))


def assert_nothing_secret_crossed(
    server: OidcServer, relay: Relay, client_output: str, stored: dict[str, Any]
) -> None:
    received = relay.received()
    seen = server.seen_secrets()
    secrets = [stored["refresh_token"]]
    for kind in ("code", "code_verifier", "device_code", "refresh_token"):
        secrets += seen[kind]
    for secret in secrets:
        assert secret.encode() not in received
        assert secret not in client_output
    assert b"refresh_token" not in received
    assert b"code_verifier" not in received
    assert b'"device_code":' not in received  # the key; "device_code" is also a flow type


def assert_state_only_in_url(relay: Relay, auth_url: str) -> None:
    state = parse_qs(urlsplit(auth_url).query)["state"][0]
    received = relay.received()
    assert received.count(state.encode()) == 1
    frames = [m for m in re.finditer(rb'"auth_url":"[^"]*"', received) if state.encode() in m[0]]
    assert len(frames) == 1


def test_code_paste_login_stores_the_full_token_on_the_host_and_shows_the_client_none_of_it(
    daemon: OAuthDaemon, oidc_server: OidcServer, login_process: StartLogin
) -> None:
    with relay_for(daemon) as relay:
        client = login_process(relay.path, daemon.token, "paste", "--bucket", "work")
        auth_url = client.read_line_matching(URL_LINE)[1]
        with HeadlessUser() as user:
            client.paste(user.copy_code(auth_url, oidc_server.oob_uri))
        status, stdout, stderr = client.finish()
        assert status == 0, stderr
        result = json.loads(stdout)
        assert result["ok"] is True
        assert result["flow_type"] == "pkce_redirect"
        assert (result["provider"], result["bucket"]) == ("paste", "work")
        stored = daemon.stored_token("paste", "work")
        assert stored is not None
        assert stored["refresh_token"]
        assert stored["expiry"] == result["expiry"]
        assert_nothing_secret_crossed(oidc_server, relay, stdout + stderr, stored)
        assert_state_only_in_url(relay, auth_url)


def test_device_login_completes_on_the_host_while_the_client_polls(
    daemon: OAuthDaemon, oidc_server: OidcServer, login_process: StartLogin
) -> None:
    with relay_for(daemon) as relay:
        client = login_process(relay.path, daemon.token, "device")
        found = client.read_line_matching(DEVICE_LINE)
        with HeadlessUser("bob") as user:
            user.enter_device_code(found[1], found[2])
        status, stdout, stderr = client.finish()
        assert status == 0, stderr
        assert json.loads(stdout)["flow_type"] == "device_code"
        stored = daemon.stored_token("device")
        assert stored is not None and stored["refresh_token"]
        assert_nothing_secret_crossed(oidc_server, relay, stdout + stderr, stored)


def test_browser_login_is_completed_by_the_hosts_loopback_listener(
    daemon: OAuthDaemon, oidc_server: OidcServer, login_process: StartLogin
) -> None:
    with relay_for(daemon) as relay:
        client = login_process(relay.path, daemon.token, "browser")
        auth_url = client.read_line_matching(URL_LINE)[1]
        with HeadlessUser() as user:
            page = user.deliver_to_loopback(auth_url)
        assert page.status_code == 200 and "close this tab" in page.text
        status, stdout, stderr = client.finish()
        assert status == 0, stderr
        assert json.loads(stdout)["flow_type"] == "browser_redirect"
        stored = daemon.stored_token("browser")
        assert stored is not None and stored["refresh_token"]
        assert_nothing_secret_crossed(oidc_server, relay, stdout + stderr, stored)
        assert_state_only_in_url(relay, auth_url)


def test_a_denied_device_login_tells_the_user_and_stores_nothing(
    daemon: OAuthDaemon, login_process: StartLogin
) -> None:
    client = login_process(daemon.socket_path, daemon.token, "device")
    found = client.read_line_matching(DEVICE_LINE)
    with HeadlessUser(deny=True) as user:
        user.enter_device_code(found[1], found[2])
    status, stdout, stderr = client.finish()
    assert status == 1
    assert "The login was denied at the provider." in stderr
    assert json.loads(stdout)["ok"] is False
    assert daemon.stored_token("device") is None


def test_a_denied_browser_login_tells_the_user(
    daemon: OAuthDaemon, login_process: StartLogin
) -> None:
    client = login_process(daemon.socket_path, daemon.token, "browser")
    auth_url = client.read_line_matching(URL_LINE)[1]
    with HeadlessUser(deny=True) as user:
        user.deliver_to_loopback(auth_url)
    status, _, stderr = client.finish()
    assert status == 1
    assert "The login was denied at the provider." in stderr


def test_an_expired_device_code_ends_the_login_with_a_message(
    credproxy_daemon: DaemonFactory,
    oidc_server_short_device: OidcServer,
    login_process: StartLogin,
) -> None:
    """The server's device codes live 1 s and nobody approves this one."""
    daemon = start_oauth_daemon(
        credproxy_daemon,
        {"device": oidc_server_short_device.provider_table("device_code", poll_interval_s=0.25)},
    )
    client = login_process(daemon.socket_path, daemon.token, "device")
    status, stdout, stderr = client.finish()
    assert status == 1
    assert "device code expired" in stderr
    assert json.loads(stdout)["ok"] is False


def test_a_wrong_pasted_code_fails_without_echoing_it(
    daemon: OAuthDaemon, login_process: StartLogin
) -> None:
    client = login_process(daemon.socket_path, daemon.token, "paste")
    client.read_line_matching(URL_LINE)
    client.paste("wrong-code-4242")
    status, stdout, stderr = client.finish()
    assert status == 1
    assert "invalid_grant" in stderr
    assert "wrong-code-4242" not in stdout + stderr
    assert json.loads(stdout)["code"] == "EXCHANGE_FAILED"


def test_a_pasted_code_with_another_logins_state_is_refused(
    daemon: OAuthDaemon, oidc_server: OidcServer, login_process: StartLogin
) -> None:
    first = login_process(daemon.socket_path, daemon.token, "paste", "--bucket", "one")
    second = login_process(daemon.socket_path, daemon.token, "paste", "--bucket", "two")
    first_url = first.read_line_matching(URL_LINE)[1]
    second.read_line_matching(URL_LINE)
    with HeadlessUser() as user:
        code = user.copy_code(first_url, oidc_server.oob_uri)
    second.paste(code)
    status, _, stderr = second.finish()
    assert status == 1
    assert "state mismatch" in stderr
    assert daemon.stored_token("paste", "two") is None


def test_ctrl_c_during_a_device_login_cancels_the_session_and_polling_stops(
    daemon: OAuthDaemon, oidc_server: OidcServer, login_process: StartLogin
) -> None:
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    before = oidc_server.token_requests().get(grant, 0)
    client = login_process(daemon.socket_path, daemon.token, "device")
    client.read_line_matching(DEVICE_LINE)
    deadline = time.monotonic() + 10
    while oidc_server.token_requests().get(grant, 0) <= before:  # the host polls
        assert time.monotonic() < deadline, "the host never polled"
        time.sleep(0.02)
    client.interrupt()
    status, _stdout, stderr = client.finish()
    assert status == 130
    assert "Login cancelled." in stderr
    after_cancel = oidc_server.token_requests().get(grant, 0)
    time.sleep(0.5)  # ten poll intervals: a live poller would have asked again
    assert oidc_server.token_requests().get(grant, 0) <= after_cancel + 1
    assert daemon.stored_token("device") is None


def run_in_sandbox(daemon: OAuthDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env(
            {
                "LLXPRT_CREDENTIAL_SOCKET": str(daemon.socket_path),
                "LLXPRT_CAPABILITY_TOKEN": daemon.token,
            }
        ),
    )


def test_logout_in_a_sandbox_removes_the_token_on_the_host_only_when_the_grant_allows(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    token = {
        "access_token": "a",
        "expiry": 4102444800,
        "token_type": "Bearer",
        "refresh_token": "r",
    }
    seeded = {("paste", "default"): token}
    providers = providers_for(oidc_server)
    narrow = start_oauth_daemon(credproxy_daemon, providers, "--allow", "paste", tokens=seeded)
    refused = run_in_sandbox(narrow, "logout", "paste")
    assert refused.returncode == 1
    assert "Logout failed" in refused.stderr
    assert narrow.stored_token("paste") is not None

    full = start_oauth_daemon(credproxy_daemon, providers, tokens=seeded)
    host_only = run_in_sandbox(full, "logout", "paste", "--no-revoke")
    assert host_only.returncode == 2
    assert "apply on the host only" in host_only.stderr
    assert full.stored_token("paste") is not None
    done = run_in_sandbox(full, "logout", "paste")
    assert done.returncode == 0, done.stderr
    assert "Logged out of paste" in done.stdout
    assert full.stored_token("paste") is None
