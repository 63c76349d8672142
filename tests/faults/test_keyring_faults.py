"""The OS keyring goes away, or is locked, while the daemon runs on it.

A private gnome-keyring on its own D-Bus (not the session-wide one other
tests share) backs ``credproxy serve --store keyring``. Killed mid-run, or
its collection locked mid-run: requests get an answer at once (no hang on a
vanished bus name or an unlock prompt nobody can answer), the host's log
says what to do, new connections are still served, and what was stored is
all there again once the keyring is back or unlocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.daemon import DaemonFactory, DaemonHandle
from tests.fixtures.keyring import KeyringSession, start_bus, start_keyring_daemon

TOKENS = {f"bucket-{n}": f"keyring-access-decoy-{n:03d}" for n in range(5)}


@pytest.fixture
def own_keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyringSession]:
    session = start_bus(tmp_path_factory.mktemp("fault-keyring"), activation=False)
    try:
        start_keyring_daemon(session, unlock=True)
        yield session
    finally:
        session.stop()


def _start(credproxy_daemon: DaemonFactory, session: KeyringSession) -> DaemonHandle:
    daemon = credproxy_daemon(store="keyring", env=session.env)
    with daemon.client() as client:
        for bucket, access in TOKENS.items():
            token = {"access_token": access, "token_type": "Bearer", "expiry": 4_000_000_000}
            saved = client.request(
                "save_token", {"provider": "kr", "bucket": bucket, "token": token}
            )
            assert saved["ok"] is True, saved
    return daemon


def _all_there(daemon: DaemonHandle) -> None:
    with daemon.client() as client:
        for bucket, access in TOKENS.items():
            got = client.request("get_token", {"provider": "kr", "bucket": bucket})
            assert got["ok"] is True, got
            assert got["data"]["access_token"] == access


def _fails_at_once(daemon: DaemonHandle) -> None:
    """Store requests answered with a failure, on a fresh connection (still served)."""
    with daemon.client() as client:
        got = client.request("get_token", {"provider": "kr", "bucket": "bucket-0"})
        assert got["ok"] is False
        assert "keyring-access-decoy" not in bytes(client.received).decode("latin-1")
        token = {"access_token": "keyring-access-decoy-new", "expiry": 4_000_000_000}
        saved = client.request("save_token", {"provider": "kr", "bucket": "new", "token": token})
        assert saved["ok"] is False


def test_keyring_killed_mid_run_fails_requests_until_it_is_back_and_loses_nothing(
    credproxy_daemon: DaemonFactory, own_keyring: KeyringSession
) -> None:
    daemon = _start(credproxy_daemon, own_keyring)
    assert own_keyring.daemon is not None
    own_keyring.daemon.kill()
    own_keyring.daemon.wait()

    _fails_at_once(daemon)
    log = daemon.stderr_text()
    assert "keyring" in log.lower()

    start_keyring_daemon(own_keyring, unlock=True)
    _all_there(daemon)


def test_keyring_locked_mid_run_fails_requests_until_unlocked_and_loses_nothing(
    credproxy_daemon: DaemonFactory, own_keyring: KeyringSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = _start(credproxy_daemon, own_keyring)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", own_keyring.env["DBUS_SESSION_BUS_ADDRESS"])
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        collection.lock()
        assert collection.is_locked()
    finally:
        connection.close()

    _fails_at_once(daemon)
    assert "Keyring is locked" in daemon.stderr_text()

    # The user unlocks: a keyring daemon given the password on the same files.
    assert own_keyring.daemon is not None
    own_keyring.daemon.kill()
    own_keyring.daemon.wait()
    start_keyring_daemon(own_keyring, unlock=True)
    _all_there(daemon)
