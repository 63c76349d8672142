"""The host commands' ``--json`` output keeps the field names docs/cli.md lists."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import daemon_env


def credproxy(home: Path, *args: str, stdin: str = "") -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "credproxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=daemon_env({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_host_json_outputs_have_the_documented_keys(tmp_path: Path) -> None:
    token = json.dumps({"access_token": "a", "refresh_token": "r", "expiry": time.time() + 60})
    imported = credproxy(
        tmp_path, "token", "import", "p", "--file", "-", "--json", "--store", "memory", stdin=token
    )
    assert set(imported) == {"bucket", "expiry", "provider", "refreshToken"}

    status = credproxy(tmp_path, "status", "--json", "--store", "memory")
    assert set(status) == {"backend", "keys", "mode", "providers", "store"}
    assert status["backend"] == {"backend": "memory"}
    assert status["mode"] == "host"

    keys = credproxy(tmp_path, "key", "list", "--json", "--store", "memory")
    assert keys == {"keys": []}

    source = tmp_path / "llxprt"
    (source / "keys").mkdir(parents=True)
    (source / "keys" / ".xai_key").write_text("sk-value\n")
    report = credproxy(
        tmp_path,
        "import",
        "llxprt",
        "--from",
        str(source),
        "--dry-run",
        "--json",
        "--store",
        "memory",
    )
    assert set(report) == {"dryRun", "items"}
    assert [set(item) for item in report["items"]] == [
        {"detail", "kind", "name", "removed_original", "source", "status"}
    ]
    assert report["items"][0]["status"] == "would import"
