"""What ``credproxy serve`` tells a new user must work when pasted elsewhere."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
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


def announced_lines(process: subprocess.Popen[bytes]) -> list[str]:
    """The announcement: serve writes it in one piece, so it is whole once it ends a line."""
    assert process.stdout is not None
    text = b""
    deadline = time.monotonic() + 20
    while b"(pid " not in text or not text.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, text
        if select.select([process.stdout], [], [], remaining)[0]:
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f"serve exited: {text!r}"
            text += chunk
    return text.decode().splitlines()


def test_the_announced_lines_work_when_pasted_into_a_shell(
    credproxy_daemon: DaemonFactory,
) -> None:
    """The two export lines used to be split by a prose line, and the README's
    ``$TOKEN_FILE`` was never defined; here the block is pasted as a user would:
    both exports and the TOKEN_FILE line in one selection, then the example."""
    workdir = credproxy_daemon.workdir()
    stderr_path = workdir / "stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "credproxy", "serve", "--store", "memory"),
                *("--socket", str(workdir / "p.sock")),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=daemon_env(),
        )
    try:
        lines = announced_lines(process)
        first = next(i for i, line in enumerate(lines) if line.startswith("export "))
        pasted = lines[first : first + 3]
        assert [line.split("=", 1)[0] for line in pasted] == [
            "export LLXPRT_CREDENTIAL_SOCKET",
            "export LLXPRT_CAPABILITY_FD",
            "TOKEN_FILE",
        ]
        example = lines[-1].strip()
        assert example == 'credproxy status 3<"$TOKEN_FILE"'
        env = daemon_env()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        shell = "\n".join([*pasted, example.replace("credproxy", "python -m credproxy", 1)])
        done = subprocess.run(
            ["bash", "-c", shell],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("credproxy sandbox view")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert process.stdout is not None
        process.stdout.close()


def test_the_socket_is_printed_once_and_whole_on_the_first_line(
    credproxy_daemon: DaemonFactory,
) -> None:
    """The first line used to be the daemon's log line, ``credproxy: INFO listening on
    .../PID-<redacted>.sock`` (the log scrubber hides the nonce), and only the next
    line had the path a user can use."""
    workdir = credproxy_daemon.workdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "credproxy", "serve", "--store", "memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=daemon_env({"XDG_RUNTIME_DIR": str(workdir)}),
    )
    try:
        lines = announced_lines(process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert process.stdout is not None
        process.stdout.close()
    assert not any("<redacted>" in line for line in lines), lines
    listening = [line for line in lines if "listening on" in line]
    assert len(listening) == 1, lines
    assert lines[0] == listening[0]
    socket_path = lines[0].removeprefix("credproxy daemon listening on ").split(" (pid ")[0]
    assert socket_path.startswith(f"{workdir}/credproxy-{os.getuid()}/")
    assert socket_path.endswith(".sock")
    assert f"export LLXPRT_CREDENTIAL_SOCKET={socket_path}" in lines
    assert f"TOKEN_FILE={socket_path.removesuffix('.sock')}.token" in lines
