"""``credproxy login`` / ``logout`` on the host, without a daemon: the same flows,
straight into the host store, and revocation at the provider on logout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.daemon import daemon_env
from tests.fixtures.oidc import CLIENT_ID, OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import LoginProcess, read_stored_token, write_config

URL_LINE = r"^\s+(http\S+)$"
DEVICE_LINE = r"^Open (\S+) and enter the code: (\S+)$"


@dataclass
class Host:
    """The config file and store directory of a host without a daemon."""

    config_path: Path
    store_dir: Path

    def stored_token(self, provider: str, bucket: str = "default") -> dict[str, Any] | None:
        return read_stored_token(self.store_dir, provider, bucket)


@pytest.fixture
def host(tmp_path: Path, oidc_server: OidcServer) -> Host:
    store_dir = tmp_path / "store"
    config_path = tmp_path / "config.toml"
    write_config(
        config_path,
        store_dir,
        {
            "paste": oidc_server.provider_table("pkce_redirect"),
            "device": oidc_server.provider_table("device_code"),
        },
    )
    return Host(config_path, store_dir)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "credproxy", *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
        check=False,
    )


def refresh_at_provider(server: OidcServer, refresh_token: str) -> dict[str, Any]:
    response = httpx.post(
        server.url("/token"),
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
        },
    )
    body: dict[str, Any] = response.json()
    return body


def test_host_code_paste_login_stores_the_token_and_logout_revokes_it(
    host: Host,
    oidc_server: OidcServer,
    host_login_process: Callable[..., LoginProcess],
) -> None:
    client = host_login_process(host.config_path, "paste")
    auth_url = client.read_line_matching(URL_LINE)[1]
    with HeadlessUser() as user:
        client.paste(user.copy_code(auth_url, oidc_server.oob_uri))
    status, stdout, stderr = client.finish()
    assert status == 0, stderr
    assert json.loads(stdout)["flow_type"] == "pkce_redirect"
    stored = host.stored_token("paste")
    assert stored is not None and stored["refresh_token"]

    out = run_cli("logout", "paste", "--config", str(host.config_path))
    assert out.returncode == 0, out.stderr
    assert "revoked at the provider" in out.stdout
    assert host.stored_token("paste") is None
    assert refresh_at_provider(oidc_server, stored["refresh_token"])["error"] == "invalid_grant"


def test_host_device_login_polls_in_the_cli_process(
    host: Host, host_login_process: Callable[..., LoginProcess]
) -> None:
    client = host_login_process(host.config_path, "device", "--bucket", "ci")
    found = client.read_line_matching(DEVICE_LINE)
    with HeadlessUser() as user:
        user.enter_device_code(found[1], found[2])
    status, stdout, stderr = client.finish()
    assert status == 0, stderr
    assert json.loads(stdout)["bucket"] == "ci"
    stored = host.stored_token("device", "ci")
    assert stored is not None and stored["refresh_token"]


def test_host_login_for_an_unconfigured_provider_says_where_to_configure_it(
    host: Host,
) -> None:
    out = run_cli("login", "nowhere", "--config", str(host.config_path))
    assert out.returncode == 1
    assert "[providers.nowhere]" in out.stderr
    assert "docs/providers.md" in out.stderr
