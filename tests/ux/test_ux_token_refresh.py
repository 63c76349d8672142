"""``credproxy token get`` on an expired token the host can refresh (real oidc-provider)."""

from __future__ import annotations

from credproxy.client import ProxyClient
from tests.client.test_cli import run_cli
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.oidc import OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import start_oauth_daemon


def test_token_get_prints_a_refreshed_token_instead_of_an_expired_one(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """The stored access token has expired but its refresh token is good: the command
    used to print the dead one."""
    daemon = start_oauth_daemon(
        credproxy_daemon, {"paste": oidc_server.provider_table("pkce_redirect")}
    )
    with ProxyClient(str(daemon.socket_path), daemon.token) as client:
        started = client.oauth_initiate("paste")
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc_server.oob_uri)
        client.oauth_exchange(started["session_id"], code)
        client.save_token(
            "paste", {"access_token": "stale-access", "expiry": 1, "token_type": "Bearer"}
        )
    result = run_cli(
        ["token", "get", "paste"], socket_path=daemon.socket_path, fd_token=daemon.token
    )
    assert result.returncode == 0, result
    assert result.stderr == ""
    printed = result.stdout.strip()
    assert printed and printed != "stale-access"
    stored = daemon.stored_token("paste")
    assert stored is not None and stored["access_token"] == printed
