"""``credproxy doctor``: each check of the machine, with the fix when it is not ok."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import daemon_env

NAMES = ["python", "bubblewrap", "podman", "docker", "keyring", "config", "store"]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A fresh home, and an XDG_RUNTIME_DIR short enough for a socket path (pytest's
    tmp_path is not)."""
    runtime = Path(tempfile.mkdtemp(prefix="cpdoc-", dir="/tmp"))
    try:
        yield tmp_path, runtime
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def doctor(home: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    tmp_path, runtime = home
    base = {
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "CREDPROXY_KEY_SOURCE": "keyfile",
    }
    return subprocess.run(
        [sys.executable, "-m", "credproxy", "doctor", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in daemon_env(base).items() if k != "DBUS_SESSION_BUS_ADDRESS"},
        timeout=120,
        check=False,
    )


def checks_of(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    report = json.loads(done.stdout)
    return {check["name"]: check for check in report["checks"]}


def test_a_fresh_home_passes_and_reports_every_check(home: tuple[Path, Path]) -> None:
    tmp_path = home[0]
    done = doctor(home, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    checks = checks_of(done)
    assert list(checks) == [*NAMES, "socket directory"]
    assert checks["python"]["status"] == "ok"
    assert checks["config"]["detail"].startswith("no config file at ")
    assert checks["store"]["detail"].startswith(f"no store yet in {tmp_path / 'data'}")
    assert checks["socket directory"]["status"] == "ok"
    assert not (tmp_path / "data" / "credproxy").exists(), "doctor created the store"


def test_an_existing_store_is_opened_and_counted_never_shown(home: tuple[Path, Path]) -> None:
    tmp_path = home[0]
    env = daemon_env(
        {
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "CREDPROXY_KEY_SOURCE": "keyfile",
        }
    )
    subprocess.run(
        [sys.executable, "-m", "credproxy", "key", "set", "openai"],
        input="sk-doctor-value\n",
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    done = doctor(home, "--json")
    store = checks_of(done)["store"]
    assert store["status"] == "ok", store
    assert store["detail"].endswith(": 0 tokens, 1 API keys")
    assert "sk-doctor-value" not in done.stdout


def test_a_broken_config_fails_with_the_file_to_edit_and_skips_the_store(
    home: tuple[Path, Path],
) -> None:
    config = home[0] / "config.toml"
    config.write_text("[store\n")
    done = doctor(home, "--json", "--config", str(config))
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False
    checks = checks_of(done)
    assert checks["config"]["status"] == "fail"
    assert "is not valid TOML" in checks["config"]["detail"]
    assert checks["config"]["fix"] == f"edit {config} (see docs/providers.md)"
    assert checks["store"]["status"] == "info"


def test_a_socket_directory_others_can_enter_fails_with_the_chmod(
    home: tuple[Path, Path],
) -> None:
    directory = home[1] / f"credproxy-{os.getuid()}"
    directory.mkdir()
    directory.chmod(0o755)
    done = doctor(home)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("fail  socket directory"))
    assert f"run `chmod 700 {directory}`" in lines[failed]
    assert lines[failed + 1].strip().startswith("fix: ")


def test_node_is_checked_only_when_the_tests_are_wanted(home: tuple[Path, Path]) -> None:
    assert "node" not in checks_of(doctor(home, "--json"))
    node = checks_of(doctor(home, "--json", "--tests"))["node"]
    assert node["status"] in {"ok", "fail"}
    if node["status"] == "fail":
        assert "scripts/setup --test" in node["fix"]
