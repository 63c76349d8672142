"""A session owns its background work: every way it ends cancels tasks and runs closers."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.sessions import OAuthSession, OAuthSessionManager

from .conftest import ALICE_A, BOUND_S, TIMEOUT_S, FakeClock, open_session, settle

SECRET = "sekrit-device-code-0f9e8d"


def _session(manager: OAuthSessionManager) -> OAuthSession:
    return manager.get_session(open_session(manager), ALICE_A)


async def _forever() -> None:
    await asyncio.Event().wait()


def _async_closer(closed: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """A closer that, like a listener's cleanup, finishes only after an await."""

    async def close_listener() -> None:
        await asyncio.sleep(0)
        closed.set()

    return close_listener


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _remove(m: OAuthSessionManager, s: OAuthSession, c: FakeClock) -> None:
    m.remove_session(s.session_id)


def _clear(m: OAuthSessionManager, s: OAuthSession, c: FakeClock) -> None:
    m.clear_all()


def _sweep_used(m: OAuthSessionManager, s: OAuthSession, c: FakeClock) -> None:
    m.mark_used(s.session_id)
    assert m.sweep_expired() == 1


def _sweep_expired(m: OAuthSessionManager, s: OAuthSession, c: FakeClock) -> None:
    c.advance(TIMEOUT_S + 1)
    assert m.sweep_expired() == 1


def _expire_on_access(m: OAuthSessionManager, s: OAuthSession, c: FakeClock) -> None:
    c.advance(TIMEOUT_S + 1)
    with pytest.raises(ProxyError):
        m.get_session(s.session_id, ALICE_A)


