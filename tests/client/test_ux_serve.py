"""What ``credproxy serve`` tells a new user must work when pasted elsewhere."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.client.test_cli import run_cli
from tests.fixtures.daemon import DaemonFactory, daemon_env, wait_ready


def test_a_relative_socket_and_token_path_are_announced_as_absolute_paths(
    credproxy_daemon: DaemonFactory,
) -> None:
    """A relative ``--socket`` used to be printed as given, so the announced
    ``LLXPRT_CREDENTIAL_SOCKET`` (which clients require to be absolute) and
    ``3<TOKEN_FILE`` worked from no other directory."""
    workdir = credproxy_daemon.workdir()
    stderr_path = workdir / "stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "credproxy", "serve", "--json", "--store", "memory"),
                *("--socket", "rel.sock", "--capability-file", "rel.token"),
            ],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=daemon_env(),
        )
    try:
        ready = wait_ready(process, stderr_path)
        assert ready["socket"] == str(workdir / "rel.sock")
        assert ready["capability_file"] == str(workdir / "rel.token")
        token = Path(ready["capability_file"]).read_text().strip()
        result = run_cli(["key", "list"], socket_path=ready["socket"], fd_token=token)
        assert result.returncode == 0, result
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert process.stdout is not None
        process.stdout.close()
