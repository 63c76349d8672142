"""A full-access capability file outlives a SIGKILLed daemon only until the next command.

The file grants everything the store holds to whoever reads it; while the
daemon lives only its socket makes it useful, but a later daemon may reuse
nothing of it, and a backup or a sandbox bind of the runtime directory would
copy it. So any credproxy command on the host removes what dead daemons left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from credproxy.server.listener import sweep_stale_sockets
from tests.fixtures.daemon import DaemonFactory, daemon_env

NONCE = "0123456789abcdef" * 2


def _host_command(runtime: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env({"XDG_RUNTIME_DIR": str(runtime)}),
    )


def _runtime(credproxy_daemon: DaemonFactory) -> tuple[Path, Path]:
    workdir = credproxy_daemon.workdir()
    runtime = workdir / "run"
    runtime.mkdir(mode=0o700)
    return workdir, runtime


def test_next_host_command_removes_a_sigkilled_daemons_token_file_and_socket(
    credproxy_daemon: DaemonFactory,
) -> None:
    workdir, runtime = _runtime(credproxy_daemon)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    daemon = credproxy_daemon(store="memory", default_socket=True, workdir=workdir, env=env)
    assert daemon.capability_file is not None
    token_file, socket_path = daemon.capability_file, daemon.socket_path
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(timeout=10)
    assert token_file.exists() and socket_path.exists()

    result = _host_command(runtime, "key", "list", "--store", "memory")

    assert result.returncode == 0, result.stderr
    assert not token_file.exists()
    assert not socket_path.exists()


def test_host_command_keeps_a_live_daemons_files(credproxy_daemon: DaemonFactory) -> None:
    workdir, runtime = _runtime(credproxy_daemon)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    daemon = credproxy_daemon(store="memory", default_socket=True, workdir=workdir, env=env)
    assert daemon.capability_file is not None

    result = _host_command(runtime, "key", "list", "--store", "memory")

    assert result.returncode == 0, result.stderr
    assert daemon.capability_file.exists()
    with daemon.client() as client:
        assert client.request("list_api_keys")["ok"] is True


def test_sandbox_side_command_does_not_sweep(credproxy_daemon: DaemonFactory) -> None:
    """Inside a sandbox (LLXPRT_CREDENTIAL_SOCKET set) nothing of the host is touched."""
    _, runtime = _runtime(credproxy_daemon)
    directory = runtime / f"credproxy-{os.getuid()}"
    directory.mkdir(mode=0o700)
    dead = _dead_pid()
    leftover = directory / f"{dead}-{NONCE}.token"
    leftover.write_text("x\n")
    result = subprocess.run(
        [sys.executable, "-m", "credproxy", "key", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env(
            {"XDG_RUNTIME_DIR": str(runtime), "LLXPRT_CREDENTIAL_SOCKET": str(runtime / "x")}
        ),
    )
    assert result.returncode != 0  # no daemon there; what matters is the file
    assert leftover.exists()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_sweep_removes_files_whose_pid_was_reused_by_a_later_process(tmp_path: Path) -> None:
    """A pid alive now but started after the file was written is not the daemon."""
    tmp_path.chmod(0o700)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        reused = tmp_path / f"{sleeper.pid}-{NONCE}.token"
        reused.write_text("x\n")
        an_hour_ago = time.time() - 3600
        os.utime(reused, (an_hour_ago, an_hour_ago))
        current = tmp_path / f"{os.getpid()}-{NONCE}.token"
        current.write_text("x\n")
        dead = tmp_path / f"{_dead_pid()}-{NONCE}.token"
        dead.write_text("x\n")
        unrelated = tmp_path / "notes.token"
        unrelated.write_text("x\n")

        assert sweep_stale_sockets(tmp_path) == 2

        assert not reused.exists()
        assert not dead.exists()
        assert current.exists()
        assert unrelated.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
