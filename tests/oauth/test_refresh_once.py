"""Issue 7: a sandbox must never cost the user their login.

Real ``credproxy serve`` processes sharing one encrypted file store, the real
oidc-provider (rotating refresh tokens with reuse detection), refresh grants
counted at the server. Each test names the failure it pins.
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from credproxy.client import NotFoundError, ProxyClient, ReauthRequiredError
from tests.fixtures.daemon import DaemonFactory, daemon_env
from tests.fixtures.oidc import CLIENT_ID, OidcServer
from tests.oauth.harness import OAuthDaemon
from tests.oauth.refresh_helpers import (
    PROVIDER,
    expire_stored_token,
    log_in,
    oauth_daemon,
    on_host_store,
    refresh_grants,
    second_daemon,
)

WAIT_S = 20.0


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_two_daemons_and_twenty_clients_refresh_an_expired_token_with_one_grant(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Failure 1: each daemon refreshed on its own, the second with a refresh token the
    first had already rotated away, so the provider revoked the grant and 20 clients
    got REAUTH_REQUIRED."""
    first = oauth_daemon(credproxy_daemon, oidc_server)
    log_in(first, oidc_server)
    second = second_daemon(credproxy_daemon, first)
    expire_stored_token(first)
    before = first.stored_token(PROVIDER)
    assert before is not None
    grants = refresh_grants(oidc_server)
    connected = threading.Barrier(20)
    all_have_read = threading.Barrier(20)
    answers: list[dict[str, Any]] = []

    def client(socket_path: str, token: str) -> Callable[[], None]:
        def run() -> None:
            with ProxyClient(socket_path, token) as proxy:
                connected.wait(timeout=WAIT_S)
                seen = proxy.get_token(PROVIDER)
                all_have_read.wait(timeout=WAIT_S)
                # The daemon's renewal scheduler may already have renewed it
                # when it served the expired token to the first client.
                answers.append(
                    proxy.refresh_token(PROVIDER) if seen["expiry"] <= time.time() else seen
                )

        return run

    assert second.capability_token is not None
    targets = [client(str(first.socket_path), first.token) for _ in range(10)]
    targets += [client(str(second.socket_path), second.capability_token) for _ in range(10)]
    errors = _run_threads(targets)

    assert errors == []
    assert refresh_grants(oidc_server) == grants + 1
    assert len(answers) == 20
    assert {a["access_token"] for a in answers} == {answers[0]["access_token"]}
    after = first.stored_token(PROVIDER)
    assert after is not None
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] == answers[0]["access_token"]


def _host_token_get(config_path: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "credproxy", "token", "get", PROVIDER, "--config", config_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=daemon_env(),
    )


