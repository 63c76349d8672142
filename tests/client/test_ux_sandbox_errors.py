"""Sandbox-side mistakes a new user makes, and the one line that tells them what to do.

Real ``credproxy`` processes against a real daemon (``daemon`` from the client
conftest), as in ``test_cli``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.client.conftest import ALPHA_WORK, SECRETS
from tests.client.test_cli import clean_env, run_cli, sandbox
from tests.fixtures.daemon import DaemonHandle

EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 4
EXIT_NOT_CONFIGURED = 6


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (["token", "get", "bad name!"], "provider"),
        (["token", "get", "alpha", "--bucket", "a/b"], "bucket"),
        (["key", "get", "no spaces please"], "key"),
    ],
)
def test_a_malformed_name_is_a_usage_error_naming_the_allowed_characters(
    daemon: DaemonHandle, args: list[str], kind: str
) -> None:
    """The daemon's schema wording ("invalid payload ... allowed form") and exit 1 said
    neither what was wrong nor that the mistake was the user's."""
    result = sandbox(daemon, *args)
    assert result.returncode == EXIT_USAGE, result
    assert f"invalid {kind} name: use 1 to 64 of A-Z a-z 0-9 . _ @ -" in result.stderr
    assert "payload" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_capability_token_says_how_to_pass_the_token_file(daemon: DaemonHandle) -> None:
    """Pasting only the socket export (or forgetting ``3<TOKEN_FILE``) used to end in a
    bare "missing or invalid capability token"."""
    result = run_cli(["token", "get", "alpha"], socket_path=daemon.socket_path)
    assert result.returncode == EXIT_UNAUTHORIZED, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "LLXPRT_CAPABILITY_FD=3" in lines[0]
    assert "3<TOKEN_FILE" in lines[0]


def test_a_grant_refusal_with_a_token_carries_no_token_hint(daemon: DaemonHandle) -> None:
    """With a token passed, a refusal is about the grant; the hint would mislead."""
    result = sandbox(daemon, "token", "get", "hidden")
    assert result.returncode == EXIT_UNAUTHORIZED, result
    assert "not permitted" in result.stderr
    assert "no capability token was passed" not in result.stderr


def test_an_expired_token_that_cannot_be_refreshed_fails_with_the_reason(
    daemon: DaemonHandle,
) -> None:
    """``token get`` used to print an expired access token with exit 0, so
    ``$(credproxy token get ...)`` fed a dead token to the next command. Here the
    host has no [providers.alpha] table, so the refresh it asks for fails: nothing
    on stdout, exit 1, and the reason on stderr."""
    result = sandbox(daemon, "token", "get", "alpha", "--bucket", "work")
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert ALPHA_WORK["access_token"] not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("credproxy: the token alpha (bucket work) expired ")
    assert "could not be refreshed" in lines[0]
    assert "no OAuth provider 'alpha'" in lines[0]
    for secret in SECRETS:
        assert secret not in result.stderr


@pytest.mark.parametrize("redirect", ["", "3</dev/null"])
def test_a_capability_fd_without_the_token_file_says_how_to_pass_it(
    daemon: DaemonHandle, redirect: str
) -> None:
    """Pasting ``export LLXPRT_CAPABILITY_FD=3`` and then running a command without
    ``3<TOKEN_FILE`` (or with the wrong file) named the problem but not the fix."""
    env = clean_env({"LLXPRT_CREDENTIAL_SOCKET": str(daemon.socket_path)})
    env["LLXPRT_CAPABILITY_FD"] = "3"
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'exec "$@" {redirect}',
            "bash",
            sys.executable,
            "-m",
            "credproxy",
            "status",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_NOT_CONFIGURED, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "LLXPRT_CAPABILITY_FD" in lines[0]
    assert "start the command with 3<TOKEN_FILE" in lines[0]
