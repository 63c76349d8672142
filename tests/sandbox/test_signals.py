"""SIGINT/SIGTERM sent to ``credproxy run`` reach the command, which may clean up.

``run`` is started in a new session (no controlling terminal, as under CI and
under a supervisor that signals one pid), so every signal it gets is one to
forward.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import pytest

from tests.sandbox.conftest import RunHost

READY_TIMEOUT_S = 30.0
HANDLER = (
    "import os, signal, sys, time\n"
    "def handler(signum, frame):\n"
    "    os.write(1, f'got {signum}\\n'.encode())\n"
    "    os._exit(40 + signum)\n"
    "for name in ('SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGWINCH'):\n"
    "    signal.signal(getattr(signal, name), handler)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    time.sleep(0.05)\n"
)


def _wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], READY_TIMEOUT_S)
    assert ready, "the command never started"
    assert child.stdout.readline() == "ready\n"


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH]
)
def test_signal_to_run_is_forwarded_to_the_command_and_its_exit_code_returned(
    run_host: RunHost, sandbox: str, signum: signal.Signals
) -> None:
    child = run_host.popen("--sandbox", sandbox, "--", sys.executable, "-c", HANDLER)
    _wait_ready(child)
    child.send_signal(signum)
    out, err = child.communicate(timeout=READY_TIMEOUT_S)
    assert out == f"got {int(signum)}\n", err
    assert child.returncode == 40 + signum
    assert run_host.sockets_left() == []


def test_command_ignoring_sigterm_keeps_running_until_it_exits(run_host: RunHost) -> None:
    """``run`` forwards and keeps waiting; it neither exits early nor kills the command."""
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "print('done', flush=True)\n"
    )
    child = subprocess.Popen(
        run_host.argv("--sandbox", "bwrap", "--", sys.executable, "-c", script),
        env=run_host.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run_host.children.append(child)
    _wait_ready(child)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate("go\n", timeout=READY_TIMEOUT_S)
    assert out == "done\n", err
    assert child.returncode == 0
    assert run_host.sockets_left() == []


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_ctrl_c_on_a_real_terminal_reaches_the_command(run_host: RunHost, sandbox: str) -> None:
    """``run`` holds a pty as controlling terminal (``setsid --ctty``) and ^C is
    typed into it: under ``none`` the terminal signals the command itself,
    under bwrap (a session of its own) ``run`` forwards it."""
    script = (
        "import os, signal, time\n"
        "def handler(signum, frame):\n"
        "    os.write(1, f'got {signum}\\n'.encode())\n"
        "    os._exit(40 + signum)\n"
        "signal.signal(signal.SIGINT, handler)\n"
        "print('tty', os.isatty(0), flush=True)\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    master, slave = os.openpty()
    child = subprocess.Popen(
        [
            "setsid",
            "--wait",
            "--ctty",
            *run_host.argv("--sandbox", sandbox, "--", sys.executable, "-c", script),
        ],
        env=run_host.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    run_host.children.append(child)  # type: ignore[arg-type]
    os.close(slave)
    seen = b""
    try:
        seen = _read_until(master, b"tty True", seen)
        os.write(master, b"\x03")
        seen = _read_until(master, b"got 2", seen)
        assert child.wait(timeout=READY_TIMEOUT_S) == 42
    finally:
        os.close(master)
    assert run_host.sockets_left() == []


def _read_until(fd: int, wanted: bytes, seen: bytes) -> bytes:
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], READY_TIMEOUT_S)
        assert ready, f"waited for {wanted!r}, saw {seen!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        assert chunk, f"terminal closed before {wanted!r}; saw {seen!r}"
        seen += chunk
    return seen
