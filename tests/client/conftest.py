"""Shared material for the client tests: seeded credentials, a granted daemon, clients."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from credproxy.client import AsyncProxyClient, ProxyClient
from tests.fixtures.daemon import DaemonFactory, DaemonHandle

NOW = time.time()

ALPHA: dict[str, Any] = {
    "access_token": "alpha-access-value",
    "expiry": NOW + 3300,
    "token_type": "Bearer",
    "scope": "read write",
    "account_id": "acct-1",
    "refresh_token": "alpha-refresh-SECRET-0001",
}
ALPHA_WORK: dict[str, Any] = {
    "access_token": "alpha-work-access",
    "expiry": NOW - 200,
    "token_type": "Bearer",
    "refresh_token": "alpha-work-refresh-SECRET-0002",
}
BETA: dict[str, Any] = {
    "access_token": "beta-access-value",
    "expiry": NOW + 86_400 * 3,
    "token_type": "Bearer",
    "refresh_token": "beta-refresh-SECRET-0003",
}
BETA_OTHER: dict[str, Any] = {
    "access_token": "beta-other-SECRET-access",
    "expiry": NOW + 60,
    "token_type": "Bearer",
    "refresh_token": "beta-other-refresh-SECRET-0004",
}
HIDDEN: dict[str, Any] = {
    "access_token": "hidden-SECRET-access",
    "expiry": NOW + 600,
    "token_type": "Bearer",
    "refresh_token": "hidden-refresh-SECRET-0005",
}

TOKENS: dict[tuple[str, str], dict[str, Any]] = {
    ("alpha", "default"): ALPHA,
    ("alpha", "work"): ALPHA_WORK,
    ("beta", "default"): BETA,
    ("beta", "other"): BETA_OTHER,
    ("hidden", "default"): HIDDEN,
}
KEYS = {
    "openai": "sk-openai-value-0001",
    "anthropic": "sk-ant-value-0002",
    "hiddenkey": "sk-hidden-SECRET-0003",
}

GRANT_ARGS = (
    "--allow",
    "alpha",
    "--allow",
    "beta:default",
    "--allow-key",
    "openai",
    "--allow-key",
    "anthropic",
    "--allow-key",
    "absent",
    "--allow-save",
    "--allow-remove",
)

SECRETS = (
    *(token["refresh_token"] for token in TOKENS.values()),
    HIDDEN["access_token"],
    BETA_OTHER["access_token"],
    KEYS["hiddenkey"],
)
"""Values a sandbox with ``GRANT_ARGS`` must never see, in data or in errors."""


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition another process or task brings about (an audit line, a close)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """``eventually`` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SyncAsAsync:
    """Presents a blocking ``ProxyClient`` with awaitable methods, so one test body
    covers both clients. Calls run in a worker thread so a server living in the
    test's own event loop keeps serving while the blocking client waits."""

    def __init__(self, client: ProxyClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(attr, *args, **kwargs)

        return call


@pytest.fixture
def daemon(credproxy_daemon: DaemonFactory) -> DaemonHandle:
    """A real daemon with seeded credentials and a narrow grant (``GRANT_ARGS``)."""
    return credproxy_daemon(*GRANT_ARGS, tokens=TOKENS, keys=KEYS)


ClientFactory = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[ClientFactory]:
    """Build sync (wrapped) or async clients; all are closed afterwards."""
    built: list[ProxyClient | AsyncProxyClient] = []

    def factory(path: os.PathLike[str] | str, token: str | None, **options: Any) -> Any:
        if request.param == "sync":
            sync_client = ProxyClient(str(path), token, **options)
            built.append(sync_client)
            return SyncAsAsync(sync_client)
        async_client = AsyncProxyClient(str(path), token, **options)
        built.append(async_client)
        return async_client

    yield factory
    for client in built:
        if isinstance(client, AsyncProxyClient):
            await client.aclose()
        else:
            client.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sync_clients() -> Iterator[list[ProxyClient]]:
    """Blocking clients a test opens directly; closed afterwards."""
    clients: list[ProxyClient] = []
    yield clients
    for client in clients:
        client.close()
