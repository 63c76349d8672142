"""Binds that would hand a sandbox another way to credentials are refused.

``credproxy serve`` keeps its socket and a full-access capability token file in
``credproxy-<uid>`` under the runtime or temp directory, and the session bus
answers Secret Service requests. A ``--bind /tmp:...`` used to let the sandbox
read that token file and connect to that daemon with full access.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from credproxy.sandbox.launch import host_secret_paths, prepare
from credproxy.sandbox.spec import Mount, SandboxError, SandboxSpec

COMMAND = ("/usr/bin/true",)


def _spec(host: str) -> SandboxSpec:
    return SandboxSpec(command=COMMAND, socket_path="/nonexistent.sock", binds=(Mount(host, "/h"),))


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def test_binding_the_temp_dir_that_holds_daemon_tokens_is_refused() -> None:
    socket_dir = f"credproxy-{os.getuid()}"
    with pytest.raises(SandboxError, match=socket_dir):
        prepare("bwrap", _spec(tempfile.gettempdir()), _env())


def test_binding_the_runtime_dir_is_refused(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    with pytest.raises(SandboxError, match="refusing to expose"):
        prepare("bwrap", _spec(str(runtime)), _env(XDG_RUNTIME_DIR=str(runtime)))


def test_binding_the_directory_of_the_session_bus_is_refused(tmp_path: Path) -> None:
    bus_dir = tmp_path / "dbus"
    bus_dir.mkdir()
    address = f"unix:path={bus_dir / 'bus'},guid=0123"
    with pytest.raises(SandboxError, match="refusing to expose"):
        prepare("docker", _spec(str(bus_dir)), _env(DBUS_SESSION_BUS_ADDRESS=address))


def test_unrelated_binds_are_still_allowed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prepared = prepare("bwrap", _spec(str(work)), _env())
    assert str(work) in prepared.argv


def test_secret_paths_name_the_socket_dirs_bus_and_keyring() -> None:
    paths = host_secret_paths(
        {"XDG_RUNTIME_DIR": "/run/user/7", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/b/s"}, uid=7
    )
    assert "/run/user/7/credproxy-7" in paths
    assert os.path.join(tempfile.gettempdir(), "credproxy-7") in paths
    assert "/run/user/7/bus" in paths
    assert "/run/user/7/keyring" in paths
    assert "/b/s" in paths
