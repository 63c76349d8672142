"""Fixtures of the new-user tests: host login processes that are always reaped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oauth.conftest import StartLogin, _reaped
from tests.oauth.harness import start_host_login


@pytest.fixture
def host_login_process() -> Iterator[StartLogin]:
    """``host_login_process(config_path, provider, *args)``: ``credproxy login`` on the host."""
    yield from _reaped(start_host_login)
