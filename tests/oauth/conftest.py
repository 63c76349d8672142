"""Fixtures of the OAuth tests: client processes that are always reaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.oauth.harness import LoginProcess, start_host_login, start_login

StartLogin = Callable[..., LoginProcess]


@pytest.fixture
def login_process() -> Iterator[StartLogin]:
    """``login_process(socket, token, provider, *args)``: a ``credproxy login`` client."""
    started: list[LoginProcess] = []

    def start(socket_path: Path, token: str, provider: str, *args: str) -> LoginProcess:
        process = start_login(socket_path, token, provider, *args)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def host_login_process() -> Iterator[Callable[..., LoginProcess]]:
    """``host_login_process(config_path, provider, *args)``: ``credproxy login`` on the host."""
    started: list[LoginProcess] = []

    def start(config_path: Path, provider: str, *args: str) -> LoginProcess:
        process = start_host_login(config_path, provider, *args)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()
