"""Session lifecycle: ids, lookups and their order of checks, identity, single use, caps, sweep."""

from __future__ import annotations

import re

import pytest

from credproxy.grants import Grant
from credproxy.protocol.errors import ProxyError
from credproxy.sessions import OAuthSession, OAuthSessionManager, PeerIdentity

from .conftest import ALICE_A, GRANT_A, GRANT_B, TIMEOUT_S, FakeClock, Flow, open_session


def _code(info: pytest.ExceptionInfo[ProxyError]) -> str:
    return info.value.code


# --- creation ---------------------------------------------------------------


def test_session_id_is_32_lowercase_hex_and_unique(manager: OAuthSessionManager) -> None:
    ids = {open_session(manager, PeerIdentity(uid=n, grant=GRANT_A)) for n in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", session_id) for session_id in ids)


def test_created_session_records_what_it_was_given(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    flow = Flow()
    session_id = manager.create_session("qwen", "work", "pkce_redirect", flow, ALICE_A)
    session = manager.get_session(session_id, ALICE_A)
    assert isinstance(session, OAuthSession)
    assert session.session_id == session_id
    assert (session.provider, session.bucket, session.flow_type) == (
        "qwen",
        "work",
        "pkce_redirect",
    )
    assert session.flow is flow
    assert session.identity == ALICE_A
    assert session.created_at == clock.now
    assert session.used is False
    assert session.ended is False
    assert session.result.status == "pending"


@pytest.mark.parametrize("flow_type", ["pkce_redirect", "device_code", "browser_redirect"])
def test_every_protocol_flow_type_is_accepted(manager: OAuthSessionManager, flow_type: str) -> None:
    session_id = manager.create_session("p", "default", flow_type, Flow(), ALICE_A)  # type: ignore[arg-type]
    assert manager.get_session(session_id, ALICE_A).flow_type == flow_type


def test_unknown_flow_type_is_refused(manager: OAuthSessionManager) -> None:
    with pytest.raises(ValueError, match="flow type"):
        manager.create_session("p", "default", "implicit", Flow(), ALICE_A)  # type: ignore[arg-type]
    assert len(manager) == 0


def test_a_flow_object_cannot_serve_two_live_sessions(manager: OAuthSessionManager) -> None:
    """Sharing a flow would share its PKCE verifier and state between logins."""
    flow = Flow()
    first = manager.create_session("p", "default", "pkce_redirect", flow, ALICE_A)
    with pytest.raises(ValueError, match="already belongs"):
        manager.create_session("p", "default", "pkce_redirect", flow, ALICE_A)
    assert len(manager) == 1
    manager.remove_session(first)
    manager.create_session("p", "default", "pkce_redirect", flow, ALICE_A)


def test_repr_does_not_show_the_session_id(manager: OAuthSessionManager) -> None:
    session_id = open_session(manager)
    assert session_id not in repr(manager.get_session(session_id, ALICE_A))


# --- get_session: order of checks ------------------------------------------


def test_unknown_id_is_session_not_found(manager: OAuthSessionManager) -> None:
    with pytest.raises(ProxyError) as info:
        manager.get_session("0" * 32, ALICE_A)
    assert _code(info) == "SESSION_NOT_FOUND"


def test_used_is_reported_before_expiry_and_identity(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    session_id = open_session(manager)
    manager.mark_used(session_id)
    clock.advance(TIMEOUT_S * 2)
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, PeerIdentity(uid=0, grant=GRANT_B))
    assert _code(info) == "SESSION_ALREADY_USED"


def test_expiry_is_reported_before_identity_and_removes_the_session(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    session_id = open_session(manager)
    clock.advance(TIMEOUT_S + 1)
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, PeerIdentity(uid=0, grant=GRANT_B))
    assert _code(info) == "SESSION_EXPIRED"
    assert session_id not in manager
    with pytest.raises(ProxyError) as again:
        manager.get_session(session_id, ALICE_A)
    assert _code(again) == "SESSION_NOT_FOUND"


def test_session_is_valid_at_exactly_the_timeout_and_expired_just_after(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    session_id = open_session(manager)
    clock.advance(TIMEOUT_S)
    assert manager.get_session(session_id, ALICE_A).session_id == session_id
    clock.advance(0.001)
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, ALICE_A)
    assert _code(info) == "SESSION_EXPIRED"


def test_expiry_on_access_ends_the_session(manager: OAuthSessionManager, clock: FakeClock) -> None:
    session_id = open_session(manager)
    session = manager.get_session(session_id, ALICE_A)
    closed: list[str] = []
    session.attach(lambda: closed.append("listener"))
    clock.advance(TIMEOUT_S + 1)
    with pytest.raises(ProxyError):
        manager.get_session(session_id, ALICE_A)
    assert closed == ["listener"]
    assert session.ended


# --- identity ----------------------------------------------------------------


@pytest.mark.parametrize(
    "intruder",
    [
        pytest.param(PeerIdentity(uid=1001, pid=4242, grant=GRANT_A), id="other-uid"),
        pytest.param(PeerIdentity(uid=1000, pid=4242, grant=GRANT_B), id="same-user-other-sandbox"),
        pytest.param(PeerIdentity(uid=1000, pid=4242, grant=None), id="no-grant"),
        pytest.param(PeerIdentity(uid=None, pid=4242, grant=GRANT_A), id="unknown-uid"),
        pytest.param(
            PeerIdentity(uid=1000, grant=Grant(grant_id="sandbox-a")),
            id="same-grant-id-other-rules",
        ),
    ],
)
def test_another_identity_is_unauthorized_and_cannot_consume_the_session(
    manager: OAuthSessionManager, intruder: PeerIdentity
) -> None:
    session_id = open_session(manager, ALICE_A)
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, intruder)
    assert _code(info) == "UNAUTHORIZED"
    assert str(info.value) == "Session peer identity mismatch"
    assert manager.get_session(session_id, ALICE_A).used is False


def test_known_creator_uid_does_not_accept_a_peer_of_unknown_uid(
    manager: OAuthSessionManager,
) -> None:
    """Fail closed: an unknown uid cannot be shown to be the creator's."""
    creator = PeerIdentity(uid=None, grant=GRANT_A)
    session_id = open_session(manager, creator)
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, ALICE_A)
    assert _code(info) == "UNAUTHORIZED"
    assert manager.get_session(session_id, PeerIdentity(uid=None, grant=GRANT_A))


