"""Fixtures of the OAuth tests: client processes that are always reaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.oauth.harness import LoginProcess, start_host_login, start_login

StartLogin = Callable[..., LoginProcess]


def _reaped(start: Callable[..., LoginProcess]) -> Iterator[StartLogin]:
    """``start`` wrapped so every process it started is killed when the test ends."""
    started: list[LoginProcess] = []

    def tracked(*args: object) -> LoginProcess:
        process = start(*args)
        started.append(process)
        return process

    try:
        yield tracked
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def login_process() -> Iterator[StartLogin]:
    """``login_process(socket, token, provider, *args)``: a ``credproxy login`` client."""
    yield from _reaped(start_login)


@pytest.fixture
def host_login_process() -> Iterator[StartLogin]:
    """``host_login_process(config_path, provider, *args)``: ``credproxy login`` on the host."""
    yield from _reaped(start_host_login)
