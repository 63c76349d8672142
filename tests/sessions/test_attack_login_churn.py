"""A sandbox that starts logins and cancels each at once.

Cancelling frees the open-session place, so the open-session cap alone never
stops it, and every start makes the host contact the provider (a device
authorization request, a discovery fetch). Starts are therefore bounded per
identity over time as well.
"""

from __future__ import annotations

import pytest

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.sessions import (
    START_WINDOW_S,
    OAuthSessionManager,
    PeerIdentity,
)
from tests.sessions.conftest import ALICE_A, GRANT_B, FakeClock, Flow

BOB_B = PeerIdentity(uid=1000, pid=1, grant=GRANT_B)


def _start_and_cancel(manager: OAuthSessionManager, identity: PeerIdentity = ALICE_A) -> None:
    with manager.admit(identity) as admission:
        session_id = manager.create_session(
            "gemini", "default", "device_code", Flow(), identity, admission=admission
        )
    manager.remove_session(session_id)


def test_logins_started_and_cancelled_in_a_loop_are_rate_limited(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    assert manager.max_starts_per_window == 2 * manager.max_sessions_per_identity
    for _ in range(manager.max_starts_per_window):
        _start_and_cancel(manager)
        clock.advance(0.1)
    with pytest.raises(ProxyError) as refused:
        _start_and_cancel(manager)
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= START_WINDOW_S
    assert len(manager) == 0


def test_the_login_rate_is_per_identity_and_recovers(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    for _ in range(manager.max_starts_per_window):
        _start_and_cancel(manager)
    _start_and_cancel(manager, BOB_B)
    with pytest.raises(ProxyError):
        _start_and_cancel(manager)
    clock.advance(START_WINDOW_S)
    _start_and_cancel(manager)
