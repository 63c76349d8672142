"""``credproxy key set`` at a terminal: problems are reported before the key is typed."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import daemon_env


def test_a_broken_config_is_reported_before_the_hidden_prompt(tmp_path: Path) -> None:
    """The prompt used to come first: the user typed (or pasted) the key and only then
    learnt that the config file was broken and nothing was saved."""
    config = tmp_path / "config.toml"
    config.write_text('[store\nbackend = "file"\n')
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "credproxy", "key", "set", "openai", "--config", str(config)],
            stdin=terminal,
            capture_output=True,
            text=True,
            env=daemon_env(),
            timeout=30,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 1
    assert "API key openai" not in done.stderr
    assert done.stderr.splitlines() == [
        f"credproxy: config file {config} is not valid TOML: "
        "Expected ']' at the end of a table declaration (at line 1, column 7)"
    ]
