"""Cancelling a prompt at a real terminal: one line in credproxy's voice, nothing saved.

Ctrl-C at ``key set``'s hidden prompt printed ``credproxy: unexpected Abort;
nothing was printed`` and exited 1; Ctrl-C at the store passphrase prompt
printed click's bare ``Aborted!``. Now Ctrl-C exits 130 and Ctrl-D (end of
input) exits 1, each with ``credproxy: cancelled (...); nothing was saved``.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.daemon import daemon_env
from tests.ux.test_ux_login_terminal import read_until

CTRL_C = b"\x03"
CTRL_D = b"\x04"


def _drain(fd: int, seen: bytearray) -> None:
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        seen += chunk


def _at_terminal(
    args: list[str], env: dict[str, str], prompt: bytes, keys: bytes
) -> tuple[int, str]:
    """Run ``credproxy ARGS`` on a pseudo-terminal that is its controlling terminal
    (so Ctrl-C arrives as SIGINT), type ``keys`` at ``prompt``; exit code and screen."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        ["setsid", "--ctty", sys.executable, "-m", "credproxy", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        read_until(controller, prompt, seen)
        os.write(controller, keys)
        status = process.wait(30)
        _drain(controller, seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return status, bytes(seen).decode(errors="replace").replace("\r", "")


def _store_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return daemon_env(
        {
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "CREDPROXY_KEY_SOURCE": "keyfile",
            **extra,
        }
    )


def _stored_keys(env: dict[str, str]) -> str:
    listed = subprocess.run(
        [sys.executable, "-m", "credproxy", "key", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return listed.stdout


@pytest.mark.parametrize(
    ("keys", "exit_code", "how"), [(CTRL_C, 130, "Ctrl-C"), (CTRL_D, 1, "end of input")]
)
def test_cancelling_the_key_prompt_says_so_and_saves_nothing(
    tmp_path: Path, keys: bytes, exit_code: int, how: str
) -> None:
    env = _store_env(tmp_path)
    status, screen = _at_terminal(["key", "set", "openai"], env, b"API key openai: ", keys)
    assert status == exit_code, screen
    assert f"credproxy: cancelled ({how}); nothing was saved" in screen.splitlines()
    assert "Abort" not in screen
    assert _stored_keys(env) == ""


@pytest.mark.parametrize(
    ("keys", "exit_code", "how"), [(CTRL_C, 130, "Ctrl-C"), (CTRL_D, 1, "end of input")]
)
def test_cancelling_the_passphrase_prompt_says_so_and_creates_no_store(
    tmp_path: Path, keys: bytes, exit_code: int, how: str
) -> None:
    env = _store_env(tmp_path, CREDPROXY_KEY_SOURCE="passphrase")
    status, screen = _at_terminal(
        ["key", "set", "openai"], env, b"credproxy store passphrase: ", keys
    )
    assert status == exit_code, screen
    assert f"credproxy: cancelled ({how}); nothing was saved" in screen.splitlines()
    assert "Aborted!" not in screen
    assert not list((tmp_path / "data").rglob("*.json"))