def test_another_process_of_the_same_sandbox_may_continue_the_login(
    manager: OAuthSessionManager,
) -> None:
    """The pid is informational: a sandbox's login may span several processes."""
    session_id = open_session(manager, ALICE_A)
    other_process = PeerIdentity(uid=1000, pid=9999, grant=GRANT_A)
    assert manager.get_session(session_id, other_process).session_id == session_id


def test_grant_label_is_not_part_of_the_identity(manager: OAuthSessionManager) -> None:
    relabelled = Grant(grant_id="sandbox-a", providers=frozenset({"gemini"}), label="renamed")
    session_id = open_session(manager, ALICE_A)
    assert manager.get_session(session_id, PeerIdentity(uid=1000, grant=relabelled))


# --- single use ------------------------------------------------------------


def test_mark_used_makes_later_lookups_already_used(manager: OAuthSessionManager) -> None:
    session_id = open_session(manager)
    session = manager.get_session(session_id, ALICE_A)
    manager.mark_used(session_id)
    assert session.used is True
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, ALICE_A)
    assert _code(info) == "SESSION_ALREADY_USED"


def test_setting_used_on_the_session_consumes_it_like_mark_used(
    manager: OAuthSessionManager,
) -> None:
    session_id = open_session(manager)
    manager.get_session(session_id, ALICE_A).used = True
    with pytest.raises(ProxyError) as info:
        manager.get_session(session_id, ALICE_A)
    assert _code(info) == "SESSION_ALREADY_USED"
    assert manager.sweep_expired() == 1
    assert session_id not in manager