ENDINGS: dict[str, Callable[[OAuthSessionManager, OAuthSession, FakeClock], None]] = {
    "removed": _remove,
    "cleared": _clear,
    "swept-used": _sweep_used,
    "swept-expired": _sweep_expired,
    "expired-on-access": _expire_on_access,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_every_way_a_session_ends_cancels_its_task_and_runs_its_closer(
    manager: OAuthSessionManager, clock: FakeClock, ending: str
) -> None:
    session = _session(manager)
    poll = asyncio.create_task(_forever())
    closed: list[str] = []
    session.attach(poll)
    session.attach(lambda: closed.append("listener"))
    ENDINGS[ending](manager, session, clock)
    await settle(manager)
    assert poll.cancelled()
    assert closed == ["listener"]
    assert session.ended


async def test_closers_run_last_attached_first(manager: OAuthSessionManager) -> None:
    session = _session(manager)
    order: list[int] = []
    for n in range(3):
        session.attach(lambda n=n: order.append(n))  # type: ignore[misc]
    manager.remove_session(session.session_id)
    assert order == [2, 1, 0]


async def test_async_closer_is_scheduled_on_the_running_loop(manager: OAuthSessionManager) -> None:
    session = _session(manager)
    closed = asyncio.Event()
    session.attach(_async_closer(closed))
    manager.remove_session(session.session_id)
    await settle(manager)
    assert closed.is_set()


async def test_a_failing_closer_neither_stops_the_others_nor_logs_its_message(
    manager: OAuthSessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    session = _session(manager)
    ran: list[str] = []

    def sync_boom() -> None:
        raise RuntimeError(f"cannot close, device_code={SECRET}")

    async def async_boom() -> None:
        raise RuntimeError(f"cannot close, device_code={SECRET}")

    session.attach(lambda: ran.append("first"))
    session.attach(sync_boom)
    session.attach(async_boom)
    session.attach(lambda: ran.append("last"))
    with caplog.at_level(logging.DEBUG):
        manager.remove_session(session.session_id)
        await settle(manager)
    assert ran == ["last", "first"]
    assert SECRET not in caplog.text
    assert "sync_boom" in caplog.text
    assert "async_boom" in caplog.text
    assert "RuntimeError" in caplog.text


async def test_attaching_to_an_ended_session_closes_the_resource_at_once(
    manager: OAuthSessionManager,
) -> None:
    session = _session(manager)
    manager.remove_session(session.session_id)
    closed: list[str] = []
    late_poll = asyncio.create_task(_forever())
    session.attach(lambda: closed.append("late"))
    session.attach(late_poll)
    await settle(manager)
    assert closed == ["late"]
    assert late_poll.cancelled()


def test_attaching_something_that_cannot_be_closed_is_refused(
    manager: OAuthSessionManager,
) -> None:
    with pytest.raises(TypeError):
        _session(manager).attach("not a resource")  # type: ignore[arg-type]


async def test_a_task_that_ends_its_own_session_is_not_cancelled(
    manager: OAuthSessionManager,
) -> None:
    """The device-code task removes its session after storing the token and must finish."""
    session = _session(manager)
    finished = asyncio.Event()

    async def poll_then_finish() -> str:
        manager.remove_session(session.session_id)
        await asyncio.sleep(0)
        finished.set()
        return "stored"

    task = asyncio.create_task(poll_then_finish())
    session.attach(task)
    assert await task == "stored"
    assert finished.is_set()


async def test_a_real_asyncio_listener_is_closed_and_its_port_freed(
    manager: OAuthSessionManager,
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert not _port_is_free(port)
    session = _session(manager)
    session.attach(server.close)
    manager.remove_session(session.session_id)
    await settle(manager)
    await server.wait_closed()
    assert not server.is_serving()
    assert _port_is_free(port)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_real_aiohttp_loopback_listener_is_cleaned_up_and_its_port_freed(
    manager: OAuthSessionManager, clock: FakeClock
) -> None:
    async def callback(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    assert not _port_is_free(port)
    session = _session(manager)
    session.attach(runner.cleanup)
    clock.advance(TIMEOUT_S + 1)
    assert manager.sweep_expired() == 1
    await settle(manager)
    assert _port_is_free(port)


async def test_aclose_clears_and_waits_for_async_cleanup(manager: OAuthSessionManager) -> None:
    session = _session(manager)
    closed = asyncio.Event()
    session.attach(_async_closer(closed))
    async with asyncio.timeout(BOUND_S):
        await manager.aclose()
    assert closed.is_set()
    assert len(manager) == 0


def test_async_closer_without_a_running_loop_is_skipped_and_logged(
    manager: OAuthSessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync shutdown code cannot await; the closer is reported instead of silently lost."""
    session = _session(manager)

    async def close_listener() -> None:
        raise AssertionError("must not run")

    session.attach(close_listener)
    with caplog.at_level(logging.WARNING):
        manager.remove_session(session.session_id)
    assert "close_listener" in caplog.text
    assert "no running event loop" in caplog.text


# --- the login outcome ------------------------------------------------------


def test_complete_keeps_only_the_sanitized_token_and_first_outcome_wins(
    manager: OAuthSessionManager,
) -> None:
    session = _session(manager)
    token = {"access_token": "at", "expiry": 1, "token_type": "Bearer", "refresh_token": SECRET}
    assert session.complete(token) is True
    assert session.result.status == "complete"
    assert session.result.token == {"access_token": "at", "expiry": 1, "token_type": "Bearer"}
    assert session.fail(ErrorCode.EXCHANGE_FAILED, "late") is False
    assert session.result.status == "complete"


def test_fail_records_code_and_message(manager: OAuthSessionManager) -> None:
    session = _session(manager)
    assert session.fail(ErrorCode.EXCHANGE_FAILED, "the user denied access") is True
    assert session.result.status == "error"
    assert session.result.code == "EXCHANGE_FAILED"
    assert session.result.message == "the user denied access"
    assert session.complete({"access_token": "x"}) is False


async def test_background_task_failing_with_proxy_error_fails_the_session(
    manager: OAuthSessionManager,
) -> None:
    session = _session(manager)

    async def poll() -> None:
        raise ProxyError(ErrorCode.EXCHANGE_FAILED, "the device code expired")

    task = asyncio.create_task(poll())
    session.attach(task)
    await asyncio.wait([task])
    assert session.result.status == "error"
    assert session.result.code == "EXCHANGE_FAILED"
    assert session.result.message == "the device code expired"


async def test_background_task_crash_fails_the_session_without_leaking_its_message(
    manager: OAuthSessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    session = _session(manager)

    async def poll() -> None:
        raise KeyError(SECRET)

    task = asyncio.create_task(poll())
    session.attach(task)
    with caplog.at_level(logging.DEBUG):
        await asyncio.wait([task])
    assert session.result.status == "error"
    assert session.result.code == "INTERNAL_ERROR"
    assert SECRET not in (session.result.message or "")
    assert SECRET not in caplog.text
    assert "KeyError" in caplog.text


async def test_background_task_crash_does_not_override_a_recorded_outcome(
    manager: OAuthSessionManager,
) -> None:
    session = _session(manager)

    async def poll() -> None:
        session.complete({"access_token": "at", "expiry": 1, "token_type": "Bearer"})
        raise RuntimeError("after completion")

    task = asyncio.create_task(poll())
    session.attach(task)
    await asyncio.wait([task])
    assert session.result.status == "complete"
