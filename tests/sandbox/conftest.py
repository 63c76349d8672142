"""A host for ``credproxy run``: a seeded encrypted file store, a private runtime
directory for the socket, and helpers that run the real CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from credproxy.settings import load_settings
from credproxy.store.factory import open_store

VENV_BIN = Path(sys.executable).parent
PROBES = Path(__file__).resolve().parent / "probes"
GUEST_PROBES = "/probes"
RUN_TIMEOUT_S = 60.0

DEMO_ACCESS = "demo-access-4f1c9a"
DEMO_REFRESH = "demo-refresh-NEVER-LEAVES-7d2e"
OTHER_ACCESS = "other-access-b7e210"
KEY_VALUE = "sk-demo-key-9c41"
HOST_MARKER = "host-only-marker-5a8e"
OUTER_TOKEN = "f" * 64
TOKEN_LINE = re.compile(r"[0-9a-f]{64}\n")
"""A capability token as it travels on fd 3."""
"""A capability token in the caller's environment: ``run`` must not pass it on."""


@dataclass
class RunHost:
    root: Path
    store_dir: Path
    config: Path
    runtime_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return [str(VENV_BIN / "credproxy"), "run", "--config", str(self.config), *args]

    def run(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Started in a new session: no controlling terminal, as under CI."""
        child = subprocess.Popen(
            self.argv(*args),
            env=self.env,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.children.append(child)
        return child

    def probe(self, sandbox: str, *args: str, run_args: Sequence[str] = ()) -> dict[str, Any]:
        """Run the inspection probe in ``sandbox`` and return its report."""
        if sandbox == "none":
            script = str(PROBES / "inspect_sandbox.py")
            extra: list[str] = []
        else:
            script = f"{GUEST_PROBES}/inspect_sandbox.py"
            extra = ["--bind", f"{PROBES}:{GUEST_PROBES}:ro"]
        done = self.run(
            "--sandbox", sandbox, *extra, *run_args, "--", sys.executable, script, *args
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def sockets_left(self) -> list[str]:
        return sorted(
            str(p) for p in self.runtime_dir.rglob("*") if p.is_socket() or p.suffix == ".sock"
        )


def make_rootfs(rootfs: Path) -> Path:
    """An empty root for a container: the host's /usr and Python are bound in."""
    for name in ("usr", "proc", "dev", "sys", "tmp", "run", "etc"):
        (rootfs / name).mkdir(parents=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (rootfs / name).symlink_to(f"usr/{name}")
    return rootfs


def runtime_binds() -> list[str]:
    """``--bind`` flags for /usr, this Python, the credproxy source and the probes."""
    import credproxy

    source = Path(credproxy.__file__).resolve().parents[1]
    paths = {"/usr", sys.prefix, sys.base_prefix, str(source), str(PROBES)}
    args: list[str] = []
    for path in sorted(paths):
        args += ["--bind", f"{path}:{path}:ro"]
    return args


async def _seed(config: Path) -> None:
    store = open_store(None, load_settings(config))
    try:
        await store.save_token(
            "demo",
            "default",
            {
                "access_token": DEMO_ACCESS,
                "refresh_token": DEMO_REFRESH,
                "expiry": 4_102_444_800,
                "token_type": "Bearer",
            },
        )
        await store.save_token(
            "other",
            "default",
            {"access_token": OTHER_ACCESS, "expiry": 4_102_444_800, "token_type": "Bearer"},
        )
        await store.set_key("k1", KEY_VALUE)
    finally:
        await store.close()


@pytest.fixture
def run_host() -> Iterator[RunHost]:
    # A short private root: the socket path must fit sun_path.
    root = Path(tempfile.mkdtemp(prefix="cprun-"))
    try:
        store_dir = root / "store"
        runtime_dir = root / "rt"
        home = root / "home"
        for directory in (runtime_dir, home):
            directory.mkdir(mode=0o700)
        config = root / "config.toml"
        config.write_text(
            f'[store]\nbackend = "file"\npath = "{store_dir}"\nkey_source = "keyfile"\n'
        )
        asyncio.run(_seed(config))
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime_dir),
            "LANG": "C.UTF-8",
            "CREDPROXY_TEST_MARKER": HOST_MARKER,
            "LLXPRT_CAPABILITY_TOKEN": OUTER_TOKEN,
        }
        host = RunHost(root, store_dir, config, runtime_dir, env)
        yield host
        for child in host.children:
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