def test_a_used_session_cannot_be_made_unused(manager: OAuthSessionManager) -> None:
    session_id = open_session(manager)
    session = manager.get_session(session_id, ALICE_A)
    session.used = False  # still unused: nothing to undo
    manager.mark_used(session_id)
    with pytest.raises(ValueError, match="cannot be made unused"):
        session.used = False
    assert session.used


def test_mark_used_on_unknown_session_is_session_not_found(manager: OAuthSessionManager) -> None:
    with pytest.raises(ProxyError) as info:
        manager.mark_used("f" * 32)
    assert _code(info) == "SESSION_NOT_FOUND"


def test_remove_session_is_idempotent_and_ignores_unknown_ids(
    manager: OAuthSessionManager,
) -> None:
    session_id = open_session(manager)
    manager.remove_session("a" * 32)
    manager.remove_session(session_id)
    manager.remove_session(session_id)
    assert session_id not in manager
    assert len(manager) == 0


# --- caps --------------------------------------------------------------------


def test_an_identity_cannot_open_more_than_its_cap(clock: FakeClock) -> None:
    manager = OAuthSessionManager(clock=clock, max_sessions_per_identity=3, environ={})
    opened = [open_session(manager) for _ in range(3)]
    with pytest.raises(ProxyError) as info:
        open_session(manager)
    assert _code(info) == "RESOURCE_EXHAUSTED"
    # Another sandbox of the same user has its own allowance.
    open_session(manager, PeerIdentity(uid=1000, grant=GRANT_B))
    # Another process of the same sandbox shares the allowance.
    with pytest.raises(ProxyError):
        open_session(manager, PeerIdentity(uid=1000, pid=1, grant=GRANT_A))
    manager.remove_session(opened[0])
    open_session(manager)


def test_expired_and_used_sessions_do_not_count_against_the_cap(clock: FakeClock) -> None:
    manager = OAuthSessionManager(TIMEOUT_S, clock=clock, max_sessions_per_identity=2, environ={})
    old = open_session(manager)
    used = open_session(manager)
    manager.mark_used(used)
    clock.advance(TIMEOUT_S + 1)
    open_session(manager)
    open_session(manager)
    assert old not in manager
    assert used not in manager


def test_the_host_wide_cap_bounds_all_identities_together(clock: FakeClock) -> None:
    manager = OAuthSessionManager(clock=clock, max_sessions=4, environ={})
    for uid in range(4):
        open_session(manager, PeerIdentity(uid=uid, grant=GRANT_A))
    with pytest.raises(ProxyError) as info:
        open_session(manager, PeerIdentity(uid=99, grant=GRANT_B))
    assert _code(info) == "RESOURCE_EXHAUSTED"
    assert len(manager) == 4


def test_ensure_capacity_refuses_at_the_cap_after_sweeping_what_is_over(clock: FakeClock) -> None:
    manager = OAuthSessionManager(TIMEOUT_S, clock=clock, max_sessions_per_identity=2, environ={})
    used = open_session(manager)
    open_session(manager)
    with pytest.raises(ProxyError) as info:
        manager.ensure_capacity(ALICE_A)
    assert _code(info) == "RESOURCE_EXHAUSTED"
    # Says what to do, including for logins whose client is gone and cannot cancel them.
    assert "finish or cancel one" in info.value.message
    assert f"expires ({TIMEOUT_S:g} s after it started)" in info.value.message
    manager.ensure_capacity(PeerIdentity(uid=1000, grant=GRANT_B))
    manager.mark_used(used)
    manager.ensure_capacity(ALICE_A)
    assert used not in manager


