"""The sandbox commands inside ``credproxy run``: the launcher passes the socket and the
token on fd 3, the commands find both, and the grant decides what they see."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.client.conftest import ALPHA, KEYS, SECRETS
from tests.fixtures.daemon import DaemonHandle

EXIT_UNAUTHORIZED = 4


def run_in_sandbox(daemon: DaemonHandle, kind: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = daemon.workdir / "config.toml"
    return subprocess.run(
        [
            sys.executable, "-m", "credproxy", "run", "--sandbox", kind,
            "--allow", "alpha", "--allow-key", "openai", "--config", str(config), "--",
            sys.executable, "-m", "credproxy", *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["none", "bwrap"])
def test_token_get_inside_credproxy_run_reads_the_granted_token(
    daemon: DaemonHandle, kind: str
) -> None:
    result = run_in_sandbox(daemon, kind, "token", "get", "alpha")
    assert (result.returncode, result.stdout) == (0, ALPHA["access_token"] + "\n"), result.stderr
    keys = run_in_sandbox(daemon, kind, "key", "list", "--json")
    assert keys.stdout == '{"keys": ["openai"]}\n'


@pytest.mark.parametrize("kind", ["none", "bwrap"])
def test_key_outside_the_run_grant_is_refused_inside_the_sandbox(
    daemon: DaemonHandle, kind: str
) -> None:
    result = run_in_sandbox(daemon, kind, "key", "get", "anthropic")
    assert result.returncode == EXIT_UNAUTHORIZED
    assert KEYS["anthropic"] not in result.stdout + result.stderr
    assert not any(secret in result.stderr for secret in SECRETS)
    assert "Traceback" not in result.stderr
