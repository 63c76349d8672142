"""``credproxy logout`` and ``login`` on the host when the store does not hold what the
user thinks: no token at all, or a damaged one (the file store's own tamper
check finds it; the test damages the ciphertext on disk as an attacker or a
bad disk would)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.daemon import daemon_env
from tests.fixtures.oidc import OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import LoginProcess, read_stored_token, write_config

URL_LINE = r"^\s+(http\S+)$"
OLD_REFRESH = "old-refresh-SECRET-0001"


def credproxy(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credproxy", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
        check=False,
    )


@pytest.fixture
def host(tmp_path: Path, oidc_server: OidcServer) -> tuple[Path, Path]:
    store_dir = tmp_path / "store"
    config = tmp_path / "config.toml"
    write_config(config, store_dir, {"paste": oidc_server.provider_table("pkce_redirect")})
    return config, store_dir


def seed_damaged_token(config: Path, store_dir: Path, provider: str) -> None:
    token = {
        "access_token": "old-access-SECRET",
        "refresh_token": OLD_REFRESH,
        "expiry": int(time.time()) + 600,
    }
    done = credproxy(config, "token", "import", provider, "--file", "-", stdin=json.dumps(token))
    assert done.returncode == 0, done.stderr
    path = store_dir / "credentials.json"
    document = json.loads(path.read_text())
    name = f"token/{provider}/default"
    record = document["records"][name]
    document["records"][name] = ("A" if record[0] != "A" else "B") + record[1:]
    path.write_text(json.dumps(document))


def test_logout_of_a_token_never_stored_does_not_claim_a_logout(host: tuple[Path, Path]) -> None:
    """A mistyped provider name used to print "Logged out of ..."."""
    config, _ = host
    done = credproxy(config, "logout", "antropic")
    assert done.returncode == 0, done.stderr
    assert "Logged out" not in done.stdout
    assert "Not logged in to antropic (bucket default)" in done.stderr


def test_logout_removes_a_damaged_token_without_a_traceback(host: tuple[Path, Path]) -> None:
    """Reading the damaged token for revocation used to raise out of ``asyncio.run``."""
    config, store_dir = host
    seed_damaged_token(config, store_dir, "paste")
    done = credproxy(config, "logout", "paste")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "damaged" in done.stderr
    assert "Logged out of paste" in done.stdout
    assert OLD_REFRESH not in done.stdout + done.stderr
    assert read_stored_token(store_dir, "paste", "default") is None


def test_logging_in_again_replaces_a_damaged_token(
    host: tuple[Path, Path],
    oidc_server: OidcServer,
    host_login_process: Callable[..., LoginProcess],
) -> None:
    """The damaged-record message says "log in again"; that login used to fail with a
    traceback after the provider had already issued the new token."""
    config, store_dir = host
    seed_damaged_token(config, store_dir, "paste")
    client = host_login_process(config, "paste")
    auth_url = client.read_line_matching(URL_LINE)[1]
    with HeadlessUser() as user:
        client.paste(user.copy_code(auth_url, oidc_server.oob_uri))
    status, stdout, stderr = client.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout)["ok"] is True
    stored = read_stored_token(store_dir, "paste", "default")
    assert stored is not None
    assert stored["refresh_token"] and stored["refresh_token"] != OLD_REFRESH