def test_an_admitted_login_holds_its_place_until_its_session_takes_it(clock: FakeClock) -> None:
    """Concurrent logins of one sandbox cannot all pass the check before any session exists."""
    manager = OAuthSessionManager(clock=clock, max_sessions_per_identity=2, environ={})
    with manager.admit(ALICE_A) as first, manager.admit(ALICE_A):
        with pytest.raises(ProxyError) as info, manager.admit(ALICE_A):
            pass
        assert _code(info) == "RESOURCE_EXHAUSTED"
        manager.create_session("gemini", "default", "device_code", Flow(), ALICE_A, admission=first)
        assert len(manager) == 1
    # The second admission ended without a session: its place is free again.
    open_session(manager)
    with pytest.raises(ProxyError):
        open_session(manager)


def test_admissions_count_against_the_host_wide_cap(clock: FakeClock) -> None:
    manager = OAuthSessionManager(clock=clock, max_sessions=2, environ={})
    with manager.admit(PeerIdentity(uid=1, grant=GRANT_A)):
        open_session(manager, PeerIdentity(uid=2, grant=GRANT_A))
        with pytest.raises(ProxyError) as info:
            manager.ensure_capacity(PeerIdentity(uid=3, grant=GRANT_B))
        assert "on the host" in info.value.message
    manager.ensure_capacity(PeerIdentity(uid=3, grant=GRANT_B))


# --- sweep -------------------------------------------------------------------


def test_sweep_removes_expired_and_used_and_keeps_live_sessions(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    expired = [open_session(manager, PeerIdentity(uid=n, grant=GRANT_A)) for n in range(3)]
    clock.advance(TIMEOUT_S / 2)
    live = [open_session(manager, PeerIdentity(uid=n, grant=GRANT_B)) for n in range(3)]
    used = open_session(manager)
    manager.mark_used(used)
    manager.mark_used(expired[0])  # expired and used: counted once
    clock.advance(TIMEOUT_S / 2 + 1)
    assert manager.sweep_expired() == 4
    assert all(session_id in manager for session_id in live)
    assert len(manager) == 3
    assert manager.sweep_expired() == 0


def test_sweep_examines_only_the_sessions_it_removes(
    clock: FakeClock,
) -> None:
    """Expiry order is creation order, so a sweep stops at the first live session."""

    examined: list[str] = []

    class CountingManager(OAuthSessionManager):
        def _expired(self, session: OAuthSession, now: float) -> bool:
            examined.append(session.session_id)
            return super()._expired(session, now)

    manager = CountingManager(TIMEOUT_S, clock=clock, max_sessions_per_identity=10_000, environ={})
    for _ in range(5):
        open_session(manager)
    clock.advance(TIMEOUT_S / 2)
    for _ in range(1_000):
        open_session(manager)
    clock.advance(TIMEOUT_S / 2 + 1)
    assert manager.sweep_expired() == 5
    assert len(examined) == 6


def test_sweep_of_used_sessions_does_not_examine_live_ones(clock: FakeClock) -> None:
    examined: list[str] = []

    class CountingManager(OAuthSessionManager):
        def _expired(self, session: OAuthSession, now: float) -> bool:
            examined.append(session.session_id)
            return super()._expired(session, now)

    manager = CountingManager(TIMEOUT_S, clock=clock, max_sessions_per_identity=10_000, environ={})
    ids = [open_session(manager) for _ in range(1_000)]
    manager.mark_used(ids[500])
    assert manager.sweep_expired() == 1
    assert len(examined) == 1  # the oldest, found live, ends the expiry walk


def test_clear_all_removes_every_session(manager: OAuthSessionManager) -> None:
    sessions = [manager.get_session(open_session(manager), ALICE_A) for _ in range(3)]
    manager.clear_all()
    assert len(manager) == 0
    assert all(session.ended for session in sessions)
    open_session(manager)  # the per-identity count was released too
