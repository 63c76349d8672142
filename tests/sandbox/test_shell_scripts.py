"""Commands reached through a merged-/usr root link (``/bin -> usr/bin``) run under bwrap.

The sandbox recreates such links; binding ``/bin/sh`` itself made a real
``/bin`` first, bwrap could not make the link, and every ``#!/bin/sh`` script
failed before it started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sandbox.conftest import RunHost

pytestmark = pytest.mark.skipif(
    not os.path.islink("/bin"), reason="the host has no /bin -> usr/bin root link"
)


def test_a_bin_sh_script_runs_inside_bwrap(run_host: RunHost, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho script ran\n")
    script.chmod(0o755)
    done = run_host.run("--sandbox", "bwrap", "--", str(script))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "script ran\n"


def test_bin_sh_as_the_command_runs_inside_bwrap(run_host: RunHost) -> None:
    done = run_host.run("--sandbox", "bwrap", "--", "/bin/sh", "-c", "echo direct")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "direct\n"
