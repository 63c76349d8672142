"""A host for preset logins from a sandbox: the fake providers (one of each, shared by the
module), a config that overrides only each preset's endpoints and client id, and
``credproxy run --sandbox bwrap`` around a recording relay and ``credproxy login``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from credproxy.store.factory import open_store
from tests.fixtures.settings import store_settings
from tests.oauth.harness import LoginProcess
from tests.providers import fakes

VENV_BIN = Path(sys.executable).parent
PROBES = Path(__file__).resolve().parent / "probes"


def overrides(name: str, server: fakes.FakeProvider) -> dict[str, Any]:
    """Only where the preset sends its calls, and whose client it is."""
    table: dict[str, Any] = {"client_id": server.client_id}
    if server.client_secret is not None:
        table["client_secret"] = server.client_secret
    if name == "google":
        table["issuer"] = server.base_url
    elif name == "microsoft":
        table["base_url"] = server.base_url + "/organizations"
    elif name == "anthropic":
        table["authorization_endpoint"] = server.base_url + "/oauth/authorize"
        table["token_endpoint"] = server.base_url + "/v1/oauth/token"
    else:
        table["base_url"] = server.base_url
    return table


def toml_table(name: str, table: dict[str, Any]) -> str:
    lines = [f"[providers.{name}]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@dataclass
class PresetHost:
    root: Path
    store_dir: Path
    config: Path
    env: dict[str, str]
    started: list[LoginProcess]

    def configure(self, tables: dict[str, dict[str, Any]]) -> None:
        text = (
            f'[store]\nbackend = "file"\npath = {json.dumps(str(self.store_dir))}\n'
            'key_source = "keyfile"\n'
        )
        self.config.write_text(text + "".join(toml_table(n, t) for n, t in tables.items()))

    def sandboxed(self, name: str, script: str, *run_args: str) -> tuple[LoginProcess, Path]:
        """``script`` run by ``sh`` in bwrap behind the recording relay; returns the
        process and the file that will hold every byte the daemon sent into the sandbox."""
        record_dir = Path(tempfile.mkdtemp(dir=self.root, prefix="rec-"))
        argv = [
            str(VENV_BIN / "credproxy"),
            "run",
            "--config",
            str(self.config),
            "--sandbox",
            "bwrap",
            "--allow",
            name,
            "--bind",
            f"{PROBES}:/probes:ro",
            "--bind",
            f"{record_dir}:/record",
            *run_args,
            "--",
            sys.executable,
            "/probes/relay_login.py",
            "/record/bytes",
            script,
        ]
        process = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        login = LoginProcess(process)
        self.started.append(login)
        return login, record_dir / "bytes"

    def stored(self, provider: str, bucket: str = "default") -> dict[str, Any] | None:
        async def read() -> dict[str, Any] | None:
            store = open_store("file", store_settings(self.store_dir))
            try:
                return await store.get_token(provider, bucket)
            finally:
                await store.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def fake_providers() -> Iterator[dict[str, fakes.FakeProvider]]:
    servers: dict[str, fakes.FakeProvider] = {
        "github": fakes.GitHubOAuthApp(),
        "github-app": fakes.GitHubApp(),
        "google": fakes.Google(client_secret="desktop-secret-GOCSPX-test"),
        "microsoft": fakes.Microsoft(),
        "gitlab": fakes.GitLab(),
        "anthropic": fakes.Anthropic(),
        "codex": fakes.Codex(),
    }
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def preset_host(fake_providers: dict[str, fakes.FakeProvider]) -> Iterator[PresetHost]:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed; run scripts/setup", pytrace=False)
    for server in fake_providers.values():
        server.reset()
    root = Path(tempfile.mkdtemp(prefix="cppre-"))
    runtime_dir = root / "rt"
    home = root / "home"
    for directory in (runtime_dir, home):
        directory.mkdir(mode=0o700)
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "LANG": "C.UTF-8",
    }
    host = PresetHost(root, root / "store", root / "config.toml", env, [])
    try:
        yield host
    finally:
        for process in host.started:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)


Opener = Callable[[str], Any]
