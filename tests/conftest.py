"""Test-suite wiring: each fixture module starts one real component."""

from __future__ import annotations

import pytest

from credproxy.hardening import Hardening

pytest_plugins: list[str] = [
    "tests.fixtures.oidc",
    "tests.fixtures.daemon",
    "tests.fixtures.keyring",
    "tests.fixtures.http",
    "tests.fixtures.redis",
]


@pytest.fixture(autouse=True)
def _test_process_stays_dumpable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in-process (click's CliRunner) would harden pytest itself: its
    hard core limit 0 would then be inherited by every later subprocess, which a
    non-root suite cannot raise again. Hardening is tested in real subprocesses
    (tests/server/test_secrets_in_memory.py)."""
    monkeypatch.setattr(
        "credproxy.hardening.harden_process",
        lambda *, limit_core=True: Hardening(core_limit_zero=False, undumpable=False),
    )
