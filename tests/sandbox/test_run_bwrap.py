"""``credproxy run --sandbox bwrap`` against the real bubblewrap and a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.sandbox.conftest import (
    DEMO_ACCESS,
    DEMO_REFRESH,
    HOST_MARKER,
    KEY_VALUE,
    OTHER_ACCESS,
    OUTER_TOKEN,
    TOKEN_LINE,
    RunHost,
)


def test_token_get_inside_bwrap_prints_the_host_access_token(run_host: RunHost) -> None:
    done = run_host.run(
        "--sandbox", "bwrap", "--allow", "demo", "--", "credproxy", "token", "get", "demo"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == DEMO_ACCESS + "\n"
    assert DEMO_REFRESH not in done.stdout + done.stderr


def test_token_get_json_inside_bwrap_carries_no_refresh_token(run_host: RunHost) -> None:
    done = run_host.run(
        "--sandbox",
        "bwrap",
        "--allow",
        "demo",
        "--",
        "credproxy",
        "token",
        "get",
        "demo",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert DEMO_ACCESS in done.stdout
    assert "refresh_token" not in done.stdout
    assert DEMO_REFRESH not in done.stdout + done.stderr


def test_provider_outside_the_grant_is_unauthorized_with_nonzero_exit(run_host: RunHost) -> None:
    audit = run_host.root / "audit.log"
    done = run_host.run(
        "--sandbox",
        "bwrap",
        "--allow",
        "demo",
        "--audit-log",
        str(audit),
        "--",
        "credproxy",
        "token",
        "get",
        "other",
    )
    assert done.returncode == 4  # the client's exit code for UNAUTHORIZED
    assert OTHER_ACCESS not in done.stdout + done.stderr
    events = [json.loads(line.removeprefix("audit ")) for line in audit.read_text().splitlines()]
    refused = [e for e in events if e.get("op") == "get_token"]
    assert [e["outcome"] for e in refused] == ["UNAUTHORIZED"]
    assert OTHER_ACCESS not in audit.read_text()


def test_key_outside_the_grant_is_unauthorized_and_inside_is_served(run_host: RunHost) -> None:
    refused = run_host.run(
        "--sandbox", "bwrap", "--allow", "demo", "--", "credproxy", "key", "get", "k1"
    )
    assert refused.returncode == 4
    assert KEY_VALUE not in refused.stdout + refused.stderr
    served = run_host.run(
        "--sandbox", "bwrap", "--allow-key", "k1", "--", "credproxy", "key", "get", "k1"
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout == KEY_VALUE + "\n"


def test_bwrap_sandbox_cannot_see_the_store_the_host_env_or_the_runtime_dir(
    run_host: RunHost,
) -> None:
    report = run_host.probe(
        "bwrap",
        "--exists",
        str(run_host.store_dir),
        "--exists",
        str(run_host.config),
        "--exists",
        str(run_host.runtime_dir),
        "--exists",
        str(run_host.root),
        "--exists",
        "/run/credproxy.sock",
    )
    assert report["exists"] == {
        str(run_host.store_dir): False,
        str(run_host.config): False,
        str(run_host.runtime_dir): False,
        str(run_host.root): False,
        "/run/credproxy.sock": True,
    }
    env = report["environ"]
    assert "CREDPROXY_TEST_MARKER" not in env
    assert "LLXPRT_CAPABILITY_TOKEN" not in env
    assert env["LLXPRT_CREDENTIAL_SOCKET"] == "/run/credproxy.sock"
    assert env["LLXPRT_CAPABILITY_FD"] == "3"
    assert env["HOME"] == "/tmp"
    every_process = "\n".join(report["process_texts"])
    assert HOST_MARKER not in every_process
    assert OUTER_TOKEN not in every_process


def test_capability_token_arrives_on_fd_3_and_nowhere_else(run_host: RunHost) -> None:
    """environ and cmdline of every process in the sandbox (bwrap's own init
    included, whose cmdline is the whole bwrap argv) are searched for it."""
    report = run_host.probe("bwrap", "--read-fd")
    line = report["token_line"]
    assert TOKEN_LINE.fullmatch(line)
    assert report["fd_target"].startswith("pipe:")
    token = line.strip()
    assert token != OUTER_TOKEN
    texts = report["process_texts"]
    assert len(texts) >= 4  # bwrap's init and the probe, environ and cmdline each
    assert not any(token in text for text in texts)
    assert sorted(report["fds"]) == ["0", "1", "2", "3"]


def test_only_the_one_socket_is_visible_inside(run_host: RunHost) -> None:
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    decoy = run_host.root / "decoy.sock"
    outside.bind(str(decoy))
    try:
        report = run_host.probe("bwrap", "--walk")
    finally:
        outside.close()
    assert report["sockets"] == ["/run/credproxy.sock"]
    # The same probe does find a second socket when one is bound in on purpose.
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    outside.bind(str(decoy.with_name("decoy2.sock")))
    try:
        bound = run_host.probe(
            "bwrap", "--walk", run_args=["--bind", f"{decoy.with_name('decoy2.sock')}:/tmp/d.sock"]
        )
    finally:
        outside.close()
    assert bound["sockets"] == ["/run/credproxy.sock", "/tmp/d.sock"]


@pytest.fixture
def host_listeners() -> Iterator[tuple[str, int]]:
    """An abstract Unix socket and a loopback TCP port listening on the host."""
    name = f"credproxy-test-{os.getpid()}-{os.urandom(4).hex()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + name)
    abstract.listen()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    try:
        yield name, tcp.getsockname()[1]
    finally:
        abstract.close()
        tcp.close()


def test_network_is_unshared_so_host_abstract_and_loopback_sockets_are_unreachable(
    run_host: RunHost, host_listeners: tuple[str, int]
) -> None:
    name, port = host_listeners
    report = run_host.probe("bwrap", "--abstract", name, "--tcp", str(port))
    assert report["abstract"] == "ConnectionRefusedError"
    assert report["tcp"] == "ConnectionRefusedError"


def test_share_net_gives_the_host_network_back(
    run_host: RunHost, host_listeners: tuple[str, int]
) -> None:
    name, port = host_listeners
    report = run_host.probe(
        "bwrap", "--abstract", name, "--tcp", str(port), run_args=["--share-net"]
    )
    assert report["abstract"] == "connected"
    assert report["tcp"] == "connected"


@pytest.mark.parametrize(
    ("script", "expected"), [("exit 0", 0), ("exit 42", 42), ("kill -KILL $$", 137)]
)
def test_run_exits_with_the_command_exit_code(
    run_host: RunHost, script: str, expected: int
) -> None:
    done = run_host.run("--sandbox", "bwrap", "--", "sh", "-c", script)
    assert done.returncode == expected, done.stderr


def test_socket_is_removed_after_the_run_whatever_the_exit(run_host: RunHost) -> None:
    for script in ("exit 0", "exit 3", "kill -TERM $$"):
        run_host.run("--sandbox", "bwrap", "--", "sh", "-c", script)
        assert run_host.sockets_left() == []
    # While a run is going on, exactly its socket exists.
    done = run_host.run("--sandbox", "bwrap", "--", "sh", "-c", "test -S /run/credproxy.sock")
    assert done.returncode == 0


def test_python_runtime_is_read_only_inside(run_host: RunHost) -> None:
    done = run_host.run(
        "--sandbox",
        "bwrap",
        "--",
        sys.executable,
        "-c",
        "import sys, os\n"
        "for target in (sys.prefix, sys.base_prefix, '/usr', '/'):\n"
        "    try:\n"
        "        open(os.path.join(target, 'credproxy-write-test'), 'w')\n"
        "    except OSError as exc:\n"
        "        print(target, type(exc).__name__)\n"
        "    else:\n"
        "        print(target, 'WRITABLE')\n",
    )
    assert done.returncode == 0, done.stderr
    assert "WRITABLE" not in done.stdout
    assert len(done.stdout.splitlines()) == 4


def test_bind_over_the_store_directory_is_refused_before_the_command_runs(
    run_host: RunHost,
) -> None:
    marker = run_host.root / "ran"
    done = run_host.run(
        "--sandbox",
        "bwrap",
        "--bind",
        f"{run_host.root}:/host:ro",
        "--",
        "sh",
        "-c",
        f"touch {marker}",
    )
    assert done.returncode == 125
    assert "holds credentials" in done.stderr
    assert not marker.exists()
    assert run_host.sockets_left() == []


def test_missing_command_exits_127_and_leaves_no_socket(run_host: RunHost) -> None:
    done = run_host.run("--sandbox", "bwrap", "--", "no-such-command-credproxy")
    assert done.returncode == 127
    assert "not found" in done.stderr
    assert run_host.sockets_left() == []


def test_bind_of_the_config_directory_is_refused(run_host: RunHost) -> None:
    """The config file may hold OAuth client secrets; its directory stays out too."""
    config_dir = run_host.root / "cfg"
    config_dir.mkdir()
    config = config_dir / "config.toml"
    config.write_text(run_host.config.read_text())
    argv = run_host.argv("--sandbox", "bwrap", "--bind", f"{config_dir}:/cfg:ro", "--", "true")
    argv[argv.index("--config") + 1] = str(config)
    done = subprocess.run(
        argv, env=run_host.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 125
    assert str(config) in done.stderr
    assert run_host.sockets_left() == []


def test_script_of_an_interpreter_outside_usr_runs_with_its_package_tree(
    run_host: RunHost,
) -> None:
    """The nvm-style layout: PREFIX/bin/tool -> PREFIX/lib/pkg/cli, run by
    ``#!/usr/bin/env`` an interpreter in PREFIX/bin, reading a sibling file."""
    prefix = run_host.root / "opt" / "runtime"
    (prefix / "bin").mkdir(parents=True)
    package = prefix / "lib" / "pkg"
    package.mkdir(parents=True)
    interpreter = prefix / "bin" / "minish"
    shutil.copy("/bin/sh", interpreter)
    cli = package / "cli"
    cli.write_text(
        '#!/usr/bin/env minish\n. "$(dirname "$(readlink -f "$0")")/helper"\necho "$GREETING"\n'
    )
    cli.chmod(0o755)
    (package / "helper").write_text("GREETING=hello-from-the-package\n")
    (prefix / "bin" / "tool").symlink_to(cli)
    run_host.env["PATH"] = f"{prefix / 'bin'}:{run_host.env['PATH']}"
    done = run_host.run("--sandbox", "bwrap", "--", "tool")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello-from-the-package\n"
