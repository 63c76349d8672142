"""Shared pieces of the session tests: an injectable clock and identities."""

from __future__ import annotations

import asyncio

import pytest

from credproxy.grants import Grant
from credproxy.sessions import OAuthSessionManager, PeerIdentity

TIMEOUT_S = 600.0
BOUND_S = 10.0
"""Upper bound on waiting for cleanup, so a regression fails instead of hanging the suite."""


class FakeClock:
    """A monotonic clock the test moves by hand, so expiry never needs a sleep."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flow:
    """Stands in for a flow instance: the manager only stores it and checks it is fresh."""


GRANT_A = Grant(grant_id="sandbox-a", providers=frozenset({"gemini"}))
GRANT_B = Grant(grant_id="sandbox-b", providers=frozenset({"gemini"}))
ALICE_A = PeerIdentity(uid=1000, pid=4242, grant=GRANT_A)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manager(clock: FakeClock) -> OAuthSessionManager:
    # An empty environ keeps a developer's LLXPRT_OAUTH_SESSION_TIMEOUT_SECONDS out of the tests.
    return OAuthSessionManager(TIMEOUT_S, clock=clock, environ={})


def open_session(manager: OAuthSessionManager, identity: PeerIdentity = ALICE_A) -> str:
    return manager.create_session("gemini", "default", "device_code", Flow(), identity)


async def settle(manager: OAuthSessionManager) -> None:
    async with asyncio.timeout(BOUND_S):
        await manager.wait_closed()
