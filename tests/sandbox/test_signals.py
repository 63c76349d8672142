"""SIGINT/SIGTERM sent to ``credproxy run`` reach the command, which may clean up.

``run`` is started in a new session (no controlling terminal, as under CI and
under a supervisor that signals one pid), so every signal it gets is one to
forward.
"""

from __future__ import annotations

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
