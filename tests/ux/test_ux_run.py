"""``credproxy run`` flags a new user gets wrong, refused before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import daemon_env


def test_a_bind_of_a_missing_host_path_is_refused_as_a_usage_error(tmp_path: Path) -> None:
    """bubblewrap's own "Can't find source path" used to come out after the daemon had
    started, with exit 1, which ``run`` documents as the command's own failure."""
    missing = tmp_path / "not-there"
    marker = tmp_path / "ran"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "credproxy", "run", "--sandbox", "bwrap"),
            *("--bind", f"{missing}:/work", "--", "touch", str(marker)),
        ],
        capture_output=True,
        text=True,
        env=daemon_env({"HOME": str(tmp_path), "CREDPROXY_CONFIG": str(tmp_path / "none")}),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{missing} does not exist on the host" in done.stderr
    assert "bwrap" not in done.stderr
    assert not marker.exists()
