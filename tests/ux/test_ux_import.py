"""``credproxy import llxprt`` when there is nothing where it looked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import daemon_env


def test_nothing_to_import_names_the_directories_it_looked_in(tmp_path: Path) -> None:
    """ "no token or key files found" did not say where, so a user whose LLxprt files
    live elsewhere could not tell that --from was the answer."""
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nbackend = "file"\npath = "{tmp_path / "store"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "credproxy", "import", "llxprt", "--dry-run"],
        capture_output=True,
        text=True,
        env=daemon_env({"HOME": str(home), "CREDPROXY_CONFIG": str(config)}),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str(home / ".llxprt" / "oauth") in done.stdout
    assert str(home / ".llxprt" / "keys") in done.stdout
    assert "--from" in done.stdout
