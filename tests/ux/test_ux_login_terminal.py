"""``credproxy login`` at a real terminal (a pseudo-terminal), cancelled with Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.daemon import daemon_env
from tests.fixtures.oidc import OidcServer
from tests.oauth.harness import write_config


def read_until(fd: int, marker: bytes, seen: bytearray) -> None:
    deadline = time.monotonic() + 30
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, bytes(seen)
        if select.select([fd], [], [], remaining)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, bytes(seen)
            seen += chunk


def test_ctrl_c_at_the_code_prompt_puts_the_message_on_its_own_line(
    tmp_path: Path, oidc_server: OidcServer
) -> None:
    """The terminal echoes ^C after "Code: "; the message used to follow on the same
    line ("Code: ^CError: Login cancelled.")."""
    config = tmp_path / "config.toml"
    write_config(config, tmp_path / "store", {"paste": oidc_server.provider_table("pkce_redirect")})
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        # setsid --ctty makes the pseudo-terminal the controlling terminal, so a typed
        # Ctrl-C reaches credproxy as SIGINT the way a real terminal's does.
        [
            *("setsid", "--ctty", sys.executable, "-m", "credproxy"),
            *("login", "paste", "--config", str(config)),
        ],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=daemon_env(),
    )
    os.close(terminal)
    seen = bytearray()
    try:
        read_until(controller, b"Code: ", seen)
        os.write(controller, b"\x03")  # Ctrl-C: the terminal echoes ^C and sends SIGINT
        read_until(controller, b"Login cancelled.", seen)
        assert process.wait(30) == 130  # 128 + SIGINT, as for every cancelled prompt
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = bytes(seen).decode(errors="replace").replace("\r", "")
    cancelled = next(line for line in text.split("\n") if "Login cancelled." in line)
    assert cancelled == "Error: Login cancelled."
