"""The console script's click-free path answers exactly as the click commands do.

``credproxy.console`` runs a plain sandbox command line without importing
click (see test_imports.py); these tests run the same command lines through
both entry points against one real daemon and compare exit code, stdout and
stderr, and pin which lines take the fast path at all.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator

import pytest

from credproxy.console import plain_sandbox_command
from tests.fixtures.daemon import DaemonFactory, DaemonHandle, run_in_sandbox_env

NOW = time.time()
TOKENS = {
    ("alpha", "default"): {"access_token": "alpha-now", "expiry": NOW + 7200},
    ("alpha", "old"): {"access_token": "alpha-old", "expiry": NOW - 7200},
    ("hidden", "default"): {"access_token": "hidden-SECRET", "expiry": NOW + 7200},
}
KEYS = {"openai": "sk-console-0001", "other": "sk-other-SECRET"}

ENTRIES = {
    "click": "from credproxy.cli import main",
    "console": "from credproxy.console import main",
}


def run(daemon: DaemonHandle, entry: str, args: list[str]) -> tuple[int, str, str]:
    script = f"import sys\n{ENTRIES[entry]}\nsys.argv[0] = 'credproxy'\nmain()\n"
    done = run_in_sandbox_env(daemon, [sys.executable, "-c", script, *args])
    return done.returncode, comparable(done.stdout), comparable(done.stderr)


def comparable(text: str) -> str:
    """Expiry countdowns move between two runs; nothing else may differ."""
    text = re.sub(r'"expiresIn": -?\d+', '"expiresIn": N', text)
    return re.sub(r"(expires in|expired) [\dhmsd ]+", r"\1 T", text)


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonHandle]:
    factory = DaemonFactory()
    try:
        yield factory("--allow", "alpha", "--allow-key", "openai", tokens=TOKENS, keys=KEYS)
    finally:
        factory.close()


COMMAND_LINES = [
    ["token", "get", "alpha"],
    ["token", "get", "alpha", "--json"],
    ["token", "get", "--json", "alpha", "--bucket=default"],
    ["token", "get", "alpha", "--bucket", "old"],
    ["token", "get", "alpha", "--bucket", "missing"],
    ["token", "get", "hidden"],
    ["key", "get", "openai"],
    ["key", "get", "openai", "--json"],
    ["key", "get", "other"],
    ["key", "list"],
    ["key", "list", "--json"],
    ["status"],
    ["status", "--json"],
]


@pytest.mark.parametrize("args", COMMAND_LINES, ids=" ".join)
def test_both_entry_points_print_the_same(daemon: DaemonHandle, args: list[str]) -> None:
    assert plain_sandbox_command(args) is not None
    click_result = run(daemon, "click", args)
    assert run(daemon, "console", args) == click_result
    assert "SECRET" not in "".join(map(str, click_result))


def test_the_fast_path_answers_for_real(daemon: DaemonHandle) -> None:
    status, stdout, stderr = run(daemon, "console", ["key", "get", "openai", "--json"])
    assert (status, stderr) == (0, "")
    assert json.loads(stdout) == {"key": KEYS["openai"], "name": "openai"}
    assert run(daemon, "console", ["token", "get", "hidden"])[0] == 4


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["token", "get", "--help"],
        ["token", "get"],
        ["token", "get", "a", "b"],
        ["token", "get", "bad name"],
        ["token", "get", "alpha", "--bucket"],
        ["token", "get", "alpha", "--bucket", "bad/bucket"],
        ["token", "get", "alpha", "--frobnicate"],
        ["key", "get", "openai", "--bucket", "x"],
        ["key", "set", "openai"],
        ["status", "--store", "memory"],
        ["status", "extra"],
        ["serve"],
        ["token", "get", "--", "alpha"],
    ],
    ids=lambda args: " ".join(args) or "(none)",
)
def test_anything_but_a_plain_sandbox_line_goes_to_click(args: list[str]) -> None:
    assert plain_sandbox_command(args) is None