def test_host_token_get_racing_a_daemon_makes_one_grant_and_prints_the_same_token(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """``credproxy token get`` on the host refreshes through the store's refresh lock,
    so it and a daemon's clients share one provider call."""
    daemon = oauth_daemon(credproxy_daemon, oidc_server)
    log_in(daemon, oidc_server)
    expire_stored_token(daemon)
    grants = refresh_grants(oidc_server)
    hosts = [_host_token_get(str(daemon.config_path)) for _ in range(4)]
    answers: list[dict[str, Any]] = []

    def client() -> None:
        with ProxyClient(str(daemon.socket_path), daemon.token) as proxy:
            answers.append(proxy.refresh_token(PROVIDER))

    errors = _run_threads([client] * 10)
    printed = []
    for process in hosts:
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        printed.append(stdout.strip())

    assert errors == []
    assert refresh_grants(oidc_server) == grants + 1
    tokens = {a["access_token"] for a in answers} | set(printed)
    assert len(tokens) == 1
    stored = daemon.stored_token(PROVIDER)
    assert stored is not None and stored["access_token"] in tokens


def test_sandbox_saves_racing_a_refresh_never_store_a_consumed_refresh_token(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Failure 2: a sandbox allowed only ``--allow paste --allow-save`` refreshed on one
    connection and saved a new access token on another while the refresh ran; the
    save's merge, read before the refresh stored its result, wrote the consumed
    refresh token back, and the provider revoked the grant on its next use."""
    daemon = oauth_daemon(credproxy_daemon, oidc_server, "--allow", PROVIDER, "--allow-save")
    buckets = ["b1", "b2", "b3", "b4"]
    for bucket in buckets:
        log_in(daemon, oidc_server, bucket)

    def race(bucket: str) -> None:
        done = threading.Event()

        def refresh() -> None:
            try:
                with ProxyClient(str(daemon.socket_path), daemon.token) as proxy:
                    proxy.refresh_token(PROVIDER, bucket)
            finally:
                done.set()

        refresher = threading.Thread(target=refresh)
        with ProxyClient(str(daemon.socket_path), daemon.token) as saver:
            refresher.start()
            time.sleep(0.005)  # the reproduction: saves 5 ms into the refresh
            count = 0
            while not done.is_set() or count < 3:
                count += 1
                saver.save_token(
                    PROVIDER,
                    {
                        "access_token": f"sandbox-{count}",
                        "expiry": int(time.time()) + 3600,
                        "token_type": "Bearer",
                    },
                    bucket,
                )
        refresher.join(timeout=WAIT_S)

    errors = _run_threads([functools.partial(race, bucket) for bucket in buckets])
    assert errors == []

    # A second daemon (no in-process memory of these refreshes) proves every grant
    # is still alive: the stored refresh token is the one the provider issued last.
    other = second_daemon(credproxy_daemon, daemon)
    assert other.capability_token is not None
    with ProxyClient(str(other.socket_path), other.capability_token) as proxy:
        for bucket in buckets:
            expire_stored_token(daemon, bucket)
            refreshed = proxy.refresh_token(PROVIDER, bucket)
            assert not refreshed["access_token"].startswith("sandbox-")


def test_concurrent_saves_of_different_fields_never_lose_or_rewind_an_acknowledged_value(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Failure 3: two connections (or two daemons) saving different fields of one record
    lost acknowledged values, and readers saw fields go backwards."""
    first = oauth_daemon(credproxy_daemon, oidc_server)
    log_in(first, oidc_server)
    second = second_daemon(credproxy_daemon, first)
    assert second.capability_token is not None
    daemons = [
        (str(first.socket_path), first.token),
        (str(second.socket_path), second.capability_token),
    ]
    writers = 4
    saves = 40
    acknowledged = [0] * writers
    lock = threading.Lock()
    rewinds: list[str] = []
    lost: list[str] = []
    finished = threading.Event()

    def writer(index: int) -> Callable[[], None]:
        socket_path, token = daemons[index % 2]

        def run() -> None:
            with ProxyClient(socket_path, token) as proxy:
                for value in range(1, saves + 1):
                    proxy.save_token(
                        PROVIDER,
                        {
                            "access_token": "shared",
                            "expiry": int(time.time()) + 3600,
                            "token_type": "Bearer",
                            f"field_{index}": value,
                        },
                    )
                    with lock:
                        acknowledged[index] = value

        return run

    reads = [0]
    reader_errors: list[BaseException] = []

    def reader(socket_path: str, token: str) -> Callable[[], None]:
        def run() -> None:
            try:
                read_until_finished(socket_path, token)
            except BaseException as exc:
                reader_errors.append(exc)

        return run

    def read_until_finished(socket_path: str, token: str) -> None:
        last = [0] * writers
        with ProxyClient(socket_path, token) as proxy:
            while not finished.is_set():
                time.sleep(0.025)  # stays under the connection's 60 requests/s
                reads[0] += 1
                with lock:
                    floor = list(acknowledged)
                seen = proxy.get_token(PROVIDER)
                for index in range(writers):
                    value = seen.get(f"field_{index}", 0)
                    if value < last[index]:
                        rewinds.append(f"field_{index}: {last[index]} -> {value}")
                    if value < floor[index]:
                        lost.append(f"field_{index}: acknowledged {floor[index]}, read {value}")
                    last[index] = max(last[index], value)

    readers = [threading.Thread(target=reader(*d)) for d in daemons]
    for thread in readers:
        thread.start()
    errors = _run_threads([writer(i) for i in range(writers)])
    finished.set()
    for thread in readers:
        thread.join(timeout=WAIT_S)

    assert errors == []
    assert reader_errors == []
    assert reads[0] > 0
    assert rewinds == []
    assert lost == []
    stored = first.stored_token(PROVIDER)
    assert stored is not None
    assert [stored[f"field_{i}"] for i in range(writers)] == [saves] * writers
    assert stored["refresh_token"]


def test_a_refresh_token_nested_in_a_saved_token_is_stripped_and_the_bucket_stays_servable(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Failure 4: ``{"extra": {"refresh_token": "planted"}}`` was stored as sent, and from
    then on the encoder's leak guard turned every get_token, refresh_token and login
    answer for the bucket into INTERNAL_ERROR. Nested refresh tokens are stripped."""
    daemon = oauth_daemon(credproxy_daemon, oidc_server, "--allow", PROVIDER, "--allow-save")
    log_in(daemon, oidc_server)
    with ProxyClient(str(daemon.socket_path), daemon.token) as proxy:
        proxy.save_token(
            PROVIDER,
            {
                "access_token": "sandbox-access",
                "expiry": 1,
                "token_type": "Bearer",
                "extra": {"refresh_token": "planted", "keep": [{"refresh_token": "deep"}, 1]},
            },
        )
        served = proxy.get_token(PROVIDER)
        assert served["extra"] == {"keep": [{}, 1]}
        refreshed = proxy.refresh_token(PROVIDER)
        assert refreshed["access_token"] != "sandbox-access"
    stored = daemon.stored_token(PROVIDER)
    assert stored is not None
    assert "planted" not in json.dumps(stored)
    assert "deep" not in json.dumps(stored)
    assert stored["refresh_token"] not in ("planted", "deep")


def test_a_record_already_holding_a_nested_refresh_token_is_served_without_it(
    credproxy_daemon: DaemonFactory,
) -> None:
    """A store written by an older version may hold the planted field: still servable."""
    planted = {
        "access_token": "a",
        "expiry": 4_000_000_000,
        "token_type": "Bearer",
        "refresh_token": "host-refresh",
        "extra": {"refresh_token": "planted"},
    }
    daemon = credproxy_daemon("--allow", PROVIDER, tokens={(PROVIDER, "default"): planted})
    assert daemon.capability_token is not None
    with ProxyClient(str(daemon.socket_path), daemon.capability_token) as proxy:
        served = proxy.get_token(PROVIDER)
    assert served == {
        "access_token": "a",
        "expiry": 4_000_000_000,
        "token_type": "Bearer",
        "extra": {},
    }


def _revoke(oidc: OidcServer, refresh_token: str) -> None:
    form = urllib.parse.urlencode(
        {"token": refresh_token, "token_type_hint": "refresh_token", "client_id": CLIENT_ID}
    ).encode()
    with urllib.request.urlopen(oidc.url("/token/revocation"), data=form, timeout=10) as answer:
        assert answer.status == 200


def _host_status(daemon: OAuthDaemon) -> dict[str, Any]:
    """``credproxy status --json`` on the host: this provider's default bucket."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "credproxy",
            "status",
            "--json",
            "--config",
            str(daemon.config_path),
        ],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
        check=True,
    )
    entry: dict[str, Any] = json.loads(done.stdout)["providers"][PROVIDER]["default"]
    return entry


def test_a_revoked_grant_requires_a_login_after_which_get_token_works(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Also pins what ``credproxy status`` says about renewal and the last refresh."""
    daemon = oauth_daemon(credproxy_daemon, oidc_server)
    log_in(daemon, oidc_server)
    stored = daemon.stored_token(PROVIDER)
    assert stored is not None
    assert _host_status(daemon)["lastRefresh"] is None
    _revoke(oidc_server, stored["refresh_token"])
    with ProxyClient(str(daemon.socket_path), daemon.token) as proxy:
        with pytest.raises(ReauthRequiredError) as caught:
            proxy.refresh_token(PROVIDER)
        assert f"credproxy login {PROVIDER}" in caught.value.message
        failed = _host_status(daemon)["lastRefresh"]
        assert failed["outcome"] == "failed"
        assert failed["code"] == "REAUTH_REQUIRED"
        fresh = log_in(daemon, oidc_server)
        assert _host_status(daemon)["lastRefresh"] is None
        served = proxy.get_token(PROVIDER)
        assert served["access_token"] == fresh["access_token"]
        assert served["expiry"] > time.time()
    expire_stored_token(daemon)
    other = second_daemon(credproxy_daemon, daemon)
    assert other.capability_token is not None
    with ProxyClient(str(other.socket_path), other.capability_token) as proxy:
        renewed = proxy.refresh_token(PROVIDER)
    assert renewed["access_token"] != fresh["access_token"]
    status = _host_status(daemon)
    assert status["lastRefresh"]["outcome"] == "ok"
    assert renewed["expiry"] - 3600 * 0.25 <= status["renewsAt"] <= renewed["expiry"] - 300
    assert status["renewal"].startswith("renewed in ")


class HeldRefresh:
    """A client's ``refresh_token`` in a thread, with the provider holding its answer
    after issuing the token (the old refresh token is consumed from then on)."""

    def __init__(self, daemon: OAuthDaemon, oidc: OidcServer) -> None:
        self.daemon = daemon
        self.oidc = oidc
        self.outcome: list[object] = []
        self.on_answer: Callable[[], None] = lambda: None
        self.thread = threading.Thread(target=self._refresh)

    def _refresh(self) -> None:
        try:
            with ProxyClient(str(self.daemon.socket_path), self.daemon.token) as proxy:
                answer = proxy.refresh_token(PROVIDER)
                self.on_answer()
                self.outcome.append(answer)
        except Exception as exc:
            self.outcome.append(exc)

    def start(self) -> None:
        """Returns once the provider has issued the new token and holds the answer."""
        self.oidc.hold_refresh_answers()
        try:
            self.thread.start()
            _wait_until(lambda: self.oidc.held_answers() == 1, "the provider to issue")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self.oidc.release_refresh_answers()

    def join(self) -> None:
        self.thread.join(timeout=WAIT_S)
        assert not self.thread.is_alive()


def test_a_daemon_killed_as_it_answers_a_refresh_has_already_stored_the_rotated_token(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Save before answer. The provider issues the token (consuming the old refresh
    token) and holds its answer; once released, the daemon is SIGKILLed the instant
    its client has the reply, the first moment an outside observer can know the
    daemon had the provider's answer (a kill before that loses the answer itself,
    which no client can survive with a rotating provider). The store must already
    hold the rotated refresh token and the access token just served."""
    daemon = oauth_daemon(credproxy_daemon, oidc_server)
    log_in(daemon, oidc_server)
    expire_stored_token(daemon)
    before = daemon.stored_token(PROVIDER)
    assert before is not None
    refresh = HeldRefresh(daemon, oidc_server)
    refresh.on_answer = lambda: daemon.handle.send_signal(signal.SIGKILL)
    refresh.start()
    refresh.release()
    refresh.join()
    assert daemon.handle.process.wait(timeout=WAIT_S) == -signal.SIGKILL

    answered = refresh.outcome[0]
    assert isinstance(answered, dict), refresh.outcome
    after = daemon.stored_token(PROVIDER)
    assert after is not None
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] == answered["access_token"]
    replacement = second_daemon(credproxy_daemon, daemon)
    assert replacement.capability_token is not None
    expire_stored_token(daemon)
    with ProxyClient(str(replacement.socket_path), replacement.capability_token) as proxy:
        assert proxy.refresh_token(PROVIDER)["access_token"] != answered["access_token"]


def test_a_logout_during_a_slow_refresh_keeps_the_token_removed(
    credproxy_daemon: DaemonFactory, oidc_server: OidcServer
) -> None:
    """Logout wins: the refresh answer that arrives after ``credproxy logout`` used to
    be merged into the (now empty) record, bringing the token back."""
    daemon = oauth_daemon(credproxy_daemon, oidc_server)
    log_in(daemon, oidc_server)
    expire_stored_token(daemon)
    refresh = HeldRefresh(daemon, oidc_server)
    refresh.start()
    try:
        logout = subprocess.run(
            [
                sys.executable,
                "-m",
                "credproxy",
                "logout",
                PROVIDER,
                "--no-revoke",
                "--config",
                str(daemon.config_path),
            ],
            capture_output=True,
            text=True,
            env=daemon_env(),
            timeout=60,
            check=False,
        )
        assert logout.returncode == 0, logout.stderr
    finally:
        refresh.release()
    refresh.join()

    assert len(refresh.outcome) == 1
    failure = refresh.outcome[0]
    assert isinstance(failure, NotFoundError), failure
    assert "logout" in failure.message
    assert daemon.stored_token(PROVIDER) is None
    assert on_host_store(daemon, lambda store: store.list_buckets(PROVIDER)) == []
