"""``credproxy serve`` as a user meets it: what it prints, what it refuses."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.fixtures.daemon import DaemonFactory, daemon_env


def _read_until(process: subprocess.Popen[str], marker: str) -> str:
    assert process.stdout is not None
    text = ""
    deadline = time.monotonic() + 20
    while marker not in text:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {text!r}"
        if select.select([process.stdout], [], [], remaining)[0]:
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f"serve exited early: {text!r}"
            text += chunk.decode()
    return text


def test_human_output_says_how_to_reach_the_daemon_and_never_shows_the_token(
    credproxy_daemon: DaemonFactory,
) -> None:
    workdir = credproxy_daemon.workdir()
    path = workdir / "h.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "credproxy", "serve", "--store", "memory", "--socket", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=daemon_env(),
    )
    try:
        text = _read_until(process, "3<")
        token_file = path.with_suffix(".token")
        token = token_file.read_text().strip()
        assert f"export LLXPRT_CREDENTIAL_SOCKET={shlex.quote(str(path))}" in text
        assert "export LLXPRT_CAPABILITY_FD=3" in text
        assert f"TOKEN_FILE={shlex.quote(str(token_file))}" in text
        assert '3<"$TOKEN_FILE"' in text
        assert "grant: full (default; narrow it with --allow)" in text
        assert token not in text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert process.stdout is not None
        rest = process.stdout.read()
        process.stdout.close()
    assert token not in rest
    assert not path.exists() and not token_file.exists()


def test_json_output_describes_a_narrow_grant(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(
        "--allow", "anthropic:work", "--allow-key", "openai", "--allow-save", store="memory"
    )
    assert daemon.ready["grant"] == "providers=[anthropic:work] keys=[openai]+save"
    assert daemon.ready["pid"] == daemon.pid
    assert set(daemon.ready) == {"socket", "capability_file", "capability_fd", "grant", "pid"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow-save"], "--allow-save/--allow-remove narrow a grant"),
        (["--no-capability", "--allow", "p"], "--no-capability cannot be combined with --allow"),
        (["--capability-file", "/tmp/x", "--capability-fd", "5"], "not both"),
        (["--allow", "a/b"], "is not PROVIDER or PROVIDER:BUCKET"),
        (["--allow", "a:b:c"], "is not PROVIDER or PROVIDER:BUCKET"),
        (["--allow-key", "has space"], "is not a valid key name"),
        (["--capability-fd", "1"], "must be 3 or higher"),
    ],
)
def test_contradictory_or_malformed_options_are_refused(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "credproxy", "serve", "--store", "memory", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=daemon_env(),
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_leftovers_of_dead_daemons_are_swept_and_live_ones_kept(
    credproxy_daemon: DaemonFactory,
) -> None:
    workdir = credproxy_daemon.workdir()
    runtime = workdir / "run"
    directory = runtime / f"credproxy-{os.getuid()}"
    directory.mkdir(parents=True, mode=0o700)
    runtime.chmod(0o700)
    dead_pid = _dead_pid()
    dead_socket = directory / f"{dead_pid}-{'a' * 32}.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(dead_socket))
    leftover.close()
    dead_token = directory / f"{dead_pid}-{'a' * 32}.token"
    dead_token.write_text("0" * 64 + "\n")
    live_token = directory / f"{os.getpid()}-{'b' * 32}.token"
    live_token.write_text("1" * 64 + "\n")
    daemon = credproxy_daemon(
        store="memory", default_socket=True, workdir=workdir, env={"XDG_RUNTIME_DIR": str(runtime)}
    )
    assert daemon.socket_path.parent == directory
    assert not dead_socket.exists() and not dead_token.exists()
    assert live_token.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    pid = process.pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    pytest.fail(f"pid {pid} was reused at once; rerun")


def test_capability_file_is_64_hex_and_a_newline_at_mode_0600(
    credproxy_daemon: DaemonFactory,
) -> None:
    workdir = credproxy_daemon.workdir()
    target = workdir / "cap"
    daemon = credproxy_daemon("--capability-file", str(target), store="memory", workdir=workdir)
    assert daemon.capability_file == target
    assert re.fullmatch(r"[0-9a-f]{64}\n", target.read_text())
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"


def test_audit_log_that_cannot_be_opened_is_a_clear_error(credproxy_daemon: DaemonFactory) -> None:
    workdir = credproxy_daemon.workdir()
    link = workdir / "audit.log"
    link.symlink_to(workdir / "elsewhere.log")
    for target in (workdir / "missing" / "audit.log", link):
        result = subprocess.run(
            [
                *(sys.executable, "-m", "credproxy", "serve", "--store", "memory"),
                *("--socket", str(workdir / "d.sock"), "--audit-log", str(target)),
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=daemon_env(),
        )
        assert result.returncode == 1
        assert f"cannot open audit log {target}" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (workdir / "elsewhere.log").exists()
