"""Connection lifecycle against a real daemon: one connection, idle close and
reconnect, timeouts with cancel, concurrency, and a daemon killed mid-session."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from credproxy.client import (
    AsyncProxyClient,
    ClientClosedError,
    ConnectFailedError,
    ConnectionLostError,
    ProxyClient,
    RequestTimeoutError,
)
from tests.client.conftest import (
    ALPHA,
    ALPHA_WORK,
    BETA,
    GRANT_ARGS,
    KEYS,
    TOKENS,
    ClientFactory,
    FakeClock,
    eventually,
    wait_for,
)
from tests.fixtures.daemon import DaemonFactory, DaemonHandle

LOST = "Credential proxy connection lost. Restart the session."


def handshakes_seen(daemon: DaemonHandle) -> list[str]:
    return [e["outcome"] for e in daemon.audit_events() if e["op"] == "handshake"]


@pytest.fixture
def held_daemon(credproxy_daemon: DaemonFactory) -> DaemonHandle:
    """A daemon whose store holds every call until SIGUSR1 (the server's test switch),
    so requests are genuinely in flight while the test acts."""
    return credproxy_daemon(*GRANT_ARGS, "--testing-hold-store", tokens=TOKENS, keys=KEYS)


async def test_idle_connection_is_replaced_by_a_new_handshake_on_next_use(
    daemon: DaemonHandle, make_client: ClientFactory, fake_clock: FakeClock
) -> None:
    client = make_client(
        daemon.socket_path, daemon.capability_token, idle_timeout=300.0, clock=fake_clock
    )
    assert await client.get_api_key("openai") == KEYS["openai"]
    fake_clock.advance(299.0)
    assert await client.get_api_key("openai") == KEYS["openai"]
    assert client.handshakes == 1
    fake_clock.advance(300.0)
    assert await client.get_api_key("anthropic") == KEYS["anthropic"]
    assert client.handshakes == 2
    await eventually(lambda: len(handshakes_seen(daemon)) >= 2)
    assert handshakes_seen(daemon) == ["ok", "ok"]


async def test_async_client_closes_an_idle_connection_by_itself(daemon: DaemonHandle) -> None:
    async with AsyncProxyClient(
        str(daemon.socket_path), daemon.capability_token, idle_timeout=0.05
    ) as client:
        await client.list_providers()
        await eventually(lambda: not client.is_connected)
        assert await client.list_providers() == ["alpha", "beta"]
        assert client.handshakes == 2


async def test_sigkilled_daemon_is_a_lost_connection_never_a_silent_reconnect(
    credproxy_daemon: DaemonFactory, make_client: ClientFactory
) -> None:
    """The daemons take no capability token, so a reconnect would succeed if the
    client tried one: the replacement daemon listens on the very same path."""
    first = credproxy_daemon(capability=False, tokens=TOKENS, keys=KEYS)
    client = make_client(first.socket_path, None)
    assert await client.list_api_keys() == ["anthropic", "hiddenkey", "openai"]
    first.process.kill()
    first.process.wait()
    second = credproxy_daemon(capability=False, socket_path=first.socket_path, keys=KEYS)
    assert second.socket_path == first.socket_path
    for _ in range(2):
        with pytest.raises(ConnectionLostError) as caught:
            await client.list_api_keys()
        assert caught.value.message == LOST
        assert caught.value.code == "CONNECTION_LOST"
    assert client.handshakes == 1
    fresh = make_client(second.socket_path, None)
    assert await fresh.list_api_keys() == ["anthropic", "hiddenkey", "openai"]
    await eventually(lambda: len(handshakes_seen(second)) >= 1)
    assert handshakes_seen(second) == ["ok"]


async def test_request_in_flight_when_the_daemon_dies_fails_as_connection_lost(
    held_daemon: DaemonHandle,
) -> None:
    async with AsyncProxyClient(str(held_daemon.socket_path), held_daemon.capability_token) as c:
        pending = asyncio.ensure_future(c.get_token("alpha"))
        await eventually(lambda: c.in_flight == 1)
        held_daemon.process.send_signal(signal.SIGKILL)
        held_daemon.process.wait()
        with pytest.raises(ConnectionLostError) as caught:
            await pending
        assert caught.value.message == LOST
        with pytest.raises(ConnectionLostError):
            await c.list_providers()
        assert c.handshakes == 1


async def test_request_timeout_leaves_the_connection_usable(
    held_daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(held_daemon.socket_path, held_daemon.capability_token, timeout=0.3)
    with pytest.raises(RequestTimeoutError) as caught:
        await client.get_token("alpha")
    assert caught.value.code == "TIMEOUT"
    assert "get_token" in caught.value.message
    held_daemon.process.send_signal(signal.SIGUSR1)
    assert await client.get_api_key("openai") == KEYS["openai"]
    assert client.handshakes == 1


def cancel_outcomes(daemon: DaemonHandle) -> tuple[list[str], list[str]]:
    events = daemon.audit_events()
    cancels = [e["outcome"] for e in events if e["op"] == "cancel"]
    targets = [e["outcome"] for e in events if e["op"] == "get_token"]
    return cancels, targets


async def test_timed_out_request_is_cancelled_on_the_daemon(
    held_daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(held_daemon.socket_path, held_daemon.capability_token, timeout=0.3)
    with pytest.raises(RequestTimeoutError):
        await client.get_token("alpha")
    await eventually(lambda: cancel_outcomes(held_daemon) == (["ok"], ["CANCELLED"]))


async def test_cancelled_task_cancels_its_request_on_the_daemon(
    held_daemon: DaemonHandle,
) -> None:
    async with AsyncProxyClient(str(held_daemon.socket_path), held_daemon.capability_token) as c:
        task = asyncio.ensure_future(c.get_token("alpha"))
        await eventually(lambda: c.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: cancel_outcomes(held_daemon) == (["ok"], ["CANCELLED"]))
        held_daemon.process.send_signal(signal.SIGUSR1)
        assert await c.get_api_key("openai") == KEYS["openai"]
        assert c.handshakes == 1


async def test_many_concurrent_requests_share_one_connection_and_get_their_own_answers(
    daemon: DaemonHandle,
) -> None:
    expected: list[tuple[str, tuple[str, ...], Any]] = [
        ("get_token", ("alpha",), ALPHA["access_token"]),
        ("get_token", ("alpha", "work"), ALPHA_WORK["access_token"]),
        ("get_token", ("beta",), BETA["access_token"]),
        ("get_api_key", ("openai",), KEYS["openai"]),
        ("get_api_key", ("anthropic",), KEYS["anthropic"]),
        ("list_buckets", ("alpha",), ["default", "work"]),
    ] * 8
    async with AsyncProxyClient(str(daemon.socket_path), daemon.capability_token) as client:
        results = await asyncio.gather(*(getattr(client, op)(*args) for op, args, _ in expected))
        assert client.handshakes == 1
    for (op, _, want), got in zip(expected, results, strict=True):
        value = got["access_token"] if op == "get_token" else got
        assert value == want
    await eventually(lambda: len(handshakes_seen(daemon)) >= 1)
    assert handshakes_seen(daemon) == ["ok"]


async def test_more_concurrent_requests_than_the_daemon_admits_queue_in_the_client(
    held_daemon: DaemonHandle,
) -> None:
    """The daemon allows 16 in flight; 24 held calls must all succeed, none exhausted."""
    async with AsyncProxyClient(
        str(held_daemon.socket_path), held_daemon.capability_token
    ) as client:
        calls = [asyncio.ensure_future(client.get_api_key("openai")) for _ in range(24)]
        await eventually(lambda: client.in_flight == 16)
        held_daemon.process.send_signal(signal.SIGUSR1)
        assert await asyncio.gather(*calls) == [KEYS["openai"]] * 24

    def outcomes() -> list[str]:
        return [e["outcome"] for e in held_daemon.audit_events() if e["op"] == "get_api_key"]

    await eventually(lambda: len(outcomes()) >= 24)
    assert outcomes() == ["ok"] * 24


async def test_closed_client_refuses_further_requests(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    await client.list_providers()
    if isinstance(client, AsyncProxyClient):
        await client.aclose()
    else:
        await client.close()
    with pytest.raises(ClientClosedError):
        await client.list_providers()


async def test_no_daemon_at_the_path_is_a_connect_failure_naming_the_path(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    path = tmp_path / "nobody-here.sock"
    client = make_client(path, None)
    with pytest.raises(ConnectFailedError) as caught:
        await client.list_providers()
    assert str(path) in caught.value.message
    assert caught.value.code == "CONNECT_FAILED"


def test_sync_client_from_env_keeps_the_fd_token_for_the_reconnect(
    daemon: DaemonHandle, fake_clock: FakeClock
) -> None:
    """The descriptor is read once and closed; the idle reconnect must still present the
    token, which now exists only in the client's memory."""
    import os

    assert daemon.capability_token is not None
    read_fd, write_fd = os.pipe()
    os.write(write_fd, daemon.capability_token.encode() + b"\n")
    os.close(write_fd)
    environ = {
        "LLXPRT_CREDENTIAL_SOCKET": str(daemon.socket_path),
        "LLXPRT_CAPABILITY_FD": str(read_fd),
    }
    with ProxyClient.from_env(environ, clock=fake_clock) as client:
        assert environ == {"LLXPRT_CREDENTIAL_SOCKET": str(daemon.socket_path)}
        assert daemon.capability_token not in repr(client)
        assert client.list_api_keys() == ["anthropic", "openai"]
        fake_clock.advance(301.0)
        assert client.list_api_keys() == ["anthropic", "openai"]
        assert client.handshakes == 2
    wait_for(lambda: len(handshakes_seen(daemon)) >= 2)
    assert handshakes_seen(daemon) == ["ok", "ok"]
