"""The background sweep: runs on the loop, is replaced by a second start, stops with clear_all.

Expiry comes from the fake clock; the GC's interval is real loop time, kept
tiny, and each test waits (bounded) for the behaviour, never for a duration.
"""

from __future__ import annotations

import asyncio

import pytest

from credproxy.sessions import OAuthSessionManager

from .conftest import BOUND_S, TIMEOUT_S, FakeClock, open_session, settle

GC_TASK_NAME = "credproxy-session-gc"


def _gc_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == GC_TASK_NAME and not t.done()]


async def _until(condition: object) -> None:
    assert callable(condition)
    async with asyncio.timeout(BOUND_S):
        while not condition():
            await asyncio.sleep(0.005)


async def test_gc_sweeps_expired_sessions_in_the_background(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    expired = open_session(manager)
    clock.advance(TIMEOUT_S + 1)
    live = open_session(manager)
    manager.start_gc(0.01)
    try:
        await _until(lambda: expired not in manager)
        assert live in manager
    finally:
        manager.stop_gc()


async def test_gc_keeps_sweeping_on_every_interval(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    manager.start_gc(0.01)
    try:
        for _ in range(3):
            session_id = open_session(manager)
            clock.advance(TIMEOUT_S + 1)
            await _until(lambda session_id=session_id: session_id not in manager)
    finally:
        manager.stop_gc()


async def test_gc_sweeps_used_sessions(manager: OAuthSessionManager) -> None:
    session_id = open_session(manager)
    manager.mark_used(session_id)
    manager.start_gc(0.01)
    try:
        await _until(lambda: session_id not in manager)
    finally:
        manager.stop_gc()


async def test_starting_gc_again_replaces_the_old_task(manager: OAuthSessionManager) -> None:
    manager.start_gc(3600)
    first = _gc_tasks()
    manager.start_gc(0.01)
    await settle(manager)
    try:
        assert len(first) == 1
        assert first[0].cancelled()
        assert len(_gc_tasks()) == 1
        assert manager.gc_running
        session_id = open_session(manager)
        manager.mark_used(session_id)
        await _until(lambda: session_id not in manager)  # the new, short interval is in force
    finally:
        manager.stop_gc()


async def test_clear_all_stops_the_gc(manager: OAuthSessionManager) -> None:
    manager.start_gc(0.01)
    assert manager.gc_running
    manager.clear_all()
    await settle(manager)
    assert not manager.gc_running
    assert _gc_tasks() == []


async def test_gc_survives_a_failing_sweep(clock: FakeClock) -> None:
    """A clock that fails once is a fake: no real clock fails on demand."""
    failures: list[Exception] = []

    def flaky_clock() -> float:
        if failures:
            raise failures.pop()
        return clock()

    manager = OAuthSessionManager(TIMEOUT_S, clock=flaky_clock, environ={})
    session_id = open_session(manager)
    manager.mark_used(session_id)
    failures.append(RuntimeError("clock unavailable"))
    manager.start_gc(0.01)
    try:
        await _until(lambda: session_id not in manager)
        assert failures == []
    finally:
        manager.stop_gc()


def test_start_gc_needs_a_running_loop(manager: OAuthSessionManager) -> None:
    with pytest.raises(RuntimeError):
        manager.start_gc(1)
    assert not manager.gc_running


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf")])
async def test_gc_interval_must_be_positive_and_finite(
    manager: OAuthSessionManager, interval: float
) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        manager.start_gc(interval)
    assert not manager.gc_running
