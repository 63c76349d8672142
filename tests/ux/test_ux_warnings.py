"""What used to be accepted without a word: an expired token, a config file others
can read (holding a client_secret) or write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.daemon import daemon_env

CONFIG_WITH_SECRET = """
[providers.acme]
client_id = "credproxy-test-client"
client_secret = "test-client-secret-value"
authorization_endpoint = "https://auth.example.test/authorize"
token_endpoint = "https://auth.example.test/token"
"""


def credproxy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = daemon_env(
        {
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "CREDPROXY_KEY_SOURCE": "keyfile",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "credproxy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("token", "then"),
    [
        ({"access_token": "a-old", "expiry": 1_000_000_000}, "cannot be used: log in again"),
        (
            {"access_token": "a-old", "refresh_token": "r-old", "expiry": 1_000_000_000},
            "the host refreshes it on first use if [providers.acme] is configured",
        ),
    ],
)
def test_importing_an_expired_token_warns_and_still_stores_it(
    tmp_path: Path, token: dict[str, object], then: str
) -> None:
    source = tmp_path / "token.json"
    source.write_text(json.dumps(token))
    done = credproxy(tmp_path, "token", "import", "acme", "--file", str(source))
    assert done.returncode == 0, done.stderr
    warning = done.stderr.splitlines()
    assert len(warning) == 1
    assert warning[0].startswith("credproxy: warning: the imported token expired ")
    assert then in warning[0]
    assert "a-old" not in done.stderr and "r-old" not in done.stderr
    status = credproxy(tmp_path, "status", "--json")
    assert "acme" in json.loads(status.stdout)["providers"]


def test_importing_a_live_token_says_nothing_on_stderr(tmp_path: Path) -> None:
    source = tmp_path / "token.json"
    source.write_text(json.dumps({"access_token": "a-new", "expiry": time.time() + 3600}))
    done = credproxy(tmp_path, "token", "import", "acme", "--file", str(source))
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("mode", "body", "warned"),
    [
        (0o644, CONFIG_WITH_SECRET, True),
        (0o640, CONFIG_WITH_SECRET, True),
        (0o600, CONFIG_WITH_SECRET, False),
        (0o644, '[store]\nbackend = "memory"\n', False),
    ],
)
def test_a_client_secret_others_can_read_is_warned_about(
    tmp_path: Path, mode: int, body: str, warned: bool
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(body)
    config.chmod(mode)
    done = credproxy(tmp_path, "status", "--store", "memory", "--config", str(config))
    assert done.returncode == 0, done.stderr
    expected = (
        [
            f"credproxy: warning: config file {config} holds a client_secret and other users "
            f"can read it (mode {mode:04o}); run: chmod 600 {config}"
        ]
        if warned
        else []
    )
    assert done.stderr.splitlines() == expected
    assert "test-client-secret-value" not in done.stderr + done.stdout


@pytest.mark.parametrize("mode", [0o666, 0o602])
def test_a_config_file_anyone_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[store]\nbackend = "memory"\n')
    config.chmod(mode)
    done = credproxy(tmp_path, "status", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"credproxy: refusing config file {config}: every user can write it "
        f"(mode {mode:04o}) and so choose where your logins go; run: chmod go-w {config}"
    ]
    assert done.stdout == ""
