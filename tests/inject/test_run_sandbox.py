"""``credproxy run --sandbox bwrap --inject``: real clients in a real sandbox, a real upstream.

The upstream is the trustme-certified aiohttp server; ``[inject] resolve``
maps its names to 127.0.0.1 on the host and the run process trusts its CA
through ``SSL_CERT_FILE``. Inside, the sandbox has no network: the clients
reach the proxy through the relay only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

from tests.inject.upstream import API_HOST, CANARY, Upstream

VENV_BIN = Path(sys.executable).parent
PROBES = Path(__file__).resolve().parent / "probes"
OPENAI_CANARY = "sk-proj-" + "Oq3Zr7Tn1Wv5Xb9Yc2Ud6Ke0Lf4Mg8Nh2Pi6Qj0Rk4Sl8Tm2Un6Vo0Wp4Xq8Yr2Zs6"
GIT_CANARY = "ghp_" + "Gx4Hy8Jz2Ka6Lb0Mc4Nd8Pe2Qf6Rg0Sh4Tj8Uk2Vl6Wm0Xn"
PASSPHRASE = "inject-test-passphrase"
RUN_TIMEOUT_S = 120.0

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


@dataclass
class Host:
    root: Path
    config: Path
    env: dict[str, str]

    async def run(self, *args: str) -> tuple[int, bytes, bytes]:
        child = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "credproxy"),
            "run",
            "--config",
            str(self.config),
            *args,
            env=self.env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(child.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            child.kill()
            stdout, stderr = await child.communicate()
            pytest.fail(f"credproxy run did not finish: {stderr.decode(errors='replace')}")
        assert child.returncode is not None
        return child.returncode, stdout, stderr


def _write_config(path: Path, store: Path, upstream: Upstream) -> None:
    origin = upstream.url(API_HOST)
    git = upstream.url("git.upstream.test")
    path.write_text(
        f"""
[store]
backend = "file"
path = "{store}"

[inject]
resolve = {{ "api.upstream.test" = "127.0.0.1", "git.upstream.test" = "127.0.0.1" }}

[routes.anthropic]
upstream = "{origin}"
allow_private = true

[routes.openai]
upstream = "{origin}/v1"
allow_private = true

