"""The wall clock jumps (NTP step, suspend, a user setting the date) while the host works.

Lifetimes must not move with it: login sessions expire by the monotonic
clock, and the refresh cooldown (which keeps many sandboxes from stampeding
the provider) neither ends early when the wall clock leaps forward nor lasts
longer when it steps back. Token expiry alone follows the wall clock, as the
provider's ``expires_in`` is relative to the moment of the answer. The
clocks are injected (wall) or left real (monotonic) so a jump is exact; a
real daemon's wall clock cannot be moved without moving the machine's.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from credproxy.oauth.config import ProviderRegistry
from credproxy.oauth.runtime import OAuthRuntime
from credproxy.protocol.errors import ProxyError
from credproxy.sessions import OAuthSessionManager
from credproxy.settings import parse_settings
from credproxy.store.memory import MemoryStore
from tests.faults.conftest import (
    FRESH_ACCESS,
    PROVIDER,
    PROVIDER_TIMEOUT_S,
    TokenEndpoint,
    stored_token,
)
from tests.sessions.conftest import ALICE_A, FakeClock, open_session

DAY = 86_400.0


class WallClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("jump", [DAY, -DAY])
def test_login_sessions_expire_by_the_monotonic_clock_whatever_the_wall_clock_does(
    monkeypatch: pytest.MonkeyPatch, jump: float
) -> None:
    monotonic = FakeClock()
    manager = OAuthSessionManager(60.0, clock=monotonic, environ={})
    session_id = open_session(manager)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + jump)
    assert manager.get_session(session_id, ALICE_A).session_id == session_id
    monotonic.advance(61.0)
    with pytest.raises(ProxyError) as expired:
        manager.get_session(session_id, ALICE_A)
    assert expired.value.code == "SESSION_EXPIRED"


def _runtime(endpoint: TokenEndpoint, wall: WallClock) -> tuple[OAuthRuntime, MemoryStore]:
    table: dict[str, Any] = {
        "client_id": "credproxy-fault-tests",
        "flow": "device_code",
        "token_endpoint": endpoint.url,
        "device_authorization_endpoint": endpoint.url.rsplit("/", 1)[0] + "/device",
        "timeout_s": PROVIDER_TIMEOUT_S,
    }
    store = MemoryStore()
    registry = ProviderRegistry.from_settings(parse_settings({"providers": {PROVIDER: table}}))
    return OAuthRuntime(registry, store, clock=wall), store


async def test_refresh_under_wall_clock_jumps_keeps_its_cooldown_and_dates_expiry_by_the_answer(
    token_endpoint: TokenEndpoint,
) -> None:
    wall = WallClock()
    wall.offset = -DAY
    runtime, store = _runtime(token_endpoint, wall)
    try:
        await store.save_token(PROVIDER, "default", stored_token())
        refreshed = await runtime.refresher.refresh(PROVIDER, "default")
        assert refreshed["access_token"] == FRESH_ACCESS
        assert abs(refreshed["expiry"] - (wall() + 3600)) < 60

        wall.offset = 2 * DAY  # the wall clock leaps forward three days
        again = await runtime.refresher.refresh(PROVIDER, "default")
        assert again["access_token"] == FRESH_ACCESS
        assert token_endpoint.calls == 1, "a wall-clock leap ended the refresh cooldown"

        kept = await store.get_token(PROVIDER, "default")
        assert kept is not None and kept["access_token"] == FRESH_ACCESS
        assert kept["refresh_token"]
    finally:
        await runtime.aclose()
