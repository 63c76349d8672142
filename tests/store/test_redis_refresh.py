"""Refresh once for the whole fleet: daemons on different hosts (HOMEs) sharing one Redis
store, against the tests' real OAuth server with rotating refresh tokens (reusing
a rotated one kills the grant), counting refresh grants at the server.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from credproxy.client import ProxyClient
from credproxy.store.redis import RedisStore
from tests.fixtures.daemon import DaemonFactory, DaemonHandle
from tests.fixtures.oidc import OidcServer
from tests.fixtures.redis import RedisServer
from tests.oauth.browser import HeadlessUser
from tests.store.redis_fleet import Fleet

PROVIDER = "acme"
REFRESH_GRANT = "refresh_token"


def _fleet(
    factory: DaemonFactory,
    server: RedisServer,
    prefix: str,
    shared: Path,
    oidc: OidcServer,
    **store_extra: Any,
) -> Fleet:
    providers = {PROVIDER: oidc.provider_table("pkce_redirect")}
    return Fleet(factory, server, prefix, shared, providers=providers, **store_extra)


def _log_in(daemon: DaemonHandle, oidc: OidcServer) -> dict[str, Any]:
    with ProxyClient(str(daemon.socket_path), daemon.capability_token) as client:
        started = client.oauth_initiate(PROVIDER)
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc.oob_uri)
        return client.oauth_exchange(started["session_id"], code)


def _stored(fleet: Fleet) -> dict[str, Any]:
    token = fleet.run(lambda store: store.get_token(PROVIDER, "default"))
    assert token is not None
    return dict(token)


def _expire(fleet: Fleet) -> None:
    """Time passing: the stored access token expires, its refresh token stays."""

    async def expire(store: RedisStore) -> None:
        token = await store.get_token(PROVIDER, "default")
        assert token is not None
        token["expiry"] = 1
        await store.save_token(PROVIDER, "default", token)

    fleet.run(expire)


def _grants(oidc: OidcServer) -> int:
    return oidc.token_requests().get(REFRESH_GRANT, 0)


def test_ten_daemons_and_a_hundred_clients_make_one_refresh_grant(
    credproxy_daemon: DaemonFactory,
    redis_server: RedisServer,
    redis_prefix: str,
    tmp_path: Path,
    oidc_server: OidcServer,
) -> None:
    fleet = _fleet(credproxy_daemon, redis_server, redis_prefix, tmp_path, oidc_server)
    daemons = [fleet.start("--allow", PROVIDER) for _ in range(10)]
    _log_in(daemons[0], oidc_server)
    before = _stored(fleet)
    _expire(fleet)
    grants_before = _grants(oidc_server)

    answers: list[str] = []
    failures: list[str] = []
    barrier = threading.Barrier(100)

    def ask(daemon: DaemonHandle) -> None:
        with ProxyClient(str(daemon.socket_path), daemon.capability_token, timeout=30) as client:
            barrier.wait(60)
            try:
                answers.append(client.refresh_token(PROVIDER)["access_token"])
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=ask, args=(d,)) for d in daemons for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert failures == []
    assert len(answers) == 100
    assert _grants(oidc_server) == grants_before + 1
    assert len(set(answers)) == 1
    after = _stored(fleet)
    assert after["access_token"] == answers[0]
    assert after["refresh_token"] != before["refresh_token"]
    for daemon in daemons:  # the stored rotated token works: the grant is alive
        with ProxyClient(str(daemon.socket_path), daemon.capability_token) as client:
            assert client.get_token(PROVIDER)["access_token"] == answers[0]


def test_a_lease_holder_killed_mid_refresh_lets_another_daemon_refresh_after_the_lease(
    credproxy_daemon: DaemonFactory,
    redis_server: RedisServer,
    redis_prefix: str,
    tmp_path: Path,
    oidc_server: OidcServer,
) -> None:
    """Daemon A takes the lease and sends its refresh request; before the provider sees
    it, A is SIGKILLed (the request is then dropped unprocessed, so the refresh token
    is not consumed). B's refresh waits for A's lease to run out, refreshes once, and
    stores the rotated refresh token; nothing overwrites it afterwards."""
    fleet = _fleet(
        credproxy_daemon, redis_server, redis_prefix, tmp_path, oidc_server, lease_ttl_s=1.5
    )
    holder = fleet.start("--allow", PROVIDER)
    other = fleet.start("--allow", PROVIDER)
    _log_in(holder, oidc_server)
    before = _stored(fleet)
    _expire(fleet)
    grants_before = _grants(oidc_server)

    oidc_server.hold_requests()
    outcome: list[BaseException | dict[str, Any]] = []

    def doomed() -> None:
        try:
            with ProxyClient(str(holder.socket_path), holder.capability_token) as client:
                outcome.append(client.refresh_token(PROVIDER))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=doomed)
    try:
        thread.start()
        deadline = time.monotonic() + 20
        while oidc_server.held_requests() < 1:
            assert time.monotonic() < deadline, "the refresh never reached the provider"
            time.sleep(0.01)
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait(10)
    finally:
        oidc_server.release_requests()
        thread.join(30)
    assert outcome and not isinstance(outcome[0], dict)  # A died without an answer
    assert _grants(oidc_server) == grants_before  # its request never reached the provider

    with ProxyClient(str(other.socket_path), other.capability_token, timeout=30) as client:
        refreshed = client.refresh_token(PROVIDER)
    assert _grants(oidc_server) == grants_before + 1
    after = _stored(fleet)
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] == refreshed["access_token"]
    time.sleep(2 * 1.5)  # past any lease the dead daemon held
    assert _stored(fleet)["refresh_token"] == after["refresh_token"]
    _expire(fleet)
    third = fleet.start("--allow", PROVIDER)  # no cooldown memory of the last refresh
    with ProxyClient(str(third.socket_path), third.capability_token, timeout=30) as client:
        again = client.refresh_token(PROVIDER)  # the stored rotated token is the live one
    assert again["access_token"] != refreshed["access_token"]
