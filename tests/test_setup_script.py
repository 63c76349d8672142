"""scripts/setup picks a Node the test OAuth server runs on, and says what it does.

oidc-provider 9 calls URL.parse (Node 22.1+, or 20.18+ where it was
backported); Debian 12's Node 18.20 made 53 tests error with
``URL.parse is not a function``. The version checks run against fake ``node``
and ``npm`` programs on PATH: the real ones on this machine cannot be old.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup"


def fake_program(directory: Path, name: str, output: str) -> None:
    program = directory / name
    program.write_text(f"#!/bin/sh\necho '{output}'\n")
    program.chmod(0o755)


def run_setup_function(call: str, path_dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    """Source scripts/setup (which runs nothing when sourced) and call one function."""
    env = {**os.environ, "PATH": ":".join([*map(str, path_dirs), "/usr/bin", "/bin"])}
    return subprocess.run(
        ["bash", "-c", f'source "{SETUP}"; set +e; {call}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("v18.20.0", False),
        ("v12.22.9", False),
        ("v20.17.0", False),
        ("v20.18.0", True),
        ("v21.7.3", False),
        ("v22.0.0", False),
        ("v22.1.0", True),
        ("v24.3.0", True),
        ("not a version", False),
    ],
)
def test_node_supported_accepts_only_versions_with_url_parse(
    tmp_path: Path, version: str, supported: bool
) -> None:
    fake_program(tmp_path, "node", version)
    done = run_setup_function(f'node_supported "{tmp_path}/node"; echo "rc=$?"', [])
    assert done.stdout.strip() == ("rc=0" if supported else "rc=1")


def test_an_old_system_node_makes_setup_bring_node_from_pypi_and_say_why(tmp_path: Path) -> None:
    fake_program(tmp_path, "node", "v18.20.0")
    fake_program(tmp_path, "npm", "9.2.0")
    done = run_setup_function("node_plan", [tmp_path])
    assert done.stdout.strip() == "wheel"
    assert "Node v18.20.0" in done.stderr
    assert "too old for the test OAuth server (needs 20.18+ or 22.1+)" in done.stderr


def test_no_node_at_all_makes_setup_bring_node_from_pypi(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        ["bash", "-c", f'source "{SETUP}"; set +e; PATH="{empty}"; node_plan'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.stdout.strip() == "wheel"
    assert "no Node.js on PATH" in done.stderr


def test_a_recent_system_node_with_npm_is_used_as_it_is(tmp_path: Path) -> None:
    fake_program(tmp_path, "node", "v20.19.1")
    fake_program(tmp_path, "npm", "10.8.2")
    done = run_setup_function("node_plan", [tmp_path])
    assert done.stdout.strip() == "system"
    assert "using Node v20.19.1" in done.stderr


def test_sourcing_setup_runs_no_step(tmp_path: Path) -> None:
    done = run_setup_function("echo sourced", [])
    assert done.returncode == 0
    assert done.stdout == "sourced\n"
    assert done.stderr == ""


FAKE_PYTHON = """#!/bin/sh
# Stands in for python3 and the venv's python: records pip's arguments.
case "$1" in
  -c) exit 0 ;;
  -m)
    if [ "$2" = venv ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
    echo "fake $*" >&2 ;;
esac
"""


def setup_in_a_bare_clone(tmp_path: Path) -> Path:
    """A clone holding only scripts/setup and pyproject.toml; the fake python3 to use."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup").write_text(SETUP.read_text())
    (tmp_path / "pyproject.toml").write_text("")
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return python


def test_setup_shows_what_pip_installs_instead_of_one_silent_line(tmp_path: Path) -> None:
    python = setup_in_a_bare_clone(tmp_path)
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(python)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "==> installing credproxy and its dependencies into .venv (pip)" in done.stderr
    installs = [line for line in done.stderr.splitlines() if line.endswith("-e .")]
    assert installs, done.stderr
    assert all(" -q" not in line for line in installs), installs


def test_plain_setup_installs_bubblewrap_which_the_run_example_needs(tmp_path: Path) -> None:
    """scripts/serve (plain setup) did not install bubblewrap; the README's first
    `credproxy run --sandbox bwrap` example then failed on a fresh machine."""
    python = setup_in_a_bare_clone(tmp_path)
    tools = tmp_path / "tools"
    tools.mkdir()
    fake_program(tools, "dpkg-query", "unknown")  # nothing counts as installed
    (tools / "apt-get").write_text('#!/bin/sh\necho "apt-get $*" >&2\n')
    (tools / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for name in ("apt-get", "sudo"):
        (tools / name).chmod(0o755)
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(python), "PATH": f"{tools}:/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stderr.splitlines() if line.startswith("apt-get ")]
    assert any("install" in line and "bubblewrap" in line for line in installs), done.stderr
