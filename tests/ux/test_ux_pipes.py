"""A closed stdout ends a command quietly, as it ends a Unix tool (SIGPIPE: 141).

``credproxy status 3<"$TOKEN_FILE" | head -1`` printed ``unexpected
BrokenPipeError`` and exited 1; on the host it exited 1 without a word. The
reader here closes its end before the command writes, so the write fails on
every run, not only when ``head`` happens to finish first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.daemon import DaemonFactory, daemon_env

EXIT_BROKEN_PIPE = 141


def run_into_closed_pipe(
    args: list[str], env: dict[str, str], token_file: Path | None = None
) -> tuple[int, str]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdin = token_file.open("rb") if token_file else None
    command = [sys.executable, "-m", "credproxy", *args]
    try:
        if stdin is not None:
            # The token on fd 3, as `3<"$TOKEN_FILE"` hands it over.
            command = ["bash", "-c", 'exec "$@" 3<&0 0</dev/null', "bash", *command]
        done = subprocess.run(
            command,
            stdin=stdin,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
        if stdin is not None:
            stdin.close()
    return done.returncode, done.stderr


def test_host_status_into_a_closed_pipe_exits_141_without_a_word(tmp_path: Path) -> None:
    env = daemon_env({"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")})
    status, stderr = run_into_closed_pipe(["status", "--store", "memory"], env)
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")


def test_sandbox_status_into_a_closed_pipe_exits_141_without_a_word(
    credproxy_daemon: DaemonFactory,
) -> None:
    token = {"access_token": "pipe-access", "expiry": time.time() + 3600, "token_type": "Bearer"}
    daemon = credproxy_daemon(tokens={("alpha", "default"): token}, keys={"openai": "sk-pipe"})
    assert daemon.capability_file is not None
    env = daemon_env(
        {"LLXPRT_CREDENTIAL_SOCKET": str(daemon.socket_path), "LLXPRT_CAPABILITY_FD": "3"}
    )
    status, stderr = run_into_closed_pipe(["status"], env, daemon.capability_file)
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")
    status, stderr = run_into_closed_pipe(["key", "get", "openai"], env, daemon.capability_file)
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")
