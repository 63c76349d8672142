"""``credproxy run --sandbox none``: a plain child with the socket and the token pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from credproxy.client import ConnectFailedError, ProxyClient
from tests.sandbox.conftest import (
    DEMO_ACCESS,
    GUEST_PROBES,
    HOST_MARKER,
    OUTER_TOKEN,
    PROBES,
    TOKEN_LINE,
    RunHost,
)


def test_token_get_with_no_sandbox_uses_the_fd_token(run_host: RunHost) -> None:
    done = run_host.run(
        "--sandbox", "none", "--allow", "demo", "--", "credproxy", "token", "get", "demo"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == DEMO_ACCESS + "\n"


def test_outside_the_grant_is_refused_with_no_sandbox(run_host: RunHost) -> None:
    done = run_host.run(
        "--sandbox", "none", "--allow", "demo:work", "--", "credproxy", "token", "get", "demo"
    )
    assert done.returncode == 4
    assert DEMO_ACCESS not in done.stdout + done.stderr


def test_child_env_has_the_socket_and_fd_but_no_outer_token(run_host: RunHost) -> None:
    report = run_host.probe("none", "--read-fd")
    env = report["environ"]
    assert env["LLXPRT_CAPABILITY_FD"] == "3"
    assert "LLXPRT_CAPABILITY_TOKEN" not in env
    assert env["CREDPROXY_TEST_MARKER"] == HOST_MARKER  # the host env is kept, by design
    assert env["LLXPRT_CREDENTIAL_SOCKET"].startswith(str(run_host.runtime_dir))
    assert sorted(report["fds"]) == ["0", "1", "2", "3"]
    assert report["fds"]["3"].startswith("pipe:")
    assert TOKEN_LINE.fullmatch(report["token_line"])


def test_token_is_in_no_argv_or_environment_of_run_or_its_child(run_host: RunHost) -> None:
    """The parent read here is the ``credproxy run`` process itself. As an ordinary
    user its environment cannot be read at all: ``run`` is undumpable, which closes
    ``/proc/<pid>/environ`` to every process of its uid, the child included; root
    (as in CI) reads it and checks the token is not there."""
    report = run_host.probe("none", "--read-fd", "--parent")
    token = report["token_line"].strip()
    assert token != OUTER_TOKEN
    assert "credproxy" in report["parent_cmdline"]
    texts = [report["parent_cmdline"], *report["process_texts"]]
    if report["parent_environ"] is None:
        assert os.getuid() != 0, "root reads any process's environment"
    else:
        texts.append(report["parent_environ"])
    for text in texts:
        assert token not in text


def test_the_token_and_socket_die_with_the_run(run_host: RunHost) -> None:
    report = run_host.probe("none", "--read-fd")
    token = report["token_line"].strip()
    path = report["environ"]["LLXPRT_CREDENTIAL_SOCKET"]
    assert run_host.sockets_left() == []
    with ProxyClient(path, token, timeout=5) as client, pytest.raises(ConnectFailedError):
        client.get_token("demo")


def test_exit_code_and_missing_command_with_no_sandbox(run_host: RunHost) -> None:
    assert run_host.run("--sandbox", "none", "--", "sh", "-c", "exit 9").returncode == 9
    assert run_host.run("--sandbox", "none", "--", "sh", "-c", "kill -KILL $$").returncode == 137
    missing = run_host.run("--sandbox", "none", "--", "no-such-command-credproxy")
    assert missing.returncode == 127
    assert run_host.sockets_left() == []


def test_bind_and_no_net_need_a_sandbox(run_host: RunHost) -> None:
    for flags in (["--bind", "/usr:/x"], ["--no-net"]):
        done = run_host.run("--sandbox", "none", *flags, "--", "true")
        assert done.returncode != 0
        assert "sandbox" in done.stderr


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_descriptors_inherited_by_run_do_not_reach_the_command(
    run_host: RunHost, sandbox: str
) -> None:
    """fd 4 and 7 are open (inheritable) in ``run``; the command gets 0-3 only."""
    extra = [] if sandbox == "none" else ["--bind", f"{PROBES}:{GUEST_PROBES}:ro"]
    script = (
        str(PROBES / "inspect_sandbox.py")
        if sandbox == "none"
        else (f"{GUEST_PROBES}/inspect_sandbox.py")
    )
    argv = run_host.argv("--sandbox", sandbox, *extra, "--", sys.executable, script)
    done = subprocess.run(
        ["sh", "-c", 'exec 4</dev/null 7</dev/null; exec "$@"', "sh", *argv],
        env=run_host.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fds = json.loads(done.stdout)["fds"]
    assert sorted(fds) == ["0", "1", "2", "3"]
    assert fds["3"].startswith("pipe:")


def test_a_file_that_cannot_be_executed_exits_126(run_host: RunHost) -> None:
    plain = run_host.root / "not-executable"
    plain.write_text("#!/bin/sh\nexit 0\n")
    for sandbox in ("none", "bwrap"):
        done = run_host.run("--sandbox", sandbox, "--", str(plain))
        assert done.returncode == 126, (sandbox, done.stderr)
        assert run_host.sockets_left() == []


def test_a_bad_providers_table_is_one_line_before_the_store_is_opened(run_host: RunHost) -> None:
    """The store here cannot open either; the config error still comes first, as in serve."""
    blocker = run_host.root / "not-a-directory"
    blocker.write_text("")
    run_host.config.write_text(
        f'[store]\nbackend = "file"\npath = "{blocker}"\nkey_source = "keyfile"\n'
        "[providers.demo]\nclient_id = 5\n"
    )
    marker = run_host.root / "ran"
    done = run_host.run("--sandbox", "none", "--", "touch", str(marker))
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        f"Error: config file {run_host.config}: [providers.demo] client_id: "
        "expected `str`, got `int`"
    ]
    assert not marker.exists()
    assert run_host.sockets_left() == []
