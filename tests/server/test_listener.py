"""Socket placement, permissions, peer checks and shutdown of a real daemon process."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonFactory, daemon_env
from tests.fixtures.privilege import needs_root
from tests.server.material import KEY_SECRETS, run_wire_client

NOBODY = pwd.getpwnam("nobody").pw_uid


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``credproxy serve`` expecting it to refuse to start; returns its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "credproxy", "serve", "--store", "memory", "--json", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon_env(env),
    )
    assert result.returncode != 0
    assert result.stdout == ""
    return result.stderr


def _wait_gone(path: Path) -> None:
    deadline = time.monotonic() + 10
    while os.path.lexists(path):
        assert time.monotonic() < deadline, f"{path} was not removed"
        time.sleep(0.02)


def test_default_socket_is_private_and_removed_on_sigterm(credproxy_daemon: DaemonFactory) -> None:
    workdir = credproxy_daemon.workdir()
    runtime = workdir / "run"
    runtime.mkdir(mode=0o700)
    daemon = credproxy_daemon(
        store="memory",
        default_socket=True,
        workdir=workdir,
        env={"XDG_RUNTIME_DIR": str(runtime)},
    )
    path = daemon.socket_path
    directory = runtime / f"credproxy-{os.getuid()}"
    assert path.parent == directory
    match = re.fullmatch(r"(\d+)-([0-9a-f]{32})\.sock", path.name)
    assert match and int(match.group(1)) == daemon.pid
    assert _mode(directory) == 0o700 and os.lstat(directory).st_uid == os.getuid()
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and _mode(path) == 0o600
    assert daemon.capability_file == path.with_suffix(".token")
    assert _mode(daemon.capability_file) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", daemon.capability_file.read_text())
    with daemon.client() as client:
        assert client.request("list_providers")["ok"] is True
    assert daemon.stop(signal.SIGTERM) == 0
    assert not os.path.lexists(path)
    assert not os.path.lexists(daemon.capability_file)


def test_without_xdg_runtime_dir_the_socket_goes_to_the_temp_dir(
    credproxy_daemon: DaemonFactory,
) -> None:
    workdir = credproxy_daemon.workdir()
    temp = workdir / "tmp"
    temp.mkdir()
    daemon = credproxy_daemon(
        store="memory", default_socket=True, workdir=workdir, env={"TMPDIR": str(temp)}
    )
    assert daemon.socket_path.parent == temp / f"credproxy-{os.getuid()}"
    assert daemon.stop(signal.SIGINT) == 0
    assert not os.path.lexists(daemon.socket_path)


def test_explicit_socket_is_0600(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    assert daemon.socket_path == daemon.workdir / "d.sock"
    assert _mode(daemon.socket_path) == 0o600


@needs_root("only root can make a directory owned by another uid (chown)")
def test_socket_directory_of_another_user_is_refused(credproxy_daemon: DaemonFactory) -> None:
    runtime = credproxy_daemon.workdir() / "run"
    runtime.mkdir(mode=0o755)
    directory = runtime / f"credproxy-{os.getuid()}"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, -1)
    stderr = _serve_fails(env={"XDG_RUNTIME_DIR": str(runtime)})
    assert f"owned by uid {NOBODY}" in stderr and "--socket" in stderr
    assert list(directory.iterdir()) == []


def test_socket_directory_with_loose_mode_is_refused(credproxy_daemon: DaemonFactory) -> None:
    runtime = credproxy_daemon.workdir() / "run"
    runtime.mkdir(mode=0o700)
    directory = runtime / f"credproxy-{os.getuid()}"
    directory.mkdir()
    directory.chmod(0o755)
    stderr = _serve_fails(env={"XDG_RUNTIME_DIR": str(runtime)})
    assert "0755" in stderr and "chmod 700" in stderr


def test_symlinked_socket_directory_is_refused(credproxy_daemon: DaemonFactory) -> None:
    workdir = credproxy_daemon.workdir()
    runtime = workdir / "run"
    runtime.mkdir(mode=0o700)
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (runtime / f"credproxy-{os.getuid()}").symlink_to(elsewhere)
    stderr = _serve_fails(env={"XDG_RUNTIME_DIR": str(runtime)})
    assert "not a directory" in stderr
    assert list(elsewhere.iterdir()) == []


def test_socket_path_longer_than_sun_path_fails_with_a_clear_message(
    credproxy_daemon: DaemonFactory,
) -> None:
    path = credproxy_daemon.workdir() / ("s" * 120 + ".sock")
    stderr = _serve_fails("--socket", str(path))
    assert "107 bytes" in stderr and "sun_path" in stderr


def test_stale_socket_at_the_path_is_replaced(credproxy_daemon: DaemonFactory) -> None:
    workdir = credproxy_daemon.workdir()
    stale = workdir / "d.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()
    assert stat.S_ISSOCK(os.lstat(stale).st_mode)
    daemon = credproxy_daemon(store="memory", workdir=workdir)
    with daemon.client() as client:
        assert client.request("list_api_keys")["ok"] is True


def test_regular_file_at_the_socket_path_is_refused_and_left_alone(
    credproxy_daemon: DaemonFactory,
) -> None:
    target = credproxy_daemon.workdir() / "d.sock"
    target.write_text("precious")
    stderr = _serve_fails("--socket", str(target))
    assert "not a socket" in stderr
    assert target.read_text() == "precious"


def test_socket_with_a_live_listener_is_refused(credproxy_daemon: DaemonFactory) -> None:
    target = credproxy_daemon.workdir() / "d.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(str(target))
        live.listen(1)
        stderr = _serve_fails("--socket", str(target))
        assert "another process is listening" in stderr
        assert stat.S_ISSOCK(os.lstat(target).st_mode)
    finally:
        live.close()


@needs_root("connecting as uid nobody takes setpriv, which only root may run")
def test_peer_of_another_uid_is_closed_immediately_and_audited(
    credproxy_daemon: DaemonFactory,
) -> None:
    """``--allow-uid`` of some other uid opens the socket mode (0666) so ``nobody``
    reaches it; SO_PEERCRED is then the only thing that keeps it out."""
    daemon = credproxy_daemon("--allow-uid", "12345", keys=KEY_SECRETS)
    assert _mode(daemon.socket_path) == 0o666
    assert daemon.capability_token is not None
    result = run_wire_client(
        daemon.socket_path,
        daemon.capability_token,
        'get_api_key {"name":"openai"}',
        workdir=daemon.workdir,
        as_nobody=True,
    )
    assert result.returncode != 0
    assert "server closed the connection" in result.stderr
    assert result.stdout == ""
    for _ in range(2):
        again = run_wire_client(
            daemon.socket_path, daemon.capability_token, workdir=daemon.workdir, as_nobody=True
        )
        assert again.returncode != 0 and again.stdout == ""
    refused = [e for e in daemon.audit_events() if e["op"] == "connect"]
    assert len(refused) == 1, "repeated refusals of one uid are noted once a minute"
    assert refused[0]["outcome"] == "UNAUTHORIZED"
    assert refused[0]["peer_uid"] == NOBODY
    with daemon.client() as client:
        assert client.request("list_api_keys")["ok"] is True


@needs_root("connecting as uid nobody takes setpriv, which only root may run")
def test_allowed_uid_gets_in_with_the_capability_token(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon("--allow-uid", str(NOBODY), keys=KEY_SECRETS)
    assert daemon.capability_token is not None
    result = run_wire_client(
        daemon.socket_path,
        daemon.capability_token,
        'get_api_key {"name":"openai"}',
        workdir=daemon.workdir,
        as_nobody=True,
    )
    assert result.returncode == 0, result.stderr
    hello, key = (json.loads(line) for line in result.stdout.splitlines())
    assert hello["ok"] is True
    assert key["data"] == {"key": KEY_SECRETS["openai"]}
    peers = {e["peer_uid"] for e in daemon.audit_events() if e["op"] == "get_api_key"}
    assert peers == {NOBODY}


def test_allow_uid_without_capability_tokens_is_refused() -> None:
    stderr = _serve_fails("--no-capability", "--allow-uid", "12345")
    assert "--no-capability cannot be combined with --allow-uid" in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_request_in_flight_finish_and_removes_the_socket(
    credproxy_daemon: DaemonFactory, signum: int
) -> None:
    daemon = credproxy_daemon("--testing-hold-store", store="memory")
    with daemon.client() as client:
        held = client.send_request("list_api_keys")
        assert client.request("no_such_op")["code"] == "INVALID_REQUEST"
        daemon.send_signal(signum)
        _wait_gone(daemon.socket_path)
        daemon.send_signal(signal.SIGUSR1)
        assert client.recv_id(held) == {"v": 2, "id": held, "ok": True, "data": {"keys": []}}
        assert client.wait_closed() == []
    assert daemon.process.wait(15) == 0
    assert daemon.capability_file is not None and not daemon.capability_file.exists()


def test_request_still_running_after_the_grace_period_is_answered_and_the_daemon_exits(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--testing-hold-store", store="memory")
    with daemon.client() as client:
        held = client.send_request("list_api_keys")
        assert client.request("no_such_op")["code"] == "INVALID_REQUEST"
        daemon.send_signal(signal.SIGTERM)
        reply = client.recv_id(held)
        assert reply["code"] == "INTERNAL_ERROR"
        assert reply["error"] == "the daemon shut down before the operation finished"
        assert client.wait_closed() == []
    assert daemon.process.wait(15) == 0
    assert not os.path.lexists(daemon.socket_path)


def test_socket_in_a_directory_others_can_write_is_refused(
    credproxy_daemon: DaemonFactory,
) -> None:
    shared = credproxy_daemon.workdir() / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    stderr = _serve_fails("--socket", str(shared / "d.sock"))
    assert "other users can write there and it has no sticky bit" in stderr
    shared.chmod(0o1777)
    daemon = credproxy_daemon(store="memory", socket_path=shared / "d.sock")
    with daemon.client() as client:
        assert client.request("list_api_keys")["ok"] is True
