"""The sandbox commands end to end: real ``credproxy`` processes against a real daemon,
with the socket in the environment and the capability token on fd 3."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import ALPHA, KEYS, SECRETS, TOKENS
from tests.fixtures.daemon import DaemonFactory, DaemonHandle

EXIT_NOT_FOUND = 3
EXIT_UNAUTHORIZED = 4
EXIT_CONNECTION = 5
EXIT_NOT_CONFIGURED = 6


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLXPRT_", "CREDPROXY_"))}
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    *,
    socket_path: Path | str | None = None,
    fd_token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``credproxy ARGS``; ``fd_token`` arrives on fd 3 as the launcher passes it."""
    extra = dict(env or {})
    if socket_path is not None:
        extra["LLXPRT_CREDENTIAL_SOCKET"] = str(socket_path)
    command = [sys.executable, "-m", "credproxy", *args]
    pass_fds: tuple[int, ...] = ()
    read_fd = None
    if fd_token is not None:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, fd_token.encode() + b"\n")
        os.close(write_fd)
        extra["LLXPRT_CAPABILITY_FD"] = "3"
        pass_fds = (read_fd,)
        if read_fd != 3:
            command = ["bash", "-c", f'exec "$@" 3<&{read_fd} {read_fd}<&-', "bash", *command]
    try:
        done = subprocess.run(
            command,
            env=clean_env(extra),
            pass_fds=pass_fds,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        if read_fd is not None:
            os.close(read_fd)
    return Result(done.returncode, done.stdout, done.stderr)


def sandbox(daemon: DaemonHandle, *args: str) -> Result:
    return run_cli(args, socket_path=daemon.socket_path, fd_token=daemon.capability_token)


def assert_one_line_error(result: Result, exit_code: int, *secrets: str) -> None:
    assert result.returncode == exit_code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("credproxy: ")
    assert "Traceback" not in result.stderr
    for secret in (*SECRETS, *secrets):
        assert secret not in result.stderr


def test_token_get_prints_the_access_token_alone(daemon: DaemonHandle) -> None:
    result = sandbox(daemon, "token", "get", "alpha")
    assert result.returncode == 0, result
    assert result.stdout == ALPHA["access_token"] + "\n"
    assert result.stderr == ""


def test_token_get_json_prints_the_token_object_without_refresh_token(
    daemon: DaemonHandle,
) -> None:
    """(alpha/work has expired and cannot be refreshed here, so it no longer prints.)"""
    result = sandbox(daemon, "token", "get", "alpha", "--bucket", "default", "--json")
    assert result.returncode == 0, result
    expected = {k: v for k, v in TOKENS[("alpha", "default")].items() if k != "refresh_token"}
    assert json.loads(result.stdout) == expected
    assert "refresh" not in result.stdout


def test_key_get_prints_the_bare_value_or_json_with_name_and_key(daemon: DaemonHandle) -> None:
    plain = sandbox(daemon, "key", "get", "openai")
    assert (plain.returncode, plain.stdout) == (0, KEYS["openai"] + "\n")
    as_json = sandbox(daemon, "key", "get", "anthropic", "--json")
    assert json.loads(as_json.stdout) == {"name": "anthropic", "key": KEYS["anthropic"]}


def test_key_list_shows_granted_names_only(daemon: DaemonHandle) -> None:
    plain = sandbox(daemon, "key", "list")
    assert (plain.returncode, plain.stdout) == (0, "anthropic\nopenai\n")
    as_json = sandbox(daemon, "key", "list", "--json")
    assert json.loads(as_json.stdout) == {"keys": ["anthropic", "openai"]}
    for value in KEYS.values():
        assert value not in plain.stdout + as_json.stdout


@pytest.fixture
def fresh_daemon(credproxy_daemon: DaemonFactory) -> DaemonHandle:
    """Tokens whose expiry is set just before the daemon starts, for countdown output."""
    now = time.time()
    tokens: dict[tuple[str, str], dict[str, Any]] = {
        ("alpha", "default"): {**ALPHA, "expiry": now + 3300},
        ("alpha", "work"): {**TOKENS[("alpha", "work")], "expiry": now - 200},
        ("beta", "default"): {**TOKENS[("beta", "default")], "expiry": now + 3 * 86_400 + 7300},
        ("hidden", "default"): TOKENS[("hidden", "default")],
    }
    return credproxy_daemon(
        "--allow", "alpha", "--allow", "beta", "--allow-key", "openai", tokens=tokens, keys=KEYS
    )


def test_status_shows_expiry_countdowns_and_names_never_values(fresh_daemon: DaemonHandle) -> None:
    result = sandbox(fresh_daemon, "status")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("credproxy sandbox view")
    assert lines[1:] == [
        "providers:",
        "  alpha",
        "    default: expires in 54m",
        "    work: expired 3m ago",
        "  beta",
        "    default: expires in 3d 2h",
        "api keys:",
        "  openai",
    ]
    for token in TOKENS.values():
        assert token["access_token"] not in result.stdout
    assert KEYS["openai"] not in result.stdout


def test_status_json_reports_expiry_in_seconds(fresh_daemon: DaemonHandle) -> None:
    result = sandbox(fresh_daemon, "status", "--json")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    assert report["mode"] == "sandbox"
    assert report["protocolVersion"] == 2
    assert report["keys"] == ["openai"]
    alpha = report["providers"]["alpha"]
    assert set(report["providers"]) == {"alpha", "beta"}
    assert 3240 < alpha["default"]["expiresIn"] <= 3300
    assert alpha["default"]["status"] == "expires in 54m"
    assert -260 < alpha["work"]["expiresIn"] <= -200
    assert "access_token" not in result.stdout


def test_missing_key_exits_not_found(daemon: DaemonHandle) -> None:
    assert_one_line_error(sandbox(daemon, "key", "get", "absent"), EXIT_NOT_FOUND)


def test_missing_token_exits_not_found(daemon: DaemonHandle) -> None:
    assert_one_line_error(
        sandbox(daemon, "token", "get", "alpha", "--bucket", "nope"), EXIT_NOT_FOUND
    )


@pytest.mark.parametrize(
    "args",
    [
        ("token", "get", "hidden"),
        ("token", "get", "beta", "--bucket", "other", "--json"),
        ("key", "get", "hiddenkey"),
    ],
)
def test_outside_the_grant_exits_unauthorized_without_leaking(
    daemon: DaemonHandle, args: tuple[str, ...]
) -> None:
    assert_one_line_error(sandbox(daemon, *args), EXIT_UNAUTHORIZED)


def test_wrong_capability_token_exits_unauthorized_and_is_not_echoed(
    daemon: DaemonHandle,
) -> None:
    wrong = "c0ffee" * 10 + "abcd"
    result = run_cli(["token", "get", "alpha"], socket_path=daemon.socket_path, fd_token=wrong)
    assert_one_line_error(result, EXIT_UNAUTHORIZED, wrong)


def test_malformed_capability_token_exits_not_configured_and_is_not_echoed(
    daemon: DaemonHandle,
) -> None:
    assert daemon.capability_token is not None
    bad = daemon.capability_token.upper()
    result = run_cli(
        ["key", "get", "openai"],
        socket_path=daemon.socket_path,
        env={"LLXPRT_CAPABILITY_TOKEN": bad},
    )
    assert_one_line_error(result, EXIT_NOT_CONFIGURED, bad, daemon.capability_token)
    assert "LLXPRT_CAPABILITY_TOKEN" in result.stderr


def test_token_in_the_environment_variable_also_works(daemon: DaemonHandle) -> None:
    assert daemon.capability_token is not None
    result = run_cli(
        ["key", "get", "openai"],
        socket_path=daemon.socket_path,
        env={"LLXPRT_CAPABILITY_TOKEN": daemon.capability_token},
    )
    assert (result.returncode, result.stdout) == (0, KEYS["openai"] + "\n")


def test_killed_daemon_exits_with_the_connection_code(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(tokens=TOKENS, keys=KEYS)
    assert daemon.capability_token is not None
    daemon.process.kill()
    daemon.process.wait()
    result = sandbox(daemon, "token", "get", "alpha")
    assert_one_line_error(result, EXIT_CONNECTION, daemon.capability_token)
    assert str(daemon.socket_path) in result.stderr


def test_key_get_outside_a_sandbox_says_how_to_use_it() -> None:
    result = run_cli(["key", "get", "openai"])
    assert_one_line_error(result, EXIT_NOT_CONFIGURED)
    assert "LLXPRT_CREDENTIAL_SOCKET" in result.stderr
    assert "credproxy run" in result.stderr


def test_token_get_outside_a_sandbox_reads_the_host_store() -> None:
    result = run_cli(["token", "get", "alpha", "--store", "memory"])
    assert_one_line_error(result, EXIT_NOT_FOUND)
    assert "no token alpha (bucket default) in the store" in result.stderr
    assert "credproxy login alpha" in result.stderr


def test_usage_errors_exit_2() -> None:
    result = run_cli(["token", "get"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args", [("token", "get", "--help"), ("key", "get", "--help"), ("status", "--help")]
)
def test_help_documents_the_exit_codes(args: tuple[str, ...]) -> None:
    result = run_cli(args)
    assert result.returncode == 0
    assert "Exit codes:" in result.stdout
    assert re.search(r"^\s+5\s+cannot reach the proxy", result.stdout, re.MULTILINE)


def test_token_get_loads_nothing_from_the_host_side(daemon: DaemonHandle) -> None:
    """Start-up stays light: the sandbox path never imports the daemon, store, OAuth
    or even asyncio (the blocking client needs no event loop)."""
    script = (
        "import sys\n"
        "from credproxy.cli import main\n"
        "try:\n"
        "    main(['token', 'get', 'alpha'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('credproxy.server', 'credproxy.store', 'credproxy.oauth', "
        "'credproxy.sessions', 'aiohttp', 'rich', 'cryptography', 'keyring', 'asyncio')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy "
        "or m.startswith(heavy))), file=sys.stderr)\n"
    )
    assert daemon.capability_token is not None
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(
            {
                "LLXPRT_CREDENTIAL_SOCKET": str(daemon.socket_path),
                "LLXPRT_CAPABILITY_TOKEN": daemon.capability_token,
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == ALPHA["access_token"] + "\n"
    assert done.stderr.strip() == ""


def test_host_status_without_a_socket_reads_the_store_names_only(
    fresh_daemon: DaemonHandle,
) -> None:
    config = fresh_daemon.workdir / "config.toml"
    result = run_cli(["status", "--config", str(config)])
    assert result.returncode == 0, result
    assert result.stdout.startswith("credproxy host view")
    assert "    work: expired 3m ago, refresh token held" in result.stdout
    assert "  hidden\n" in result.stdout
    for token in TOKENS.values():
        assert token["access_token"] not in result.stdout
        assert token["refresh_token"] not in result.stdout
    report = json.loads(run_cli(["status", "--json", "--config", str(config)]).stdout)
    assert report["mode"] == "host"
    assert set(report["providers"]) == {"alpha", "beta", "hidden"}


def test_host_key_list_without_a_socket_lists_every_stored_name(daemon: DaemonHandle) -> None:
    config = daemon.workdir / "config.toml"
    plain = run_cli(["key", "list", "--config", str(config)])
    assert (plain.returncode, plain.stdout) == (0, "anthropic\nhiddenkey\nopenai\n")
    as_json = run_cli(["key", "list", "--json", "--config", str(config)])
    assert json.loads(as_json.stdout) == {"keys": ["anthropic", "hiddenkey", "openai"]}


def test_host_store_options_inside_a_sandbox_are_a_usage_error(daemon: DaemonHandle) -> None:
    result = sandbox(daemon, "status", "--store", "memory")
    assert result.returncode == 2
    assert "inside a sandbox" in result.stderr
    assert "Traceback" not in result.stderr