[routes.git]
upstream = "{git}"
allow_private = true
key = "gitkey"
header = "authorization"
format = "Basic {{}}"
basic_user = "x-access-token"
methods = ["GET", "POST"]
secret_env = "GIT_TOKEN"
""",
        encoding="utf-8",
    )


@pytest.fixture
def host(tmp_path: Path, ca: trustme.CA, upstream: Upstream) -> Iterator[Host]:
    store = tmp_path / "store"
    config = tmp_path / "config.toml"
    _write_config(config, store, upstream)
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    runtime = tempfile.mkdtemp(prefix="cpi-", dir="/tmp")  # sun_path has room for 107 bytes
    env = {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "CREDPROXY_PASSPHRASE": PASSPHRASE,
        "SSL_CERT_FILE": str(ca_file),
        "XDG_RUNTIME_DIR": runtime,
        "LANG": "C.UTF-8",
    }
    for name, value in (("anthropic", CANARY), ("openai", OPENAI_CANARY), ("gitkey", GIT_CANARY)):
        subprocess.run(
            [str(VENV_BIN / "credproxy"), "key", "set", "--config", str(config), name],
            input=value,
            text=True,
            env=env,
            check=True,
            capture_output=True,
        )
    try:
        yield Host(tmp_path, config, env)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _forms(secret: str) -> list[bytes]:
    return [
        secret.encode(),
        quote(secret, safe="").encode(),
        base64.b64encode(secret.encode()),
        base64.b64encode(secret.encode())[:-4],
    ]


async def test_sdks_and_tools_in_bwrap_reach_the_upstream_with_the_secret_they_never_see(
    host: Host, upstream: Upstream
) -> None:
    code, stdout, stderr = await host.run(
        "--sandbox",
        "bwrap",
        "--inject",
        "anthropic",
        "--inject",
        "openai",
        "--bind",
        f"{PROBES}:/probes:ro",
        "--",
        sys.executable,
        "/probes/clients.py",
    )
    assert code == 0, stderr.decode()
    results = json.loads(stdout.split(b"\n", 1)[0])
    stand_in = results["anthropic_key"]
    openai_stand_in = results["openai_key"]
    assert results["anthropic_base_url"] == "http://127.0.0.1:18080/anthropic"
    assert stand_in.startswith("sk-canary-") and len(stand_in) == len(CANARY)
    assert results["anthropic"] == f"key={stand_in}"
    assert results["anthropic_stream"] == f"key={stand_in}"
    assert results["openai"] == f"key={openai_stand_in}"
    assert results["openai_stream"] == f"key={openai_stand_in}"
    for tool in ("requests", "curl", "node"):
        assert f'"x-api-key": "{stand_in}"' in results[tool], (tool, results[tool])
    assert results["refused"][0] == 403
    anthropic_calls = [s for s in upstream.seen if s.path == "/v1/messages"]
    assert len(anthropic_calls) == 2
    assert {s.headers["authorization"] for s in anthropic_calls} == {f"Bearer {CANARY}"}
    echo_calls = [s for s in upstream.seen if s.path == "/v1/echo"]
    assert {s.headers["x-api-key"] for s in echo_calls} == {CANARY}
    assert {
        s.headers["authorization"] for s in upstream.seen if s.path == "/v1/chat/completions"
    } == {f"Bearer {OPENAI_CANARY}"}
    assert {s.query for s in upstream.seen if s.path == "/v1/echo"} == {
        "from=requests",
        "from=curl",
        "from=node",
    }
    everything = stdout + stderr
    for secret in (CANARY, OPENAI_CANARY):
        for form in _forms(secret):
            assert form not in everything


def _make_repo(root: Path) -> Path:
    work = root / "work"
    bare = root / "repo.git"
    git_env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.test",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=git_env)
    (work / "README").write_text("cloned through the proxy\n")
    subprocess.run(["git", "-C", str(work), "add", "README"], check=True, env=git_env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], check=True, env=git_env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=git_env)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True, env=git_env)
    return bare


async def test_git_clones_over_https_through_interception_after_a_401_challenge(
    host: Host, upstream: Upstream
) -> None:
    upstream.git_root = _make_repo(host.root)
    upstream.git_password = GIT_CANARY
    script = (
        "git -c credential.helper= -c credential.helper='!f() { echo username=x-access-token; "
        'echo "password=$GIT_TOKEN"; }; f\' clone -q '
        f"https://git.upstream.test:{upstream.port}/repo.git /tmp/clone && cat /tmp/clone/README"
        " && env"
    )
    code, stdout, stderr = await host.run(
        "--sandbox",
        "bwrap",
        "--inject",
        "git",
        "--intercept",
        "git.upstream.test",
        "--",
        "sh",
        "-c",
        script,
    )
    assert code == 0, stderr.decode()
    assert stdout.startswith(b"cloned through the proxy\n")
    statuses = [s.headers.get("authorization") for s in upstream.seen]
    assert statuses[0] is None
    real = "Basic " + base64.b64encode(f"x-access-token:{GIT_CANARY}".encode()).decode()
    assert statuses[1:] and set(statuses[1:]) == {real}
    for form in _forms(GIT_CANARY):
        assert form not in stdout + stderr
    assert b"HTTPS_PROXY=http://127.0.0.1:18081" in stdout
    assert b"GIT_SSL_CAINFO=/run/credproxy-inject/ca-bundle.pem" in stdout


async def test_without_a_sandbox_the_proxy_listens_on_host_loopback_and_still_injects(
    host: Host, upstream: Upstream
) -> None:
    code, stdout, stderr = await host.run(
        "--sandbox",
        "none",
        "--inject",
        "anthropic",
        "--",
        "sh",
        "-c",
        'echo "$ANTHROPIC_BASE_URL"; '
        'curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" "$ANTHROPIC_BASE_URL/v1/echo"',
    )
    assert code == 0, stderr.decode()
    base, answer = stdout.decode().split("\n", 1)
    assert base.startswith("http://127.0.0.1:") and base.endswith("/anthropic")
    assert upstream.seen[-1].headers["x-api-key"] == CANARY
    for form in _forms(CANARY):
        assert form not in stdout + stderr
    assert '"x-api-key": "sk-canary-' in answer


async def test_the_relay_hands_back_the_commands_exit_status(host: Host) -> None:
    code, _, stderr = await host.run("--inject", "anthropic", "--", "sh", "-c", "exit 7")
    assert code == 7, stderr.decode()
